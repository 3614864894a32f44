"""The synergy ablation: the detached-probe loss option, the recipe's arms, verdicts and command."""
import json
from pathlib import Path

import pytest
import torch

from openvision3.cli import main
from openvision3.config import get_config
from openvision3.models.openvision3 import OpenVision3
from openvision3.train.run import RunStopped
from openvision3.recipes.synergy import ARMS, verdicts

from conftest import TINY_OVERRIDES

ROOT = Path(__file__).resolve().parents[1]
TINY = str(ROOT / "configs" / "tiny.yaml")
# tiny.yaml with the test suite's smallest towers (32 px, 4x VAE) and batch 4: milliseconds a step
FAST = list(TINY_OVERRIDES) + ["train.batch_size=4", "train.warmup_steps=1"]


def _token_params(model):
    """The encoder parameters that produce the unified tokens (not its pooled contrastive read-out)."""
    return {n: p for n, p in model.encoder.named_parameters() if not n.startswith(("ln_post", "proj"))}


def _grads(module):
    return {n: (p.grad.clone() if p.grad is not None else torch.zeros_like(p)) for n, p in module.named_parameters()}


@pytest.mark.parametrize("off, probe_term, probe_parts", [
    ("loss.w_und=0", "loss_und", ("text_encoder", "caption_decoder")),
    ("loss.w_rec=0", "loss_rec", ("decoder",)),
])
def test_a_detached_probe_trains_its_branch_and_never_the_encoder(tiny_cfg, batch, off, probe_term, probe_parts):
    images, tokens = batch
    cfg = get_config(None, list(TINY_OVERRIDES) + [off, "loss.probe_detached=true"])
    torch.manual_seed(0)
    model = OpenVision3(cfg)
    out = model(images, tokens)
    assert out[probe_term] > 0  # the weight-0 branch is computed ...
    out[probe_term].backward()  # ... and from it alone the token-producing encoder gets exactly nothing
    assert all(p.grad is None or not p.grad.any() for p in _token_params(model).values())
    for part in probe_parts:  # while the branch's own parameters learn
        grads = [p.grad for p in getattr(model, part).parameters()]
        assert any(g is not None and g.abs().sum() > 0 for g in grads), part

    # The probe adds nothing to the encoder's gradient of the whole objective: same as with no probe.
    plain = OpenVision3(get_config(None, list(TINY_OVERRIDES) + [off]))
    plain.load_state_dict(model.state_dict())  # the random inline VAE too
    model.zero_grad()
    for m in (model, plain):
        torch.manual_seed(1)  # the same noise on the tokens for the decoder
        m(images, tokens)["loss"].backward()
    probed, unprobed = _grads(model.encoder), _grads(plain.encoder)
    for name in _token_params(model):
        torch.testing.assert_close(probed[name], unprobed[name], rtol=0, atol=0, msg=name)


def test_probe_detached_is_a_no_op_when_both_branches_train(tiny_cfg, batch):
    images, tokens = batch
    torch.manual_seed(0)
    a = OpenVision3(tiny_cfg)
    b = OpenVision3(get_config(None, list(TINY_OVERRIDES) + ["loss.probe_detached=true"]))
    b.load_state_dict(a.state_dict())
    outs = []
    for m in (a, b):
        torch.manual_seed(1)
        outs.append(m(images, tokens)["loss"])
    assert outs[0].item() == outs[1].item()


def test_verdicts_hold_only_beyond_one_std():
    falling = [(1.0, 0.50), (1.0, 0.52), (1.0, 0.48)]
    noisy = [(1.0, 0.9), (1.0, 1.12), (1.0, 1.0)]
    flat = [(2.0, 1.98), (2.0, 1.97), (2.0, 1.99)]
    v, m = verdicts({"joint": {"loss_rec": falling, "loss_und": [(2.0, 1.0)] * 3},
                     "rec_only": {"loss_rec": [(1.0, 0.6), (1.0, 0.62), (1.0, 0.58)], "loss_und": flat},
                     "und_only": {"loss_rec": falling, "loss_und": [(2.0, 1.2)] * 3}})
    assert v == {"und_lowers_rec": True, "rec_leaves_und_flat": True, "joint_best_rec": True,
                 "joint_best_und": True}
    assert m["und_lowers_rec"]["relative_drop"]["mean"] == pytest.approx(0.5)
    v, _ = verdicts({"joint": {"loss_rec": [(1.0, 0.7)] * 3, "loss_und": [(2.0, 1.0)] * 3},
                     "rec_only": {"loss_rec": [(1.0, 0.5), (1.0, 0.52), (1.0, 0.49)], "loss_und": [(2.0, 1.5)] * 3},
                     "und_only": {"loss_rec": noisy, "loss_und": [(2.0, 0.9), (2.0, 1.1), (2.0, 1.0)]}})
    assert v["und_lowers_rec"] is False  # a mean drop inside the seed spread is no drop
    assert v["rec_leaves_und_flat"] is False  # 25 % below the start is not "near" it
    assert v["joint_best_rec"] is False  # rec_only ends lower beyond one std
    assert v["joint_best_und"] is True  # und_only ties within the spread: "best or equal"
    assert verdicts({"joint": {"loss_rec": falling, "loss_und": flat}})[0]["und_lowers_rec"] is None


def test_ablate_synergy_end_to_end(tmp_path, capsys, monkeypatch):
    seen = []  # (images, captions) of every training forward, in order
    forward = OpenVision3.forward

    def recording(self, images, tokens=None, **kw):
        if self.training:
            seen.append((images.double().sum().item(), images[:, 0, 3, 5].tolist(), tokens.tolist()))
        return forward(self, images, tokens, **kw)

    monkeypatch.setattr(OpenVision3, "forward", recording)
    out = tmp_path / "ablation"
    argv = ["ablate", "synergy", "--config", TINY, "--out", str(out), "--steps", "3", "--seeds", "0",
            "--tasks", "caption,probe", "--num-samples", "8", "--no-progress", "--json", *FAST]
    assert main(argv) == 0
    summary = json.loads(capsys.readouterr().out.strip().splitlines()[-1])

    # one budget, one seed, one data order: the three arms train on the very same batches
    assert len(seen) == 3 * 3
    joint, rec_only, und_only = seen[:3], seen[3:6], seen[6:]
    assert joint == rec_only == und_only
    assert len({s[0] for s in joint}) == 3  # and the batches do change from step to step
    # ... from the same weights: the first step's losses agree across arms
    for branch in ("loss_rec", "loss_und"):
        firsts = [summary[a][branch]["first"] for a in ARMS]
        assert max(firsts) - min(firsts) < 1e-5, (branch, firsts)

    assert set(summary) >= {*ARMS, "verdicts", "seeds", "margins"}
    assert set(summary["verdicts"]) == {"und_lowers_rec", "rec_leaves_und_flat", "joint_best_rec", "joint_best_und"}
    assert all(isinstance(v, bool) for v in summary["verdicts"].values())
    assert summary["seeds"] == [0]
    for arm in ARMS:
        s = summary[arm]
        for branch in ("loss_rec", "loss_und"):
            assert {"first", "first_std", "last", "last_std"} <= set(s[branch])
        assert {"cider", "cider_std", "bleu4"} <= set(s["eval"]["caption"])
        assert {"top1", "pixels_top1", "vae_latents_top1"} <= set(s["eval"]["probe"])
        assert (out / "seed_0" / arm / "model" / "model.safetensors").exists()  # kept for other commands
        assert (out / "seed_0" / arm / "eval" / "eval.json").exists()
    for f in ("synergy.json", "synergy.md", "synergy_curves.png"):
        assert (out / f).exists(), f

    # a second call reuses every finished arm: no training, same numbers
    seen.clear()
    assert main(argv) == 0
    again = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert seen == [] and again["verdicts"] == summary["verdicts"]


@pytest.mark.parametrize("args, message", [
    (["--arms", "joint,bogus"], "unknown arm(s) bogus"),
    (["--seeds", "0,x"], "--seeds expects"),
    (["--steps", "3", "train.stepz=4"], "unknown config key 'train.stepz'"),
])
def test_bad_arguments_are_one_line(tmp_path, capsys, args, message):
    out = tmp_path / "never"
    assert main(["ablate", "synergy", "--config", TINY, "--out", str(out), *args]) == 2
    err = capsys.readouterr().err.strip()
    assert message in err and len(err.splitlines()) == 1, err
    assert not out.exists()  # refused before anything trained


@pytest.mark.parametrize("command, module, func", [
    (["ablate", "synergy", "--config", TINY], "openvision3.recipes.synergy", "run_synergy"),
    (["gen", "compare", "--config", "gen_tiny"], "openvision3.recipes.gen_compare", "run_compare"),
])
def test_a_signal_stopped_recipe_exits_3_with_one_line(tmp_path, capsys, monkeypatch, command, module, func):
    """Like `ov3 train`: a run stopped by a signal is not bad input (2) but a stop (3), one line."""
    import importlib
    mod = importlib.import_module(module)

    def stopped(*a, **k):
        raise RunStopped("arm joint, seed 0: stopped by SIGTERM at step 3; run the same command again")
    monkeypatch.setattr(mod, func, stopped)
    assert main([*command, "--out", str(tmp_path / "out")]) == 3
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "stopped by SIGTERM" in err and "stopped:" in err, err


def test_compare_refuses_to_go_on_after_a_stopped_run(tmp_path):
    from openvision3.recipes import train_or_resume
    assert train_or_resume(lambda *a, **k: {"status": "finished", "step": 4}, None, tmp_path, "x")["step"] == 4
    with pytest.raises(RunStopped, match="stopped by SIGUSR1 at step 2; run the same command again"):
        train_or_resume(lambda *a, **k: {"status": "stopped by SIGUSR1", "step": 2}, None, tmp_path, "x")
