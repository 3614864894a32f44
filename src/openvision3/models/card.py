"""The model card (``README.md`` with Hub metadata) written beside saved weights by ``save_pretrained``,
``ov3 export hf`` and ``ov3 push`` (docs/llava.md, "The Hub"): through huggingface_hub's
``ModelCardData``, the evaluation results found in the directory as ``model-index`` and, because the
tokens mean nothing without it, the VAE the encoder reads and its latent convention.
"""
from __future__ import annotations

import contextlib
import json
from pathlib import Path

EVAL_FILES = {"eval": "eval/eval.json", "llava_probe": "eval/llava_probe.json"}
# (task in eval.json, key) -> (Hub task type, metric type, readable name); what the card reports
_METRICS = {
    ("recon", "psnr"): ("image-to-image", "psnr", "reconstruction PSNR (dB)"),
    ("recon", "ssim"): ("image-to-image", "ssim", "reconstruction SSIM"),
    ("recon", "lpips_alex"): ("image-to-image", "lpips", "reconstruction LPIPS (AlexNet)"),
    ("zeroshot", "top1"): ("zero-shot-image-classification", "accuracy", "zero-shot top-1"),
    ("retrieval", "t2i_r5"): ("image-text-retrieval", "recall@5", "text-to-image R@5"),
    ("retrieval", "i2t_r1"): ("image-text-retrieval", "recall@1", "image-to-text R@1"),
    ("caption", "bleu4"): ("image-to-text", "bleu", "captioning BLEU-4"),
    ("caption", "cider"): ("image-to-text", "cider", "captioning CIDEr"),
    ("probe", "top1"): ("image-classification", "accuracy", "linear probe top-1"),
}
TAGS = ["openvision3", "unified-visual-encoder", "vision", "image-feature-extraction", "vae-latents"]
VAE_KEYS = ("source", "convention", "scaling_factor", "shift_factor", "latent_channels")


def read_results(directory) -> dict:
    """The evaluation files present in a model directory, by name (see EVAL_FILES)."""
    out = {}
    for name, rel in EVAL_FILES.items():
        with contextlib.suppress(OSError, json.JSONDecodeError):  # absent, or half-written: no result
            out[name] = json.loads((Path(directory) / rel).read_text())
    return out


def _eval_results(results: dict) -> list:
    from huggingface_hub import EvalResult
    rows = []
    ev = results.get("eval") or {}
    data = (ev.get("meta") or {}).get("data", "unknown")
    for (task, key), (task_type, metric_type, name) in _METRICS.items():
        value = (ev.get(task) or {}).get(key)
        if isinstance(value, (int, float)):
            rows.append(EvalResult(task_type=task_type, dataset_type=data, dataset_name=f"{data} (held-out)",
                                   metric_type=metric_type, metric_value=round(float(value), 4),
                                   metric_name=name))
    probe = results.get("llava_probe") or {}
    if isinstance(probe.get("accuracy"), (int, float)):
        rows.append(EvalResult(task_type="visual-question-answering", dataset_type="shapes-vqa",
                               dataset_name="shapes templated VQA (held-out), ov3 probe llava",
                               metric_type="exact_match", metric_value=round(float(probe["accuracy"]), 4),
                               metric_name="LLaVA probe exact match"))
    return rows


def _vae_lines(vae: dict) -> list[str]:
    return [f"- source: `{vae.get('source')}` (saved under `vae/` when it is not a hub id)",
            f"- latent convention: `{vae.get('convention')}` ("
            + ("latents = posterior mean x scaling_factor, no shift, as the released OV3 code [C]"
               if vae.get("convention") == "scale" else "latents = (posterior mean - shift_factor) x scaling_factor")
            + f"); scaling_factor {vae.get('scaling_factor')}, shift_factor {vae.get('shift_factor')}",
            f"- latent channels: {vae.get('latent_channels')}"]


def _provenance_lines(cfg: dict) -> list[str]:
    """Which parts came from where, for a model whose encoder started from ``train.init_encoder``."""
    t = cfg.get("train", {})
    source, freeze = t.get("init_encoder"), t.get("freeze") or []
    if not source:
        return []
    origin = (f"the released OpenVision 3 vision tower `{source}` (weights by UCSC-VLAA)"
              if t.get("init_encoder_kind") == "released" else f"the OpenVision 3 model `{source}`")
    frozen = any("encoder.".startswith(f) for f in freeze)
    part = [f for f in freeze if f.startswith("encoder.") and not "encoder.".startswith(f)]
    state = ("frozen: its weights are those of the source, bit for bit" if frozen else
             f"fine-tuned here, except the frozen {', '.join(part)}" if part else "fine-tuned here")
    heads = [name for prefix, name in (("decoder.", "latent decoder"), ("text_encoder.", "text encoder"),
                                       ("caption_decoder.", "caption decoder"), ("logit_scale", "logit scale"))
             if not any(prefix.startswith(f) for f in freeze)]
    return ["## Where the parts come from", "",
            f"- encoder (the unified ViT and its pooled read-out `ln_post`, `proj`): from {origin}; {state}",
            f"- trained here: {', '.join(heads) or 'nothing'}", "- the VAE: frozen, not trained by anyone here", ""]


def build_card(kind: str, info: dict, results: dict, license: str = "apache-2.0"):
    """A ``huggingface_hub.ModelCard``. ``kind``: "openvision3" (a whole saved model; ``info`` holds
    ``config``, the nested Config dict) or "transformers" (the vision tower; ``info["config"]`` is its
    OpenVision3VisionConfig dict)."""
    from huggingface_hub import ModelCard, ModelCardData
    cfg = info.get("config") or {}
    if kind == "openvision3":
        m = cfg.get("model", {})
        vae = {**m.get("vae", {}), **{k: v for k, v in (info.get("vae_resolved") or {}).items() if v is not None}}
        name = info.get("name") or f"OpenVision 3 ({m.get('preset')}, {m.get('image_size')} px)"
        library = "openvision3"
        arch = (f"encoder {m.get('encoder', {}).get('width')} wide x {m.get('encoder', {}).get('layers')} "
                f"layers, patch {m.get('patch_size')} over VAE latents, image size {m.get('image_size')} px, "
                f"{m.get('tokenizer')} tokenizer")
        load = ["```python", "from openvision3 import OpenVision3",
                "model = OpenVision3.from_pretrained(\"PATH_OR_HUB_ID\")  # hub ids work offline from the cache",
                "tokens = model.encode_image(images)   # images (B, 3, H, W) in [-1, 1] -> (B, N, D)", "```"]
    else:
        vae = {k: cfg.get(k if k == "latent_channels" else f"vae_{k}") for k in VAE_KEYS}
        name = info.get("name") or (f"OpenVision 3 vision tower ({cfg.get('hidden_size')} wide, "
                                    f"{cfg.get('num_hidden_layers')} layers, {cfg.get('image_size')} px)")
        library = "transformers"
        arch = (f"{cfg.get('hidden_size')} wide x {cfg.get('num_hidden_layers')} layers, "
                f"{cfg.get('patch_size')} px per token, {cfg.get('image_size')} px input; the frozen VAE "
                "is inside the checkpoint")
        load = ["```python", "from transformers import AutoImageProcessor, AutoModel",
                "# the modeling file travels with the weights: torch, transformers and diffusers suffice",
                "tower = AutoModel.from_pretrained(\"PATH_OR_HUB_ID\", trust_remote_code=True)",
                "processor = AutoImageProcessor.from_pretrained(\"PATH_OR_HUB_ID\")",
                "out = tower(**processor(images, return_tensors=\"pt\"), output_hidden_states=True)",
                "# out.hidden_states[i]: (B, 1 + N, D), class slot first; LLaVA-1.5 reads [-2][:, 1:]", "```",
                "", "With openvision3 installed, `import openvision3.interop.transformers` registers the "
                "same classes and `trust_remote_code` is not needed.", "",
                "Under a language model: `LlavaForConditionalGeneration` with this tower as "
                "`vision_config` (`openvision3.interop.transformers.llava_config`), "
                "`vision_feature_layer=-2`, `vision_feature_select_strategy=\"default\"`; see docs/llava.md."]
    rows = _eval_results(results)
    data = ModelCardData(library_name=library, license=license, tags=list(TAGS),
                         pipeline_tag="image-feature-extraction", model_name=name,
                         eval_results=rows or None, vae={k: vae.get(k) for k in VAE_KEYS})
    body = [f"# {name}", "",
            "A unified visual encoder in the OpenVision 3 design (arXiv 2601.15369): a ViT over the "
            "latents of a frozen VAE, trained for reconstruction and for CLIP-style contrastive "
            "learning and captioning, trained or converted with the `openvision3` package.", "",
            f"Architecture: {arch}.", "", "## The VAE it needs", "",
            "The encoder reads normalised VAE latents, not pixels; use the same VAE and convention:", "",
            *_vae_lines(vae), "", "## How to load", "", *load, ""]
    body += _provenance_lines(cfg)  # nothing for a tower: only a whole model's config has ``train``
    if info.get("origin") == "released":
        body += [f"Converted from the released tower `{info.get('source')}` (weights by UCSC-VLAA).", ""]
    if rows:
        body += ["## Evaluation (held-out)", "", "| metric | data | value |", "|---|---|---:|"]
        body += [f"| {r.metric_name} | {r.dataset_name} | {r.metric_value} |" for r in rows]
        probe = results.get("llava_probe") or {}
        if probe.get("per_type"):
            body += ["", "LLaVA probe per question type (exact match; majority-answer baseline): "
                     + ", ".join(f"{t} {v:.3f} ({probe.get('baselines', {}).get(t, float('nan')):.3f})"
                                 for t, v in probe["per_type"].items())]
        body.append("")
    return ModelCard(f"---\n{data.to_yaml()}\n---\n\n" + "\n".join(body))


def write_card(directory, kind: str, info: dict, results: dict | None = None) -> Path:
    """Write ``directory/README.md``; ``results`` default to the evaluation files found there."""
    directory = Path(directory)
    vae_cfg = directory / "vae" / "config.json"  # a saved VAE: its factors as resolved, not the config's None
    if kind == "openvision3" and vae_cfg.is_file() and "vae_resolved" not in info:
        vc = json.loads(vae_cfg.read_text())
        info = {**info, "vae_resolved": {k: vc.get(k) for k in ("scaling_factor", "shift_factor")}}
    card = build_card(kind, info, read_results(directory) if results is None else results)
    path = directory / "README.md"
    path.write_text(str(card), encoding="utf-8")
    return path


__all__ = ["build_card", "write_card", "read_results", "EVAL_FILES"]
