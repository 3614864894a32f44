"""What caching the frozen tower's features saves in `ov3 probe llava`, as a ratio in one run.

    .venv/bin/python benchmarks/llava_probe_cache.py --model runs/demo/model [--rounds 5] [--json]

Times a stage-2 training step (forward, backward, clip, AdamW; batch 32 of templated questions)
of the probe's LLaVA on the given model two ways, in alternating rounds so both see the same
machine state: from pixels (LLaVA runs the frozen tower on every step) and from the features
computed once (`tower_features`, the probe's default). Prints the median step times and their
ratio. Not part of the test run.
"""
from __future__ import annotations

import argparse
import json
import random
import statistics
import time

import torch

from openvision3.interop import transformers as ov3hf
from openvision3.recipes import llava_probe as lp
from openvision3.recipes import llava_probe_data as lpd


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", required=True, help="a saved OpenVision3 directory (e.g. runs/demo/model)")
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--steps-per-round", type=int, default=4)
    ap.add_argument("--images", type=int, default=256, help="rendered training images")
    ap.add_argument("--json", action="store_true")
    args = ap.parse_args(argv)
    torch.set_flush_denormal(True)
    torch.manual_seed(0)

    pcfg = lp.ProbeConfig(train_images=args.images)
    tower = lp.load_tower(args.model)
    imgs, caps, qas = lpd.render_pool(args.images, "train", tower.config.image_size, 0, pcfg.single_fraction)
    tok = lpd.build_tokenizer(caps + [f"{q} {a}" for qs in qas for _, q, a in qs]
                              + ["user : assistant :", lpd.CAPTION_INSTRUCTION])
    llava = lp.build_llava(tower, tok, pcfg, pcfg.vision_feature_layer)
    pixels = ov3hf.llava_processor(tower.config, tok).image_processor(imgs, return_tensors="pt")["pixel_values"]
    t0 = time.perf_counter()
    feats = lp.tower_features(llava, pixels)
    feature_s = time.perf_counter() - t0
    n_image, image_id = ov3hf.num_image_tokens(tower.config), tok.convert_tokens_to_ids(lpd.SPECIAL["image"])

    def sequence(i):
        return lpd.conversation_sequence(tok, qas[i], n_image, image_id, random.Random(i))

    ov3hf.set_llava_trainable(llava, 2)
    llava.train()
    llava.model.vision_tower.eval()
    params = [p for p in llava.parameters() if p.requires_grad]
    opt = torch.optim.AdamW(params, lr=1e-4)
    sources = {"pixels": lp.ProbeBatches(sequence, pixels, pcfg.batch_size, tok, {"batch": random.Random(1)}),
               "cached": lp.ProbeBatches(sequence, feats, pcfg.batch_size, tok, {"batch": random.Random(1)},
                                         key="image_features")}

    def step(batches):
        loss = lp.llava_forward(llava, next(batches)).loss
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(params, 1.0)
        opt.step()

    for b in sources.values():  # warm-up
        step(b)
    times = {k: [] for k in sources}
    for _ in range(args.rounds):
        for name, b in sources.items():
            t0 = time.perf_counter()
            for _ in range(args.steps_per_round):
                step(b)
            times[name].append((time.perf_counter() - t0) / args.steps_per_round)
    med = {k: statistics.median(v) for k, v in times.items()}
    r = {"step_s": med, "speedup": med["pixels"] / med["cached"], "features_once_s": feature_s,
         "images": args.images, "threads": torch.get_num_threads(), "model": args.model}
    print(f"stage-2 step: from pixels {med['pixels']:.3f} s, cached features {med['cached']:.3f} s "
          f"-> {r['speedup']:.2f}x ({torch.get_num_threads()} threads); features of {args.images} images "
          f"computed once in {feature_s:.1f} s")
    if args.json:
        print(json.dumps(r))


if __name__ == "__main__":
    main()
