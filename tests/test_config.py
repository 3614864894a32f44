import typing

import pytest

from openvision3.config import (MODEL_PRESETS, Config, ConfigError, config_to_yaml, get_config,
                                load_config_file, parse_overrides)


def test_defaults_are_the_paper_values():
    cfg = get_config()
    assert (cfg.model.encoder.width, cfg.model.encoder.layers, cfg.model.encoder.heads) == (768, 12, 12)
    assert cfg.model.patch_size == 2
    assert (cfg.loss.w_rec, cfg.loss.w_und, cfg.loss.beta_latent, cfg.loss.alpha_contrastive) == (0.5, 1.0, 0.4, 1.0)
    assert cfg.model.vae.convention == "scale"


def test_preset_then_overrides():
    cfg = get_config(None, ["model.preset=l2", "model.encoder.layers=2", "train.lr=1e-4", "loss.lpips_net=vgg"])
    assert cfg.model.encoder.width == MODEL_PRESETS["l2"]["encoder"]["width"] == 1024
    assert cfg.model.encoder.layers == 2  # an explicit key beats the preset
    assert cfg.train.lr == 1e-4 and isinstance(cfg.train.lr, float)
    assert cfg.loss.lpips_net == "vgg"


def test_unknown_key_names_the_closest_valid_one():
    with pytest.raises(ConfigError) as e:
        get_config(None, ["train.lerning_rate=1"])
    assert "train.lerning_rate" in str(e.value) and "\n" not in str(e.value)
    with pytest.raises(ConfigError, match="did you mean model.noise_tau"):
        get_config(None, ["model.noise_ta=0.5"])


def test_wrong_type_is_one_line():
    with pytest.raises(ConfigError, match="train.steps.*expects int"):
        get_config(None, ["train.steps=abc"])
    with pytest.raises(ConfigError, match="expects true/false"):
        get_config(None, ["train.compile=maybe"])


def test_unknown_preset_and_missing_file():
    with pytest.raises(ConfigError, match="unknown model preset 'b3'"):
        get_config(None, ["model.preset=b3"])
    with pytest.raises(ConfigError, match="not found"):
        get_config("no_such_config")
    with pytest.raises(ConfigError, match="key=value"):
        parse_overrides(["train.lr"])


def test_choice_keys_are_checked_when_the_config_is_built():
    assert get_config().model.pool == "mean"  # the released towers average [C]
    assert get_config(None, ["model.pool=max"]).model.pool == "max"
    with pytest.raises(ConfigError, match="config key 'model.pool' must be one of mean, max, got 'cls'"):
        get_config(None, ["model.pool=cls"])
    assert get_config(None, ["train.attention_kernel=math"]).train.attention_kernel == "math"
    with pytest.raises(ConfigError, match="'train.attention_kernel' must be one of auto, math, default"):
        get_config(None, ["train.attention_kernel=flash"])
    for key, bad in [("train.precision", "fp16"), ("loss.lpips_net", "squeeze"),
                     ("data.shapes.captions", "long"), ("model.vae.convention", "shift")]:
        with pytest.raises(ConfigError, match=f"config key '{key}' must be one of"):
            get_config(None, [f"{key}={bad}"])
    from openvision3.train.vae_config import get_vae_config
    with pytest.raises(ConfigError, match="config key 'precision' must be one of auto, bf16, fp32"):
        get_vae_config(None, ["precision=fp16"])


def test_every_config_choice_is_one_the_code_accepts():
    """The Literal choices in config.py and the modules that act on them must agree."""
    import torch
    from openvision3.config import CaptionStyle, LatentConvention, LpipsNet, Precision, VAEConfig
    from openvision3.data.shapes import render
    from openvision3.perceptual import LPIPS_NETS
    from openvision3.models.vae import FrozenVAE
    from openvision3.train.precision import resolve_precision
    assert set(typing.get_args(LpipsNet)) == set(LPIPS_NETS)
    for style in typing.get_args(CaptionStyle):
        assert render(0, split="train", kind="multi", resolution=32, captions=style)[1]
    for convention in typing.get_args(LatentConvention):
        vae = FrozenVAE(VAEConfig(source="inline", convention=convention, shift_factor=0.1, latent_channels=4,
                                  block_out_channels=[8, 16], norm_num_groups=4))
        assert vae.encode(torch.zeros(1, 3, 16, 16)).shape == (1, 4, 8, 8)
    cpu = torch.device("cpu")
    assert resolve_precision("fp32", cpu) is None
    assert resolve_precision("auto", cpu) in (None, torch.bfloat16)
    for name in typing.get_args(Precision):
        try:
            resolve_precision(name, cpu)
        except ConfigError as e:  # only an explicit bf16 on a CPU without it may refuse
            assert name == "bf16" and "no bf16 support" in str(e)
    with pytest.raises(ConfigError, match="precision must be one of auto, bf16, fp32"):
        resolve_precision("fp16", cpu)


def test_yaml_round_trip(tmp_path):
    cfg = get_config(None, ["model.preset=nano", "train.stages=[{resolution: 64, steps: 3}]"])
    assert cfg.train.stages[0].resolution == 64 and cfg.train.stages[0].lr is None
    path = tmp_path / "c.yaml"
    path.write_text(config_to_yaml(cfg))
    assert load_config_file(path) == cfg
    assert get_config(str(path)) == cfg
    assert isinstance(cfg, Config)


def test_every_shipped_config_loads():
    from openvision3.config import CONFIG_DIR
    from openvision3.train.vae_config import get_vae_config
    names = sorted(p.stem for p in CONFIG_DIR.glob("*.yaml"))
    assert names, "configs/ is empty"
    from openvision3.generation.config import get_gen_config
    from openvision3.interop.transformers import llava_recipe
    loaders = {"vae_": get_vae_config, "llava": llava_recipe, "gen_": get_gen_config}  # the rest: `ov3 train`
    for name in names:
        next((load for prefix, load in loaders.items() if name.startswith(prefix)), get_config)(name)


def test_benchmark_reference_configs_load():
    """benchmarks/demo_cost.py times these old recipes against the current one."""
    from pathlib import Path

    from openvision3.train.vae_config import get_vae_config
    bench = Path(__file__).resolve().parents[1] / "benchmarks" / "configs"
    for path in sorted(bench.glob("*.yaml")):
        (get_vae_config if path.name.startswith("vae_") else get_config)(str(path))


def test_a_flat_shapes_key_is_one_line_naming_its_new_place():
    with pytest.raises(ConfigError, match=r"^config key 'data.shapes_memo' is now 'data.shapes.memo'$"):
        get_config("demo", ["data.shapes_memo=true"])
    from openvision3.train.vae_config import get_vae_config  # the VAE tree nests the same DataConfig
    with pytest.raises(ConfigError, match="'data.shapes_captions' is now 'data.shapes.captions'"):
        get_vae_config("vae_demo", ["data.shapes_captions=compact"])


def test_a_saved_config_with_flat_shapes_keys_reads_as_the_nested_one(tmp_path):
    """A model or run directory saved while the `shapes` options were flat keys still loads, to the
    same values."""
    import yaml
    cfg = get_config("demo")
    values = yaml.safe_load(config_to_yaml(cfg))
    shapes = values["data"].pop("shapes")
    values["data"].update({f"shapes_{k}": v for k, v in shapes.items()})
    path = tmp_path / "config.yaml"
    path.write_text(yaml.safe_dump(values))
    old = load_config_file(path)
    assert old == cfg and old.data.shapes.captions == "compact" and old.data.shapes.single_switch == 24064
