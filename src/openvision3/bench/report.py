"""The bench's output: text tables and the bench.json/.md/.png report."""
from __future__ import annotations

import json
from pathlib import Path


def format_bench(r: dict) -> str:
    lines = [f"ov3 bench: {r['config']}, VAE {r['vae']} {r['vae_block_out_channels']}, {r['resolution']} px "
             f"({r['tokens']} tokens), batch {r['batch']}, {r['precision']}, on {r.get('gpu') or r.get('cpu')} "
             f"({r['threads']} threads, load {r.get('load_avg_1m', float('nan')):.1f}), torch {r['torch']}",
             "", "| component | fwd s | fwd+bwd s | share of step | fwd+bwd GFLOP |", "|---|---:|---:|---:|---:|"]
    for k, c in r["components"].items():
        label = f"  {k} (inside {c['part_of']})" if "part_of" in c else k
        lines.append(f"| {label} | {c['fwd_s']:.4f} | {c['fwd_bwd_s']:.4f} | {100 * c['share_of_step']:.1f} % | "
                     f"{c['fwd_bwd_flops'] / 1e9:.2f} |")
    lines.append(f"| other (step - sum) | | {r['other_s']:.4f} | {100 * r['other_share']:.1f} % | |")
    if r["shares_normalised"]:
        lines.append(f"\nThe parts, each timed on its own, add up to {r['parts_over_step']:.2f}x the measured step: "
                     "their shares are normalised by their sum (other: 0).")
    lines += ["", f"step {r['step_s']:.4f} s, {r['images_per_s']:.1f} images/s, {r['step_flops'] / 1e9:.1f} GFLOP/step "
              f"({r['achieved_tflops'] * 1e3:.1f} GFLOP/s achieved), peak memory {r['peak_mem_gb']:.2f} GB "
              f"({r['peak_mem_kind']})",
              "MFU: " + (f"{100 * r['mfu']:.1f} % of {r['mfu_peak_tflops']:.0f} TFLOP/s bf16 dense"
                         if r.get("mfu") is not None else f"n/a ({r.get('mfu_note', 'CPU: no known peak')})")]
    if "bf16" in r:
        lines.append(f"bf16: {r['bf16']}")
    if "encoder_vs_timm" in r:
        lo, hi = r["encoder_vs_timm_spread"]
        lines.append(f"encoder_vs_timm {r['encoder_vs_timm']:.2f} (ours {r['encoder_s']:.4f} s, timm "
                     f"{r['timm_s']:.4f} s fwd+bwd, medians; rounds' own ratios {lo:.2f}-{hi:.2f} over "
                     f"{len(r['encoder_vs_timm_rounds'])} rounds)")
        lines.append(f"cache_speedup {r['cache_speedup']:.2f} beside cache_bound {r['cache_bound']:.2f} "
                     f"({100 * r['cache_fraction_of_bound']:.0f} % of the bound)")
        lines.append(f"pixel_subbatch_speedup {r['pixel_subbatch_speedup']:.2f} (pixel terms on "
                     f"{r['pixel_subbatch']} of {r['batch']}, cached latents; FLOP bound {r['pixel_subbatch_bound']:.2f})")
        lines.append(f"cache_and_pixel_subbatch_speedup {r['cache_and_pixel_subbatch_speedup']:.2f} (plain step / "
                     f"cached + pixel quarter; FLOP bound {r['cache_and_pixel_subbatch_bound']:.2f})")
    if "activation_memory" in r:
        m = r["activation_memory"]
        lines.append(f"activation memory per image ({m['model']}, {m['precision']}, counted by {m['method']}):")
        for res, row in m["per_image_gib"].items():
            lines.append(f"  {res} px: {row['plain']['total']:.3f} GiB, with grad checkpointing "
                         f"{row['grad_checkpointing']['total']:.3f} GiB (of which the VAE decoder "
                         f"{row['plain']['vae_decoder']:.3f} GiB either way)")
    lines.append(f"bench took {r['bench_seconds']:.0f} s")
    return "\n".join(lines)


def format_compare(r: dict) -> str:
    lines = [f"ov3 bench --compare: batch {r['batch']}, {r['resolution']} px, on {r.get('gpu') or r.get('cpu')} "
             f"({r['threads']} threads, load {r.get('load_avg_1m', float('nan')):.1f}), median of {r['repeats']} rounds",
             "", "| variant | overrides | s/step | speed vs first | first-step loss |", "|---|---|---:|---:|---:|"]
    for k, v in r["s_per_step"].items():
        over = r['variants'][k]['overrides'] + (["(cached latents)"] if r['variants'][k]['cached_latents'] else [])
        lines.append(f"| {k} | {' '.join(over) or '-'} | {v:.4f} | "
                     f"{r['ratio_vs_first'][k]:.2f} | {r['first_step_loss'][k]:.5f} |")
    return "\n".join(lines)


def write_report(r: dict, out_dir) -> None:
    """bench.json, bench.md and bench.png (the step breakdown as bars) under ``out_dir``."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    (out / "bench.json").write_text(json.dumps(r, indent=1, default=str))
    (out / "bench.md").write_text("# ov3 bench\n\n" + format_bench(r) + "\n")
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    names = [k for k in r["components"] if "part_of" not in r["components"][k]]
    fwd = [r["components"][k]["fwd_s"] for k in names]
    bwd = [max(0.0, r["components"][k]["fwd_bwd_s"] - r["components"][k]["fwd_s"]) for k in names]
    fig, ax = plt.subplots(figsize=(8, 0.45 * len(names) + 1.5))
    y = range(len(names))
    ax.barh(y, fwd, label="forward")
    ax.barh(y, bwd, left=fwd, label="backward")
    ax.set_yticks(list(y), names)
    ax.invert_yaxis()
    ax.set_xlabel("seconds per step")
    ax.set_title(f"step {r['step_s']:.3f} s, {r['images_per_s']:.1f} img/s ({r['resolution']} px, batch {r['batch']}, "
                 f"{r['precision']}, {r['device']})", fontsize=9)
    ax.legend()
    fig.tight_layout()
    fig.savefig(out / "bench.png", dpi=100)
    plt.close(fig)
