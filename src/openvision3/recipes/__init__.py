"""Work that chains several phases (training, then evaluation, then a report): the demo, the
synergy ablation, generation comparisons, the LLaVA probe.

The only layer that calls ``train/`` and ``eval/`` together (shared/DESIGN.md); nothing below it
imports it, so ``eval/`` only measures and ``train/`` only trains.
"""


class RecipeStopped(Exception):
    """A training run inside a recipe ended before its last step (a signal, or non-finite losses
    with the last good checkpoint kept); the message says where, and the same command resumes it
    (``ov3`` exits 3)."""


__all__ = ["RecipeStopped"]
