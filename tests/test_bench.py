"""`ov3 bench` in its tiny mode: every key present, every number positive and finite (no timing
assertions: speed lives in docs/performance.md)."""
import json
import math

from openvision3 import cli
from openvision3.bench.options import COMPONENTS


def finite_numbers(obj) -> bool:
    """True if every number inside ``obj`` is finite."""
    if isinstance(obj, dict):
        return all(finite_numbers(v) for v in obj.values())
    if isinstance(obj, (list, tuple)):
        return all(finite_numbers(v) for v in obj)
    if isinstance(obj, float):
        return math.isfinite(obj)
    return True


def test_tiny_bench_reports_every_component_ratio_and_figure(tmp_path, capsys):
    rc = cli.main(["bench", "--tiny", "--no-progress", "--json", "--out", str(tmp_path)])
    out = capsys.readouterr().out.strip().splitlines()
    assert rc == 0
    r = json.loads(out[-1])
    assert finite_numbers(r)
    for key in ("step_s", "images_per_s", "step_flops", "peak_mem_gb", "encoder_vs_timm", "cache_speedup",
                "cache_bound", "pixel_subbatch_speedup", "pixel_subbatch_bound"):
        assert r[key] > 0, key
    assert r["cache_bound"] > 1  # the cached step skips the VAE encoder's FLOPs
    assert r["mfu"] is None  # CPU: no known peak
    assert set(COMPONENTS) <= set(r["components"])
    for name, c in r["components"].items():
        assert c["fwd_s"] > 0 and c["fwd_bwd_s"] > 0 and c["share_of_step"] > 0, name
        if name not in ("optimizer",):
            assert c["fwd_flops"] > 0, name
        if name not in ("optimizer", "vae_encode"):  # the frozen encoder has no backward
            assert c["fwd_bwd_flops"] > c["fwd_flops"], name
    # shares of the measured step: the top-level parts and "other" add up to 1
    top = [c["share_of_step"] for c in r["components"].values() if "part_of" not in c]
    assert abs(sum(top) + r["other_share"] - 1) < 1e-9 and all(0 < s <= 1 for s in top)
    assert r["other_share"] == 0 if r["shares_normalised"] else r["other_share"] >= 0
    lo, hi = r["encoder_vs_timm_spread"]
    assert lo <= r["encoder_vs_timm"] <= hi and len(r["encoder_vs_timm_rounds"]) >= 5
    # activation memory: counted per image, less with gradient checkpointing, the VAE decoder unchanged
    for row in r["activation_memory"]["per_image_gib"].values():
        plain, ckpt = row["plain"], row["grad_checkpointing"]
        assert 0 < ckpt["towers_and_losses"] < plain["towers_and_losses"]
        assert ckpt["vae_decoder"] == plain["vae_decoder"] > 0
    for f in ("bench.json", "bench.md", "bench.png"):
        assert (tmp_path / f).stat().st_size > 0


def test_compare_times_variants_and_bad_input_is_one_line(capsys):
    rc = cli.main(["bench", "--tiny", "--no-progress", "--json", "--repeats", "1",
                   "--compare", "foreach:train.adamw=foreach", "--compare", "fused:train.adamw=fused"])
    r = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert rc == 0 and set(r["s_per_step"]) == {"foreach", "fused"} and r["ratio_vs_first"]["foreach"] == 1.0
    assert abs(r["first_step_loss"]["foreach"] - r["first_step_loss"]["fused"]) < 1e-6  # same weights, same batch
    rc = cli.main(["bench", "--tiny", "--compare", "only-one:train.adamw=fused"])
    err = capsys.readouterr().err.strip().splitlines()
    assert rc == 2 and err[-1].startswith("ov3 bench: error:") and "at least two" in err[-1]
    rc = cli.main(["bench", "--tiny", "--compare", "a:nokeyvalue", "--compare", "b:"])
    err = capsys.readouterr().err.strip().splitlines()
    assert rc == 2 and "not key=value" in err[-1]
