"""DiT-DH and flow matching (generation/dit.py, generation/flow.py): shapes, formulas, samplers."""
import math

import pytest
import torch

from openvision3.config import ConfigError
from openvision3.generation.config import DIT_PRESETS, get_gen_config
from openvision3.generation.dit import DiTDH
from openvision3.generation.flow import (flow_loss, guided_velocity, sample, sample_times, shift_factor, time_grid,
                                         time_shift)


@pytest.mark.parametrize("preset", list(DIT_PRESETS))
def test_dit_dh_shapes_for_every_preset(preset):
    cfg = get_gen_config(None, [f"dit.preset={preset}"]).dit
    expect = DIT_PRESETS[preset]
    assert (cfg.width, cfg.depth, cfg.head_width, cfg.head_depth) == (
        expect["width"], expect["depth"], expect["head_width"], expect["head_depth"])
    with torch.device("meta"):  # the XL preset has ~0.8 B parameters: shapes only, no memory
        model = DiTDH(768, (16, 16), 1000, cfg)
        out = model(torch.randn(2, 256, 768), torch.rand(2), torch.tensor([3, 999]))
    assert out.shape == (2, 256, 768)
    assert len(model.body) == cfg.depth and len(model.head) == cfg.head_depth


def test_paper_sizes_and_a_plain_dit_without_head():
    assert DIT_PRESETS["s"]["width"] == 384 and DIT_PRESETS["s"]["depth"] == 12 and DIT_PRESETS["s"]["heads"] == 6
    assert (DIT_PRESETS["xl"]["width"], DIT_PRESETS["xl"]["depth"], DIT_PRESETS["xl"]["heads"]) == (1152, 28, 16)
    assert (DIT_PRESETS["xl"]["head_width"], DIT_PRESETS["xl"]["head_depth"]) == (2048, 2)
    cfg = get_gen_config(None, ["dit.preset=nano", "dit.width=32", "dit.depth=1", "dit.heads=2", "dit.head_depth=0"]).dit
    model = DiTDH(12, (2, 3), 5, cfg)
    assert not hasattr(model, "head")
    assert model(torch.randn(4, 6, 12), torch.rand(4), torch.arange(4)).shape == (4, 6, 12)
    with pytest.raises(ValueError, match="expects tokens"):
        model(torch.randn(4, 5, 12), torch.rand(4), torch.arange(4))
    with pytest.raises(ConfigError, match="unknown dit preset"):
        get_gen_config(None, ["dit.preset=xxl"])


def _small_dit(dropout=0.1, classes=5):
    cfg = get_gen_config(None, ["dit.preset=nano", "dit.width=32", "dit.depth=2", "dit.heads=2",
                                "dit.head_width=48", "dit.head_depth=1", "dit.head_heads=2",
                                f"dit.class_dropout={dropout}"]).dit
    torch.manual_seed(0)
    model = DiTDH(8, (2, 2), classes, cfg)
    with torch.no_grad():  # adaLN-Zero starts at zero output; give it weights so outputs depend on inputs
        for p in model.parameters():
            p.add_(0.05 * torch.randn_like(p))
    return model


def test_gradients_reach_every_parameter():
    model = _small_dit()
    cfg = get_gen_config(None, []).flow
    flow_loss(model.train(), torch.randn(6, 4, 8), torch.arange(6) % 5, cfg, shift=1.5).backward()
    missing = [n for n, p in model.named_parameters() if p.grad is None or not p.grad.abs().sum() > 0]
    assert not missing, missing


def test_grad_checkpointing_gives_the_same_loss_and_gradients():
    # label dropout and the flow's noise and times are random: the same seed draws them once
    cfg = get_gen_config(None, []).flow
    x, y = torch.randn(6, 4, 8), torch.arange(6) % 5
    runs = []
    for checkpointing in (False, True):
        model = _small_dit().train()
        model.grad_checkpointing = checkpointing
        torch.manual_seed(1)
        loss = flow_loss(model, x, y, cfg, shift=1.5)
        loss.backward()
        runs.append((loss.detach(), [p.grad for p in model.parameters()]))
    assert torch.equal(runs[0][0], runs[1][0])
    assert all(torch.equal(a, b) for a, b in zip(runs[0][1], runs[1][1]))


def test_label_dropout_rate_and_none_in_eval():
    model = _small_dit(dropout=0.1)
    y = torch.zeros(20000, dtype=torch.long)
    torch.manual_seed(1)
    dropped = (model.y_embed.drop(y) == model.null_class).float().mean().item()
    assert abs(dropped - 0.1) < 0.01, dropped
    model.eval()
    emb = model.y_embed(torch.tensor([2, 2]))
    assert torch.equal(emb[0], model.y_embed.table.weight[2]) and torch.equal(emb[1], emb[0])


def test_time_shift_formula():
    t = torch.linspace(0, 1, 11)
    assert torch.allclose(time_shift(t, 1.0), t)
    s = 3.0
    assert torch.allclose(time_shift(t, s), s * t / (1 + (s - 1) * t))
    assert time_shift(torch.tensor([0.0, 1.0]), s).tolist() == [0.0, 1.0]
    assert (time_shift(t[1:-1], s) > t[1:-1]).all()  # s > 1 moves times towards noise (t = 1)
    assert math.isclose(shift_factor(256, 768), math.sqrt(256 * 768 / 4096))  # RAE's 6.93
    assert math.isclose(shift_factor(64, 64), 1.0)
    grid = time_grid(4, 2.0)
    assert grid[0] == 1 and grid[-1] == 0 and (grid[:-1] > grid[1:]).all()


def test_logit_normal_times():
    cfg = get_gen_config(None, []).flow
    t = sample_times(50000, cfg, shift=1.0, generator=torch.Generator().manual_seed(0))
    logit = torch.log(t / (1 - t))
    assert abs(logit.mean().item()) < 0.02 and abs(logit.std().item() - 1) < 0.02


def _gaussian_velocity(mu, sd):
    """The exact velocity of x_t = (1 - t) x + t eps for x ~ N(mu, sd^2), eps ~ N(0, 1)."""
    def v(x, t):
        t = t.view(-1, *([1] * (x.ndim - 1))).double()
        var = (1 - t) ** 2 * sd ** 2 + t ** 2
        centred = x - (1 - t) * mu
        e_data = mu + (1 - t) * sd ** 2 / var * centred
        e_noise = t / var * centred
        return (e_noise - e_data).to(x.dtype)
    return v


@pytest.mark.parametrize("method,steps,tol", [("euler", 100, 0.03), ("heun", 20, 0.01)])
def test_sampler_maps_noise_to_the_right_gaussian(method, steps, tol):
    mu, sd = 3.0, 0.5
    noise = torch.randn(200000, 1, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    x = sample(_gaussian_velocity(mu, sd), noise, steps=steps, shift=2.0, method=method)
    assert abs(x.mean().item() - mu) < tol and abs(x.std().item() - sd) < tol, (x.mean(), x.std())


def test_guidance_scale_one_is_the_conditional_model_and_the_formula_holds():
    model = _small_dit().eval()
    x, t, y = torch.randn(3, 4, 8), torch.full((3,), 0.5), torch.tensor([0, 1, 4])
    with torch.no_grad():
        cond = model(x, t, y)
        uncond = model(x, t, torch.full_like(y, model.null_class))
        assert not torch.allclose(cond, uncond)
        assert torch.allclose(guided_velocity(model, x, t, y, model.null_class, 1.0), cond, atol=1e-6)
        w3 = guided_velocity(model, x, t, y, model.null_class, 3.0)
        assert torch.allclose(w3, uncond + 3.0 * (cond - uncond), atol=1e-5)
        outside = guided_velocity(model, x, t, y, model.null_class, 3.0, interval=(0.0, 0.3))
        assert torch.allclose(outside, cond, atol=1e-6)  # t = 0.5 is outside the guidance interval


def test_fd_and_precision_recall_on_known_sets():
    from openvision3.eval.sample_quality import frechet_distance, precision_recall
    g = torch.Generator().manual_seed(0)
    real, same = torch.randn(600, 4, generator=g), torch.randn(600, 4, generator=g)
    assert frechet_distance(real, same) < 0.1
    shifted = same + torch.tensor([3.0, 0, 0, 0])
    assert abs(frechet_distance(real, shifted) - 9.0) < 0.6  # ||mu_r - mu_f||^2 with equal covariances
    p, r = precision_recall(real, same)
    assert p > 0.9 and r > 0.9
    collapsed = real[:1].repeat(600, 1) + 0.01 * torch.randn(600, 4, generator=g)  # one mode only
    p, r = precision_recall(real, collapsed)
    assert p > 0.9 and r < 0.1  # realistic but not diverse
    p, r = precision_recall(real, same + torch.tensor([10.0, 0, 0, 0]))  # disjoint supports
    assert p < 0.05 and r < 0.05
