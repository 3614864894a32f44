"""Heads trained on a frozen encoder that comes as a released tower (recipes/complete.py).

The tower is open_clip's own VisionTransformer configured as the released OV3 towers [C], with
random weights, written as the hub's files are (``open_clip_config.json`` + ``visual.``-prefixed
weights, tests/test_official.py); it is tiny (32 wide, 1 layer, 16-channel latents, a 4 x 4 token
grid) so that training it and every downstream command take seconds.
"""
import json
from pathlib import Path

import pytest
import torch
from PIL import Image
from safetensors.torch import load_file, save_file

from open_clip.transformer import VisionTransformer

from openvision3 import cli

ROOT = Path(__file__).resolve().parents[1]
TINY = str(ROOT / "configs" / "tiny.yaml")
WORDS = ("[and, red, orange, yellow, green, cyan, blue, purple, pink, circle, square, triangle, star, "
         "diamond, cross, heart, ring]")
# a 16 px run over a 2x, 16-channel inline VAE given the released latent convention (scale 0.3611)
# so the checks on the convention pass; heads 32 wide, as the tower
RUN = ["model.image_size=16", "data.resolution=16", "data.train=shapes?n=32", "data.hflip=true",
       "data.shapes.captions=minimal", "model.tokenizer=words", f"model.words={WORDS}",
       "model.vae.latent_channels=16", "model.vae.block_out_channels=[8,16]", "model.vae.norm_num_groups=4",
       "model.vae.scaling_factor=0.3611", "model.encoder.width=32",
       "model.decoder.width=32", "model.decoder.layers=1", "model.decoder.heads=2",
       "model.text.width=32", "model.text.layers=1", "model.text.heads=2", "model.text.context_length=16",
       "model.caption.width=32", "model.caption.layers=1", "model.caption.heads=2",
       "model.caption.context_length=16", "train.batch_size=8", "train.steps=4", "train.log_every=1",
       "train.eval_every=0", "train.warmup_steps=1", "train.checkpoint_every=2", "loss.pixel_subbatch=4"]


def write_hub_tower(directory: Path, seed: int = 0, width: int = 32, grid: int = 4, embed: int = 16,
                    bin_file: bool = False):
    """A random tower saved as the hub's files; returns the reference open_clip module."""
    torch.manual_seed(seed)
    ref = VisionTransformer(image_size=2 * grid, patch_size=2, width=width, layers=1, heads=width // 64 or 2,
                            mlp_ratio=4.0,
                    no_ln_pre=True, pos_embed_type="sin_cos_2d", pool_type="avg", final_ln_after_pool=True,
                    output_tokens=True, output_dim=embed)
    ref.conv1 = torch.nn.Conv2d(16, width, 2, 2, bias=False)
    for p in ref.parameters():
        if p.requires_grad:
            torch.nn.init.normal_(p, std=0.02)
    ref.eval()
    directory.mkdir(parents=True, exist_ok=True)
    state = {"visual." + k: v.contiguous() for k, v in ref.state_dict().items()}
    if bin_file:
        torch.save(state, directory / "open_clip_pytorch_model.bin")
    else:
        save_file(state, str(directory / "open_clip_model.safetensors"))
    (directory / "open_clip_config.json").write_text(json.dumps({"model_cfg": {"embed_dim": embed, "vision_cfg": {
        "image_size": 2 * grid, "patch_size": 2, "width": width, "layers": 1, "head_width": width // 2}}}))
    return ref


@pytest.fixture(scope="module")
def tower(tmp_path_factory):
    d = tmp_path_factory.mktemp("hub") / "openvision3-vit-tiny-patch2-4"
    return d, write_hub_tower(d)


@pytest.fixture(scope="module")
def heads_run(tower, tmp_path_factory):
    """`ov3 train` on the tower, frozen, from the command line (module-scoped: the downstream tests share it)."""
    tmp = tmp_path_factory.mktemp("complete")
    out = tmp / "run"
    argv = ["train", "--config", TINY, "--out", str(out), "--json", *RUN, f"train.init_encoder={tower[0]}",
            "train.freeze=[encoder.]", f"train.token_cache={tmp / 'cache'}"]
    assert cli.main(argv) == 0
    return out, tmp


def _last_json(capsys):
    return json.loads(capsys.readouterr().out.strip().splitlines()[-1])


def _one_line(capsys, argv) -> str:
    rc = cli.main(argv)
    err = [line for line in capsys.readouterr().err.strip().splitlines() if line.startswith("ov3 ")]
    assert rc == 2 and len(err) == 1, (rc, err)
    return err[0]


# ------------------------------------------------------------------------------------ training
def test_heads_train_on_cached_tokens_and_the_encoder_stays_bit_identical(heads_run, tower):
    out, tmp = heads_run
    saved = load_file(str(out / "model" / "model.safetensors"))
    hub = load_file(str(tower[0] / "open_clip_model.safetensors"))
    for k, v in hub.items():
        if k != "visual.positional_embedding":
            assert torch.equal(saved["encoder." + k[len("visual."):]], v), k
    # the heads did train
    init = load_file(str(out / "checkpoints" / "step_2" / "model.safetensors"))
    assert not torch.equal(init["decoder.head.weight"], saved["decoder.head.weight"])
    caches = list((tmp / "cache").iterdir())
    assert len(caches) == 1
    meta = json.loads((caches[0] / "meta.json").read_text())
    assert meta["num_samples"] == 32 and meta["captions"] and meta["pixels"] and meta["hflip"]
    rows = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in rows if "loss" in r] == [1, 2, 3, 4]
    assert all(r["loss_pixel"] > 0 and r["loss_caption"] > 0 and r["loss_contrastive"] > 0 for r in rows if "loss" in r)
    cfg = (out / "model" / "config.yaml").read_text()
    assert "init_encoder_kind: released" in cfg and "layers: 1" in cfg


def test_cached_tokens_are_the_frozen_encoders(heads_run, tower):
    """What the heads train on is what the frozen encoder gives for the cached image (fp16 storage)."""
    from openvision3.generation.token_cache import open_cache
    from openvision3.models.openvision3 import OpenVision3
    out, tmp = heads_run
    model = OpenVision3.from_pretrained(out / "model").eval()
    path = next((tmp / "cache").iterdir())
    cache = open_cache(path, json.loads((path / "meta.json").read_text())["encoder_id"], 16, "tokens")
    images = cache.extras["images"][:4].float().div(255).sub(0.5).div(0.5)
    with torch.no_grad():
        latents = model.vae.encode(images)
        assert torch.allclose(cache.extras["latents"][:4].float(), latents, atol=2e-3)
        assert torch.allclose(cache.tokens[:4].float(), model.encoder(latents), atol=1e-2)
        assert torch.allclose(cache.tokens_flip[:4].float(), model.encode_image(images.flip(-1)), atol=1e-2)
    assert len(cache.captions) == 32 and all(isinstance(c, str) and c for c in cache.captions)


def test_model_card_says_what_was_released_and_what_was_trained_here(heads_run, tower):
    card = (heads_run[0] / "model" / "README.md").read_text()
    assert f"released OpenVision 3 vision tower `{tower[0]}`" in card
    assert "frozen" in card and "trained here: latent decoder, text encoder, caption decoder" in card


# ------------------------------------------------------------------------------------ downstream
def test_eval_every_task_on_the_completed_model(heads_run, capsys):
    model = str(heads_run[0] / "model")
    rc = cli.main(["eval", "--model", model, "--data", "shapes", "--tasks", "recon,zeroshot,retrieval,caption,probe",
                   "--num-samples", "8", "--batch-size", "8", "--probe-train", "16", "--lpips", "none",
                   "--out", str(heads_run[1] / "eval"), "--no-progress", "--json"])
    assert rc == 0
    r = _last_json(capsys)
    assert r["recon"]["psnr"] > 0 and 0 <= r["zeroshot"]["top1"] <= 1 and "t2i_r5" in r["retrieval"]
    assert r["caption"]["n"] == 8 and 0 <= r["probe"]["top1"] <= 1


def test_reconstruct_caption_encode_on_the_completed_model(heads_run, capsys):
    model, tmp = str(heads_run[0] / "model"), heads_run[1]
    img = tmp / "red.png"
    Image.new("RGB", (16, 16), (200, 30, 30)).save(img)
    assert cli.main(["reconstruct", "--model", model, str(img), "--out", str(tmp / "rec"), "--json"]) == 0
    assert _last_json(capsys)["images"][0]["psnr"] > 0 and (tmp / "rec" / "red.png").is_file()
    assert cli.main(["caption", "--model", model, str(img), "--max-len", "4", "--json"]) == 0
    assert isinstance(_last_json(capsys)["captions"][0]["caption"], str)
    feats = tmp / "feats.safetensors"
    assert cli.main(["encode", "--model", model, "--data", "shapes", "--num-samples", "4", "--out", str(feats),
                     "--no-progress"]) == 0
    assert load_file(str(feats))["tokens"].shape == (4, 16, 32)


def test_export_hf_tower_output_equals_the_released_towers(heads_run, tower):
    from transformers import AutoModel

    from openvision3.interop import transformers as registers_auto_classes
    from openvision3.models.openvision3 import OpenVision3
    assert registers_auto_classes.MODEL_TYPE
    out = heads_run[1] / "hf"
    assert cli.main(["export", "hf", "--model", str(heads_run[0] / "model"), "--out", str(out)]) == 0
    hf = AutoModel.from_pretrained(out).eval()
    vae = OpenVision3.from_pretrained(heads_run[0] / "model").vae
    x = torch.rand(2, 3, 16, 16) * 2 - 1
    with torch.no_grad():
        got = hf(pixel_values=x)
        pooled_ref, tokens_ref = tower[1](vae.encode(x))
    assert (got.last_hidden_state[:, 1:] - tokens_ref).abs().max() <= 1e-5
    assert (got.pooler_output - pooled_ref).abs().max() <= 1e-5


def test_gen_train_on_the_completed_models_tokens(heads_run, capsys):
    model, tmp = heads_run[0] / "model", heads_run[1]
    spec = "shapes?kind=single&label=color&n=48"
    rc = cli.main(["gen", "train", "--config", str(ROOT / "configs" / "gen_tiny.yaml"), "--out", str(tmp / "gen"),
                   "--no-progress", "--json", f"encoder={model}", f"data.train={spec}", f"data.val={spec}",
                   "data.resolution=16", f"cache.dir={tmp / 'gen_cache'}", "cache.max_samples=16",
                   "dit.preset=nano", "dit.width=32", "dit.depth=1", "dit.heads=2", "dit.head_width=32",
                   "dit.head_depth=1", "dit.head_heads=2", "train.batch_size=8", "train.steps=2",
                   "train.checkpoint_every=0", "train.log_every=1"])
    assert rc == 0
    assert _last_json(capsys)["status"] == "finished"
    assert (tmp / "gen" / "generator" / "generator.safetensors").is_file()


# ------------------------------------------------------------------------------------ the other paths
def test_a_bin_tower_without_freeze_fine_tunes_it_on_the_fly(tmp_path):
    """The bare `open_clip_pytorch_model.bin` (no config beside it: heads = width / 64, as the released
    towers have), encoder not frozen: no cache, the joint step, the encoder moves."""
    from openvision3.config import get_config
    from openvision3.recipes.complete import train_heads
    write_hub_tower(tmp_path / "t", width=128, bin_file=True)
    cfg = get_config(TINY, RUN + ["model.encoder.width=128",
                                  f"train.init_encoder={tmp_path / 't' / 'open_clip_pytorch_model.bin'}",
                                  f"train.token_cache={tmp_path / 'cache'}", "train.steps=2"])
    summary = train_heads(cfg, tmp_path / "run", progress=False)
    assert summary["status"] == "finished" and "token_cache" not in summary and not (tmp_path / "cache").exists()
    ref = torch.load(tmp_path / "t" / "open_clip_pytorch_model.bin", weights_only=True)
    saved = load_file(str(tmp_path / "run" / "model" / "model.safetensors"))
    assert not torch.equal(saved["encoder.conv1.weight"], ref["visual.conv1.weight"])


def test_a_saved_model_as_the_encoder_source(heads_run, tmp_path):
    """One of our models: its encoder (and its VAE) taken, fresh heads on its cached tokens."""
    from openvision3.config import get_config
    from openvision3.recipes.complete import train_heads
    src = heads_run[0] / "model"
    cfg = get_config(TINY, RUN + [f"train.init_encoder={src}", "train.freeze=[encoder.]", "train.steps=2",
                                  f"train.token_cache={tmp_path / 'cache'}"])
    summary = train_heads(cfg, tmp_path / "run", progress=False)
    assert summary["status"] == "finished" and summary["token_cache_samples"] == 32
    a, b = load_file(str(src / "model.safetensors")), load_file(str(tmp_path / "run" / "model" / "model.safetensors"))
    assert all(torch.equal(a[k], b[k]) for k in a if k.startswith("encoder."))
    assert "init_encoder_kind: openvision3" in (tmp_path / "run" / "model" / "config.yaml").read_text()


# ------------------------------------------------------------------------------------ bad input
def _train_argv(tmp_path, *extra):
    return ["train", "--config", TINY, "--out", str(tmp_path / "run"), *RUN, "train.freeze=[encoder.]",
            f"train.token_cache={tmp_path / 'cache'}", *extra]


def test_bad_towers_are_one_line_before_training(tower, tmp_path, capsys, monkeypatch):
    not_tower = tmp_path / "other.safetensors"
    save_file({"weight": torch.zeros(2, 2)}, str(not_tower))
    assert "not an OV3 vision tower" in _one_line(capsys, _train_argv(tmp_path, f"train.init_encoder={not_tower}"))
    junk = tmp_path / "junk.safetensors"
    junk.write_bytes(b"not a weights file at all")
    assert "not an OpenVision 3 vision tower" in _one_line(capsys, _train_argv(tmp_path, f"train.init_encoder={junk}"))
    assert "neither a file" in _one_line(capsys, _train_argv(tmp_path, f"train.init_encoder={tmp_path}/missing.bin"))
    # a hub id, offline, not in the (empty) cache
    import huggingface_hub.constants as hf_constants
    monkeypatch.setattr(hf_constants, "HF_HUB_OFFLINE", True)
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path / "hf"))
    monkeypatch.chdir(tmp_path)
    line = _one_line(capsys, _train_argv(tmp_path, "train.init_encoder=UCSC-VLAA/no-such-tower"))
    assert "not in the local Hugging Face cache" in line
    assert not (tmp_path / "run").exists()  # nothing written


@pytest.mark.parametrize("extra, message", [
    (["model.encoder.width=48"], "is 32 wide but model.encoder.width is 48"),
    (["model.image_size=32", "data.resolution=32"], "was trained at 16 px (4x4 tokens) but this run trains at 32 px"),
    (["model.vae.convention=shift_scale"], "convention 'shift_scale'"),
    (["model.vae.scaling_factor=1.0"], "scale 1"),
    (["train.freeze=[encoderr.]"], "matches no parameter name"),
])
def test_mismatches_are_one_line_before_training(tower, tmp_path, capsys, extra, message):
    line = _one_line(capsys, _train_argv(tmp_path, f"train.init_encoder={tower[0]}", *extra))
    assert message in line, line
    assert not (tmp_path / "run" / "metrics.jsonl").exists() and not (tmp_path / "cache").exists()


@pytest.mark.parametrize("name, tower, width, size, text_width", [
    ("complete_b2_256", "UCSC-VLAA/openvision3-vit-base-patch2-32", 768, 256, 512),
    ("complete_b2_224", "UCSC-VLAA/openvision3-vit-base-patch2-28", 768, 224, 512),
    ("complete_l2_256", "UCSC-VLAA/openvision3-vit-large-patch2-32", 1024, 256, 768),
])
def test_the_configs_for_the_released_towers(name, tower, width, size, text_width):
    from openvision3.config import get_config
    cfg = get_config(name)
    assert cfg.train.init_encoder == tower and cfg.train.freeze == ["encoder."] and cfg.data.train.startswith("wds:")
    assert cfg.model.encoder.width == width and cfg.model.image_size == cfg.data.resolution == size
    assert (cfg.model.vae.source, cfg.model.vae.convention) == ("flux-ov3", "scale")
    assert (cfg.model.decoder.width, cfg.model.decoder.layers) == (768, 12)  # a B decoder [S]
    assert cfg.model.text.width == cfg.model.caption.width == text_width  # OpenVision's text towers [C]
    assert (cfg.model.text.context_length, cfg.model.caption.context_length) == (80, 128)
