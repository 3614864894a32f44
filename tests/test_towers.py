import pytest
import torch

from openvision3.config import TextTowerConfig, TowerConfig
from openvision3.models.decoder import LatentDecoder
from openvision3.models.encoder import UnifiedEncoder
from openvision3.models.text import CaptionDecoder, TextEncoder, fit_context

SMALL = TowerConfig(width=64, layers=2, heads=2)
TEXT = TextTowerConfig(width=64, layers=2, heads=2, context_length=16)


def test_token_grids_match_the_paper():
    enc = UnifiedEncoder(16, SMALL, patch_size=2, embed_dim=32)
    for pixels, tokens in ((128, 64), (224, 196), (256, 256)):  # [P]
        latents = torch.randn(1, 16, pixels // 8, pixels // 8)
        z = enc(latents)
        assert z.shape == (1, tokens, 64)
        assert enc.pool(z).shape == (1, 32)


def test_max_pool_sees_one_strong_token_that_the_mean_dilutes():
    torch.manual_seed(0)
    mean_enc = UnifiedEncoder(16, SMALL, embed_dim=32)
    max_enc = UnifiedEncoder(16, SMALL, embed_dim=32, pool_type="max")
    max_enc.load_state_dict(mean_enc.state_dict())  # same weights: only the read-out differs
    tokens = torch.zeros(2, 64, 64)
    tokens[1, 5, :8] = 1.0  # one token of sample 1 carries a feature; the other 63 are empty
    assert torch.allclose(mean_enc.pool(tokens)[0], max_enc.pool(tokens)[0])  # all empty: same
    # a (2, D) and a (D,) matmul may round differently (AVX-512 kernels do): fp32 tolerance
    assert torch.allclose(max_enc.pool(tokens)[1], max_enc.ln_post(tokens[1, 5]) @ max_enc.proj,
                          rtol=1e-5, atol=1e-6)
    assert not torch.allclose(mean_enc.pool(tokens)[1], max_enc.pool(tokens)[1])
    z = max_enc(torch.randn(2, 16, 8, 8)).detach().requires_grad_(True)
    max_enc.pool(z).sum().backward()
    assert torch.equal((z.grad != 0).sum(dim=1), torch.ones(2, 64, dtype=torch.long))  # one token per channel
    with pytest.raises(ValueError, match="unknown pool type 'cls'"):
        UnifiedEncoder(16, SMALL, pool_type="cls")


def test_encoder_rejects_wrong_channel_count():
    enc = UnifiedEncoder(16, SMALL)
    try:
        enc(torch.randn(1, 4, 8, 8))
    except ValueError as e:
        assert "latent channel" in str(e)
    else:
        raise AssertionError("expected a ValueError")


def test_decoder_shape_and_noise_only_in_training():
    dec = LatentDecoder(64, SMALL, latent_channels=16, patch_size=2, noise_tau=0.8)
    z = torch.randn(2, 64, 64)
    dec.eval()
    out = dec(z)
    assert out.shape == (2, 16, 16, 16)
    assert torch.equal(out, dec(z))  # sigma = 0 at inference
    dec.train()
    assert not torch.allclose(dec(z), dec(z))  # sigma ~ U[0, tau] per sample
    dec.noise_tau = 0.0
    assert torch.allclose(dec(z), out, atol=1e-6)


def test_caption_decoder_is_causal_over_the_caption():
    dec = CaptionDecoder(64, TEXT, vocab_size=100).eval()
    img = torch.randn(2, 9, 64)
    tokens = torch.randint(1, 100, (2, 16))
    logits = dec.logits(img, tokens)
    assert logits.shape == (2, 16, 100)
    changed = tokens.clone()
    changed[:, 10] = (changed[:, 10] % 99) + 1
    logits2 = dec.logits(img, changed)
    assert torch.allclose(logits[:, :10], logits2[:, :10], atol=1e-5)  # positions before 10 unaffected
    assert not torch.allclose(logits[:, 10:], logits2[:, 10:])
    img2 = img.clone()
    img2[:, -1] += 1  # every caption position sees every image token
    assert not torch.allclose(dec.logits(img2, tokens)[:, 0], logits[:, 0])


def test_caption_forward_scores_only_non_pad_targets():
    dec = CaptionDecoder(64, TEXT, vocab_size=100).eval()
    img = torch.randn(2, 9, 64)
    tokens = torch.randint(1, 100, (2, 16))
    tokens[0, 12:] = 0  # padding after position 11
    logits, targets = dec(img, tokens)
    keep = tokens[:, 1:] != 0
    assert logits.shape == (int(keep.sum()), 100) and torch.equal(targets, tokens[:, 1:][keep])
    assert torch.allclose(logits, dec.logits(img, tokens[:, :-1])[keep], atol=1e-5)


def test_caption_keep_ratio_keeps_a_subset_in_training_only():
    dec = CaptionDecoder(64, TEXT, vocab_size=100, keep_ratio=0.25)
    img = torch.arange(16.0).view(1, 16, 1).expand(3, 16, 64).contiguous()
    kept = dec.keep_subset(img)
    assert kept.shape == (3, 4, 64)
    assert (kept[:, 1:, 0] > kept[:, :-1, 0]).all()  # order preserved


def test_generate_is_batched_and_stops():
    dec = CaptionDecoder(64, TEXT, vocab_size=100).eval()
    ids = dec.generate(torch.randn(3, 4, 64), sot_id=98, eot_id=99, max_len=8)
    assert ids.shape[0] == 3 and ids.shape[1] <= 8 and (ids[:, 0] == 98).all()


def test_fit_context_keeps_end_of_text():
    t = torch.tensor([[5, 6, 7, 8, 99, 0], [5, 99, 0, 0, 0, 0]])
    cropped = fit_context(t, 4)
    assert cropped.tolist() == [[5, 6, 7, 99], [5, 99, 0, 0]]
    assert fit_context(t, 8).shape == (2, 8)


def test_text_encoder_pools_at_end_of_text():
    enc = TextEncoder(TEXT, vocab_size=100, embed_dim=32).eval()
    t = torch.tensor([[1, 5, 99, 0, 0, 0, 0, 0]])
    t2 = t.clone()
    t2[0, 4] = 7  # change after the end-of-text token: causal mask means no effect
    assert torch.allclose(enc(t), enc(t2), atol=1e-6)


def _attention_ops(choice: str) -> set[str]:
    """The SDPA ops a forward + backward of the unified encoder runs under ``choice``."""
    from torch.profiler import profile
    from openvision3.train.run import forward_context
    enc = UnifiedEncoder(16, SMALL, embed_dim=32)
    latents = torch.randn(2, 16, 8, 8)
    with profile() as prof:
        with forward_context(torch.device("cpu"), None, choice):
            loss = enc.pool(enc(latents)).square().sum()
        loss.backward()
    return {e.key for e in prof.key_averages() if "scaled_dot_product" in e.key}


def test_attention_kernel_auto_uses_the_math_kernel_on_cpu_and_default_does_not():
    flash = "aten::_scaled_dot_product_flash_attention_for_cpu"
    assert flash in _attention_ops("default")  # torch's own choice on CPU: the flash kernel
    for choice in ("auto", "math"):
        ops = _attention_ops(choice)
        assert "aten::scaled_dot_product_attention" in ops and flash not in ops
    before = torch.get_autocast_dtype("cpu")
    with pytest.raises(ValueError, match="attention kernel"):
        _attention_ops("fast")
    assert torch.get_autocast_dtype("cpu") == before  # a bad choice leaves no autocast state behind


def test_our_block_is_open_clips_layout_and_init_and_trains_the_same():
    from open_clip.transformer import Transformer as OpenClipTransformer

    from openvision3.models.transformer import Transformer
    torch.manual_seed(0)
    ref = OpenClipTransformer(64, 2, 4, 4.0, batch_first=True)
    torch.manual_seed(0)
    ours = Transformer(64, 2, 4, 4.0)
    a, b = ref.state_dict(), ours.state_dict()
    assert list(a) == list(b)  # the released towers' names, in order
    assert all(torch.equal(a[k], b[k]) for k in a)  # a seed builds the same weights
    for p in ref.parameters():  # non-trivial biases and norms too
        torch.nn.init.normal_(p, std=0.1)
    ours.load_state_dict(ref.state_dict())
    x = torch.randn(3, 17, 64, requires_grad=True)
    mask = torch.full((17, 17), float("-inf")).triu_(1)
    for m in (None, mask):
        y_ref, y = ref(x, attn_mask=m), ours(x, attn_mask=m)
        torch.testing.assert_close(y, y_ref, rtol=1e-5, atol=1e-5)  # training path: fp32 rounding only
        g_ref, = torch.autograd.grad(y_ref.square().sum(), x)
        g, = torch.autograd.grad(y.square().sum(), x)
        torch.testing.assert_close(g, g_ref, rtol=1e-4, atol=1e-5)
    ours.eval(), ref.eval()
    with torch.no_grad():  # inference: the same fused kernel as nn.MultiheadAttention, bit for bit
        assert torch.equal(ours(x), ref(x))


@pytest.mark.parametrize("kernel", ["math", "default"])
def test_checkpointing_recomputes_on_the_forwards_kernel(kernel):
    from openvision3.models.transformer import Transformer
    from openvision3.models.vit import attention_kernels
    torch.manual_seed(0)
    plain = Transformer(64, 2, 4)
    ckpt = Transformer(64, 2, 4)
    ckpt.load_state_dict(plain.state_dict())
    ckpt.grad_checkpointing = True
    x = torch.randn(2, 9, 64)
    mask = torch.full((9, 9), float("-inf")).triu_(1)
    grads = []
    for t in (plain, ckpt):
        with attention_kernels(x.device, kernel):  # left before backward, as in the trainer
            y = t(x, attn_mask=mask)
        y.square().mean().backward()
        grads.append([p.grad for p in t.parameters()])
    for g_plain, g_ckpt in zip(*grads):
        assert torch.equal(g_plain, g_ckpt)
