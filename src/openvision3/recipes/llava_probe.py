"""`ov3 probe llava`: LLaVA-1.5's recipe in miniature on `shapes`, with the real transformers classes.

The paper's third claim (PAPER.md, "Understanding, LLaVA-1.5") is that frozen OV3 tokens serve a
language model about as well as CLIP's. This probe asks the same question at CPU scale:

    frozen tower (VAE + unified encoder, ``interop/transformers.py``), hidden_states[-2][:, 1:]
      -> LLaVA-1.5's projector (Linear-GELU-Linear)  -> a small Llama trained from scratch
    LlavaForConditionalGeneration, LlavaProcessor, LlamaConfig: transformers' own classes.

Stages (LLaVA-1.5 [P: Liu et al. 2023, "Improved Baselines with Visual Instruction Tuning"]):
  0. the language model's own pretraining, in miniature [?]: next-token prediction on caption text
     alone (LLaVA starts from a pretrained Vicuna; ours starts from nothing, so it first learns
     the words);
  1. feature alignment: the projector alone learns to caption images (LM and tower frozen) [P];
  2. visual instruction tuning: projector + LM on templated questions, several turns per image in
     random order as LLaVA-1.5's conversations [P]; the tower stays frozen [P].
Questions about `shapes` images (1-3 objects), one answer word each (llava_probe_data.py): colour,
count, relation, exists. Held-out exact match on the `test` split, per type and overall, beside each
type's majority-answer baseline (``majority_baselines``). The tokenizer is a closed word-level one.
"""
from __future__ import annotations

import contextlib
import dataclasses
import json
import random
import tempfile
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import torch

from ..config_build import Fraction, NonNegFloat, PosInt, _build, parse_overrides
from ..train.optim import LRSchedule
from ..train.run import Parts, Run, RunSettings, RunStopped, Task, run_task

from .llava_probe_data import (CAPTION_INSTRUCTION, QUESTION_TYPES, SPECIAL, _ids, build_tokenizer,
                              caption_sequence, conversation_sequence, eval_prompt, render_pool)


class ProbeError(ValueError):
    """A probe that cannot run as asked (bad model directory, bad layer). One line for the user."""


@dataclass
class ProbeConfig:
    """Sizes and schedule; [P] LLaVA-1.5's published choice, [?] ours for 2 CPU cores."""

    train_images: PosInt = 4000  # [?] rendered once; stage 2 sees each about (steps x batch / n) times
    test_images: PosInt = 500  # [?] held-out `test` split, every applicable question of each image
    single_fraction: Fraction = 1 / 3  # [?] 1, 2 and 3 objects equally often (balanced counts)
    # [?] a Llama of ~0.5 M parameters (LLaVA-1.5: Vicuna 7B/13B [P]) and a schedule sized by
    # FLOPs (about 6 x params x tokens) to fit 10 min on 2 CPU cores with the demo's 64 image tokens
    lm_width: PosInt = 96
    lm_layers: PosInt = 4
    lm_heads: PosInt = 4
    lm_mlp: PosInt = 384
    stage0_steps: PosInt = 100
    stage1_steps: PosInt = 200
    stage2_steps: PosInt = 800
    batch_size: PosInt = 32  # [?] LLaVA-1.5: 256 in stage 1, 128 in stage 2 [P]
    lr0: NonNegFloat = 1e-3  # [?]
    lr1: NonNegFloat = 1e-3  # [P] LLaVA-1.5 stage 1
    lr2: NonNegFloat = 5e-4  # [?] LLaVA-1.5 stage 2 uses 2e-5 on a pretrained LM [P]; ours is from scratch
    warmup_ratio: Fraction = 0.03  # [P] LLaVA-1.5, cosine decay after it [P]
    weight_decay: NonNegFloat = 0.0  # [P] LLaVA-1.5
    max_new_tokens: PosInt = 3
    vision_feature_layer: int = -2  # [P] LLaVA-1.5: the penultimate layer
    # [?] the frozen tower's features computed once per training image (tower_features) instead of
    # on every step: the same numbers up to float rounding, a stage-2 step 1.42x faster on 2 CPU
    # cores (benchmarks/llava_probe_cache.py). Evaluation always runs the unchanged LLaVA path
    # from pixels (processor + generate).
    cache_features: bool = True
    seed: int = 0
    data_seed: int = 0  # the `shapes` generator seed (the data itself)


def probe_config(overrides: list[str] | None = None) -> ProbeConfig:
    """``ProbeConfig`` with ``key=value`` overrides, through the project's typed builder (one
    line for an unknown key, a bad type or a value out of bounds)."""
    return _build(ProbeConfig, parse_overrides(list(overrides or [])), "")


# ------------------------------------------------------------------------------------------------
# the model


def load_tower(model_dir: str, features: str = "tokens"):
    """The frozen vision tower for ``model_dir``: a saved OpenVision3 directory, or a transformers
    tower written by ``ov3 export hf``. ``features="vae"``: the model's VAE latents alone (the floor)."""
    from ..interop import transformers as ov3hf
    path = Path(model_dir)
    from ..models.openvision3 import OpenVision3, is_saved_model
    if is_saved_model(path):
        model = OpenVision3.from_pretrained(path)
        if features == "vae":
            return ov3hf.vae_latent_model(model.vae, model.image_size, model.cfg.model.patch_size)
        return ov3hf.vision_model_from_openvision3(model)
    cfg_file = path / "config.json"
    if cfg_file.is_file() and json.loads(cfg_file.read_text()).get("model_type") == ov3hf.MODEL_TYPE:
        from transformers import AutoModel
        tower = AutoModel.from_pretrained(path)
        if features == "vae":
            return ov3hf.vae_latent_model(tower.vae, tower.config.image_size, tower.config.latent_patch_size)
        return tower
    raise ProbeError(f"'{model_dir}' is not an OpenVision 3 model: no config.yaml + model.safetensors "
                     "(OpenVision3.save_pretrained) and no transformers config.json of type "
                     f"{ov3hf.MODEL_TYPE} (ov3 export hf)")


def build_llava(tower, tok, pcfg: ProbeConfig, layer: int):
    from transformers import LlamaConfig, LlavaForConditionalGeneration

    from ..config import ConfigError
    from ..interop import transformers as ov3hf
    text = LlamaConfig(vocab_size=len(tok), hidden_size=pcfg.lm_width, intermediate_size=pcfg.lm_mlp,
                       num_hidden_layers=pcfg.lm_layers, num_attention_heads=pcfg.lm_heads,
                       num_key_value_heads=pcfg.lm_heads, max_position_embeddings=512,
                       pad_token_id=tok.pad_token_id, bos_token_id=tok.bos_token_id,
                       eos_token_id=tok.eos_token_id, tie_word_embeddings=False)
    try:
        cfg = ov3hf.llava_config(tower.config, text, image_token_id=tok.convert_tokens_to_ids(SPECIAL["image"]),
                                 vision_feature_layer=layer)
    except ConfigError as e:
        raise ProbeError(str(e)) from None
    llava = LlavaForConditionalGeneration(cfg)
    llava.model.vision_tower.load_state_dict(tower.state_dict())
    return llava


# ------------------------------------------------------------------------------------------------
# training and evaluation


class ProbeBatches:
    """Endless random batches of ``n`` samples: ``sequences(i)`` -> (ids, labels) of sample i; ``images``
    (None for text only) go in as ``batch[key]``: pixel values, or cached ``image_features``. Its
    position is the state of the random streams it draws from (``rngs``: the batch draw, and any the
    sequences use), so a stopped stage continues with the very next batch."""

    def __init__(self, sequences, images, batch_size: int, tok, rngs: dict, key: str = "pixel_values",
                 n: int | None = None):
        self.sequences, self.images, self.batch_size, self.tok, self.rngs, self.key = (
            sequences, images, batch_size, tok, rngs, key)
        self.n = n or len(images)

    def __iter__(self):
        return self

    def __next__(self) -> dict:
        idx = [self.rngs["batch"].randrange(self.n) for _ in range(self.batch_size)]
        rows = [self.sequences(i) for i in idx]
        ids = _pad([r[0] for r in rows], self.tok.pad_token_id)
        batch = {"input_ids": ids, "attention_mask": (ids != self.tok.pad_token_id).long(),
                 "labels": _pad([r[1] for r in rows], -100)}
        if self.images is not None:
            batch[self.key] = self.images[idx]
        return batch

    def state_dict(self) -> dict:
        return {name: rng.getstate() for name, rng in self.rngs.items()}

    def load_state_dict(self, state: dict) -> None:
        for name, rng in self.rngs.items():
            version, internal, gauss = state[name]
            rng.setstate((version, tuple(internal), gauss))


class ProbeStageTask(Task):
    """One LLaVA stage: the parameters the stage trains (set before), AdamW, LLaVA-1.5's warmup +
    cosine [P], and LLaVA's own loss on the stage's batches."""

    def __init__(self, llava, name: str, steps: int, lr: float, pcfg: ProbeConfig, batches: ProbeBatches):
        self.llava, self.name, self.steps, self.lr_peak, self.pcfg, self.batches = llava, name, steps, lr, pcfg, batches
        self.lr = LRSchedule(lr, steps, max(1, int(round(steps * pcfg.warmup_ratio))))  # Task.lr(step)

    def settings(self) -> RunSettings:
        # fp32 on the CPU, one process, as the probe is measured; a checkpoint every 200 steps
        return RunSettings(steps=self.steps, seed=self.pcfg.seed, precision="fp32", grad_clip=1.0, log_every=10,
                           checkpoint_every=200, keep_last=1, device="cpu", distributed=False)

    def build(self, run: Run) -> Parts:
        self.run = run
        params = [p for p in self.llava.parameters() if p.requires_grad]
        opt = lambda: torch.optim.AdamW(params, lr=self.lr_peak, weight_decay=self.pcfg.weight_decay,  # noqa: E731
                                        betas=(0.9, 0.999))
        self.llava.train()
        self.llava.model.vision_tower.eval()  # frozen [P]
        keys = {k for k in self.llava.state_dict() if not k.startswith("model.vision_tower.")}
        return Parts(self.llava, opt, self.batches, weight_keys=keys)

    def batch(self, step: int) -> dict:
        return next(self.batches)

    def losses(self, batch: dict, step: int) -> dict:
        return {"loss": llava_forward(self.run.model, batch).loss}


def _train_stage(task: ProbeStageTask, run_dir: Path, resume, overwrite: bool, progress: bool) -> float:
    """Train one stage in ``run_dir`` (or take a stage finished before: its final checkpoint's
    weights and random streams); returns its mean loss over the last 20 steps."""
    import yaml

    from ..train.checkpoint import load_checkpoint
    from ..train.distributed import load_full_state_dict
    from ..train.logging import read_metrics
    final = run_dir / "checkpoints" / f"step_{task.steps}"
    if resume and final.is_dir():
        ckpt = load_checkpoint(final)
        load_full_state_dict(task.llava, ckpt["model"])
        task.batches.load_state_dict(ckpt["trainer_state"]["data"][0])
    else:
        stage = {"stage": task.name, "steps": task.steps, "lr": task.lr_peak, "probe": asdict(task.pcfg)}
        summary = run_task(task, task.settings(), run_dir, config_yaml=yaml.safe_dump(stage, sort_keys=False),
                           resume=resume, overwrite=overwrite, progress=progress)
        if summary["status"] != "finished":
            raise RunStopped(f"{task.name} {summary['status']} at step {summary['step']}/{summary['total_steps']}; "
                             f"run the same command with --resume auto to continue it")
    rows = [r for r in read_metrics(run_dir / "metrics.jsonl") if "loss" in r and r["step"] > task.steps - 20]
    return float(np.mean([r["loss"] for r in rows])) if rows else float("nan")


@torch.no_grad()
def tower_features(llava, pixel_values, batch_size: int = 256) -> torch.Tensor:
    """What LLaVA reads from the frozen tower for each image (``vision_feature_layer``, then
    ``vision_feature_select_strategy``, as ``LlavaModel.get_image_features`` selects them), before
    the projector. The tower is frozen and in eval mode [P], so this is the same on every step:
    computing it once per training image made a stage-2 step 1.42x faster on 2 CPU cores."""
    cfg, tower = llava.config, llava.model.vision_tower
    was_training = tower.training
    tower.eval()
    out = []
    for s in range(0, len(pixel_values), batch_size):
        hidden = tower(pixel_values[s:s + batch_size], output_hidden_states=True).hidden_states
        feats = hidden[cfg.vision_feature_layer]
        out.append(feats[:, 1:] if cfg.vision_feature_select_strategy == "default" else feats)
    tower.train(was_training)
    return torch.cat(out)


def llava_forward(llava, batch: dict):
    """``llava(**batch)``; a batch with cached ``image_features`` (``tower_features``) instead of
    ``pixel_values`` goes through the projector and into the image-token slots the way LLaVA's own
    forward does (projector, placeholder mask, masked_scatter), then into LLaVA as inputs_embeds."""
    if "image_features" not in batch:
        return llava(**batch)
    batch = dict(batch)
    feats, ids = batch.pop("image_features"), batch.pop("input_ids")
    embeds = llava.get_input_embeddings()(ids)
    image = llava.model.multi_modal_projector(feats).to(embeds.dtype)
    mask = llava.model.get_placeholder_mask(ids, inputs_embeds=embeds, image_features=image)
    return llava(inputs_embeds=embeds.masked_scatter(mask, image), **batch)


def _pad(rows: list[list[int]], value: int) -> torch.Tensor:
    return torch.nn.utils.rnn.pad_sequence([torch.tensor(r) for r in rows], batch_first=True, padding_value=value)


@torch.no_grad()
def evaluate_vqa(llava, processor, images, qas, pcfg: ProbeConfig, batch_size: int = 128,
                 progress: bool = True) -> dict:
    """Greedy answers to every test question (one turn, built by LlavaProcessor) -> exact match."""
    from tqdm.auto import tqdm
    tok = processor.tokenizer
    items = [(i, t, q, a) for i, qs in enumerate(qas) for t, q, a in qs]
    llava.eval()
    correct = {t: [] for t in QUESTION_TYPES}
    examples = []
    tok.padding_side = "left"  # generation continues every row from its last token
    for s in tqdm(range(0, len(items), batch_size), desc="eval", disable=not progress, leave=False):
        chunk = items[s:s + batch_size]
        enc = processor(images=[images[i] for i, *_ in chunk], text=[eval_prompt(q) for _, _, q, _ in chunk],
                        return_tensors="pt", padding=True)
        out = llava.generate(**enc, max_new_tokens=pcfg.max_new_tokens, do_sample=False,
                             pad_token_id=tok.pad_token_id, eos_token_id=tok.eos_token_id)
        texts = tok.batch_decode(out[:, enc["input_ids"].shape[1]:], skip_special_tokens=True)
        for (i, t, q, a), pred in zip(chunk, texts):
            pred = pred.strip()
            correct[t].append(pred == a)
            if len(examples) < 12 and i % 25 == 0:
                examples.append({"type": t, "question": q, "answer": a, "predicted": pred})
    per_type = {t: float(np.mean(v)) for t, v in correct.items() if v}
    overall = float(np.mean([x for v in correct.values() for x in v]))
    return {"accuracy": overall, "per_type": per_type, "n_per_type": {t: len(v) for t, v in correct.items()},
            "examples": examples}


def majority_baselines(train_qas, test_qas) -> dict:
    """Per type: the most frequent training answer, scored as the answer to every test question."""
    from collections import Counter
    out = {}
    for t in QUESTION_TYPES:
        train = Counter(a for qs in train_qas for ty, _, a in qs if ty == t)
        test = [a for qs in test_qas for ty, _, a in qs if ty == t]
        if train and test:
            top = train.most_common(1)[0][0]
            out[t] = {"answer": top, "accuracy": float(np.mean([a == top for a in test]))}
    all_test = [(ty, a) for qs in test_qas for ty, _, a in qs]
    out["overall"] = {"accuracy": float(np.mean([a == out[ty]["answer"] for ty, a in all_test if ty in out]))}
    return out


def run_llava_probe(model_dir: str, out_dir=None, steps: int | None = None, seed: int = 0,
                    features: str = "tokens", vision_feature_layer: int | None = None,
                    pcfg: ProbeConfig | None = None, progress: bool = True, resume: str | None = None,
                    overwrite: bool = False) -> dict:
    """The whole probe; returns (and writes to ``out_dir``) the results dict. Each stage trains in
    a run directory of its own, ``OUT/llava_probe_runs/stageK`` (the run engine's rules: a stopped
    probe continues with ``resume="auto"``; without an ``out_dir`` they live in a temporary one)."""
    pcfg = dataclasses.replace(pcfg or ProbeConfig(), seed=seed)
    if steps is not None:  # --steps sets stage 2; stages 0 and 1 keep their share of it
        if steps <= 0:
            raise ProbeError(f"--steps must be positive, got {steps}")
        ratio = steps / pcfg.stage2_steps
        pcfg = dataclasses.replace(pcfg, stage0_steps=max(1, round(pcfg.stage0_steps * ratio)),
                                   stage1_steps=max(1, round(pcfg.stage1_steps * ratio)), stage2_steps=steps)
    if features not in ("tokens", "vae"):
        raise ProbeError(f"features must be tokens or vae, got '{features}'")
    t_start = time.perf_counter()
    torch.set_flush_denormal(True)  # denormals made CPU steps up to 8x slower (recipes/demo.py)
    torch.manual_seed(seed)
    rng = random.Random(seed)
    timings = {}
    from ..interop import transformers as ov3hf

    t0 = time.perf_counter()
    tower = load_tower(model_dir, features)
    layer = vision_feature_layer if vision_feature_layer is not None else (
        pcfg.vision_feature_layer if tower.config.num_hidden_layers > 0 else -1)  # the floor has one state
    try:
        ov3hf.check_feature_layer(tower.config, layer)  # before any work
    except ValueError as e:
        raise ProbeError(str(e)) from None
    res = tower.config.image_size
    train_imgs, train_caps, train_qas = render_pool(pcfg.train_images, "train", res, pcfg.data_seed,
                                                    pcfg.single_fraction)
    test_imgs, _, test_qas = render_pool(pcfg.test_images, "test", res, pcfg.data_seed, pcfg.single_fraction)
    texts = train_caps + [f"{q} {a}" for qs in train_qas for _, q, a in qs] + \
        ["user : assistant :", CAPTION_INSTRUCTION] + [f"{q} {a}" for qs in test_qas for _, q, a in qs]
    tok = build_tokenizer(texts)
    llava = build_llava(tower, tok, pcfg, layer)
    processor = ov3hf.llava_processor(tower.config, tok)
    n_image = ov3hf.num_image_tokens(tower.config)
    image_id = tok.convert_tokens_to_ids(SPECIAL["image"])
    pixel_values = processor.image_processor(train_imgs, return_tensors="pt")["pixel_values"]
    if pcfg.cache_features:
        images, image_key = tower_features(llava, pixel_values), "image_features"
    else:
        images, image_key = pixel_values, "pixel_values"
    timings["data"] = round(time.perf_counter() - t0, 1)

    conv_rng = random.Random(seed + 1)
    text_seq = lambda i: ([tok.bos_token_id] + _ids(tok, train_caps[i]) + [tok.eos_token_id],) * 2  # noqa: E731
    cap_seq = lambda i: caption_sequence(tok, train_caps[i], n_image, image_id)  # noqa: E731
    vqa_seq = lambda i: conversation_sequence(tok, train_qas[i], n_image, image_id, conv_rng)  # noqa: E731
    bs = pcfg.batch_size
    # (name, trained parts: 2 = projector + LM, 1 = projector; steps, lr, batches); the batch draw
    # continues from one stage into the next
    stages = [("stage 0 (LM on caption text)", "lm", pcfg.stage0_steps, pcfg.lr0,  # [?] the LM learns the words
               ProbeBatches(text_seq, None, bs, tok, {"batch": rng}, n=len(train_caps))),
              ("stage 1 (projector, captions)", 1, pcfg.stage1_steps, pcfg.lr1,  # [P]
               ProbeBatches(cap_seq, images, bs, tok, {"batch": rng}, image_key)),
              ("stage 2 (projector + LM, questions)", 2, pcfg.stage2_steps, pcfg.lr2,  # [P]
               ProbeBatches(vqa_seq, images, bs, tok, {"batch": rng, "conversation": conv_rng}, image_key))]
    with contextlib.ExitStack() as stack:
        runs = (Path(out_dir) / "llava_probe_runs" if out_dir is not None
                else Path(stack.enter_context(tempfile.TemporaryDirectory(prefix="ov3_probe_"))))
        losses = {}
        for k, (name, trained, n_steps, lr, batches) in enumerate(stages):
            t0 = time.perf_counter()
            ov3hf.set_llava_trainable(llava, 2 if trained == "lm" else trained)
            if trained == "lm":
                llava.model.multi_modal_projector.requires_grad_(False)
            task = ProbeStageTask(llava, name, n_steps, lr, pcfg, batches)
            losses[f"stage{k}"] = _train_stage(task, runs / f"stage{k}", resume, overwrite, progress)
            timings[f"stage{k}"] = round(time.perf_counter() - t0, 1)

    t0 = time.perf_counter()
    result = evaluate_vqa(llava, processor, test_imgs, test_qas, pcfg, progress=progress)
    timings["eval"] = round(time.perf_counter() - t0, 1)
    baselines = majority_baselines(train_qas, test_qas)
    seconds = round(time.perf_counter() - t_start, 1)
    out = {"accuracy": result["accuracy"], "per_type": result["per_type"],
           "baselines": {t: b["accuracy"] for t, b in baselines.items()},
           "baseline_answers": {t: b["answer"] for t, b in baselines.items() if "answer" in b},
           "n_per_type": result["n_per_type"], "steps": {f"stage{k}": stage[2] for k, stage in enumerate(stages)},
           "seconds": seconds, "timings_s": timings, "seed": seed, "features": features,
           "vision_feature_layer": layer, "model": str(model_dir),
           "image_tokens": n_image, "vocab_size": len(tok),
           "parameters": {"language_model": sum(p.numel() for p in llava.model.language_model.parameters())
                          + llava.lm_head.weight.numel(),
                          "projector": sum(p.numel() for p in llava.model.multi_modal_projector.parameters()),
                          "vision_encoder": sum(p.numel() for p in llava.model.vision_tower.encoder.parameters())},
           "final_loss": losses,
           "examples": result["examples"], "config": asdict(pcfg)}
    if out_dir is not None:
        write_probe_report(out, out_dir)
    return out


def write_probe_report(result: dict, out_dir) -> None:
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    (out_dir / "llava_probe.json").write_text(json.dumps(result, indent=1))
    lines = [f"# LLaVA probe: {result['model']} ({result['features']})", "",
             "LLaVA-1.5 in miniature (transformers' LlavaForConditionalGeneration, frozen tower, MLP projector, "
             f"a {result['parameters']['language_model'] / 1e6:.2f} M-parameter Llama from scratch); held-out "
             "exact match on templated questions about `shapes` (docs/llava.md).", "",
             "| question type | exact match | majority-answer baseline | questions |", "|---|---:|---:|---:|"]
    for t in QUESTION_TYPES:
        if t in result["per_type"]:
            lines.append(f"| {t} | {result['per_type'][t]:.3f} | {result['baselines'].get(t, float('nan')):.3f} "
                         f"| {result['n_per_type'][t]} |")
    lines.append(f"| **overall** | **{result['accuracy']:.3f}** | {result['baselines']['overall']:.3f} | "
                 f"{sum(result['n_per_type'].values())} |")
    lines += ["", f"Steps: {result['steps']}; {result['seconds']} s in all ({result['timings_s']}).", "",
              "| question | answer | predicted |", "|---|---|---|"]
    lines += [f"| {e['question']} | {e['answer']} | {e['predicted']} |" for e in result["examples"]]
    (out_dir / "llava_probe.md").write_text("\n".join(lines) + "\n")


__all__ = ["ProbeConfig", "ProbeError", "ProbeStageTask", "ProbeBatches", "probe_config", "run_llava_probe",
           "majority_baselines", "load_tower"]
