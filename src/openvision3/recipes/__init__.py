"""Work that chains several phases (training, then evaluation, then a report): the demo, the
synergy ablation, generation comparisons, the LLaVA probe.

The only layer that calls ``train/`` and ``eval/`` together (shared/DESIGN.md); nothing below it
imports it, so ``eval/`` only measures and ``train/`` only trains. A run a recipe needs that stops
raises ``train.run.RunStopped`` (the same command resumes it; ``ov3`` exits 3).
"""
