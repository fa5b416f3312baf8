"""Serving (kernels/serving.py, sweep/serving.py): hand calculations, a float64 NumPy reference, the
measured ML.ENERGY rows, the spec and the CLI."""

import copy
import math
from pathlib import Path

import jax.numpy as jnp
import numpy as np
import pytest

import hardware_db
from kernels import serving as ks
from sweep import serving
from sweep.cli import main

ROOT = Path(__file__).resolve().parent.parent


@pytest.fixture(scope="module")
def db():
    return hardware_db.load()


# ---- hand calculations ---------------------------------------------------------------------------------

def test_experts_touched_by_one_token_is_top_k_and_grows_towards_all():
    # one token picks exactly k experts; two tokens of top-2 of 8: 8·(1 − (6/8)²) = 8·0.4375 = 3.5
    assert float(ks.experts_touched(8.0, 2.0, 1.0)) == pytest.approx(2.0)
    assert float(ks.experts_touched(8.0, 2.0, 2.0)) == pytest.approx(3.5)
    assert float(ks.experts_touched(128.0, 8.0, 4096.0)) == pytest.approx(128.0)
    assert float(ks.experts_touched(1.0, 1.0, 7.0)) == pytest.approx(1.0)  # dense: its one FFN


def test_kv_cache_of_llama31_8b_is_128_kib_per_token():
    # 32 layers × (K and V) 2 × 8 kv heads × 128 head_dim × 2 bytes = 131,072 bytes
    assert float(ks.kv_bytes_per_token(32.0, 8.0, 128.0, 0.0, 2.0)) == 131072.0


def test_mla_latent_cache_replaces_heads():
    # DeepSeek-V3: 61 layers × (512 + 64) latent values × 2 bytes = 70,272 bytes per token
    assert float(ks.kv_bytes_per_token(61.0, 128.0, 128.0, 576.0, 2.0)) == 70272.0


def test_max_batch_is_the_kv_cache_that_fits_beside_the_weights():
    # 80 GB × 0.9 = 72 GB; 10e9 params × 2 bytes = 20 GB of weights; 52 GB / (131,072 B × 2,000 tokens)
    # = 198.36 → 198 sequences; on 2 devices the weights halve: (72 − 10)·2 / 0.262144 GB = 473.0 → 473
    one = ks.max_batch(80e9, ks.resident_weight_bytes(10e9, 2.0, 1.0), 131072.0, 2000.0, 1.0, 0.9)
    two = ks.max_batch(80e9, ks.resident_weight_bytes(10e9, 2.0, 2.0), 131072.0, 2000.0, 2.0, 0.9)
    assert float(one) == 198.0 and float(two) == 473.0
    assert float(ks.max_batch(80e9, 100e9, 131072.0, 2000.0, 1.0, 0.9)) == 0.0  # weights alone do not fit


def _dense_8b():
    m = {"layers": 32.0, "d_model": 4096.0, "heads": 32.0, "kv_heads": 8.0, "head_dim": 128.0, "vocab": 128256.0,
         "experts": 1.0, "top_k": 1.0, "moe_layers": 0.0, "params": 8e9, "routed_params": 0.0,
         "kv_latent_dim": 0.0}
    m["active_params"] = m["params"] - m["vocab"] * m["d_model"]
    return m


ZERO_OVERHEAD = {"hbm_eff": 1.0, "compute_eff": 1.0, "layer_latency_s": 0.0, "tp_latency_s": 0.0, "ep_latency_s": 0.0,
                 "seq_overhead_s": 0.0, "static_frac": 0.5, "flop_energy_frac": 1.0, "byte_energy_frac": 1.0}


def test_small_batch_decode_streams_the_weights_once_per_step():
    # batch 1, no prompt, 2 output tokens (context 1): bytes = (8e9 − 128,256·4,096)·2 + 1·1·131,072
    # = 7,474,663,424·2 + 131,072 = 14,949,326,848 + 131,072 = 14,949,457,920 B; at 3.35e12 B/s → 4.4625 ms; compute is 2·7.47e9 FLOP
    # at 989.5e12 → 0.015 ms, so memory-bound
    m = _dense_8b()
    hw = {"peak_flops": 989.5e12, "hbm_bw_bytes_s": 3.35e12}
    st = ks.decode_step(m, hw, 1.0, 0.0, 2.0, 1.0, 2.0, 2.0, ZERO_OVERHEAD)
    assert float(st["step_bytes"]) == pytest.approx(14_949_457_920.0)
    assert float(st["step_time_s"]) == pytest.approx(14_949_457_920.0 / 3.35e12)
    assert float(st["compute_s"]) < float(st["memory_s"])


def test_large_batch_with_long_prompts_is_compute_bound():
    # batch 512, prompts of 2,000 and answers of 200 tokens: step tokens = 512·(1 + 10) = 5,632;
    # 2·7.4747e9·5,632 = 8.42e13 FLOP of matmuls alone → > 85 ms at 989.5 TFLOP/s, far above the memory time
    m = _dense_8b()
    hw = {"peak_flops": 989.5e12, "hbm_bw_bytes_s": 3.35e12}
    st = ks.decode_step(m, hw, 512.0, 2000.0, 200.0, 1.0, 2.0, 2.0, ZERO_OVERHEAD)
    assert float(st["compute_s"]) > 2.0 * 7.4746851e9 * 5632 / 989.5e12 * 0.999
    assert float(st["compute_s"]) > float(st["memory_s"])


def test_prefill_of_a_long_prompt_is_its_flops_at_peak():
    # 4,000 prompt tokens: 2·7.4747e9·4,000 + 4,000²/2·(4·32·32·128) = 5.980e13 + 4.194e12 = 6.399e13 FLOP
    m = _dense_8b()
    hw = {"peak_flops": 989.5e12, "hbm_bw_bytes_s": 3.35e12}
    t = ks.prefill_time_s(m, hw, 4000.0, 1.0, 2.0, ZERO_OVERHEAD)
    flops = 2 * m["active_params"] * 4000 + 4000 * 4000 / 2 * 4 * 32 * 32 * 128
    assert float(t) == pytest.approx(flops / 989.5e12)


def test_idle_replicas_draw_static_power():
    # a demand of one request per day: one replica, almost idle, drawing static_frac·TDP all day
    m = _dense_8b()
    hw = {"peak_flops": 989.5e12, "hbm_bw_bytes_s": 3.35e12, "hbm_bytes": 80e9, "tdp_w": 700.0, "host_power_w": 0.0,
          "devices_per_node": 8.0, "device_embodied_kgco2e": 0.0, "host_embodied_kgco2e": 0.0}
    req = {"batch": 8.0, "devices": 1.0, "input_tokens": 100.0, "output_tokens": 100.0, "weight_bytes": 2.0,
           "kv_bytes": 2.0, "requests_per_day": 1.0, "pue": 1.0, "carbon_intensity_kg_per_kwh": 0.0,
           "power_util": 1.0, "lifespan_years": 5.0, "kv_memory_fraction": 0.9}
    out = ks.serve(m, hw, req, ZERO_OVERHEAD)
    assert float(out["replicas"]) == 1.0
    # 0.5 · 700 W · 24 h = 8,400 Wh for the day's single request (its own work is < 0.01 Wh)
    assert float(out["wh_per_request"]) == pytest.approx(8400.0, rel=1e-4)


# ---- float64 NumPy reference -----------------------------------------------------------------------------

def _reference(m, hw, b, inp, outp, n, wb, kvb, c):
    """Independent float64 NumPy transcription of the module docstring's equations."""
    e, k = m["experts"], m["top_k"]
    tokens = b * (1 + inp / outp)
    ctx = inp + outp / 2
    touched = e * (1 - (1 - k / e) ** tokens)
    routed_share = np.where(e > 1, touched / e, 0.0)
    w = (m["params"] - m["routed_params"] - m["vocab"] * m["d_model"] + m["routed_params"] * routed_share) * wb / n
    kv = b * ctx * m["layers"] * 2 * m["kv_heads"] * m["head_dim"] * kvb / n
    a = 4 * m["layers"] * m["heads"] * m["head_dim"]
    f = (2 * m["active_params"] * tokens + b * ctx * a + b * (inp / outp) * (inp / 2) * a) / n
    multi = n > 1
    t = (np.maximum((w + kv) / (c["hbm_eff"] * hw["hbm_bw_bytes_s"]), f / (c["compute_eff"] * hw["peak_flops"]))
         + m["layers"] * c["layer_latency_s"] + np.where(multi, 2 * (m["layers"] - m["moe_layers"]), 0) * c["tp_latency_s"]
         + np.where(multi, 2 * m["moe_layers"], 0) * c["ep_latency_s"] + b * c["seq_overhead_s"])
    p = np.minimum(c["static_frac"] * hw["tdp_w"] + hw["tdp_w"] * (c["flop_energy_frac"] * f / hw["peak_flops"]
                   + c["byte_energy_frac"] * (w + kv) / hw["hbm_bw_bytes_s"]) / t, hw["tdp_w"])
    return t, n * p * t / b


def test_kernel_matches_a_float64_numpy_reference_over_a_grid(db):
    m = serving.model_arrays({"layers": 48, "d_model": 2048, "heads": 32, "kv_heads": 4, "head_dim": 128, "d_ff": 0,
                              "vocab": 151936, "experts": 128, "top_k": 8, "expert_d_ff": 768})
    hw = serving.hardware_arrays(db, "h100-sxm5-80gb", "bf16")
    hw["tdp_w"] = 700.0
    cal = serving.constants_for(db, "h100-sxm5-80gb")
    rng = np.random.default_rng(0)
    b = rng.integers(1, 1024, 64).astype(float)
    n = rng.choice([1.0, 2.0, 4.0, 8.0], 64)
    inp = rng.uniform(0, 4000, 64)
    outp = rng.uniform(10, 4000, 64)
    mj = {k: jnp.asarray(v) for k, v in m.items()}
    st = ks.decode_step(mj, hw, jnp.asarray(b), jnp.asarray(inp), jnp.asarray(outp), jnp.asarray(n), 2.0, 2.0, cal)
    p = ks.device_power_w(st["step_flops"], st["step_bytes"], st["step_time_s"], hw["peak_flops"],
                          hw["hbm_bw_bytes_s"], hw["tdp_w"], cal)
    t_ref, e_ref = _reference(m, hw, b, inp, outp, n, 2.0, 2.0, cal)
    np.testing.assert_allclose(np.asarray(st["step_time_s"]), t_ref, rtol=1e-12)
    np.testing.assert_allclose(np.asarray(n * p * st["step_time_s"] / b), e_ref, rtol=1e-12)
    # float32 agrees to float32 precision
    m32 = {k: jnp.asarray(v, jnp.float32) for k, v in m.items()}
    st32 = ks.decode_step(m32, hw, jnp.asarray(b, jnp.float32), jnp.asarray(inp, jnp.float32),
                          jnp.asarray(outp, jnp.float32), jnp.asarray(n, jnp.float32), 2.0, 2.0, cal)
    np.testing.assert_allclose(np.asarray(st32["step_time_s"]), t_ref, rtol=1e-4)


def test_counted_params_of_qwen3_30b_a3b_match_its_name(db):
    # Qwen3-30B-A3B: 30.5e9 total and 3.3e9 activated parameters (its model card)
    m = serving.model_arrays(db.docs["serving_runs.toml"]["model"]["qwen3-30b-a3b"])
    assert m["params"] == pytest.approx(30.5e9, rel=0.01)
    assert m["active_params"] + m["vocab"] * m["d_model"] == pytest.approx(3.3e9, rel=0.03)


# ---- the measured rows ---------------------------------------------------------------------------------

def test_serving_validation_median_error_within_25_percent(db):
    rows = serving.validation_rows(db)
    assert len(rows) >= 15
    assert {r["kind"] for r in rows} == {"dense", "moe"}
    assert len({r["gpu"] for r in rows}) >= 2
    err = np.abs([r["error_pct"] for r in rows])
    assert np.median(err) <= 25.0
    for kind in ("dense", "moe"):
        assert np.median([abs(r["error_pct"]) for r in rows if r["kind"] == kind]) <= 25.0


def test_validate_lists_the_serving_rows(capsys, monkeypatch):
    import sweep.cli
    import sweep.validate

    assert "serving_rows(db)" in Path(sweep.validate.__file__).read_text()  # part of validation_rows
    monkeypatch.setattr(sweep.cli, "validation_rows", sweep.validate.serving_rows)  # the rest is slow
    assert main(["validate"]) == 0
    out = capsys.readouterr().out
    assert "serving qwen3-235b-a22b bf16 8xH100 b64" in out
    assert "serving (ML.ENERGY, 52 rows, B200, H100): |error| median" in out


def test_every_measured_row_is_energy_over_throughput(db):
    # the leaderboard's J/token = avg power (all GPUs) / output tokens per second
    for r in db.docs["serving_runs.toml"]["run"]:
        assert r["measured_j_per_token"] == pytest.approx(r["measured_power_w"] / r["measured_tokens_per_s"], rel=2e-3)


def test_a_run_with_unknown_hardware_fails_the_schema_check(db):
    doc = copy.deepcopy(db.docs["serving_runs.toml"])
    doc["run"][0]["hardware"] = "h100-sxm5-80g"
    with pytest.raises(hardware_db.DatabaseError, match="run 1: hardware 'h100-sxm5-80g' is not in accelerators.csv"):
        hardware_db.check_serving_runs(doc, db.accelerators)
    doc = copy.deepcopy(db.docs["serving_runs.toml"])
    del doc["run"][3]["measured_j_per_token"]
    with pytest.raises(hardware_db.DatabaseError, match="run 4 lacks 'measured_j_per_token'"):
        hardware_db.check_serving_runs(doc, db.accelerators)


# ---- spec and CLI --------------------------------------------------------------------------------------

STUDY = (ROOT / "studies" / "serving.toml").read_text()


def test_serve_picks_a_configuration_meeting_the_latency_targets(capsys):
    import json

    assert main(["serve", str(ROOT / "studies" / "serving.toml"), "--json"]) == 0
    best = json.loads(capsys.readouterr().out)["best"]
    assert best["feasible"] and best["tpot_s"] <= 0.05 and best["ttft_s"] <= 1.0
    assert best["concurrency"] <= best["max_batch"]
    # replicas carry the day's requests: replicas · capacity ≥ demand
    capacity = best["tokens_per_s_per_replica"] / 600.0
    assert best["replicas"] * capacity >= 10_000_000 / 86400.0


@pytest.mark.parametrize("edit, key", [
    (('output_tokens = 600          # answer, reasoning tokens included\n', ''), "[serving] output_tokens: is required"),
    (('weight_precision = "bf16"', 'weight_precision = "int3"'), "[serving] weight_precision: 'int3' is not allowed"),
    (('tpot_target_s = 0.05', 'tpot_target_s = -1'), "[serving] tpot_target_s: must be greater than 0"),
])
def test_bad_serving_spec_exits_2_naming_the_key(tmp_path, capsys, edit, key):
    p = tmp_path / "s.toml"
    assert edit[0] in STUDY
    p.write_text(STUDY.replace(*edit))
    assert main(["serve", str(p)]) == 2
    assert key in capsys.readouterr().err


def test_estimate_with_a_serving_section_reports_serving_and_break_even(tmp_path, capsys):
    import json

    spec = (ROOT / "studies" / "llama2_70b.toml").read_text() + (
        '\n[serving]\ninput_tokens = 500\noutput_tokens = 300\nrequests_per_day = 1e6\n'
        'serve_hardware = "h100-sxm5-80gb"\n')
    p = tmp_path / "s.toml"
    p.write_text(spec)
    assert main(["estimate", str(p), "--json"]) == 0
    out = json.loads(capsys.readouterr().out)
    sv = out["serving"]
    # break-even: training tCO2e / (gCO2e per request / 1e6)
    assert sv["breakeven_requests"] == pytest.approx(out["total_tco2e"] / (sv["gco2e_per_request"] / 1e6))
    assert sv["serving_tco2e"] == pytest.approx(sv["tco2e_per_day"] * 365.0)
