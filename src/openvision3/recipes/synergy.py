"""`ov3 ablate synergy`: the paper's synergy ablation (shared/PAPER.md, "Synergy ablation" [P]).

Three arms, each trained from the same initialisation on the same batches in the same order
(one config, one seed, one step budget), then evaluated on held-out data:

  joint     the config as it is: reconstruction + understanding shape the unified tokens
  rec_only  loss.w_und = 0: only reconstruction shapes the tokens; the text encoder and caption
            decoder still train on *detached* tokens, so their losses measure what the encoder
            learnt without ever shaping it (loss.probe_detached)
  und_only  loss.w_rec = 0: only understanding shapes the tokens; the latent decoder still trains
            on detached tokens, so the reconstruction losses are measured the same way

The paper's claims (CLAIMS) are checked as four verdicts over seeds, each true only beyond one
std (``verdicts`` gives each one's margin).

Layout: OUT/seed_S/ARM/ is an ordinary `ov3 train` run directory (config.yaml, metrics.jsonl,
checkpoints/, model/) with its held-out evaluation in OUT/seed_S/ARM/eval/. OUT/synergy.json,
OUT/synergy.md and OUT/synergy_curves.png hold the comparison. A finished arm (model/ and
eval/eval.json present) is reused, so an interrupted ablation continues where it stopped.
"""
from __future__ import annotations

import json
import math
import time
from pathlib import Path

from . import train_or_resume

# Each arm is the base config plus these overrides; probe_detached trains a weight-0 branch on
# detached tokens (losses.py), so every arm runs every branch and draws the same random numbers.
ARMS: dict[str, list[str]] = {
    "joint": [],
    "rec_only": ["loss.w_und=0", "loss.probe_detached=true"],
    "und_only": ["loss.w_rec=0", "loss.probe_detached=true"],
}
# The per-step loss terms the figure shows, one panel each, as the paper's figure does [P].
CURVES = {"loss_pixel": "pixel L1", "loss_latent": "latent L1", "loss_caption": "caption CE",
          "loss_contrastive": "contrastive"}
# The two branch totals the verdicts read (losses.py: loss_rec = pixel + beta * latent (+ LPIPS),
# loss_und = caption + alpha * contrastive).
BRANCHES = ("loss_rec", "loss_und")
LAST_FRACTION = 0.1  # [?] "last" = mean training loss over the final 10 % of steps (per-step losses are noisy)
FLAT_TOLERANCE = 0.10  # [?] "near its start" = less than 10 % below the starting value
DEFAULT_TASKS = ("recon", "zeroshot", "retrieval", "caption", "probe")
# Held-out figures shown in the Markdown table: (task, key, label).
HEADLINE = [("recon", "psnr", "PSNR dB"), ("recon", "ssim", "SSIM"), ("zeroshot", "top1", "zero-shot top-1"),
            ("retrieval", "t2i_r5", "t2i R@5"), ("retrieval", "i2t_r1", "i2t R@1"),
            ("caption", "bleu4", "BLEU-4"), ("caption", "cider", "CIDEr"), ("probe", "top1", "probe top-1")]


# ------------------------------------------------------------------------------------ arguments
def parse_arms(arms) -> list[str]:
    """"joint,rec_only" or a list -> arm names; an unknown name is one ConfigError line."""
    from ..config import ConfigError
    names = [a.strip() for a in arms.split(",")] if isinstance(arms, str) else list(arms)
    names = [a for a in names if a]
    bad = [a for a in names if a not in ARMS]
    if bad or not names:
        raise ConfigError(f"unknown arm(s) {', '.join(bad) or '(none)'}; choose from {', '.join(ARMS)}")
    return list(dict.fromkeys(names))


def parse_seeds(seeds) -> list[int]:
    from ..config import ConfigError
    if isinstance(seeds, str):
        try:
            seeds = [int(s) for s in seeds.split(",") if s.strip()]
        except ValueError:
            raise ConfigError(f"--seeds expects a comma list of integers such as 0,1,2, got '{seeds}'") from None
    if not seeds:
        raise ConfigError("--seeds needs at least one seed")
    return list(dict.fromkeys(int(s) for s in seeds))


def arm_config(config: str, arm: str, seed: int, steps: int | None = None, overrides=()):
    """The Config of one arm: base config, the user's overrides, per-step logging, then the arm's
    own overrides (last, so nothing undoes them)."""
    from ..config import ConfigError, get_config
    base = get_config(config, list(overrides))
    if steps is not None and base.train.stages:
        raise ConfigError("--steps sets train.steps, but this config has train.stages; set their steps instead")
    total = steps or base.train.steps
    fixed = [f"seed={seed}", "train.log_every=1", "train.eval_every=0",  # per-step curves
             f"train.checkpoint_every={max(1, total // 2)}"]              # resumable, but cheap
    if steps is not None:
        fixed.append(f"train.steps={steps}")
    return get_config(config, list(overrides) + fixed + ARMS[arm])


def eval_spec(cfg) -> str:
    """The held-out data spec of a run: data.val, with the caption style it was trained on."""
    from ..data import parse_spec
    spec = cfg.data.val
    scheme, _, query = parse_spec(spec)
    if scheme == "shapes" and "captions" not in query and cfg.data.shapes.captions != "rich":
        spec += ("&" if "?" in spec else "?") + f"captions={cfg.data.shapes.captions}"
    return spec


# ------------------------------------------------------------------------------------ one arm
def run_arm(config: str, arm: str, seed: int, run_dir: Path, steps: int | None, overrides, tasks,
            num_samples: int, progress: bool = True) -> dict:
    """Train (or reuse) one arm and evaluate it on held-out data; returns its per-step curves,
    validation losses, evaluation and timings."""
    from ..eval import evaluate
    from ..models.openvision3 import OpenVision3, is_saved_model
    from ..train.logging import read_metrics
    from ..train.trainer import train

    cfg = arm_config(config, arm, seed, steps, overrides)
    model_dir, eval_json = run_dir / "model", run_dir / "eval" / "eval.json"
    timings = {}
    if is_saved_model(model_dir):
        print(f"synergy: reusing {model_dir}", flush=True)
    else:
        t0 = time.perf_counter()
        train_or_resume(train, cfg, run_dir, f"arm {arm}, seed {seed}")
        timings["train_s"] = round(time.perf_counter() - t0, 1)
    if eval_json.exists():
        results = json.loads(eval_json.read_text())
    else:
        t0 = time.perf_counter()
        model = OpenVision3.from_pretrained(model_dir).eval()
        results = evaluate(model, eval_spec(cfg), tasks=tasks, num_samples=num_samples,
                           out_dir=run_dir / "eval", progress=progress,
                           title=f"synergy ablation: {arm}, seed {seed}")
        timings["eval_s"] = round(time.perf_counter() - t0, 1)
    rows = read_metrics(run_dir / "metrics.jsonl")
    val = {k[4:]: v for r in rows for k, v in r.items() if k.startswith("val_loss")}
    return {"curves": curves(rows), "val": val, "eval": results, "timings": timings}


def curves(rows: list[dict]) -> dict:
    """Training rows of metrics.jsonl -> {"step": [...], term: [...]} for every loss term."""
    train_rows = [r for r in rows if "loss_pixel" in r and "lr" in r]
    keys = list(CURVES) + list(BRANCHES)
    return {"step": [r["step"] for r in train_rows], **{k: [float(r[k]) for r in train_rows] for k in keys}}


def first_last(curve: dict, key: str) -> tuple[float, float]:
    """The loss at the first step (every arm starts from the same weights and batch) and the mean
    over the last LAST_FRACTION of steps."""
    values = curve[key]
    if not values:
        raise ValueError(f"no training rows with {key}")
    n = max(1, round(len(values) * LAST_FRACTION))
    return values[0], sum(values[-n:]) / n


# ------------------------------------------------------------------------------------ statistics
def mean_std(values) -> dict:
    """{"mean", "std"}: mean and sample standard deviation (n - 1; 0 for a single value) over seeds."""
    values = [float(v) for v in values]
    m = sum(values) / len(values)
    if len(values) < 2:
        return {"mean": m, "std": 0.0}
    return {"mean": m, "std": math.sqrt(sum((v - m) ** 2 for v in values) / (len(values) - 1))}


def verdicts(first_last_by_arm: dict) -> tuple[dict, dict]:
    """The four claims from per-seed values ``{arm: {branch: [(first, last) per seed]}}``.

    Every verdict reads a per-seed margin (seeds are paired: each seed is one initialisation and
    one data order shared by the arms) and holds only beyond one std of that margin:
      und_lowers_rec       und_only's relative drop of loss_rec, (first - last) / first: mean > std
      rec_leaves_und_flat  FLAT_TOLERANCE - rec_only's relative drop of loss_und: mean > std
      joint_best_rec/und   last(other) - last(joint) for each other arm; "best or equal" fails only
                           when some arm is lower beyond one std (mean < -std)
    A verdict whose arms did not run is None. Returns (verdicts, margins)."""
    fl = first_last_by_arm
    out, margins = dict.fromkeys(CLAIMS), {}

    def drop(arm, branch):
        return [(f - last) / f if f else 0.0 for f, last in fl[arm][branch]]

    if "und_only" in fl:
        m = mean_std(drop("und_only", "loss_rec"))
        margins["und_lowers_rec"] = {"relative_drop": m}
        out["und_lowers_rec"] = m["mean"] > m["std"]
    if "rec_only" in fl:
        d = drop("rec_only", "loss_und")
        m = mean_std([FLAT_TOLERANCE - x for x in d])
        margins["rec_leaves_und_flat"] = {"relative_drop": mean_std(d), "tolerance": FLAT_TOLERANCE,
                                          "margin": m}
        if "joint" in fl:  # how much of joint's improvement the detached probe gets without shaping
            margins["rec_leaves_und_flat"]["drop_vs_joint"] = mean_std(
                [a / b if b else 0.0 for a, b in zip(d, drop("joint", "loss_und"))])
        out["rec_leaves_und_flat"] = m["mean"] > m["std"]
    others = [a for a in ARMS if a != "joint" and a in fl]
    for name, branch in (("joint_best_rec", "loss_rec"), ("joint_best_und", "loss_und")):
        if "joint" not in fl or not others:
            continue
        margins[name] = {f"vs_{o}": mean_std([lo - lj for (_, lo), (_, lj) in zip(fl[o][branch], fl["joint"][branch])])
                         for o in others}
        out[name] = all(not m["mean"] < -m["std"] for m in margins[name].values())
    return out, margins


def _flatten_eval(results: dict) -> dict:
    """{task: {metric: number}} of one evaluation, numbers only."""
    out = {}
    for task, r in results.items():
        if task == "meta" or not isinstance(r, dict) or "skipped" in r:
            continue
        nums = {k: v for k, v in r.items() if isinstance(v, (int, float)) and not isinstance(v, bool)
                and k not in ("seconds", "n", "n_train", "n_test", "num_classes", "unique_captions", "dim")}
        for base, b in (r.get("baselines") or {}).items():
            if isinstance(b.get("top1"), (int, float)):
                nums[f"{base}_top1"] = b["top1"]
        if nums:
            out[task] = nums
    return out


def _with_std(per_seed: list[dict]) -> dict:
    """[{k: v}, ...] over seeds -> {k: mean, k_std: std} for the keys every seed has."""
    keys = [k for k in per_seed[0] if all(k in d for d in per_seed)]
    out = {}
    for k in keys:
        if all(isinstance(d[k], dict) for d in per_seed):
            out[k] = _with_std([d[k] for d in per_seed])
        elif all(isinstance(d[k], (int, float)) and math.isfinite(d[k]) for d in per_seed):
            stat = mean_std([d[k] for d in per_seed])
            out[k], out[f"{k}_std"] = stat["mean"], stat["std"]
    return out


def summarize(per_arm: dict, seeds: list[int]) -> dict:
    """{arm: [run_arm result per seed]} -> the JSON contract (means over seeds, std beside them)."""
    summary, fl = {}, {}
    for arm, runs in per_arm.items():
        fl[arm] = {b: [first_last(r["curves"], b) for r in runs] for b in BRANCHES}
        terms = {k: [dict(zip(("first", "last"), first_last(r["curves"], k))) for r in runs] for k in CURVES}
        summary[arm] = {
            **{b: _with_std([{"first": f, "last": last} for f, last in fl[arm][b]]) for b in BRANCHES},
            "terms": {k: _with_std(v) for k, v in terms.items()},
            "val": _with_std([r["val"] for r in runs]),
            "eval": _with_std([_flatten_eval(r["eval"]) for r in runs]),
        }
    summary["verdicts"], summary["margins"] = verdicts(fl)
    summary["seeds"] = list(seeds)
    return summary


# ------------------------------------------------------------------------------------ figure, report
def _smooth(values: list[float], window: int) -> list[float]:
    """Trailing moving average (the first points average what there is)."""
    out, total = [], 0.0
    for i, v in enumerate(values):
        total += v
        if i >= window:
            total -= values[i - window]
        out.append(total / min(i + 1, window))
    return out


def plot_curves(per_arm: dict, path: Path, title: str = "") -> None:
    """One panel per loss, one line per arm (mean over seeds), a band of +-1 std over seeds."""
    from ..eval.common import plt
    p = plt()
    fig, axes = p.subplots(1, len(CURVES), figsize=(4.2 * len(CURVES), 3.6))
    colours = {"joint": "tab:purple", "rec_only": "tab:blue", "und_only": "tab:orange"}
    window = 1
    for ax, (key, label) in zip(axes, CURVES.items()):
        for arm, runs in per_arm.items():
            n = min(len(r["curves"]["step"]) for r in runs)
            if n == 0:
                continue
            window = max(1, n // 50)
            steps = runs[0]["curves"]["step"][:n]
            seeds = [_smooth(r["curves"][key][:n], window) for r in runs]
            stats = [mean_std(col) for col in zip(*seeds)]
            ax.plot(steps, [s["mean"] for s in stats], color=colours.get(arm), label=arm, linewidth=1.4)
            if len(runs) > 1:
                ax.fill_between(steps, [s["mean"] - s["std"] for s in stats], [s["mean"] + s["std"] for s in stats],
                                color=colours.get(arm), alpha=0.2, linewidth=0)
        ax.set_title(label)
        ax.set_xlabel("step")
        ax.set_yscale("log")
        ax.grid(True, alpha=0.3)
    axes[0].set_ylabel("training loss")
    axes[0].legend(fontsize=8)
    seeds_n = len(next(iter(per_arm.values())))
    fig.suptitle((title + ": " if title else "") + f"mean over {seeds_n} seed(s), band +-1 std, "
                 f"moving average over {window} steps", fontsize=9)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    p.close(fig)


def _pm(d: dict, key: str) -> str:
    return f"{d[key]:.3f} ± {d.get(f'{key}_std', 0.0):.3f}" if key in d else "-"


CLAIMS = {
    "und_lowers_rec": "semantic losses alone lower the reconstruction losses well below their start",
    "rec_leaves_und_flat": "reconstruction alone leaves the caption and contrastive losses near their start",
    "joint_best_rec": "joint training is best or equal on reconstruction",
    "joint_best_und": "joint training is best or equal on understanding",
}


def markdown(summary: dict, arms: list[str], config: str, steps: int | None, wall: dict) -> str:
    lines = [f"# Synergy ablation: `{config}`", "",
             f"Seeds {', '.join(map(str, summary['seeds']))}; {steps or 'config'} steps per arm; every "
             "figure is the mean ± std over seeds. Losses: training loss at step 1 (all arms share "
             f"weights and batch there) and the mean over the last {LAST_FRACTION:.0%} of steps.", "",
             "| arm | loss_rec first | loss_rec last | loss_und first | loss_und last | "
             + " | ".join(label for _, _, label in HEADLINE) + " |",
             "|---|" + "---:|" * (4 + len(HEADLINE))]
    for arm in arms:
        s = summary[arm]
        cells = [_pm(s["loss_rec"], "first"), _pm(s["loss_rec"], "last"),
                 _pm(s["loss_und"], "first"), _pm(s["loss_und"], "last")]
        cells += [_pm(s["eval"].get(task, {}), key) for task, key, _ in HEADLINE]
        lines.append(f"| {arm} | " + " | ".join(cells) + " |")
    probe = summary[arms[0]]["eval"].get("probe", {})
    if "pixels_top1" in probe:
        lines += ["", "Linear-probe baselines under the identical protocol (same images, split and "
                  f"classifier): raw pixels {_pm(probe, 'pixels_top1')}, frozen VAE latents "
                  f"{_pm(probe, 'vae_latents_top1')}."]
    lines += ["", "| claim (paper [P]) | verdict | margin (mean ± std over seeds) |", "|---|:---:|---|"]
    for name, claim in CLAIMS.items():
        v = summary["verdicts"].get(name)
        lines.append(f"| {name}: {claim} | {'n/a' if v is None else ('**yes**' if v else 'no')} | "
                     f"{_margin_text(summary['margins'].get(name))} |")
    lines += ["", "A verdict is yes only beyond one std over seeds (recipes/synergy.py, `verdicts`). "
              "The detached probes (the rec_only arm's text towers, the und_only arm's latent decoder) "
              "train on tokens they cannot shape.", "",
              "![synergy curves](synergy_curves.png)", "",
              "Wall time (s): " + ", ".join(f"{k} {v}" for k, v in wall.items()), ""]
    return "\n".join(lines)


def _margin_text(m: dict | None) -> str:
    if not m:
        return "-"
    return "; ".join(f"{k} {v['mean']:+.3f} ± {v['std']:.3f}" if isinstance(v, dict) else f"{k} {v}"
                     for k, v in m.items() if not isinstance(v, dict) or "mean" in v)


# ------------------------------------------------------------------------------------ the recipe
def run_synergy(config: str, out_dir=None, steps: int | None = None, seeds=(0, 1, 2), arms=tuple(ARMS),
                overrides=(), tasks=DEFAULT_TASKS, num_samples: int = 500, progress: bool = True) -> dict:
    """Train and evaluate every arm for every seed, then write OUT/synergy.{json,md} and
    OUT/synergy_curves.png; returns the summary (the JSON contract of docs/synergy.md)."""
    import torch

    from ..config import ConfigError
    from ..eval import parse_tasks
    arms, seeds, tasks = parse_arms(arms), parse_seeds(seeds), parse_tasks(tasks)
    if steps is not None and steps <= 0:
        raise ConfigError(f"--steps must be positive, got {steps}")
    for arm in arms:  # every bad key or value is reported before anything trains
        arm_config(config, arm, seeds[0], steps, overrides)
    out = Path(out_dir or Path("runs") / "synergy" / Path(config).stem)
    out.mkdir(parents=True, exist_ok=True)
    torch.set_flush_denormal(True)  # denormals made CPU steps up to 8x slower
    per_arm: dict = {a: [] for a in arms}
    wall: dict = {}
    start = time.perf_counter()
    for seed in seeds:
        t_seed = time.perf_counter()
        for arm in arms:
            print(f"\n== synergy: seed {seed}, arm {arm} ==", flush=True)
            per_arm[arm].append(run_arm(config, arm, seed, out / f"seed_{seed}" / arm, steps, overrides,
                                        tasks, num_samples, progress))
        wall[f"seed_{seed}"] = round(time.perf_counter() - t_seed, 1)
    wall["total"] = round(time.perf_counter() - start, 1)

    summary = summarize(per_arm, seeds)
    summary.update(config=config, steps=steps, arms=arms, tasks=list(tasks), num_samples=num_samples,
                   wall_s=wall, timings={a: [r["timings"] for r in runs] for a, runs in per_arm.items()},
                   models={a: [str(out / f"seed_{s}" / a / "model") for s in seeds] for a in arms},
                   figure="synergy_curves.png", out_dir=str(out))
    plot_curves(per_arm, out / "synergy_curves.png", title=Path(config).stem)
    from ..eval.report import jsonable
    (out / "synergy.json").write_text(json.dumps(jsonable(summary), indent=2) + "\n")
    (out / "synergy.md").write_text(markdown(summary, arms, config, steps, wall))
    print(f"\nsynergy ablation done in {wall['total']} s: {out / 'synergy.md'}", flush=True)
    return summary
