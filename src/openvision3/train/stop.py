"""A polite stop, the same for every training loop (train/run.py).

SIGTERM (pre-emption), SIGUSR1 (SLURM's warning before the time limit) and a first Ctrl-C
(SIGINT) do not kill the run: they are remembered, and the loop checkpoints at the end of the
current step and returns with ``status = "stopped by SIGINT"`` (the CLI then exits 3 and says how
to resume). A second Ctrl-C means "now": it raises KeyboardInterrupt at once, as Python's default
handler would. Every rank asks at the end of each step together, so one signalled rank stops them
all at the same step. The handlers are in place only while a run is inside its loop (``close``).
"""
from __future__ import annotations

import signal
import sys

from .distributed import any_rank

SIGNALS = (signal.SIGTERM, signal.SIGUSR1, signal.SIGINT)


class StopRequest:
    def __init__(self):
        self.signal: str | None = None
        self._previous = {}
        for sig in SIGNALS:
            try:
                self._previous[sig] = signal.signal(sig, self._remember)
            except ValueError:  # not the main thread (e.g. a notebook worker): no handler
                pass

    def _remember(self, signum, _frame) -> None:
        if signum == signal.SIGINT and self.signal == "SIGINT":  # the second Ctrl-C: stop now
            self.close()
            raise KeyboardInterrupt
        if self.signal is None:
            self.signal = signal.Signals(signum).name
            if signum == signal.SIGINT:
                print("\nCtrl-C: finishing this step and saving a checkpoint (Ctrl-C again to stop at once)",
                      file=sys.stderr, flush=True)

    def close(self) -> None:
        """Put back the handlers that were there before."""
        for sig, previous in self._previous.items():
            signal.signal(sig, previous if previous is not None else signal.SIG_DFL)
        self._previous = {}

    def end_of_step(self, device, due: bool, save) -> str | None:
        """A training step's last act: ``save()`` when a checkpoint is ``due``; on a stop request,
        make sure this step is saved (once) and return the status; None means carry on."""
        if due:
            save()
        if not any_rank(self.signal is not None, device):  # a collective: every rank asks together
            return None
        if not due:
            save()
        return f"stopped by {self.signal or 'a signal on another rank'}"


__all__ = ["StopRequest", "SIGNALS"]
