"""The long version of tests/chaos: many kill -9 trials, disk-full trials, fuzzed data and hostile
files, with the figures docs/reliability.md quotes. Prints a Markdown table and, last, one JSON line.

    python benchmarks/soak.py                       # 50 train + 10 train-vae kills, ~15-30 min on 2 cores
    python benchmarks/soak.py --kills 200 --exec    # the installed `ov3` script, a fresh interpreter per launch

Kill trials: chains of runs on configs/tiny.yaml (tests/chaos overrides). Each launch of
``ov3 train ... --resume auto`` is killed with SIGKILL at a random instant of its training (after
the metrics row of a random step still ahead of it, plus up to 0.2 s), or (every third one)
between two files of a checkpoint write; a launch that ends before its kill is not counted; then every ``step_N`` on disk must load, and
every metrics row present must equal the uninterrupted reference run's row for that step. A
*verified resume* is a launch that started from a checkpoint (step > 0) and wrote at least one
row before it died, all equal to the reference. Each chain ends with one unkilled launch; its
whole metrics file must equal the reference's.
"""
from __future__ import annotations

import argparse
import json
import random
import shutil
import sys
import tempfile
import time
from collections import Counter
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests" / "chaos"))
import bad_data  # noqa: E402
import faults  # noqa: E402
from faults import FAST, TINY, VAE_FAST  # noqa: E402

TRAIN_OVER = ["train.steps=12", "train.checkpoint_every=2", "train.keep_last=2"]
VAE_OVER = ["steps=12", "checkpoint_every=2", "keep_last=2"]
TOTAL_STEPS = {"train": 12, "train-vae": 12}


def newest_ok(run: Path, vae: bool) -> int:
    states = faults.checkpoint_states(run, vae=vae)
    steps = [int(k[5:]) for k, v in states.items() if v == "ok"]
    return max(steps, default=0)


def kill_chains(launcher, work: Path, trainer: str, kills: int, per_chain: int, rng, exec_mode: bool) -> dict:
    if kills <= 0:
        return {"trainer": trainer, "kills": 0}
    vae = trainer == "train-vae"
    yaml = work / "vae.yaml"
    yaml.write_text("data: {train: shapes, val: shapes}\n")
    argv = (["train-vae", "--config", str(yaml), *VAE_FAST, *VAE_OVER] if vae
            else ["train", "--config", TINY, *FAST, *TRAIN_OVER])
    ref_dir = work / f"{trainer}_ref"
    t0 = time.perf_counter()
    proc = launcher.start([*argv, "--out", str(ref_dir)], work / f"{trainer}_ref.txt")
    assert proc.wait() == 0, (work / f"{trainer}_ref.txt").read_text()[-2000:]
    span = ref_seconds = time.perf_counter() - t0
    ref = faults.loss_rows(ref_dir)
    stats = Counter()
    bad = []
    chain = 0
    while stats["kills"] < kills:
        run = work / f"{trainer}_chain_{chain}"
        for k in range(per_chain):
            if stats["kills"] >= kills:
                break
            start_step = newest_ok(run, vae)
            if start_step >= TOTAL_STEPS[trainer]:
                break  # the run is complete: a launch now would only be a no-op, not a trial
            in_write = (stats["kills"] % 3 == 1)
            marks = work / f"marks_{trainer}_{chain}_{k}"
            marks.mkdir()
            log = work / f"log_{trainer}_{chain}_{k}.txt"
            hook = in_write and not exec_mode
            p = launcher.start([*argv, "--out", str(run), "--resume", "auto"], log,
                               slow_write_s=0.25 if hook else 0.0, marker_dir=marks)
            if hook:
                faults.wait_for(lambda: any(marks.iterdir()), p, timeout=3 * span + 60)
                time.sleep(rng.uniform(0, 0.6))
            elif in_write:  # the real script has no hook: catch a write by watching for its temp dir
                faults.wait_for(lambda: any((run / "checkpoints").glob(".tmp_step_*")), p,
                                timeout=3 * span + 60, interval=0.002)
            else:  # a random instant of training: once a random step's row is written, within a step
                target = rng.randint(start_step + 1, max(start_step + 1, TOTAL_STEPS[trainer] - 1))
                faults.wait_for(lambda: max(faults.loss_rows(run), default=0) >= target, p,
                                timeout=3 * span + 60, interval=0.005)
                time.sleep(rng.uniform(0.0, 0.2))
            partial = any((run / "checkpoints").glob(".tmp_step_*")) if (run / "checkpoints").exists() else False
            code = p.kill9()
            stats["launches"] += 1
            if code == 0:  # it ended before the kill came: not a kill trial
                stats["finished_before_the_kill"] += 1
                continue
            stats["kills"] += 1
            stats["killed_in_a_checkpoint_write"] += partial
            states = faults.checkpoint_states(run, vae=vae)
            stats["checkpoints_all_complete_after_kill"] += all(v == "ok" for v in states.values())
            rows = faults.loss_rows(run)
            # every value present equals the reference's; a row not yet written is not a mismatch (a
            # kill between step N's training row and its validation row leaves only the first)
            mismatch = [s for s, r in rows.items() if any(ref.get(s, {}).get(k) != v for k, v in r.items())]
            stats["rows_all_equal_reference_after_kill"] += not mismatch
            mine = [s for s in rows if s > start_step]
            if start_step > 0:
                stats["resumes_from_a_checkpoint"] += 1
                if mine and not any(s in mismatch for s in mine):
                    stats["verified_resumes"] += 1
            if mismatch or not all(v == "ok" for v in states.values()):
                bad.append({"run": str(run), "trial": k, "mismatch_steps": mismatch[:5], "states": states})
            (work / f"progress_{trainer}.json").write_text(json.dumps(dict(stats)))
            print(f"{trainer} kill {stats['kills']}: from step {start_step}, in write {partial}, exit {code}, "
                  f"checkpoints {sorted(states)}, rows ok {not mismatch}", file=sys.stderr, flush=True)
        log = work / f"log_{trainer}_{chain}_final.txt"
        code = launcher.start([*argv, "--out", str(run), "--resume", "auto"], log).wait()
        stats["chains"] += 1
        stats["chains_finished"] += code == 0
        exact = faults.loss_rows(run) == ref
        stats["chains_exact"] += exact
        (work / f"progress_{trainer}.json").write_text(json.dumps(dict(stats)))
        print(f"{trainer} chain {chain}: finished {code == 0}, every loss equal {exact}", file=sys.stderr, flush=True)
        if not exact:
            bad.append({"run": str(run), "final": True, "exit": code})
        chain += 1
    keys = ("launches", "kills", "finished_before_the_kill", "killed_in_a_checkpoint_write",
            "checkpoints_all_complete_after_kill", "rows_all_equal_reference_after_kill",
            "resumes_from_a_checkpoint", "verified_resumes", "chains", "chains_finished", "chains_exact")
    return {"trainer": trainer, "reference_seconds": round(ref_seconds, 1), **{k: stats[k] for k in keys},
            "failures": bad[:10]}


def disk_full_trials(launcher, work: Path, n: int, rng) -> dict:
    """A run resumes its step_4 and writes step_6 under a random file-size limit (the limit falls
    inside a different checkpoint file each time)."""
    if n <= 0:
        return {"trials": 0}
    base = work / "disk_base"
    assert launcher.start(["train", "--config", TINY, *FAST, "train.steps=4", "train.checkpoint_every=2",
                           "--out", str(base)], work / "disk_base.txt").wait() == 0
    sizes = sorted(p.stat().st_size for p in (base / "checkpoints" / "step_4").iterdir())
    stats = Counter()
    for i in range(n):
        run = work / f"disk_{i}"
        shutil.copytree(base, run)
        limit = rng.randint(64 * 1024, sizes[-1] - 1)
        log = work / f"disk_{i}.txt"
        code = launcher.start(["train", "--config", TINY, *FAST, "train.steps=6", "train.checkpoint_every=2",
                               "--out", str(run), "--resume", "auto"], log, fsize_limit=limit).wait()
        text = log.read_text()
        errors = [ln for ln in text.splitlines() if ": error: " in ln]
        stats["trials"] += 1
        stats["exit_2_one_line"] += code == 2 and len(errors) == 1 and "Traceback" not in text
        stats["message_names_dir_and_space"] += bool(errors) and str(run / "checkpoints") in errors[0] and "needs about" in errors[0]
        stats["no_partial_checkpoint"] += sorted(p.name for p in (run / "checkpoints").iterdir()) == ["step_2", "step_4"]
        stats["previous_checkpoint_loads"] += faults.checkpoint_states(run).get("step_4") == "ok"
    return dict(stats)


def fuzz_trial(work: Path, per_kind: int) -> dict:
    from openvision3.data import make_loader, open_data
    samples = bad_data.make_samples(per_kind, seed=1)
    folder = bad_data.write_folder(work / "fuzz_folder", samples)
    shards, extra = bad_data.write_shards(work / "fuzz_shards", samples, seed=1)
    out = {}
    for scheme, spec, items in (("folder", f"folder:{folder}", samples),
                                ("wds", f"wds:{shards}", [s for s in samples if s["kind"] != "animated_gif"] + extra)):
        loader = make_loader(open_data(spec, resolution=None, train=False), batch_size=64)
        keys = {k for b in loader for k in b["key"]}

        def key(s):  # a folder's sample keys are file names
            return f"{s['key']}.{s['ext']}" if scheme == "folder" else s["key"]
        by_kind = {}
        for s in items:
            row = by_kind.setdefault(s["kind"], {"samples": 0, "expected": Counter(), "read": 0})
            row["samples"] += 1
            row["expected"][s["outcome"]] += 1
            row["read"] += key(s) in keys
        expected = Counter(s["outcome"] for s in items if s["outcome"] != "ok")
        out[scheme] = {"samples": len(items), "read": len(keys), "skipped_by_reason": dict(loader.skipped_total),
                       "expected_skips": dict(expected), "counts_match": Counter(loader.skipped_total) == expected,
                       "read_match": len(keys) == sum(s["outcome"] == "ok" for s in items), "by_kind": by_kind}
    return out


def hostile_trial(work: Path) -> dict:
    import torch

    from openvision3.config import ConfigError, read_yaml
    from openvision3.interop.official import CheckpointError as OfficialError
    from openvision3.interop.official import load_official_encoder
    from openvision3.train import checkpoint as ck
    marker = work / "PAYLOAD_RAN"
    files = {}
    for name in ("optimizer.pt", "trainer_state.pt", "official.pt", "pytorch_model.bin"):
        p = work / f"hostile_{name}"
        torch.save({"state": faults.CodeRunningPickle(marker)}, p)
        try:
            (load_official_encoder(str(p)) if name in ("official.pt", "pytorch_model.bin") else ck.load_plain(p))
            files[name] = "LOADED"
        except (ck.CheckpointError, OfficialError) as e:
            files[name] = "refused" if "refused" in str(e) and "\n" not in str(e) else f"other: {e}"
    y = work / "hostile.yaml"
    y.write_text(faults.python_tag_yaml(marker))
    try:
        read_yaml(y)
        files["config.yaml (python tag)"] = "LOADED"
    except ConfigError as e:
        files["config.yaml (python tag)"] = "refused" if "refused" in str(e) else f"other: {e}"
    return {"files": files, "refused": sum(v == "refused" for v in files.values()), "payload_ran": marker.exists()}


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--kills", type=int, default=50, help="kill -9 trials of ov3 train")
    ap.add_argument("--vae-kills", type=int, default=10, help="kill -9 trials of ov3 train-vae")
    ap.add_argument("--per-chain", type=int, default=5, help="kills per run before it is let finish")
    ap.add_argument("--disk-trials", type=int, default=5)
    ap.add_argument("--fuzz-per-kind", type=int, default=25)
    ap.add_argument("--exec", action="store_true", help="launch the installed `ov3` script (no write hook)")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--work", default=None, help="keep the run directories here (default: a temp dir)")
    args = ap.parse_args(argv)
    rng = random.Random(args.seed)
    work = Path(args.work or tempfile.mkdtemp(prefix="ov3_soak_"))
    work.mkdir(parents=True, exist_ok=True)
    launcher = faults.Launcher(exec_script=args.exec)
    hook_launcher = launcher if not args.exec else faults.Launcher()
    t0 = time.time()
    res = {"seed": args.seed, "launcher": "ov3 script" if args.exec else "fork server"}
    stages = [("fuzz", lambda: fuzz_trial(work, args.fuzz_per_kind)), ("hostile", lambda: hostile_trial(work)),
              ("kill_train", lambda: kill_chains(launcher, work, "train", args.kills, args.per_chain, rng, args.exec)),
              ("kill_train_vae", lambda: kill_chains(launcher, work, "train-vae", args.vae_kills, args.per_chain,
                                                     rng, args.exec)),
              ("disk_full", lambda: disk_full_trials(hook_launcher, work, args.disk_trials, rng))]
    for name, run_stage in stages:
        res[name] = run_stage()
        (work / "soak_partial.json").write_text(json.dumps(res, default=str))  # kept if a later stage dies
        print(f"{name} done ({time.time() - t0:.0f} s)", file=sys.stderr, flush=True)
    res["seconds"] = round(time.time() - t0)
    print_table(res)
    print(json.dumps(res, default=str))
    if not args.work:
        shutil.rmtree(work, ignore_errors=True)


def print_table(r: dict) -> None:
    print("| fault | trials | outcome |\n|---|---|---|")
    for key in ("kill_train", "kill_train_vae"):
        k = r[key]
        if not k.get("kills"):
            continue
        print(f"| kill -9 `ov3 {k['trainer']}` | {k['kills']} ({k['killed_in_a_checkpoint_write']} inside a "
              f"checkpoint write; {k['finished_before_the_kill']} more launches finished before their kill and are not counted) | every step_N complete after "
              f"{k['checkpoints_all_complete_after_kill']}/{k['kills']} kills; rows equal to the reference after "
              f"{k['rows_all_equal_reference_after_kill']}/{k['kills']}; {k['verified_resumes']}/"
              f"{k['resumes_from_a_checkpoint']} resumes verified; {k['chains_exact']}/{k['chains']} runs "
              f"finished with every loss equal |")
    d = r["disk_full"]
    if d.get("trials"):
        print(f"| file-size limit during a checkpoint write | {d['trials']} | exit 2 + one line {d['exit_2_one_line']}; "
              f"names dir and space {d['message_names_dir_and_space']}; no partial {d['no_partial_checkpoint']}; "
              f"previous loads {d['previous_checkpoint_loads']} |")
    for scheme, f in r["fuzz"].items():
        print(f"| fuzzed `{scheme}:` | {f['samples']} samples | {f['read']} read, skipped {f['skipped_by_reason']} "
              f"(as expected: {f['counts_match'] and f['read_match']}) |")
    h = r["hostile"]
    print(f"| hostile files | {len(h['files'])} | {h['refused']} refused; payload ran: {h['payload_ran']} |")
    print("\nfuzzed samples by kind (folder / wds): kind, samples, expected, read")
    kinds = sorted(set(r["fuzz"]["folder"]["by_kind"]) | set(r["fuzz"]["wds"]["by_kind"]))
    for kind in kinds:
        row = [r["fuzz"][s]["by_kind"].get(kind) for s in ("folder", "wds")]
        print(f"  {kind:26s} " + " | ".join(
            f"{x['samples']:3d} {', '.join(f'{k} {v}' for k, v in sorted(x['expected'].items())):28s} read {x['read']:3d}"
            if x else "-" for x in row))


if __name__ == "__main__":
    main()
