"""Work that chains several phases (training, then evaluation, then a report): the demo, the
synergy ablation, generation comparisons, the LLaVA probe.

The only layer that calls ``train/`` and ``eval/`` together (shared/DESIGN.md); nothing below it
imports it, so ``eval/`` only measures and ``train/`` only trains. A run a recipe needs that stops
raises ``train.run.RunStopped`` (the same command resumes it; ``ov3`` exits 3).
"""


def train_or_resume(train, cfg, run_dir, what: str, overwrite: bool = True, **kw) -> dict:
    """``train(cfg, run_dir)``, resumed from its checkpoints when a stopped run left some (else started
    afresh, over what is there when ``overwrite``); one that ends early raises RunStopped naming ``what``."""
    from pathlib import Path

    from ..train.run import RunStopped
    resume = "auto" if (Path(run_dir) / "checkpoints").is_dir() else None
    summary = train(cfg, run_dir, resume=resume, overwrite=overwrite and resume is None, **kw)
    if summary["status"] != "finished":
        raise RunStopped(f"{what}: {summary['status']} at step {summary['step']}; run the same command again "
                         "to continue")
    return summary
