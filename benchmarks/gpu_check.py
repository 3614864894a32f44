"""The GPU path on one accelerator, in one prepared run (issue 19): bench, optimized vs naive,
the largest batches, a compiled bf16 train, FSDP2, kill -9 and resume, eval and reconstruct.

    python benchmarks/gpu_check.py --out runs/gpu_check            # one GPU, <= ~6 min
    python benchmarks/gpu_check.py --out /tmp/smoke --cpu-smoke    # the CPU rehearsal (tests/test_gpu_check.py)

Every check runs the real `ov3` commands (subprocesses, `--json` last line) or the bench library,
records what it found and goes on when one fails; the end writes OUT/gpu_check.json and
OUT/gpu_check.md. Hub weights are never fetched: the VAE is an untrained inline VAE of the FLUX
VAE's exact shape (weights do not change the cost). `--cpu-smoke` runs the same sequence with
the tiny config on CPU (fp32, no compile, gloo for FSDP2), each check cut to the fewest steps
that still run its path, so that the test suite runs it and the script cannot rot.
"""
from __future__ import annotations

import argparse
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
FLUX_VAE = ["model.vae.source=inline", "model.vae.block_out_channels=[128,256,512,512]",
            "model.vae.layers_per_block=2", "model.vae.latent_channels=16", "model.vae.norm_num_groups=32"]


class Plan:
    """What each check runs: the GPU plan, or the tiny CPU rehearsal of the same sequence."""

    def __init__(self, smoke: bool):
        self.smoke = smoke
        self.device = "cpu" if smoke else "cuda"
        if smoke:
            self.bench = [["--tiny", "--resolution", "16", "--batch", "4", "--repeats", "1"]]
            self.compare = ["--tiny", "--repeats", "1"]
            self.naive = "naive:train.precision=fp32,train.adamw=foreach"
            self.optimized = "optimized:train.precision=auto,train.adamw=fused,cached"
            self.batch_search = [("nano", 16, False), ("nano", 16, True)]
            self.batch_start, self.batch_limit = 2, 4
            self.train_config = str(ROOT / "configs" / "tiny.yaml")
            self.train = ["train.steps=3", "train.batch_size=4", "train.checkpoint_every=1", "train.log_every=1",
                          "train.eval_every=0", "train.warmup_steps=1", "data.resolution=16", "model.image_size=16",
                          "train.precision=fp32", "data.val=shapes?n=8"]
            self.kill_after_step = 1
            self.eval_samples = 8
            self.timeouts = {"bench": 900, "train": 900, "eval": 900}  # generous: shared CPUs
        else:
            self.bench = [["--preset", "b2", "--resolution", str(r), "--batch", "64", "--precision", "bf16"]
                          for r in (128, 256)]
            self.compare = ["--preset", "b2", "--resolution", "256", "--batch", "32", "--repeats", "5"]
            self.naive = "naive:train.precision=fp32,train.adamw=foreach,train.compile=false"
            self.optimized = "optimized:train.precision=bf16,train.adamw=fused,train.compile=true,cached"
            self.batch_search = [("b2", 256, False), ("b2", 256, True), ("l2", 256, False), ("l2", 256, True)]
            self.batch_start, self.batch_limit = 32, 4096
            self.train_config = "ov3_b2_stage1_128"
            self.train = ["train.steps=60", "train.batch_size=64", "train.checkpoint_every=30", "train.log_every=10",
                          "train.eval_every=0", "train.warmup_steps=10", "train.lr=1e-4", "train.lr_scale_by_batch=false",
                          "train.precision=bf16", "train.adamw=fused", "train.compile=true", "data.num_workers=4",
                          "data.val=shapes", *FLUX_VAE]
            self.kill_after_step = 30
            self.eval_samples = 200
            self.timeouts = {"bench": 300, "train": 420, "eval": 300}


def ov3(args: list[str], timeout: int, env: dict | None = None, torchrun: bool = False) -> dict:
    """Run ``ov3 ARGS --json`` (or under a 1-process torchrun); the last stdout line as JSON."""
    base = ([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "1", "-m",
             "openvision3.cli"] if torchrun else [sys.executable, "-m", "openvision3.cli"])
    t0 = time.perf_counter()
    try:
        p = subprocess.run(base + args + (["--json"] if "--json" not in args else []), capture_output=True,
                           text=True, timeout=timeout, cwd=ROOT, env={**os.environ, **(env or {})})
    except subprocess.TimeoutExpired:
        return {"ok": False, "error": f"timed out after {timeout} s", "seconds": timeout}
    out = {"ok": p.returncode == 0, "rc": p.returncode, "seconds": round(time.perf_counter() - t0, 1)}
    lines = [ln for ln in p.stdout.strip().splitlines() if ln.startswith("{")]
    if p.returncode == 0 and lines:
        out["result"] = json.loads(lines[-1])
    else:
        out["error"] = "\n".join((p.stderr or p.stdout).strip().splitlines()[-6:])
    return out


def losses_of(run: Path) -> dict:
    rows = [json.loads(ln) for ln in (run / "metrics.jsonl").read_text().splitlines() if ln.strip()]
    return {r["step"]: r for r in rows if "loss" in r}


def check_bench(plan: Plan, out: Path) -> dict:
    res = {}
    for i, extra in enumerate(plan.bench):
        r = ov3(["bench", "--device", plan.device, "--no-progress", "--out", str(out / f"bench_{i}"), *extra],
                plan.timeouts["bench"])
        if r.get("result"):
            b = r["result"]
            r["summary"] = {k: b.get(k) for k in ("resolution", "batch", "precision", "step_s", "images_per_s",
                                                   "step_flops", "achieved_tflops", "mfu", "peak_mem_gb",
                                                   "encoder_vs_timm", "cache_speedup", "cache_bound",
                                                   "pixel_subbatch_speedup")}
            r["summary"]["shares"] = {k: round(c["share_of_step"], 3) for k, c in b["components"].items()
                                      if "part_of" not in c}
            r["summary"]["shares"]["other"] = round(b["other_share"], 3)
            r["summary"]["shares_normalised"] = b["shares_normalised"]
            r["summary"]["activation_memory_gib"] = b.get("activation_memory", {}).get("per_image_gib")
            r.pop("result")
        res[f"{'x'.join(extra[extra.index('--resolution') + 1:extra.index('--resolution') + 2])}px_{i}"] = r
    return res


def check_optimized_vs_naive(plan: Plan) -> dict:
    r = ov3(["bench", "--device", plan.device, "--no-progress", *plan.compare, "--compare", plan.naive,
             "--compare", plan.optimized], plan.timeouts["bench"])
    if r.get("result"):
        b = r.pop("result")
        r.update(s_per_step=b["s_per_step"], optimized_over_naive=b["ratio_vs_first"]["optimized"],
                 first_step_loss=b["first_step_loss"])
    return r


def check_batch_search(plan: Plan) -> dict:
    """The largest batch (doubling) whose training step fits, per (preset, px, grad checkpointing)."""
    import torch

    from openvision3.bench.options import BenchOptions
    from openvision3.bench.step import StepRunner, build_config
    device = torch.device(plan.device)
    out = {}
    for preset, res, ckpt in plan.batch_search:
        best, b, err = None, plan.batch_start, None
        while b <= plan.batch_limit:
            over = [f"train.grad_checkpointing={str(ckpt).lower()}"] + ([] if plan.smoke else ["train.precision=bf16"])
            opts = BenchOptions(preset=preset, resolution=res, batch=b, device=plan.device, overrides=over,
                                tiny=plan.smoke, progress=False)
            try:
                cfg = build_config(opts, device)
                images = torch.rand(b, 3, res, res, device=device) * 2 - 1
                runner = StepRunner(cfg, device, torch.bfloat16 if device.type == "cuda" else None,
                                    images=images, captions=["a red circle left of a blue square"] * b)
                if ckpt:
                    from openvision3.train.distributed import enable_grad_checkpointing
                    enable_grad_checkpointing(runner.model)
                for _ in range(2):
                    runner.step(cached=False)
                peak = torch.cuda.max_memory_allocated(device) / 2**30 if device.type == "cuda" else None
                best = {"batch": b, "peak_mem_gb": peak}
                b *= 2
            except torch.OutOfMemoryError:
                err = f"out of memory at batch {b}"
                break
            finally:
                runner = None
                if device.type == "cuda":
                    torch.cuda.empty_cache()
                    torch.cuda.reset_peak_memory_stats(device)
        out[f"{preset}_{res}px{'_ckpt' if ckpt else ''}"] = {"largest": best, "stopped": err or f"limit {plan.batch_limit}"}
    return out


def check_train_resume_fsdp(plan: Plan, out: Path) -> dict:
    res = {}
    ref = out / "train_ref"
    r = ov3(["train", "--config", plan.train_config, "--out", str(ref), "--overwrite", *plan.train],
            plan.timeouts["train"])
    res["train"] = r
    if r["ok"]:
        rows = losses_of(ref)
        first, last = rows[min(rows)], rows[max(rows)]
        res["train"].pop("result", None)
        res["train"].update(loss_first=first["loss"], loss_last=last["loss"], loss_falls=last["loss"] < first["loss"],
                            bad_steps=last.get("bad_steps"), samples_per_s=last.get("samples_per_s"),
                            peak_mem_gb=last.get("peak_mem_gb"), has_keys=all(k in last for k in
                                                                              ("peak_mem_gb", "samples_per_s")))
    # kill -9 once the checkpoint at kill_after_step exists, then --resume auto
    killed = out / "train_killed"
    cmd = [sys.executable, "-m", "openvision3.cli", "train", "--config", plan.train_config, "--out", str(killed),
           "--overwrite", *plan.train]
    proc = subprocess.Popen(cmd, cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.time() + plan.timeouts["train"]
    ck = killed / "checkpoints" / f"step_{plan.kill_after_step}"
    while not ck.exists() and proc.poll() is None and time.time() < deadline:
        time.sleep(0.2)
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    r2 = ov3(["train", "--config", plan.train_config, "--out", str(killed), "--resume", "auto", *plan.train],
             plan.timeouts["train"])
    res["resume"] = {"killed_after_checkpoint": ck.exists(), **{k: v for k, v in r2.items() if k != "result"}}
    if r2["ok"] and r["ok"]:
        a, b = losses_of(ref), losses_of(killed)
        later = [s for s in a if s > plan.kill_after_step and s in b]
        diffs = [abs(a[s]["loss"] - b[s]["loss"]) / max(1e-12, abs(a[s]["loss"])) for s in later]
        res["resume"].update(steps_compared=later, max_rel_loss_diff=max(diffs) if diffs else None,
                             exact=all(d == 0 for d in diffs))
    fs = out / "train_fsdp"
    r3 = ov3(["train", "--config", plan.train_config, "--out", str(fs), "--overwrite", *plan.train, "train.fsdp=true"],
             plan.timeouts["train"], torchrun=True)
    res["fsdp"] = {k: v for k, v in r3.items() if k != "result"}
    if r3["ok"] and r["ok"]:
        a, b = losses_of(ref), losses_of(fs)
        common = sorted(set(a) & set(b))
        res["fsdp"].update(max_rel_loss_diff_vs_single=max(abs(a[s]["loss"] - b[s]["loss"]) / abs(a[s]["loss"])
                                                           for s in common) if common else None,
                           model_exported=(fs / "model" / "model.safetensors").exists())
    return res


def check_eval_reconstruct(plan: Plan, out: Path) -> dict:
    model = out / "train_ref" / "model"
    if not (model / "model.safetensors").exists():
        return {"skipped": "no trained model (the train check failed)"}
    res = {"eval": ov3(["eval", "--model", str(model), "--data", "shapes", "--device", plan.device, "--no-progress",
                        "--tasks", "recon,zeroshot,retrieval", "--num-samples", str(plan.eval_samples), "--lpips", "none",
                        "--out", str(out / "eval")], plan.timeouts["eval"])}
    if res["eval"].get("result"):
        res["eval"]["result"] = {k: v for k, v in res["eval"]["result"].items() if k in ("recon", "zeroshot", "retrieval")}
    from PIL import Image
    imgs = []
    for i, color in enumerate(((200, 30, 30), (30, 200, 30))):
        p = out / f"probe_{i}.png"
        Image.new("RGB", (64, 64), color).save(p)
        imgs.append(str(p))
    r = ov3(["reconstruct", "--model", str(model), "--device", plan.device, "--out", str(out / "recon"), *imgs],
            plan.timeouts["eval"])
    if r.get("result"):
        r["psnr_mean"] = r.pop("result").get("psnr_mean")
    res["reconstruct"] = r
    return res


def environment(plan: Plan) -> dict:
    import torch
    env = {"torch": torch.__version__, "device": plan.device, "cpu_smoke": plan.smoke,
           "deterministic_algorithms": torch.are_deterministic_algorithms_enabled()}
    if torch.cuda.is_available():
        env["gpu"] = torch.cuda.get_device_name(0)
        env["cuda"] = torch.version.cuda
    return env


def write_markdown(report: dict, path: Path) -> None:
    lines = [f"# gpu_check ({'CPU smoke' if report['env']['cpu_smoke'] else report['env'].get('gpu', 'GPU')})", "",
             f"torch {report['env']['torch']}, total {report['seconds']:.0f} s", ""]
    for name, section in report["checks"].items():
        lines += [f"## {name}", "", "```json", json.dumps(section, indent=1, default=str)[:4000], "```", ""]
    lines += ["## failures", ""] + ([f"- {f}" for f in report["failures"]] or ["none"])
    path.write_text("\n".join(lines) + "\n")


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", required=True)
    ap.add_argument("--cpu-smoke", action="store_true", help="the tiny CPU rehearsal (what the test suite runs)")
    ap.add_argument("--only", default=None, help="comma list of checks: bench,compare,batch,train,eval")
    args = ap.parse_args(argv)
    plan = Plan(args.cpu_smoke)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    if not plan.smoke:
        import torch
        if not torch.cuda.is_available():
            print("gpu_check: no CUDA device here; use --cpu-smoke for the CPU rehearsal", file=sys.stderr)
            return 2
    only = set(args.only.split(",")) if args.only else {"bench", "compare", "batch", "train", "eval"}
    t0 = time.perf_counter()
    checks, failures = {}, []
    steps = [("bench", lambda: check_bench(plan, out)), ("compare", lambda: check_optimized_vs_naive(plan)),
             ("batch", lambda: check_batch_search(plan)), ("train", lambda: check_train_resume_fsdp(plan, out)),
             ("eval", lambda: check_eval_reconstruct(plan, out))]
    for name, fn in steps:
        if name not in only:
            continue
        t = time.perf_counter()
        try:
            checks[name] = fn()
        except Exception as e:  # noqa: BLE001 - a failed check is recorded, the others still run
            checks[name] = {"ok": False, "error": f"{type(e).__name__}: {e}"}
        checks[name]["check_seconds"] = round(time.perf_counter() - t, 1)
        print(f"gpu_check: {name} done in {checks[name]['check_seconds']} s", file=sys.stderr, flush=True)

    def walk(prefix, node):
        if isinstance(node, dict):
            if node.get("ok") is False:
                failures.append(f"{prefix}: {str(node.get('error', ''))[:300]}")
            for k, v in node.items():
                walk(f"{prefix}.{k}", v)
    walk("checks", checks)
    report = {"env": environment(plan), "seconds": time.perf_counter() - t0, "checks": checks, "failures": failures}
    (out / "gpu_check.json").write_text(json.dumps(report, indent=1, default=str))
    write_markdown(report, out / "gpu_check.md")
    print(json.dumps({"out": str(out), "failures": failures, "seconds": report["seconds"]}))
    return 0 if not failures else 1


if __name__ == "__main__":
    sys.exit(main())
