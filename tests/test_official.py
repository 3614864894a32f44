"""Released OV3 vision towers load into our encoder with identical outputs."""
import pytest
import torch
from open_clip.transformer import VisionTransformer
from safetensors.torch import save_file

from openvision3.config import MODEL_PRESETS, TowerConfig
from openvision3.interop.official import (OfficialWeightsError, export_official_state_dict, load_official_encoder)
from openvision3.models.encoder import UnifiedEncoder


def released_tower(width=768, layers=12, heads=12):
    """open_clip's own VisionTransformer configured as the released OV3 B/2 towers [C]."""
    vit = VisionTransformer(image_size=32, patch_size=2, width=width, layers=layers, heads=heads, mlp_ratio=4.0,
                            no_ln_pre=True, pos_embed_type="sin_cos_2d", pool_type="avg",
                            final_ln_after_pool=True, output_tokens=True)
    vit.conv1 = torch.nn.Conv2d(16, width, 2, 2, bias=False)
    for p in vit.parameters():  # random, non-trivial weights everywhere (LayerNorms included)
        if p.requires_grad:
            torch.nn.init.normal_(p, std=0.02)
    return vit.eval()


@pytest.fixture(scope="module")
def reference():
    torch.manual_seed(0)
    return released_tower()


def test_safetensors_with_visual_prefix_matches_open_clip(tmp_path, reference):
    path = tmp_path / "open_clip_model.safetensors"
    save_file({"visual." + k: v.contiguous() for k, v in reference.state_dict().items()}, str(path))
    enc = load_official_encoder(str(tmp_path))  # hub-layout directory
    x = torch.randn(2, 16, 32, 32)
    with torch.no_grad():
        pooled_ref, tokens_ref = reference(x)
        tokens = enc(x)
        pooled = enc.pool(tokens)
    assert tokens.shape == (2, 256, 768)
    assert (tokens - tokens_ref).abs().max() == 0  # inference: the same kernels as open_clip's blocks
    assert (pooled - pooled_ref).abs().max() == 0


def test_bin_file_and_export_back(tmp_path, reference):
    path = tmp_path / "weights.bin"
    torch.save(reference.state_dict(), path)
    enc = load_official_encoder(str(path))
    fresh = released_tower()
    fresh.load_state_dict(export_official_state_dict(enc, grid=16))  # strict: every key matches
    x = torch.randn(1, 16, 32, 32)
    with torch.no_grad():
        assert torch.allclose(fresh(x)[1], reference(x)[1], atol=1e-6)


def test_bad_checkpoints_give_one_clear_error(tmp_path, reference):
    state = dict(reference.state_dict())
    del state["ln_post.weight"]
    save_file({k: v.contiguous() for k, v in state.items()}, str(tmp_path / "a.safetensors"))
    with pytest.raises(OfficialWeightsError, match="ln_post.weight"):
        load_official_encoder(str(tmp_path / "a.safetensors"))
    state = dict(reference.state_dict())
    state["transformer.resblocks.0.extra"] = torch.zeros(1)
    save_file({k: v.contiguous() for k, v in state.items()}, str(tmp_path / "b.safetensors"))
    with pytest.raises(OfficialWeightsError, match="unexpected"):
        load_official_encoder(str(tmp_path / "b.safetensors"))
    with pytest.raises(FileNotFoundError):
        load_official_encoder(str(tmp_path / "missing" / "x.safetensors"))


@pytest.mark.parametrize("preset", ["b2", "l2"])
def test_parameter_counts_match_open_clip(preset):
    t = MODEL_PRESETS[preset]["encoder"]
    with torch.device("meta"):
        ours = UnifiedEncoder(16, TowerConfig(**t), 2, embed_dim=512)
        ref = VisionTransformer(image_size=32, patch_size=2, width=t["width"], layers=t["layers"], heads=t["heads"],
                                mlp_ratio=t["mlp_ratio"], no_ln_pre=True, pos_embed_type="sin_cos_2d",
                                pool_type="avg", final_ln_after_pool=True, output_dim=512)
        ref.conv1 = torch.nn.Conv2d(16, t["width"], 2, 2, bias=False)
    count = lambda m: sum(p.numel() for p in m.parameters() if p.requires_grad)  # noqa: E731
    assert count(ours) == count(ref)
    expected = {"b2": (85.0e6, 87.0e6), "l2": (302e6, 305e6)}[preset]  # ViT-B ~86 M, ViT-L ~303 M
    assert expected[0] < count(ours) < expected[1]
