"""precision: auto picks bf16 only where the CPU computes it natively; each branch forced."""
import pytest
import torch

from openvision3.config import ConfigError
from openvision3.train import precision as prec

CPU = torch.device("cpu")
X86 = dict(machine="x86_64", onednn_isa="")


@pytest.mark.parametrize("flags, capability, isa, native", [
    ({"avx2", "fma"}, "AVX2", "", False),                            # Zen 3 / most laptops: emulated
    ({"avx512f", "avx512_bf16"}, "AVX512", "", True),                # Cooper Lake, Zen 4+
    ({"avx512f", "amx_bf16", "amx_tile"}, "AVX512", "", True),       # Sapphire Rapids
    ({"avx512f"}, "AVX512", "", False),                              # Skylake-SP: AVX-512 without bf16
    ({"avx512f", "avx512_bf16"}, "AVX2", "", False),                 # ATEN_CPU_CAPABILITY=avx2
    ({"avx512f", "avx512_bf16"}, "AVX512", "AVX2", False),           # ONEDNN_MAX_CPU_ISA=AVX2
    ({"avx512f", "avx512_bf16"}, "AVX512", "avx512_core_bf16", True),
])
def test_x86_native_bf16_from_flags_kernels_and_isa_cap(flags, capability, isa, native):
    ok, why = prec.cpu_native_bf16(flags=flags, capability=capability, onednn_isa=isa, machine="x86_64")
    assert ok is native and why


def test_arm_and_unknown_cpus():
    assert prec.cpu_native_bf16(flags={"asimd", "bf16"}, capability="DEFAULT", onednn_isa="", machine="aarch64")[0]
    assert not prec.cpu_native_bf16(flags={"asimd"}, capability="DEFAULT", onednn_isa="", machine="aarch64")[0]
    assert not prec.cpu_native_bf16(flags=set(), capability="DEFAULT", onednn_isa="", machine="riscv64")[0]


def _force(monkeypatch, native: bool):
    monkeypatch.setattr(prec, "_cpu_native_bf16_cached", lambda: (native, "forced by the test"))


def test_auto_follows_native_support(monkeypatch):
    _force(monkeypatch, True)
    choice = prec.choose_precision("auto", CPU)
    assert choice.dtype is torch.bfloat16 and choice.name == "bf16" and "forced" in choice.reason
    _force(monkeypatch, False)
    choice = prec.choose_precision("auto", CPU)
    assert choice.dtype is None and choice.as_row() == {"precision": "fp32", "precision_reason": "auto: forced by the test"}
    assert prec.resolve_precision("fp32", CPU) is None


def test_explicit_bf16_without_native_support_runs_emulated_with_a_warning(monkeypatch):
    _force(monkeypatch, False)
    with pytest.warns(UserWarning, match="slower than fp32"):
        choice = prec.choose_precision("bf16", CPU)
    assert choice.dtype is torch.bfloat16 and "emulated" in choice.reason
    monkeypatch.setattr(prec, "bf16_runs", lambda device: False)
    with pytest.raises(ConfigError, match="no bf16 support"):
        prec.choose_precision("bf16", CPU)


def test_this_machine_under_avx2_kernels_picks_fp32(monkeypatch):
    """ATEN_CPU_CAPABILITY=avx2 (what the issue used to stand in for an AVX2-only CPU): fp32."""
    monkeypatch.setattr(torch.backends.cpu, "get_cpu_capability", lambda: "AVX2")
    ok, why = prec.cpu_native_bf16()
    assert not ok and "AVX2" in why


def test_both_trainers_print_and_record_the_choice(tmp_path, capsys, monkeypatch):
    from openvision3.config import get_config
    from openvision3.train.logging import read_metrics
    from openvision3.train.trainer import train
    from openvision3.train.vae_config import get_vae_config
    from openvision3.train.vae_trainer import train_vae
    _force(monkeypatch, False)
    cfg = get_config("tiny", ["train.steps=2", "train.log_every=1", "train.checkpoint_every=0"])
    s = train(cfg, tmp_path / "ov3")
    assert s["precision"] == "fp32"
    rows = [r for r in read_metrics(tmp_path / "ov3" / "metrics.jsonl") if "loss" in r]
    assert rows[0]["precision"] == "fp32" and rows[0]["precision_reason"] == "auto: forced by the test"
    assert "precision_reason" not in rows[1]  # said once per start, not on every row
    r = train_vae(get_vae_config(None, ["steps=2", "eval_samples=4", "batch_size=2", "data.resolution=16",
                                        "arch.block_out_channels=[8,16]", "arch.norm_num_groups=4",
                                        "arch.latent_channels=4"]), tmp_path / "vae", progress=False)
    assert r["precision"] == "fp32" and r["status"] == "finished"
    assert capsys.readouterr().out.count("precision: fp32 (auto: forced by the test)") == 2
