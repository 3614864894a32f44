"""`ov3 demo`: the whole system on a laptop, on embedded data, with no download.

Phases (each timed, each reused when its output already exists, so a second run is quick):
  1. the VAE: by default the demo VAE shipped in ``assets/demo_vae`` (trained once by
     ``ov3 train-vae --config configs/vae_demo.yaml``, ~4 MB of safetensors); ``train_vae=True``
     (``ov3 demo --train-vae``) trains it again into OUT/vae/model instead
  2. train OpenVision 3 (nano) jointly, every loss on (configs/demo.yaml, ``seed``) -> OUT/train/model
  3. evaluate on held-out data: reconstruction, zero-shot, retrieval, captioning
  4. write OUT/report.md, OUT/metrics.json (same structure as eval.json), the PNGs, OUT/model/

The demo is defined by steps, never by wall time, so one seed gives the same figures on every
machine up to floating-point noise. A training run that stops early (a signal, non-finite
losses) raises ``RunStopped``: nothing is evaluated, and the same call again resumes it. A
directory holding another seed's or recipe's run raises ``DemoRefused``.
"""
from __future__ import annotations

import contextlib
import json
import shutil
import time
from pathlib import Path

from ..train.run import RunStopped

# The floors on held-out data, reported beside what was reached (never lowered quietly).
FLOORS = {("recon", "psnr"): 23.0, ("zeroshot", "top1"): 0.40, ("retrieval", "t2i_r5"): 0.95,
          ("retrieval", "i2t_r1"): 0.55}
# The demo VAE trained once by `ov3 train-vae --config configs/vae_demo.yaml` (docs/results.md).
SHIPPED_VAE = Path(__file__).resolve().parents[3] / "assets" / "demo_vae"


class DemoRefused(ValueError):
    """The demo cannot go on as asked (the output directory holds another seed's or recipe's run,
    the shipped VAE is missing): one line saying what to do instead; rerunning alone would not help."""


def default_out(seed: int) -> str:
    """runs/demo for the default seed, runs/demo_seed{N} for the others (one run directory a seed)."""
    return "runs/demo" if seed == 0 else f"runs/demo_seed{seed}"


@contextlib.contextmanager
def _phase(name: str, timings: dict):
    print(f"\n== demo: {name} ==", flush=True)
    t0 = time.perf_counter()
    yield
    timings[name] = round(time.perf_counter() - t0, 1)


def _floor_table(results: dict) -> str:
    """The floors table, preceded by one sentence that says how many were met."""
    rows = ["| figure | reached | floor | met |", "|---|---:|---:|:---:|"]
    missed = 0
    for (task, key), floor in FLOORS.items():
        value = results.get(task, {}).get(key)
        # rates are float32 fractions of counts: 475 / 500 arrives as 0.94999999 and meets 0.95
        met = isinstance(value, (int, float)) and round(value, 6) >= floor
        missed += not met
        shown = f"{value:.3f}" if isinstance(value, (int, float)) else "n/a"
        rows.append(f"| {task} {key} | {shown} | {floor} | {'yes' if met else 'no'} |")
    verdict = (f"This run meets all {len(FLOORS)} floors." if not missed else
               f"This run misses {missed} of {len(FLOORS)} floors; docs/results.md gives the recipe's "
               "mean and spread over seeds and what limits it on 2 CPU cores.")
    return verdict + "\n\n" + "\n".join(rows)


def _vae_phase(out: Path, train_vae_again: bool, vae_overrides) -> tuple[Path, dict]:
    """The VAE directory the model uses and its summary (held-out PSNR, steps, ...)."""
    from ..train.vae_config import get_vae_config
    from ..train.vae_trainer import train_vae
    if not train_vae_again:
        if not (SHIPPED_VAE / "config.json").exists():
            raise DemoRefused(f"the shipped demo VAE is missing ({SHIPPED_VAE}); "
                              "run `ov3 demo --train-vae` to train it (about 5 min on 2 cores)")
        print(f"using the shipped demo VAE {SHIPPED_VAE} (--train-vae trains it again)")
        return SHIPPED_VAE, json.loads((SHIPPED_VAE / "results.json").read_text())
    vae_dir = out / "vae" / "model"
    if (vae_dir / "config.json").exists() and (out / "vae" / "results.json").exists():
        print(f"reusing {vae_dir}")
        return vae_dir, json.loads((out / "vae" / "results.json").read_text())
    summary = train_vae(get_vae_config("vae_demo", list(vae_overrides or [])), out / "vae", resume="auto")
    if summary["status"] != "finished":
        raise RunStopped(f"the demo VAE was {summary['status']} at step {summary['step']}; "
                            "run the same command again to resume it")
    return vae_dir, summary


def _check_same_run(train_dir: Path, seed: int, vae_dir: Path) -> None:
    """An existing run directory must be this seed's and this VAE's: resuming or reusing another
    run would report its figures under this one's name."""
    saved = train_dir / "config.yaml"
    if not saved.exists():
        return
    from ..config import load_config_file
    cfg = load_config_file(saved)
    if cfg.seed != seed or Path(cfg.model.vae.source).resolve() != vae_dir.resolve():
        raise DemoRefused(f"{train_dir} holds a run with seed {cfg.seed} and VAE {cfg.model.vae.source}, "
                          f"not seed {seed} with {vae_dir}; pass another --out or delete it")


def _check_same_recipe(train_dir: Path, cfg, ignore: tuple[str, ...] = ()) -> None:
    """A finished model is reused, or a stopped run resumed, only if the recipe this call would
    train is the one it was trained with (after an update of configs/demo.yaml an old model would
    report its figures as the new one's, and an old checkpoint may not even load). ``ignore``: keys
    allowed to differ (a resume may change the run's length)."""
    if not (train_dir / "config.yaml").exists():
        return
    from ..config import config_to_dict, load_config_file

    def flat(d, prefix=""):
        for k, v in d.items():
            yield from flat(v, f"{prefix}{k}.") if isinstance(v, dict) else [(prefix + k, v)]
    # both sides through the current config tree, so a run saved with an older layout of the same
    # keys (load_config_file reads it) compares by value, not by where a key used to live
    old = dict(flat(config_to_dict(load_config_file(train_dir / "config.yaml"))))
    new = dict(flat(config_to_dict(cfg)))
    changed = sorted(k for k in old.keys() | new.keys() if old.get(k) != new.get(k) and not k.startswith(ignore))
    if changed:
        raise DemoRefused(f"{train_dir} holds a run of another recipe (it differs in "
                          f"{', '.join(changed[:4])}{' ...' if len(changed) > 4 else ''}); "
                          "pass another --out or delete it")


def _train_phase(out: Path, seed: int, vae_dir: Path, overrides) -> tuple[Path, dict]:
    from ..config import get_config
    from ..models.openvision3 import is_saved_model
    from ..train.run import TrainError
    from ..train.trainer import train
    train_dir, model_dir = out / "train", out / "train" / "model"
    _check_same_run(train_dir, seed, vae_dir)
    cfg = get_config("demo", [f"model.vae.source={vae_dir.resolve()}", f"seed={seed}"] + list(overrides or []))
    if is_saved_model(model_dir):
        _check_same_recipe(train_dir, cfg)
        print(f"reusing {model_dir}")
        return model_dir, _precision_of(train_dir)
    resume = "auto" if (train_dir / "checkpoints").exists() else None
    if resume:
        _check_same_recipe(train_dir, cfg, ignore=("train.steps", "train.stages"))
        print(f"resuming the stopped run in {train_dir}")
    try:
        summary = train(cfg, train_dir, resume=resume, overwrite=resume is None)
    except TrainError as e:  # e.g. non-finite losses: the last good checkpoint is kept
        raise RunStopped(f"training failed: {e}") from None
    if summary["status"] != "finished":
        raise RunStopped(f"training {summary['status']} at step {summary['step']} of {summary['total_steps']} "
                            f"(checkpoint {summary['last_checkpoint']}); run the same command again to resume")
    return model_dir, _precision_of(train_dir)


def _precision_of(train_dir: Path) -> dict:
    """The precision the training run used and why (its last start's record in metrics.jsonl)."""
    from ..train.logging import read_metrics
    rows = [r for r in read_metrics(train_dir / "metrics.jsonl") if "precision_reason" in r]
    return {"precision": rows[-1]["precision"], "precision_reason": rows[-1]["precision_reason"]} if rows else {}


def run_demo(out_dir=None, overrides: list[str] | None = None, vae_overrides: list[str] | None = None,
             num_samples: int = 500, seed: int = 0, train_vae: bool = False) -> dict:
    import torch

    from ..eval import evaluate
    from ..eval.report import write_report
    from ..models.openvision3 import OpenVision3
    from ..train.trainer import build_stages

    out = Path(out_dir or default_out(seed))
    out.mkdir(parents=True, exist_ok=True)
    torch.set_flush_denormal(True)  # denormals made CPU steps up to 8x slower
    timings: dict = {}
    start = time.perf_counter()

    with _phase("1/4 the VAE", timings):
        vae_dir, vae_summary = _vae_phase(out, train_vae, vae_overrides)
    with _phase("2/4 train OpenVision 3", timings):
        model_dir, precision = _train_phase(out, seed, vae_dir, overrides)

    with _phase("3/4 evaluate on held-out data", timings):
        model = OpenVision3.from_pretrained(model_dir).eval()
        # held-out `test` split, captions in the style the model was trained on
        spec = f"shapes?captions={model.cfg.data.shapes.captions}"
        results = evaluate(model, spec, tasks=("recon", "zeroshot", "retrieval", "caption"),
                           num_samples=num_samples, out_dir=out, write_files=False)

    with _phase("4/4 report", timings):
        model.save_pretrained(out / "model")
        if (out / "train" / "losses.png").exists():
            shutil.copy(out / "train" / "losses.png", out / "losses.png")
        timings["total"] = round(time.perf_counter() - start, 1)
        results["seed"] = seed
        stages = [{"name": st.name, "resolution": st.resolution, "steps": st.steps, "batch_size": st.batch_size}
                  for st in build_stages(model.cfg)]
        results["training"] = {**precision, "steps": sum(st["steps"] for st in stages), "stages": stages}
        results["vae"] = {"source": str(vae_dir), "shipped": vae_dir == SHIPPED_VAE,
                          **{k: vae_summary.get(k) for k in ("val_psnr", "val_ssim", "steps", "train_seconds")}}
        results["timings_s"] = timings
        vae_line = ("the shipped demo VAE (assets/demo_vae)" if vae_dir == SHIPPED_VAE
                    else f"a VAE trained in this run ({vae_dir})")
        extra = ("## Demo floors\n\nThe project's targets for this demo on held-out data, beside what this "
                 f"run (seed {seed}) reached. " + _floor_table(results) +
                 f"\n\n## How it ran\n\n- {precision.get('precision', '?')} "
                 f"({precision.get('precision_reason', 'not recorded')})\n"
                 "- " + ", then ".join(f"{st['steps']} steps at {st['resolution']} px (batch {st['batch_size']})"
                                       for st in stages) + f", seed {seed}\n"
                 f"- VAE: {vae_line}; alone it reaches {vae_summary.get('val_psnr')} dB PSNR on held-out "
                 "images, and the full path (encoder, latent decoder, VAE decoder) cannot do better\n"
                 "\n## Phases (seconds)\n\n" + "\n".join(f"- {k}: {v}" for k, v in timings.items()) +
                 "\n\n![training losses](losses.png)\n")
        write_report(results, out, title=f"OpenVision 3 demo (nano, shapes, CPU, seed {seed})", extra_md=extra,
                     json_name="metrics.json", md_name="report.md")
    print(f"\ndemo done in {timings['total']} s: {out / 'report.md'}")
    print(f"look at the model in a page: ov3 serve --model {out / 'model'}")
    return results
