"""`ov3 gen compare`: the paper's generation comparison at our scale (PAPER.md "Generation").

The same generator (config, budget, seeds) is trained and evaluated in three token spaces:
  joint     (a) the joint OpenVision 3 tokens                        the paper's OV3 + RAE, gFID 1.89 [P]
  und_only  (b) tokens of an encoder trained with the understanding   CLIP + RAE, 2.54 [P]
                losses only, decoded by a latent decoder trained
                afterwards on its frozen tokens (same noise augmentation)
  vae       (c) the VAE latents, patchified as the encoder cuts them  SD-VAE + SiT, 2.06 [P]

(b)'s encoder comes from ``compare.und_encoder`` (e.g. `ov3 ablate synergy`'s und_only arm; "{seed}"
is replaced by the seed) or is trained here in two phases with the trainer of `ov3 train`:
``compare.encoder_config`` with loss.w_rec=0 (its decoder is never trained), then the latent
decoder alone on the frozen tokens (train.freeze=[encoder.], loss.w_und=0) for ``decoder_steps``.
Each arm x seed is a `gen train` run in OUT/seed_S/ARM (reused when its gen_eval.json exists,
resumed when it has checkpoints); the judge is shared. Writes OUT/compare.json, compare.md and
compare.png (mean ± std over seeds).
"""
from __future__ import annotations

import copy
import json
import time
from pathlib import Path

from . import train_or_resume
from .synergy import mean_std

ARMS = {"joint": ("tokens", "(a) joint OV3 tokens"), "und_only": ("tokens", "(b) understanding-only tokens"),
        "vae": ("vae", "(c) VAE latents")}
PAPER = {"joint": "OV3 + RAE: gFID 1.89 / IS 289.2", "und_only": "CLIP + RAE: gFID 2.54 / IS 256.4",
         "vae": "SD-VAE + SiT: gFID 2.06"}
METRICS = ("judge_top1", "fd", "precision", "recall")


def _train_und_encoder(cfg, joint_dir: Path, out: Path) -> Path:
    """Phase 1: understanding losses only; phase 2: the latent decoder on its frozen tokens."""
    from ..config import get_config
    from ..models.openvision3 import is_saved_model
    from ..train.trainer import train
    cc = cfg.compare
    vae = joint_dir / "vae"  # the joint model's own VAE (save_pretrained keeps a local one there)
    base = [f"model.vae.source={vae.resolve()}"] if vae.is_dir() else []
    enc_dir, dec_dir = out / "und_encoder", out / "und_decoder"
    if not is_saved_model(enc_dir / "model"):
        c1 = get_config(cc.encoder_config, base + list(cc.encoder_overrides) + ["loss.w_rec=0"])
        train_or_resume(train, c1, enc_dir, str(enc_dir), overwrite=False)
    if not is_saved_model(dec_dir / "model"):
        c2 = get_config(cc.encoder_config, base + list(cc.encoder_overrides) + [
            "loss.w_und=0", "loss.w_rec=1", f"train.init_from={(enc_dir / 'model').resolve()}",
            "train.freeze=[encoder.]", f"train.steps={cc.decoder_steps}", "train.stages=[]"])
        train_or_resume(train, c2, dec_dir, str(dec_dir), overwrite=False)
    return dec_dir / "model"


def _figure(summary: dict, path: Path) -> None:
    from ..eval.common import plt
    p = plt()
    arms = list(summary)
    fig, axes = p.subplots(1, 3, figsize=(11, 3.4))
    for ax, key, better in zip(axes, ("judge_top1", "fd", "recall"), ("higher", "lower", "higher")):
        means = [summary[a][key]["mean"] for a in arms]
        stds = [summary[a][key]["std"] for a in arms]
        ax.bar(range(len(arms)), means, yerr=stds, capsize=4, color=["tab:blue", "tab:orange", "tab:gray"][:len(arms)])
        ax.set_xticks(range(len(arms)), [ARMS[a][1].split(" ", 1)[0] + " " + a for a in arms], fontsize=8)
        ax.set_title(f"{key} ({better} is better)", fontsize=9)
        ax.grid(True, axis="y", alpha=0.3)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    p.close(fig)


def _table(summary: dict, seeds: list[int]) -> str:
    rows = ["| token space | judge_top1 | fd | precision | recall | train s | paper (ImageNet 256) |",
            "|---|---:|---:|---:|---:|---:|---|"]
    for arm, s in summary.items():
        cells = [f"{s[k]['mean']:.3f} ± {s[k]['std']:.3f}" for k in METRICS]
        rows.append(f"| {ARMS[arm][1]} | {' | '.join(cells)} | {s['train_seconds']['mean']:.0f} | {PAPER[arm]} |")
    return (f"Mean ± std over seeds {', '.join(map(str, seeds))}.\n\n" + "\n".join(rows))


def run_compare(config: str, out_dir, overrides: list[str] | None = None, progress: bool = True) -> dict:
    from ..generation.config import get_gen_config
    from ..generation.evaluate import evaluate_generator
    from ..generation.judge import get_judge
    from ..generation.trainer import check_encoder, train_generator
    t0 = time.perf_counter()
    cfg = get_gen_config(config, overrides)
    joint = check_encoder(cfg)
    cc = cfg.compare
    unknown = [a for a in cc.spaces if a not in ARMS]
    if unknown:
        from ..config import ConfigError
        raise ConfigError(f"compare.spaces: unknown arm(s) {', '.join(unknown)}; choose from {', '.join(ARMS)}")
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    judge_info = get_judge(cfg, progress=progress)[1]  # once, shared by every arm

    timings, runs = {}, {a: [] for a in cc.spaces}
    trained_und = None
    for seed in cc.seeds:
        for arm in cc.spaces:
            encoder = joint
            if arm == "und_only":
                if cc.und_encoder:
                    encoder = Path(cc.und_encoder.replace("{seed}", str(seed)))
                else:
                    t = time.perf_counter()
                    trained_und = trained_und or _train_und_encoder(cfg, joint, out)
                    timings.setdefault("und_encoder_seconds", round(time.perf_counter() - t, 1))
                    encoder = trained_und
            run_dir = out / f"seed_{seed}" / arm
            done = run_dir / "gen_eval.json"
            if done.is_file():
                runs[arm].append(json.loads(done.read_text()))
                continue
            c = copy.deepcopy(cfg)
            c.encoder, c.space, c.seed = str(encoder), ARMS[arm][0], seed
            summary = train_or_resume(train_generator, c, run_dir, str(run_dir), progress=progress)
            r = evaluate_generator(run_dir, seed=seed, sweep=False, progress=progress)
            r.update(train_seconds=summary["train_seconds"], cache_seconds=summary["cache_seconds"])
            done.write_text(json.dumps(r, indent=1))
            runs[arm].append(r)

    summary = {}
    for arm, rs in runs.items():
        summary[arm] = {k: mean_std([r[k] for r in rs]) for k in (*METRICS, "train_seconds")}
        summary[arm]["per_seed"] = {k: [r[k] for r in rs] for k in METRICS}
    table = _table(summary, cc.seeds)
    _figure(summary, out / "compare.png")
    result = {"summary": summary, "seeds": cc.seeds, "judge_real_top1": judge_info["judge_real_top1"],
              "encoder": str(joint), "und_encoder": str(trained_und or cc.und_encoder or ""),
              "timings": timings, "seconds": round(time.perf_counter() - t0, 1), "table": table}
    md = ["# Generation in three token spaces", "",
          f"Data `{cfg.data.train}` at {cfg.data.resolution} px; DiT-DH `{cfg.dit.preset}` "
          f"({cfg.train.steps} steps x batch {cfg.train.batch_size}); guidance w = {cfg.flow.cfg_scale}, "
          f"{cfg.flow.steps} {cfg.flow.sampler} steps; {cfg.eval.samples_per_class} samples per class. "
          f"The judge's held-out accuracy on real images: {judge_info['judge_real_top1']:.3f}.", "",
          table, "", "![comparison](compare.png)", ""]
    (out / "compare.md").write_text("\n".join(md))
    (out / "compare.json").write_text(json.dumps({k: v for k, v in result.items() if k != "table"}, indent=1))
    return result


__all__ = ["run_compare", "ARMS"]
