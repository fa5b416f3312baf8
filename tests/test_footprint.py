"""The whole chain on one run, checked against a hand calculation written out here."""

import math

import numpy as np
import pytest

from kernels.embodied import amortised_tco2e, logic_kgco2e, memory_kgco2e
from kernels.energy import device_power_w, energy_kwh, node_count, operational_tco2e, water_m3
from kernels.footprint import DEPLOYMENT_INPUTS, INPUT_KEYS, deployment_terms, footprint

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


def test_deployment_terms_are_the_footprint_per_booked_second_by_hand():
    x = run_inputs(goodput=0.9)
    d = {k: float(v) for k, v in deployment_terms({k: x[k] for k in DEPLOYMENT_INPUTS}).items()}
    # the cluster's peak per booked second: 100 devices × 300 TFLOP/s × goodput 0.9
    assert d["peak_rate_flops_s"] == pytest.approx(100 * 300e12 * 0.9, rel=1e-15)
    # IT power 100 × 330 W + 13 nodes × 2000 W × 0.8 = 53,800 W: kWh per second = W / 3.6e6
    it_w = 100 * 330 + 13 * 2000 * 0.8
    assert d["it_energy_mwh_per_s"] == pytest.approx(it_w / 3.6e6 / 1e3, rel=1e-12)
    assert d["energy_mwh_per_s"] == pytest.approx(it_w * 1.2 / 3.6e6 / 1e3, rel=1e-12)
    assert d["operational_tco2e_per_s"] == pytest.approx(it_w * 1.2 / 3.6e6 * 0.3 / 1e3, rel=1e-12)
    # embodied: 8,200 kg over 4 × 31,536,000 s, in tonnes
    emb = (100 * 30 + 13 * 400) / (4 * 31_536_000) / 1e3
    assert d["embodied_tco2e_per_s"] == pytest.approx(emb, rel=1e-12)
    assert d["total_tco2e_per_s"] == pytest.approx(it_w * 1.2 / 3.6e6 * 0.3 / 1e3 + emb, rel=1e-12)
    assert d["water_m3_per_s"] == pytest.approx(it_w / 3.6e6 * 1.8 / 1e3, rel=1e-12)


def test_footprint_from_given_deployment_terms_equals_its_own():
    x = run_inputs(goodput=0.9)
    own = footprint(x)
    given = footprint(x, deploy=deployment_terms(x))
    for k in own:
        np.testing.assert_array_equal(np.asarray(given[k]), np.asarray(own[k]), err_msg=k)


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


SERVE_CONSTANTS = dict(serve_hbm_eff=0.8, serve_compute_eff=0.5, serve_layer_latency_s=1e-4, serve_tp_latency_s=2e-5,
                       serve_ep_latency_s=5e-5, serve_seq_overhead_s=5e-5, serve_static_frac=0.4,
                       serve_flop_energy_frac=1.5, serve_byte_energy_frac=0.5)


def test_lifecycle_phases_by_hand():
    x = run_inputs(served_tokens_per_day=1e9, serving_days=100, serve_batch=16, experiment_factor=0.5,
                   storage_tb=10, ssd_kgco2e_per_gb=0.01, **SERVE_CONSTANTS)
    out = {k: float(v) for k, v in footprint(x).items()}
    # one device decodes 16 sequences at a mean context of seq_len / 2 = 1,024 tokens (no prompts)
    n = 24 * 50_335_744 + 50_000 * 2048 + 2048  # tied: the embedding is the head, counted once
    active = n  # serving's active weights: all but the input embedding, which tied is the head
    flops = 2 * active * 16 + 16 * 1024 * (4 * 24 * 16 * 128)  # matmuls + QK^T, AV over the context
    kv_per_token = 24 * 2 * 16 * 128 * 2  # layers · K and V · kv heads · head dim · 2 bytes
    nbytes = n * 2 + 16 * 1024 * kv_per_token  # every weight once (bf16) + the batch's KV cache
    memory_s, compute_s = nbytes / (0.8 * 2e12), flops / (0.5 * 300e12)
    step_s = max(memory_s, compute_s) + 24 * 1e-4 + 16 * 5e-5  # + layer and per-sequence latencies
    busy_w = min(400, 0.4 * 400 + 400 * (1.5 * flops / 300e12 + 0.5 * nbytes / 2e12) / step_s)
    dev_s = step_s / 16
    power = busy_w + 2000 * 0.8 / 8  # device + host share, W
    kwh = dev_s * power * 1.2 / 3.6e6
    emb = (30 + 400 / 8) * (dev_s / 3600) / (4 * 8760) / 1000
    per_token_t = kwh * 0.3 / 1000 + emb
    assert out["inference_tco2e"] == pytest.approx(1e11 * per_token_t, rel=1e-9)
    assert out["inference_energy_mwh"] == pytest.approx(1e11 * kwh / 1000, rel=1e-9)
    assert out["breakeven_served_tokens"] == pytest.approx(out["total_tco2e"] / per_token_t, rel=1e-9)
    assert out["experimentation_tco2e"] == pytest.approx(0.5 * out["total_tco2e"], rel=1e-12)
    assert out["storage_tco2e"] == pytest.approx(10_000 * 0.01 * 2400 / (4 * 8760) / 1000, rel=1e-12)
    assert out["lifecycle_tco2e"] == pytest.approx(
        out["total_tco2e"] + out["inference_tco2e"] + out["experimentation_tco2e"] + out["storage_tco2e"], rel=1e-12)


def test_no_serving_means_no_inference_emissions():
    out = footprint(run_inputs())
    assert float(out["inference_tco2e"]) == 0
    assert float(out["lifecycle_tco2e"]) == float(out["total_tco2e"])


def test_lifecycle_serving_is_the_serving_model():
    """The life cycle's served tokens cost what kernels.serving says one device decoding
    serve_batch sequences costs (one model for serving, not two)."""
    from kernels import serving

    x = run_inputs(served_tokens_per_day=1e9, serve_batch=64, tied_embeddings=0, **SERVE_CONSTANTS)
    out = footprint(x)
    m = {"layers": 24.0, "d_model": 2048.0, "heads": 16.0, "kv_heads": 16.0, "head_dim": 128.0, "vocab": 50000.0,
         "experts": 1.0, "top_k": 1.0, "moe_layers": 0.0, "routed_params": 0.0, "kv_latent_dim": 0.0,
         "tied_embeddings": 0.0, "params": float(out["params"]),
         "active_params": float(out["params"]) - 50000 * 2048}
    cal = {k: SERVE_CONSTANTS["serve_" + k] for k in serving.CONSTANTS}
    req = {"batch": 64.0, "devices": 1.0, "input_tokens": 0.0, "output_tokens": 2048.0, "weight_bytes": 2.0,
           "kv_bytes": 2.0, "requests_per_day": 1.0, "pue": 1.0, "carbon_intensity_kg_per_kwh": 0.0,
           "power_util": 0.0, "lifespan_years": 4.0, "kv_memory_fraction": 0.9}
    hw = {"peak_flops": 300e12, "hbm_bw_bytes_s": 2e12, "hbm_bytes": 80e9, "tdp_w": 400.0, "host_power_w": 0.0,
          "devices_per_node": 8.0, "device_embodied_kgco2e": 0.0, "host_embodied_kgco2e": 0.0}
    served = serving.serve(m, hw, req, cal)
    # IT energy per token = the GPU's J per output token + the host's share (2000 W · 0.8 / 8) over
    # the device-seconds of a token (step time / batch); facility energy = IT × PUE 1.2
    it_j = float(served["gpu_j_per_output_token"]) + 200.0 * float(served["step_time_s"]) / 64
    assert float(out["inference_energy_mwh"]) == pytest.approx(1e9 * 365 * it_j * 1.2 / 3.6e9, rel=1e-9)


def test_lifecycle_serving_of_a_model_known_by_size():
    """params given, no architecture: the step streams the weights (2 bytes each) and does 2·active
    FLOPs per token; at batch 1 on this device the memory bound rules."""
    x = run_inputs(params=7e9, layers=NAN, d_model=NAN, heads=NAN, kv_heads=NAN, head_dim=NAN, d_ff=NAN, vocab=NAN,
                   served_tokens_per_day=1e9, serving_days=1, serve_batch=1, **SERVE_CONSTANTS)
    out = footprint(x)
    step_s = 7e9 * 2 / (0.8 * 2e12) + 1 * 5e-5  # memory-bound (2·7e9 FLOPs / 150e12 is far less) + per-sequence
    busy_w = 0.4 * 400 + 400 * (1.5 * 2 * 7e9 / 300e12 + 0.5 * 7e9 * 2 / 2e12) / step_s
    kwh = 1e9 * step_s * (busy_w + 200.0) * 1.2 / 3.6e6
    assert float(out["inference_energy_mwh"]) == pytest.approx(kwh / 1000, rel=1e-9)
