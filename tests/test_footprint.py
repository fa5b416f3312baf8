"""The whole chain on one run, checked against a hand calculation written out here."""

import math

import numpy as np
import pytest

from kernels.embodied import amortised_tco2e, logic_kgco2e, memory_kgco2e
from kernels.energy import device_power_w, energy_kwh, node_count, operational_tco2e, water_m3
from kernels.footprint import INPUT_KEYS, footprint

NAN = float("nan")


def run_inputs(**over):
    x = dict(
        layers=24, d_model=2048, heads=16, kv_heads=16, head_dim=128, d_ff=8192, ffn_matrices=2, vocab=50000,
        seq_len=2048, tied_embeddings=1, experts=1, top_k=1, moe_every=1, first_dense_layers=0,
        shared_experts=0, expert_d_ff=8192, bias=0, params=NAN, active_params=NAN,
        tokens=1e11, global_batch=512, flops=NAN, bytes_per_value=2, devices=100, mfu=0.5, avg_power_w=NAN,
        power_util=0.8, tp=1, pp=1, ep=1, microbatch=1, recompute=1, interleave=1, shard_optimizer=1,
        sequence_parallel=1, lifespan_years=4,
        peak_flops=300e12, hbm_bytes=80e9, hbm_bw_bytes_s=2e12, intra_bw_bytes_s=300e9, inter_bw_bytes_s=25e9,
        devices_per_node=8, tdp_w=400, idle_w=50, host_power_w=2000, device_embodied_kgco2e=30,
        host_embodied_kgco2e=400, material_kg_per_device=1.5,
        carbon_intensity_kg_per_kwh=0.3, pue=1.2, wue_l_per_kwh=1.8,
    )
    x.update(over)
    return {k: np.asarray(float(v)) for k, v in x.items()}


def test_inputs_cover_the_chain():
    assert set(run_inputs()) == set(INPUT_KEYS)


def test_whole_chain_by_hand():
    out = {k: float(v) for k, v in footprint(run_inputs()).items()}
    # parameters: per layer 4·h² + 2·h·d_ff + 2h = 16,777,216 + 33,554,432 + 4,096 = 50,335,744
    n = 24 * 50_335_744 + 50_000 * 2048 + 2048
    assert out["params"] == n
    # FLOPs per token: 6·N (tied: all of it multiplies) + 12·l·s·d_attn
    per_token = 6 * n + 12 * 24 * 2048 * 2048
    flops = per_token * 1e11
    assert out["train_flops"] == pytest.approx(flops, rel=1e-15)
    # time: F / (devices · peak · MFU)
    seconds = flops / (100 * 300e12 * 0.5)
    hours = seconds / 3600
    assert out["train_days"] == pytest.approx(hours / 24, rel=1e-12)
    # power: devices (50 + 350·0.8 = 330 W) + 13 nodes × 2000 W × 0.8
    it_w = 100 * 330 + 13 * 2000 * 0.8
    assert out["it_energy_mwh"] == pytest.approx(it_w * hours / 1e6, rel=1e-12)
    assert out["energy_mwh"] == pytest.approx(it_w * hours * 1.2 / 1e6, rel=1e-12)
    assert out["operational_tco2e"] == pytest.approx(it_w * hours * 1.2 / 1e3 * 0.3 / 1e3, rel=1e-12)
    # embodied: (100·30 + 13·400) kg × hours / (4·8760) / 1000
    emb = (100 * 30 + 13 * 400) * hours / (4 * 8760) / 1000
    assert out["embodied_tco2e"] == pytest.approx(emb, rel=1e-12)
    assert out["total_tco2e"] == pytest.approx(out["operational_tco2e"] + emb, rel=1e-12)
    # GPUs consumed: ceil(F / (peak·MFU·4·31,536,000)); water: IT kWh × 1.8 L / 1000
    assert out["gpus_consumed"] == math.ceil(flops / (300e12 * 0.5 * 4 * 31_536_000))
    assert out["material_kg"] == out["gpus_consumed"] * 1.5
    assert out["water_m3"] == pytest.approx(it_w * hours / 1e3 * 1.8 / 1e3, rel=1e-12)
    assert out["reason"] == 0


def test_measured_average_power_replaces_device_and_host_power():
    out = footprint(run_inputs(avg_power_w=500.0))
    hours = float(out["train_days"]) * 24
    assert float(out["it_energy_mwh"]) == pytest.approx(100 * 500 * hours / 1e6, rel=1e-12)
    assert float(out["operational_host_tco2e"]) == 0


def test_given_flops_override_the_architecture():
    out = footprint(run_inputs(flops=1e21))
    assert float(out["train_flops"]) == 1e21


def test_top_k_above_experts_is_flagged_not_raised():
    out = footprint(run_inputs(experts=2, top_k=4))
    assert int(out["reason"]) == 1


def test_unknown_wue_gives_nan_water_not_an_error():
    out = footprint(run_inputs(wue_l_per_kwh=NAN))
    assert math.isnan(float(out["water_m3"]))
    assert math.isfinite(float(out["total_tco2e"]))


def test_small_kernels_by_hand():
    assert float(device_power_w(50, 400, 0.5)) == 225
    assert float(node_count(17, 8)) == 3
    assert float(energy_kwh(1000, 10, 1.5)) == 15
    assert float(operational_tco2e(2000, 0.25)) == 0.5
    assert float(water_m3(1000, 2)) == 2
    assert float(logic_kgco2e(8.26, 2.0, 0.8)) == pytest.approx(20.65)
    assert float(memory_kgco2e(80, 0.065)) == pytest.approx(5.2)
    assert float(amortised_tco2e(8760, 24, 1)) == pytest.approx(0.024)


def test_float32_chain_agrees_with_float64():
    x64 = run_inputs()
    x32 = {k: v.astype(np.float32) for k, v in x64.items()}
    a, b = footprint(x64), footprint(x32)
    for k in ("train_flops", "train_days", "energy_mwh", "total_tco2e", "embodied_tco2e"):
        assert float(b[k]) == pytest.approx(float(a[k]), rel=1e-5), k
    assert float(a["gpus_consumed"]) == float(b["gpus_consumed"])


def test_lifecycle_phases_by_hand():
    x = run_inputs(served_tokens_per_day=1e9, serving_days=100, serve_batch=16, experiment_factor=0.5,
                   storage_tb=10, ssd_kgco2e_per_gb=0.01)
    out = {k: float(v) for k, v in footprint(x).items()}
    # decode roofline: min(1, 2·16/2 · 2e12/300e12) = 0.10667
    mfu = min(1.0, 2 * 16 / 2 * 2e12 / 300e12)
    n = 24 * 50_335_744 + 50_000 * 2048 + 2048
    per_token_flops = 2 * n + 4 * 24 * 1024 * 2048  # context = seq_len / 2
    dev_s = per_token_flops / (300e12 * mfu)
    power = 330 + 2000 * 0.8 / 8  # device + host share, W
    kwh = dev_s * power * 1.2 / 3.6e6
    emb = (30 + 400 / 8) * (dev_s / 3600) / (4 * 8760) / 1000
    per_token_t = kwh * 0.3 / 1000 + emb
    assert out["inference_tco2e"] == pytest.approx(1e11 * per_token_t, rel=1e-9)
    assert out["breakeven_served_tokens"] == pytest.approx(out["total_tco2e"] / per_token_t, rel=1e-9)
    assert out["experimentation_tco2e"] == pytest.approx(0.5 * out["total_tco2e"], rel=1e-12)
    assert out["storage_tco2e"] == pytest.approx(10_000 * 0.01 * 2400 / (4 * 8760) / 1000, rel=1e-12)
    assert out["lifecycle_tco2e"] == pytest.approx(
        out["total_tco2e"] + out["inference_tco2e"] + out["experimentation_tco2e"] + out["storage_tco2e"], rel=1e-12)


def test_no_serving_means_no_inference_emissions():
    out = footprint(run_inputs())
    assert float(out["inference_tco2e"]) == 0
    assert float(out["lifecycle_tco2e"]) == float(out["total_tco2e"])
