"""An exported tower loads in a Python process that has never imported openvision3 (remote code).

The reference is computed here from our own modules (FrozenVAE.encode, UnifiedEncoder.embed, the
encoder's blocks), not from the transformers class, so the shipped modeling file is checked
against the package's tower every time the suite runs.
"""
import ast
import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from safetensors.torch import load_file, save_file
from transformers import AutoImageProcessor, LlavaForConditionalGeneration

from openvision3.cli import main
from openvision3.interop import modeling_openvision3
from openvision3.interop import transformers as ov3hf
from openvision3.models.openvision3 import OpenVision3

IMAGE_TOKEN, VOCAB = 39, 40

# the first lines of every child: any import of openvision3 fails, so "never imported" is checked
NO_OPENVISION3 = """
import sys
class NoOpenVision3:
    def find_spec(self, name, path=None, target=None):
        if name.split(".")[0] == "openvision3":
            raise ImportError(f"{name} imported in a process that must not know openvision3")
sys.meta_path.insert(0, NoOpenVision3())
import json
import torch
from safetensors.torch import load_file, save_file
hf, work = sys.argv[1], sys.argv[2]
ref = load_file(f"{work}/reference.safetensors")
"""

TOWER_AND_LLAVA = NO_OPENVISION3 + """
from PIL import Image
from transformers import AutoImageProcessor, AutoModel, LlamaConfig, LlavaConfig, LlavaForConditionalGeneration
tower = AutoModel.from_pretrained(hf, trust_remote_code=True).eval()
proc = AutoImageProcessor.from_pretrained(hf)
pixels = proc(images=[Image.open(f"{work}/image_{i}.png") for i in range(2)], return_tensors="pt")["pixel_values"]
with torch.no_grad():
    out = tower(pixels, output_hidden_states=True)
result = {"tower_module": type(tower).__module__, "n_hidden": len(out.hidden_states),
          "pixels_diff": (pixels - ref["pixels"]).abs().max().item(),
          "hidden_diff": max((h - ref[f"hidden_{i}"]).abs().max().item() for i, h in enumerate(out.hidden_states)),
          "pooler_diff": (out.pooler_output - ref["pooled"]).abs().max().item()}
text = LlamaConfig(vocab_size=40, hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=2,
                   num_key_value_heads=2, max_position_embeddings=128, pad_token_id=0, bos_token_id=1, eos_token_id=2)
n_image = int((ref["input_ids"] == 39).sum(1)[0])
config = LlavaConfig(vision_config=tower.config, text_config=text, image_token_id=39, vision_feature_layer=-2,
                     vision_feature_select_strategy="default", image_seq_length=n_image)
torch.manual_seed(0)
llava = LlavaForConditionalGeneration(config).eval()
llava.model.vision_tower.load_state_dict(tower.state_dict())
with torch.no_grad():
    logits = llava(input_ids=ref["input_ids"], pixel_values=pixels).logits
generated = llava.generate(input_ids=ref["input_ids"], pixel_values=pixels, max_new_tokens=3, do_sample=False)
llava.save_pretrained(f"{work}/llava")
save_file({"logits": logits.contiguous(), "generated": generated.contiguous()}, f"{work}/llava_out.safetensors")
result["generated_shape"] = list(generated.shape)
result["openvision3_imported"] = [m for m in sys.modules if m.split(".")[0] == "openvision3"]
print(json.dumps(result))
"""

LLAVA_RELOAD = NO_OPENVISION3 + """
from transformers import AutoConfig, LlavaForConditionalGeneration
AutoConfig.from_pretrained(hf, trust_remote_code=True)  # imports the tower's file: registers its model type
llava = LlavaForConditionalGeneration.from_pretrained(f"{work}/llava").eval()
saved = load_file(f"{work}/llava_out.safetensors")
with torch.no_grad():
    logits = llava(input_ids=ref["input_ids"], pixel_values=ref["pixels"]).logits
generated = llava.generate(input_ids=ref["input_ids"], pixel_values=ref["pixels"], max_new_tokens=3, do_sample=False)
print(json.dumps({"tower_module": type(llava.model.vision_tower).__module__,
                  "logits_diff": (logits - saved["logits"]).abs().max().item(),
                  "same_generation": bool(torch.equal(generated, saved["generated"])),
                  "openvision3_imported": [m for m in sys.modules if m.split(".")[0] == "openvision3"]}))
"""


def run_without_openvision3(script: str, hf: Path, work: Path) -> dict:
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    env.update(HF_HOME=str(work / "hf_home"), HF_HUB_OFFLINE="1")  # the remote-code module cache lives here
    r = subprocess.run([sys.executable, "-c", script, str(hf), str(work)], cwd=work, env=env,
                       capture_output=True, text=True, timeout=600)
    assert r.returncode == 0, r.stderr[-3000:]
    return json.loads(r.stdout.strip().splitlines()[-1])


def reference_hidden_states(model: OpenVision3, pixels: torch.Tensor) -> list[torch.Tensor]:
    """The tower's hidden states from our own modules: the VAE, the encoder's embedding, its blocks."""
    x = model.encoder.embed(model.vae.encode(pixels))
    hidden = [x]
    for block in model.encoder.transformer.resblocks:
        x = block(x)
        hidden.append(x)
    return hidden


@pytest.fixture
def exported(tiny_cfg, tmp_path):
    cfg = tiny_cfg
    cfg.model.encoder.layers = 2  # vision_feature_layer=-2 then reads a block, not the embedding
    torch.manual_seed(0)
    model = OpenVision3(cfg).eval()
    model.save_pretrained(tmp_path / "model")
    assert main(["export", "hf", "--model", str(tmp_path / "model"), "--out", str(tmp_path / "hf")]) == 0
    return model, tmp_path / "hf"


def test_export_ships_the_package_file_and_names_it_in_auto_map(exported):
    _, hf = exported
    config = json.loads((hf / "config.json").read_text())
    assert config["auto_map"] == {"AutoConfig": "modeling_openvision3.OpenVision3VisionConfig",
                                  "AutoModel": "modeling_openvision3.OpenVision3VisionModel"}
    shipped = (hf / "modeling_openvision3.py").read_bytes()
    assert shipped == Path(modeling_openvision3.__file__).read_bytes()  # a copy, never a second version
    nodes = list(ast.walk(ast.parse(shipped)))
    imported = {a.name.split(".")[0] for n in nodes if isinstance(n, ast.Import) for a in n.names}
    imported |= {n.module.split(".")[0] for n in nodes if isinstance(n, ast.ImportFrom) and n.level == 0}
    assert imported <= {"__future__", "collections", "torch", "transformers", "diffusers"}, imported
    assert not any(isinstance(n, ast.ImportFrom) and n.level for n in nodes)  # no relative imports either
    assert json.loads((hf / "preprocessor_config.json").read_text())["image_processor_type"] == "CLIPImageProcessor"


def test_exported_tower_and_llava_load_where_openvision3_is_not_installed(exported, tmp_path):
    model, hf = exported
    work = tmp_path / "work"
    work.mkdir()
    rng = np.random.default_rng(0)
    for i in range(2):
        Image.fromarray(rng.integers(0, 256, (40, 48, 3), dtype=np.uint8)).save(work / f"image_{i}.png")
    proc = AutoImageProcessor.from_pretrained(hf)
    pixels = proc(images=[Image.open(work / f"image_{i}.png") for i in range(2)], return_tensors="pt")["pixel_values"]
    with torch.no_grad():
        hidden = reference_hidden_states(model, pixels)
        z_u = model.encode_image(pixels)
    torch.testing.assert_close(hidden[-1][:, 1:], z_u, atol=1e-5, rtol=0)  # the walk is the encoder's own
    n_image = ov3hf.num_image_tokens(ov3hf.vision_model_from_openvision3(model).config)
    ids = torch.cat([torch.ones(2, 1, dtype=torch.long), torch.full((2, n_image), IMAGE_TOKEN),
                     torch.randint(3, IMAGE_TOKEN, (2, 4), generator=torch.Generator().manual_seed(0))], 1)
    save_file({"pixels": pixels.contiguous(), "pooled": model.image_features(z_u).contiguous(), "input_ids": ids,
               **{f"hidden_{i}": h.contiguous() for i, h in enumerate(hidden)}}, str(work / "reference.safetensors"))

    first = run_without_openvision3(TOWER_AND_LLAVA, hf, work)
    assert first["openvision3_imported"] == []
    assert first["tower_module"].startswith("transformers_modules.") and \
        first["tower_module"].endswith(".modeling_openvision3")
    assert first["pixels_diff"] == 0  # the stock image processor, as here
    assert first["n_hidden"] == len(hidden)
    assert first["hidden_diff"] < 1e-5 and first["pooler_diff"] < 1e-5, first  # fp32 tolerance
    assert first["generated_shape"] == [2, ids.shape[1] + 3]

    again = run_without_openvision3(LLAVA_RELOAD, hf, work)
    assert again["openvision3_imported"] == []
    assert again["tower_module"].endswith(".modeling_openvision3")
    assert again["logits_diff"] == 0 and again["same_generation"], again

    # and the package reads the LLaVA saved without it, with its own registered classes
    llava = LlavaForConditionalGeneration.from_pretrained(work / "llava").eval()
    assert type(llava.model.vision_tower) is ov3hf.OpenVision3VisionModel
    with torch.no_grad():
        logits = llava(input_ids=ids, pixel_values=pixels).logits
    assert torch.equal(logits, load_file(str(work / "llava_out.safetensors"))["logits"])
