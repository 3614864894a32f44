"""Our unified encoder against timm's VisionTransformer of identical shape, and against the same
encoder on open_clip's blocks (nn.MultiheadAttention): fp32 forward + backward over the same
latents, alternating rounds in one process, the attention kernels of ``train.attention_kernel``.

    python benchmarks/encoder_vs_timm.py --width 192 --layers 4 --heads 3 --tokens 64 --batch 64
    python benchmarks/encoder_vs_timm.py --width 768 --layers 12 --heads 12 --tokens 256 --batch 4

Prints median seconds per forward+backward and ``timm / ours`` (> 1: ours is faster), each
round's own ratio beside it, and the load average at the start (the machine may be shared).
"""
from __future__ import annotations

import argparse
import json
import os
import statistics

import torch


def open_clip_blocks(enc):
    """A copy of ``enc`` whose transformer is open_clip's (nn.MultiheadAttention), same weights."""
    import copy

    from open_clip.transformer import Transformer
    t = enc.transformer
    ref = copy.deepcopy(enc)
    ref.transformer = Transformer(t.width, t.layers, t.resblocks[0].attn.num_heads, 4.0, batch_first=True)
    ref.transformer.load_state_dict(t.state_dict())
    return ref


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--width", type=int, default=192)
    ap.add_argument("--layers", type=int, default=4)
    ap.add_argument("--heads", type=int, default=3)
    ap.add_argument("--tokens", type=int, default=64)
    ap.add_argument("--batch", type=int, default=64)
    ap.add_argument("--rounds", type=int, default=7)
    ap.add_argument("--kernel", default="auto", choices=["auto", "math", "default"])
    ap.add_argument("--json", action="store_true")
    args = ap.parse_args()

    from timm.models.vision_transformer import VisionTransformer

    from openvision3.bench.timing import _machine, alternating_median_seconds
    from openvision3.config import TowerConfig
    from openvision3.models.encoder import UnifiedEncoder
    from openvision3.models.vit import attention_kernels
    torch.set_flush_denormal(True)
    device = torch.device("cpu")
    side = int(args.tokens ** 0.5) * 2  # latent side for patch 2
    torch.manual_seed(0)
    ours = UnifiedEncoder(16, TowerConfig(width=args.width, layers=args.layers, heads=args.heads), 2, 512).train()
    mha = open_clip_blocks(ours).train()
    timm_vit = VisionTransformer(img_size=(side, side), patch_size=2, in_chans=16, num_classes=0, global_pool="avg",
                                 embed_dim=args.width, depth=args.layers, num_heads=args.heads, mlp_ratio=4.0,
                                 class_token=True).train()
    latents = torch.randn(args.batch, 16, side, side)

    def step(fn):
        def go():
            with attention_kernels(device, args.kernel):
                z = fn(latents)
            z.float().mean().backward()
        return go

    load = os.getloadavg()[0]
    med, rounds = alternating_median_seconds({"ours": step(ours), "timm": step(timm_vit.forward_features),
                                              "open_clip_blocks": step(mha)}, args.rounds, device)
    per_round = sorted(t / o for t, o in zip(rounds["timm"], rounds["ours"]))
    result = {**_machine(device), "load_avg_1m_at_start": load, "shape": vars(args), "s": med,
              "timm_over_ours": med["timm"] / med["ours"], "timm_over_ours_rounds": per_round,
              "open_clip_blocks_over_ours": med["open_clip_blocks"] / med["ours"]}
    print(f"{result['cpu']}, {result['threads']} threads, load {load:.1f}; width {args.width}, {args.layers} layers, "
          f"{args.tokens} tokens, batch {args.batch}, median of {args.rounds} rounds")
    for k, v in med.items():
        print(f"  {k:17s} {v:.4f} s fwd+bwd")
    print(f"timm / ours {result['timm_over_ours']:.3f} (rounds {per_round[0]:.2f}-{per_round[-1]:.2f}, "
          f"median round {statistics.median(per_round):.2f}); open_clip blocks / ours "
          f"{result['open_clip_blocks_over_ours']:.3f}")
    if args.json:
        print(json.dumps(result))


if __name__ == "__main__":
    main()
