"""Our tower as a transformers model, under LlavaForConditionalGeneration with a tiny Llama."""
import numpy as np
import pytest
import torch
from PIL import Image
from safetensors.torch import save_file
from transformers import AutoImageProcessor, AutoModel, LlamaConfig, LlavaForConditionalGeneration

from openvision3.cli import main
from openvision3.config import ConfigError
from openvision3.data.transforms import eval_transform
from openvision3.interop import transformers as ov3hf
from openvision3.models.openvision3 import OpenVision3
from openvision3.recipes.llava_probe_data import build_tokenizer, eval_prompt


@pytest.fixture
def ov3(tiny_cfg):
    torch.manual_seed(0)
    return OpenVision3(tiny_cfg).eval()


@pytest.fixture
def images():
    return torch.rand(2, 3, 32, 32, generator=torch.Generator().manual_seed(1)) * 2 - 1


def tiny_llava(tower, vocab=40, image_token=39):
    text = LlamaConfig(vocab_size=vocab, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                       num_attention_heads=2, num_key_value_heads=2, max_position_embeddings=128,
                       pad_token_id=0, bos_token_id=1, eos_token_id=2)
    cfg = ov3hf.llava_config(tower.config, text, image_token_id=image_token)
    torch.manual_seed(0)
    llava = LlavaForConditionalGeneration(cfg)
    llava.model.vision_tower.load_state_dict(tower.state_dict())
    return llava.eval()


def test_tower_outputs_class_slot_first_and_match_openvision3(ov3, images):
    tower = ov3hf.vision_model_from_openvision3(ov3)
    assert isinstance(tower, ov3hf.OpenVision3VisionModel)
    with torch.no_grad():
        out = tower(images, output_hidden_states=True)
        z_u = ov3.encode_image(images)
    n = z_u.shape[1]
    assert out.last_hidden_state.shape == (2, 1 + n, ov3.encoder.width)
    assert len(out.hidden_states) == ov3.cfg.model.encoder.layers + 1  # embedding output + each block
    # class slot first: the embedding output's first token is the class embedding (its position row is 0)
    assert torch.allclose(out.hidden_states[0][:, 0], ov3.encoder.class_embedding.expand(2, -1))
    # the tower's own copy of the encoder (modeling_openvision3.py) against ours, to fp32 tolerance
    torch.testing.assert_close(out.hidden_states[-1][:, 1:], z_u, atol=1e-5, rtol=0)
    assert torch.allclose(out.pooler_output, ov3.image_features(z_u))
    assert tower(images).hidden_states is None  # only on request
    assert not any(p.requires_grad for p in tower.vae.parameters())  # the VAE is frozen inside


def test_llava_loss_gradients_generate_and_round_trip(ov3, images, tmp_path):
    tower = ov3hf.vision_model_from_openvision3(ov3)
    llava = tiny_llava(tower)
    n_img = ov3hf.num_image_tokens(tower.config)
    assert n_img == ov3.token_grid()[0] ** 2  # "default": the class slot is dropped
    ids = torch.cat([torch.ones(2, 1, dtype=torch.long), torch.full((2, n_img), 39),
                     torch.randint(3, 39, (2, 6), generator=torch.Generator().manual_seed(0))], 1)
    labels = ids.clone()
    labels[:, :n_img + 1] = -100
    for stage, expected in ((1, {"multi_modal_projector"}), (2, {"multi_modal_projector", "language_model", "lm_head"})):
        trainable = ov3hf.set_llava_trainable(llava, stage)
        llava.zero_grad(set_to_none=True)
        loss = llava(input_ids=ids, pixel_values=images, labels=labels).loss
        assert torch.isfinite(loss)
        loss.backward()
        with_grad = {n for n, p in llava.named_parameters() if p.grad is not None and p.grad.abs().sum() > 0}
        parts = {n.split(".")[1] if n.startswith("model.") else n.split(".")[0] for n in with_grad}
        assert parts == expected, (stage, parts)
        assert set(with_grad) <= set(trainable)
        assert not any("vision_tower" in n for n in with_grad)
    # the image tokens reach the loss: other pixels, other loss
    with torch.no_grad():
        a = llava(input_ids=ids, pixel_values=images, labels=labels).loss
        b = llava(input_ids=ids, pixel_values=-images, labels=labels).loss
    assert a != b
    gen = llava.generate(input_ids=ids[:, :n_img + 2], pixel_values=images, max_new_tokens=3, do_sample=False)
    assert gen.shape == (2, n_img + 5)
    llava.save_pretrained(tmp_path / "llava")
    again = LlavaForConditionalGeneration.from_pretrained(tmp_path / "llava").eval()
    assert isinstance(again.model.vision_tower, ov3hf.OpenVision3VisionModel)
    with torch.no_grad():
        assert torch.equal(again(input_ids=ids, pixel_values=images).logits,
                           llava(input_ids=ids, pixel_values=images).logits)


def test_llava_processor_counts_image_tokens_and_makes_our_pixels(ov3):
    tower = ov3hf.vision_model_from_openvision3(ov3)
    tok = build_tokenizer(["what colour is the star ? red", "user : assistant :"])
    proc = ov3hf.llava_processor(tower.config, tok)
    img = Image.fromarray(np.random.default_rng(0).integers(0, 256, (40, 48, 3), dtype=np.uint8))
    enc = proc(images=[img], text=[eval_prompt("what colour is the star ?")], return_tensors="pt")
    image_id = tok.convert_tokens_to_ids("<image>")
    assert int((enc["input_ids"] == image_id).sum()) == ov3hf.num_image_tokens(tower.config)
    assert tok.unk_token_id not in enc["input_ids"]
    ours = eval_transform(32)(img)  # resize short side, centre crop, [-1, 1]
    assert enc["pixel_values"].shape == (1, 3, 32, 32)
    assert (enc["pixel_values"][0] - ours).abs().max() < 0.05  # same recipe, two resize implementations


def test_feature_layer_out_of_range_is_one_clear_error(ov3):
    tower = ov3hf.vision_model_from_openvision3(ov3)
    text = LlamaConfig(vocab_size=40, hidden_size=32, intermediate_size=64, num_hidden_layers=1,
                       num_attention_heads=2, num_key_value_heads=2)
    with pytest.raises(ConfigError, match="out of range.*2 hidden states"):
        ov3hf.llava_config(tower.config, text, image_token_id=39, vision_feature_layer=-3)
    ov3hf.llava_config(tower.config, text, image_token_id=39, vision_feature_layer=[-2, -1])


def test_export_hf_from_saved_model(ov3, images, tmp_path, capsys, monkeypatch):
    ov3.save_pretrained(tmp_path / "model")
    assert main(["export", "hf", "--model", str(tmp_path / "model"), "--out", str(tmp_path / "hf")]) == 0
    tower = AutoModel.from_pretrained(tmp_path / "hf").eval()
    proc = AutoImageProcessor.from_pretrained(tmp_path / "hf")
    assert proc.crop_size == {"height": 32, "width": 32} and list(proc.image_mean) == [0.5] * 3
    with torch.no_grad():
        assert torch.allclose(tower(images).last_hidden_state[:, 1:], ov3.encode_image(images), atol=1e-6)
    card = (tmp_path / "hf" / "README.md").read_text()
    assert card.startswith("---\n") and "library_name: transformers" in card and "convention: scale" in card
    capsys.readouterr()
    assert main(["export", "hf", "--model", str(tmp_path), "--out", str(tmp_path / "x")]) == 2
    err = capsys.readouterr().err.strip()
    assert "is not an OpenVision 3 model" in err and len(err.splitlines()) == 1
    # mistyped local paths: one line at once, never a hub lookup (offline, that hung ~30 s)
    monkeypatch.chdir(tmp_path)  # "model/missing" has a local parent: a path, not the hub id owner/name
    for missing in (str(tmp_path / "nope" / "model"), "model/missing"):
        assert main(["export", "hf", "--model", missing, "--out", str(tmp_path / "y")]) == 2
        err = capsys.readouterr().err.strip()
        assert "does not exist" in err or "neither a file" in err, err
        assert len(err.splitlines()) == 1 and not (tmp_path / "y").exists()


def test_export_hf_from_released_tower(tmp_path):
    from open_clip.transformer import VisionTransformer
    torch.manual_seed(0)  # open_clip's own tower configured as the released ones [C], 4 x 4 latent patches
    ref = VisionTransformer(image_size=8, patch_size=2, width=64, layers=2, heads=2, mlp_ratio=4.0, no_ln_pre=True,
                            pos_embed_type="sin_cos_2d", pool_type="avg", final_ln_after_pool=True,
                            output_tokens=True)
    ref.conv1 = torch.nn.Conv2d(16, 64, 2, 2, bias=False)
    for p in ref.parameters():
        if p.requires_grad:  # the fixed sin-cos table stays as it is
            torch.nn.init.normal_(p, std=0.02)
    ref.eval()
    save_file({"visual." + k: v.contiguous() for k, v in ref.state_dict().items()},
              str(tmp_path / "open_clip_model.safetensors"))
    r = ov3hf.export_hf(str(tmp_path), tmp_path / "hf", vae="inline", image_size=64)  # inline: 16 ch, 8x
    assert r["origin"] == "released" and r["image_tokens"] == 16
    tower = AutoModel.from_pretrained(tmp_path / "hf").eval()
    x = torch.rand(1, 3, 64, 64) * 2 - 1
    with torch.no_grad():
        latents = tower.vae.encode(x)
        assert torch.allclose(tower(x).last_hidden_state[:, 1:], ref(latents)[1], atol=1e-5)
    assert "Converted from the released tower" in (tmp_path / "hf" / "README.md").read_text()


def test_vae_latent_tower_is_the_patchified_latents(ov3, images):
    tower = ov3hf.vae_latent_model(ov3.vae, 32)
    with torch.no_grad():
        out = tower(images, output_hidden_states=True)
        lat = ov3.vae.encode(images)
    assert len(out.hidden_states) == 1
    p = 2
    patches = torch.nn.functional.pixel_unshuffle(lat, p).flatten(2).transpose(1, 2)  # (B, N, C*p*p)
    pos = out.hidden_states[0][:, 1:] - patches
    assert torch.allclose(pos, pos[:1].expand_as(pos), atol=1e-5)  # only the fixed positions added
    assert torch.allclose(out.hidden_states[0][:, 0], torch.zeros(1))  # zero class slot
