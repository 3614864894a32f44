"""A polite stop for every training loop (`ov3 train`, `ov3 train-vae`, `ov3 gen train`).

SIGTERM (pre-emption) and SIGUSR1 (SLURM's warning before the time limit) do not kill the run:
they are remembered, and the loop checkpoints at the end of the current step and returns with
``status = "stopped by SIGTERM"``; ``--resume auto`` continues from there. Every rank asks
``requested(device)`` together, so one signalled rank stops them all at the same step.
"""
from __future__ import annotations

import signal

from .distributed import any_rank

SIGNALS = (signal.SIGTERM, signal.SIGUSR1)


class StopRequest:
    def __init__(self):
        self.signal: str | None = None
        for sig in SIGNALS:
            try:
                signal.signal(sig, self._remember)
            except ValueError:  # not the main thread (e.g. a notebook worker): no handler
                pass

    def _remember(self, signum, _frame) -> None:
        self.signal = signal.Signals(signum).name

    def requested(self, device) -> bool:
        """True on every rank once any rank has been signalled (a collective under DDP)."""
        return any_rank(self.signal is not None, device)

    def status(self) -> str:
        return f"stopped by {self.signal or 'a signal on another rank'}"

    def end_of_step(self, device, due: bool, save) -> str | None:
        """A training step's last act: ``save()`` when a checkpoint is ``due``; on a stop request,
        make sure this step is saved (once) and return the status; None means carry on."""
        if due:
            save()
        if not self.requested(device):
            return None
        if not due:
            save()
        return self.status()


__all__ = ["StopRequest", "SIGNALS"]
