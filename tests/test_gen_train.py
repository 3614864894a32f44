"""`ov3 gen train|sample|eval` end to end on a tiny encoder: the token cache, exact resume, bad input."""
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from openvision3 import cli
from openvision3.generation.config import get_gen_config
from openvision3.generation.token_cache import CacheError, encoder_id, open_cache
from openvision3.generation.token_space import TokenSpace
from openvision3.generation.trainer import prepare_cache
from openvision3.train.logging import read_metrics

ROOT = Path(__file__).resolve().parents[1]
SPEC = "shapes?kind=single&label=color&n=48"


def gen_overrides(tmp_path, encoder, *more):
    return [f"encoder={encoder}", f"data.train={SPEC}", f"data.val={SPEC}", "data.resolution=32",
            f"cache.dir={tmp_path / 'cache'}", "cache.max_samples=24", "cache.batch_size=16",
            "dit.preset=nano", "dit.width=32", "dit.depth=1", "dit.heads=2", "dit.head_width=32",
            "dit.head_depth=1", "dit.head_heads=2", "train.batch_size=8", "train.steps=4", "train.lr=1e-3",
            "train.ema_decay=0.9", "train.checkpoint_every=2", "train.log_every=1", "train.precision=fp32",
            "flow.steps=2", "judge.steps=4", "judge.width=4", "judge.max_train=32", "eval.real_samples=16",
            "eval.samples_per_class=2", "eval.cfg_scales=[1.0, 2.0]", "eval.batch_size=8", *more]


def losses(run):
    return {r["step"]: r["loss"] for r in read_metrics(Path(run) / "metrics.jsonl") if "loss" in r}


def _cli(capsys, *argv):
    rc = cli.main(list(argv))
    out, err = capsys.readouterr()
    return rc, out, err


def test_cached_tokens_equal_fresh_encoder_output_and_refuse_another_encoder(tmp_path, encoder_dir):
    cfg = get_gen_config(None, gen_overrides(tmp_path, encoder_dir))
    space = TokenSpace.load(encoder_dir, "tokens")
    enc = encoder_id(encoder_dir)
    cache = prepare_cache(cfg, space, enc, is_main=True, progress=False)
    assert len(cache) == 24 and cache.tokens.shape == (24, 16, 32) and cache.num_classes == 8
    from openvision3.data import make_loader, open_data
    images = next(iter(make_loader(open_data(SPEC, split="train", resolution=32, train=False, infinite=False), 24)))
    x = images["image"]

    def fresh(batch):  # encoded in the cache's batches (cache.batch_size=16): same shapes, same kernels
        return torch.cat([space.encode(batch[:16]), space.encode(batch[16:])]).half()
    assert torch.equal(cache.tokens, fresh(x)) and torch.equal(cache.labels, images["label"])
    assert torch.equal(cache.tokens_flip, fresh(x.flip(-1)))
    # statistics of the generated view (LN tokens, flips included), stored with the cache
    view = space.decoder_view(torch.cat([cache.tokens, cache.tokens_flip])).reshape(-1, 32)
    assert torch.allclose(cache.stats.mean, view.mean(0), atol=1e-4)
    assert torch.allclose(cache.stats.std, view.std(0, unbiased=False), atol=1e-4)
    with pytest.raises(CacheError, match="was made by encoder"):
        open_cache(cache.path, "0123456789abcdef", 32, "tokens")
    with pytest.raises(CacheError, match="not vae at 32 px"):
        open_cache(cache.path, enc, 32, "vae")


def test_vae_space_patchify_round_trip(encoder_dir):
    space = TokenSpace.load(encoder_dir, "vae")
    z = torch.randn(2, space.model.vae.latent_channels, 8, 8)
    tokens = space.patchify(z)
    assert tokens.shape == (2, 16, space.token_dim) and torch.equal(space.unpatchify(tokens), z)
    # the same cut as the encoder's conv1: a patch's channels are (c, dy, dx) in conv weight order
    w = space.model.encoder.conv1.weight  # (D, C, p, p)
    assert torch.allclose(tokens @ w.reshape(w.shape[0], -1).T, space.model.encoder.conv1(z).flatten(2).transpose(1, 2),
                          atol=1e-5)


def test_train_sample_eval_end_to_end(tmp_path, encoder_dir, capsys):
    run = tmp_path / "run"
    rc, out, err = _cli(capsys, "gen", "train", "--config", str(ROOT / "configs" / "gen_tiny.yaml"), "--out", str(run),
                        "--no-progress", "--json", *gen_overrides(tmp_path, encoder_dir, "train.steps=6"))
    assert rc == 0, err
    summary = json.loads(out.strip().splitlines()[-1])
    assert summary["status"] == "finished" and summary["step"] == 6
    assert (run / "generator" / "generator.safetensors").is_file() and (run / "losses.png").is_file()
    rc, out, err = _cli(capsys, "gen", "sample", "--run", str(run), "--classes", "0,3", "--n", "2", "--steps", "2",
                        "--seed", "1", "--out", str(tmp_path / "s.png"), "--json")
    assert rc == 0, err and (tmp_path / "s.png").is_file()
    from openvision3.generation.generator import Generator
    gen = Generator.load(run)
    a, b = gen.sample_images([0, 3], seed=5, steps=2), gen.sample_images([0, 3], seed=5, steps=2)
    assert a.shape == (2, 3, 32, 32) and torch.equal(a, b)  # seeded
    rc, out, err = _cli(capsys, "gen", "eval", "--run", str(run), "--no-progress", "--json")
    assert rc == 0, err
    r = json.loads(out.strip().splitlines()[-1])
    for key in ("judge_top1", "judge_real_top1", "fd", "precision", "recall", "gfid", "cfg_scale", "steps", "seconds"):
        assert key in r, key
    assert r["gfid"] is None and "Inception" in r["gfid_status"] and 0 <= r["judge_top1"] <= 1
    assert [s["cfg_scale"] for s in r["sweep"]] == [1.0, 2.0]
    for f in ("gen_eval.json", "gen_eval.md", "samples.png", "guidance_sweep.png"):
        assert (run / f).is_file(), f
    # another guidance scale into its own directory leaves the run's report as it was
    before = (run / "gen_eval.json").read_text()
    rc, out, err = _cli(capsys, "gen", "eval", "--run", str(run), "--cfg-scale", "3", "--samples-per-class", "1",
                        "--steps", "2", "--no-sweep", "--out", str(tmp_path / "w3"), "--no-progress", "--json")
    assert rc == 0, err
    assert json.loads(out.strip().splitlines()[-1])["cfg_scale"] == 3.0
    assert json.loads((tmp_path / "w3" / "gen_eval.json").read_text())["cfg_scale"] == 3.0
    assert (tmp_path / "w3" / "samples.png").is_file() and (run / "gen_eval.json").read_text() == before


def test_kill9_then_resume_reproduces_every_loss(tmp_path, encoder_dir):
    over = gen_overrides(tmp_path, encoder_dir, "train.steps=60")
    tiny = str(ROOT / "configs" / "gen_tiny.yaml")
    # The reference runs through the same command as the killed run.
    subprocess.run([sys.executable, "-m", "openvision3.cli", "gen", "train", "--config", tiny, "--out",
                    str(tmp_path / "ref"), "--no-progress", *over], check=True, cwd=ROOT,
                   stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    run = tmp_path / "killed"
    proc = subprocess.Popen([sys.executable, "-m", "openvision3.cli", "gen", "train", "--config",
                             tiny, "--out", str(run), "--no-progress", *over],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, cwd=ROOT)
    deadline = time.time() + 900  # a loaded 2-core machine takes minutes to import torch in a subprocess
    while not (run / "checkpoints" / "step_2").exists() and proc.poll() is None and time.time() < deadline:
        time.sleep(0.02)
    exited = proc.poll()
    if exited is None:
        os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    assert (run / "checkpoints" / "step_2").exists(), f"no step_2 checkpoint (subprocess exit code {exited})"
    assert not (run / "generator").exists()  # it really died before the end
    subprocess.run([sys.executable, "-m", "openvision3.cli", "gen", "train", "--config", tiny, "--out", str(run),
                    "--resume", "auto", "--no-progress", *over], check=True, cwd=ROOT,
                   stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    assert losses(run) == losses(tmp_path / "ref") and len(losses(run)) == 60  # exactly, step by step


def test_bad_inputs(tmp_path, encoder_dir, capsys):
    tiny = str(ROOT / "configs" / "gen_tiny.yaml")

    def train(out, *over):
        return _cli(capsys, "gen", "train", "--config", tiny, "--out", str(out), "--no-progress",
                    *gen_overrides(tmp_path, encoder_dir, *over))

    rc, _, err = train(tmp_path / "a", f"encoder={tmp_path / 'nope'}")
    assert rc == 2 and "does not exist" in err and len(err.strip().splitlines()) == 1
    rc, _, err = train(tmp_path / "b", "data.resolution=16")
    assert rc == 2 and "trained at 32 px" in err
    one = tmp_path / "one_class" / "cats"
    one.mkdir(parents=True)
    rc, _, err = train(tmp_path / "c", f"data.train=imagefolder:{one.parent}")
    assert rc == 2 and "at least two classes" in err
    (tmp_path / "one_class" / "dogs").mkdir()
    rc, _, err = train(tmp_path / "c", f"data.train=imagefolder:{one.parent}")
    assert rc == 2 and "no image files" in err
    assert not (tmp_path / "a").exists() and not (tmp_path / "b").exists() and not (tmp_path / "c").exists()
    existing = tmp_path / "e"
    existing.mkdir()
    (existing / "metrics.jsonl").write_text("precious\n")
    rc, _, err = train(existing)
    assert rc == 2 and "--resume auto" in err
    assert (existing / "metrics.jsonl").read_text() == "precious\n" and len(list(existing.iterdir())) == 1
    rc, _, err = _cli(capsys, "gen", "sample", "--run", str(existing), "--classes", "0", "--out", str(tmp_path / "x.png"))
    assert rc == 2 and "no checkpoint" in err and not (tmp_path / "x.png").exists()
    busy = tmp_path / "busy"  # a run directory another live process trains into: refused, one line
    from openvision3.train.run_lock import RunLock
    lock = RunLock(busy).acquire()
    try:
        rc, _, err = _cli(capsys, "gen", "train", "--config", tiny, "--out", str(busy), "--resume", "auto",
                          "--no-progress", *gen_overrides(tmp_path, encoder_dir))
    finally:
        lock.release()
    assert rc == 2 and "in use" in err and len(err.strip().splitlines()) == 1
    assert not (busy / "metrics.jsonl").exists()
    run = tmp_path / "ok"
    assert train(run, "train.steps=2")[0] == 0
    rc, _, err = _cli(capsys, "gen", "sample", "--run", str(run), "--classes", "0,8", "--out", str(tmp_path / "y.png"))
    assert rc == 2 and "out of range" in err and "0..7" in err and not (tmp_path / "y.png").exists()


def test_judge_accuracy_is_measured_as_it_judges(tmp_path, encoder_dir):
    """The judge's own held-out accuracy comes from the network in the mode it judges in (eval:
    BatchNorm on running statistics), and the cached judge predicts exactly the same."""
    from openvision3.generation.judge import get_judge, load_labelled
    cfg = get_gen_config(None, gen_overrides(tmp_path, encoder_dir, "judge.steps=6"))
    net, info = get_judge(cfg, "cpu", progress=False)
    assert not net.training
    xv, yv, _ = load_labelled(cfg.data.val, cfg.val_split, cfg.data.resolution, cfg.eval.real_samples, cfg.data)
    with torch.no_grad():
        logits = net.embed(xv)[1]
    assert info["judge_real_top1"] == float((logits.argmax(1) == yv).float().mean())
    cached, cached_info = get_judge(cfg, "cpu", progress=False)
    with torch.no_grad():
        assert torch.equal(cached.embed(xv)[1], logits) and cached_info == info


def test_compare_runs_three_arms_per_seed_writes_table_and_figure_and_reuses_finished_runs(tmp_path, encoder_dir):
    from openvision3.recipes.gen_compare import run_compare
    over = gen_overrides(tmp_path, encoder_dir, "train.steps=2", "eval.samples_per_class=1", "compare.seeds=[0, 1]",
                         f"compare.und_encoder={encoder_dir}")  # (b)'s encoder given: no encoder training here
    out = tmp_path / "cmp"
    r = run_compare(str(ROOT / "configs" / "gen_tiny.yaml"), out, over, progress=False)
    assert list(r["summary"]) == ["joint", "und_only", "vae"] and r["seeds"] == [0, 1]
    for arm, s in r["summary"].items():
        assert len(s["per_seed"]["judge_top1"]) == 2, arm
        assert s["judge_top1"]["mean"] == pytest.approx(sum(s["per_seed"]["judge_top1"]) / 2)
        for seed in (0, 1):
            assert json.loads((out / f"seed_{seed}" / arm / "gen_eval.json").read_text())["seed"] == seed
    # the VAE arm generates patchified latents, the token arms unified tokens
    assert json.loads((out / "seed_0" / "vae" / "gen_eval.json").read_text())["space"] == "vae"
    assert json.loads((out / "seed_0" / "joint" / "gen_eval.json").read_text())["space"] == "tokens"
    md = (out / "compare.md").read_text()
    assert "(a) joint OV3 tokens" in md and "(c) VAE latents" in md and (out / "compare.png").is_file()
    # a second call reads the finished runs instead of training them again
    stamp = (out / "seed_1" / "vae" / "gen_eval.json").stat().st_mtime_ns
    again = run_compare(str(ROOT / "configs" / "gen_tiny.yaml"), out, over, progress=False)
    assert (out / "seed_1" / "vae" / "gen_eval.json").stat().st_mtime_ns == stamp
    assert again["summary"]["vae"]["per_seed"] == r["summary"]["vae"]["per_seed"]
