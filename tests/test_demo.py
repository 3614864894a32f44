"""`ov3 demo` end to end at toy size: every phase runs, the report and metrics exist with the
eval.json structure, the floors table is there, and a second call reuses the trained parts."""
import json

from openvision3.eval.demo import FLOORS, run_demo

TOY = ["train.steps=3", "train.checkpoint_every=3", "train.log_every=1", "train.warmup_steps=1"]
TOY_VAE = ["steps=4", "max_seconds=0", "eval_samples=16", "batch_size=4"]


def test_demo_runs_every_phase_and_reuses_outputs(tmp_path, capsys):
    out = tmp_path / "demo"
    results = run_demo(out, overrides=TOY, vae_overrides=TOY_VAE, num_samples=16)
    for task, keys in {"recon": ("psnr", "ssim", "lpips_alex", "rfid_status"), "zeroshot": ("top1", "top5"),
                       "retrieval": ("i2t_r1", "t2i_r5", "t2i_r10"), "caption": ("bleu4", "rouge_l")}.items():
        assert all(k in results[task] for k in keys), (task, results[task])
    saved = json.loads((out / "metrics.json").read_text())
    assert saved["recon"]["psnr"] == results["recon"]["psnr"] and saved["recon"]["rfid"] is None
    report = (out / "report.md").read_text()
    assert "Demo floors" in report and all(f"{t} {k}" in report for t, k in FLOORS)
    for png in ("recon.png", "zeroshot_confusion.png", "retrieval.png", "captions.png", "losses.png"):
        assert (out / png).stat().st_size > 0, png
    assert (out / "model" / "model.safetensors").exists() and (out / "model" / "vae" / "config.json").exists()
    capsys.readouterr()

    again = run_demo(out, overrides=TOY, vae_overrides=TOY_VAE, num_samples=16)
    printed = capsys.readouterr().out
    assert printed.count("reusing") == 2  # neither the VAE nor the model is trained again
    assert again["recon"]["psnr"] == results["recon"]["psnr"]  # same model, same held-out data


def test_floor_table_counts_the_floors_met():
    from openvision3.eval.demo import _floor_table
    all_met: dict = {}
    for (task, key), floor in FLOORS.items():
        all_met.setdefault(task, {})[key] = floor + 0.01
    assert _floor_table(all_met).startswith(f"This run meets all {len(FLOORS)} floors")
    one_short = {**all_met, "retrieval": {"t2i_r5": 0.94, "i2t_r1": 0.9}}
    table = _floor_table(one_short)
    assert table.startswith(f"This run misses 1 of {len(FLOORS)} floors")
    assert "| retrieval t2i_r5 | 0.940 | 0.95 | no |" in table
    assert "misses 4" in _floor_table({})  # nothing measured: nothing met
