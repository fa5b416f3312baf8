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
    # = 7,474,663,424·2 + 131,072 = 14,949,326,848 + 131,072 = 14,949,457,920 B; at 3.35e12 B/s → 4.4625 ms;
    # compute is 2·7.47e9 FLOP at 989.5e12 → 0.015 ms, so memory-bound
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
         + m["layers"] * c["layer_latency_s"]
         + np.where(multi, 2 * (m["layers"] - m["moe_layers"]), 0) * c["tp_latency_s"]
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
    assert best["feasible"] and best["tpot_s"] <= 0.05 and best["ttft_p95_s"] <= 1.0
    assert best["concurrency"] <= best["max_batch"]
    # replicas carry the day's requests: replicas · capacity ≥ demand (the mix's mean output per request)
    capacity = best["tokens_per_s_per_replica"] / best["output_tokens_mean"]
    assert best["replicas"] * capacity >= 10_000_000 / 86400.0


@pytest.mark.parametrize("edit, key", [
    (('output_tokens = {dist = "lognormal", median = 450, sigma = 0.9}\n', ''), "[serving] output_tokens: is required"),
    (('median = 450, sigma = 0.9}', 'rel = 0.3}'),
     "[serving] output_tokens: a request mix's distribution takes its own"),
    (('median = 800, sigma = 0.8}', 'median = -5, sigma = 0.8}'),
     "[serving] input_tokens: median must be greater than 0"),
    (('input_tokens = {dist = "lognormal", median = 800, sigma = 0.8}', 'input_tokens = "long"'),
     "[serving] input_tokens: must be a number or a distribution"),
    (('[serving]\n', '[serving]\nmix_samples = 1\n'), "[serving] mix_samples: must be at least 2"),
    (('median = 800, sigma = 0.8}', 'median = 800, sd = 0.8}'),
     "[serving] input_tokens: a lognormal distribution takes"),
    (('weight_precision = "bf16"', 'weight_precision = "int3"'), "[serving] weight_precision: 'int3' is not allowed"),
    (('tpot_target_s = 0.05', 'tpot_target_s = -1'), "[serving] tpot_target_s: must be greater than 0"),
])
def test_bad_serving_spec_exits_2_naming_the_key(tmp_path, capsys, edit, key):
    p = tmp_path / "s.toml"
    assert edit[0] in STUDY
    p.write_text(STUDY.replace(*edit))
    assert main(["serve", str(p)]) == 2
    assert key in capsys.readouterr().err


def _estimate_with_serving(tmp_path, capsys, input_tokens):
    """estimate --json of Llama 2 70B's training spec with a [serving] section (its path, its output)."""
    import json

    p = tmp_path / "s.toml"
    p.write_text((ROOT / "studies" / "llama2_70b.toml").read_text() + (
        f'\n[serving]\ninput_tokens = {input_tokens}\noutput_tokens = 300\nrequests_per_day = 1e6\n'
        'serve_hardware = "h100-sxm5-80gb"\n'))
    assert main(["estimate", str(p), "--json"]) == 0
    return p, json.loads(capsys.readouterr().out)


def test_estimate_with_a_serving_section_reports_serving_and_break_even(tmp_path, capsys):
    _, out = _estimate_with_serving(tmp_path, capsys, "500")
    sv = out["serving"]
    # break-even: training tCO2e / (gCO2e per request / 1e6)
    assert sv["breakeven_requests"] == pytest.approx(out["total_tco2e"] / (sv["gco2e_per_request"] / 1e6))
    assert sv["serving_tco2e"] == pytest.approx(sv["tco2e_per_day"] * 365.0)


# ---- the request mix -------------------------------------------------------------------------------------

def test_request_mix_moments_by_hand():
    # requests (100 in, 50 out) and (300 in, 150 out), equally likely. A request holds its slot for its output
    # tokens, so a running slot holds the second one 3/4 of the time: mean context 1/4·(100 + 25) + 3/4·(300 + 75)
    # = 31.25 + 281.25 = 312.5; prompts per output token E[in]/E[out] = 200/100 = 2; prefill attention context per
    # output token E[in²]/(2·E[out]) = ((100² + 300²)/2)/200 = 250; a slot's final length 1/4·150 + 3/4·450 = 375
    mix = ks.request_mix(jnp.asarray([100.0, 300.0]), jnp.asarray([50.0, 150.0]), axis=0)
    assert float(mix["context_tokens"]) == pytest.approx(312.5)
    assert float(mix["prefill_ratio"]) == pytest.approx(2.0)
    assert float(mix["prefill_context"]) == pytest.approx(250.0)
    assert float(mix["seq_tokens"]) == pytest.approx(375.0)
    assert float(mix["input_tokens"]) == 200.0 and float(mix["output_tokens"]) == 100.0


def test_a_mix_of_one_request_shape_is_that_request():
    m = {k: jnp.asarray(v) for k, v in _dense_8b().items()}
    hw = {"peak_flops": 989.5e12, "hbm_bw_bytes_s": 3.35e12}
    one = ks.decode_step(m, hw, 64.0, 700.0, 300.0, 1.0, 2.0, 2.0, ZERO_OVERHEAD)
    mix = ks.request_mix(jnp.full(5, 700.0), jnp.full(5, 300.0), axis=0)
    many = ks.decode_step(m, hw, 64.0, None, None, 1.0, 2.0, 2.0, ZERO_OVERHEAD, mix=mix)
    for k in ("step_time_s", "step_flops", "step_bytes"):
        assert float(many[k]) == pytest.approx(float(one[k]), rel=1e-12)


def _serve_json(capsys, tmp_path, text):
    import json

    p = tmp_path / "s.toml"
    p.write_text(text)
    assert main(["serve", str(p), "--json"]) == 0
    return json.loads(capsys.readouterr().out)["best"]


def test_a_zero_width_mix_gives_the_fixed_request_figures(tmp_path, capsys):
    fixed = STUDY.replace('input_tokens = {dist = "lognormal", median = 800, sigma = 0.8}', "input_tokens = 800") \
                 .replace('output_tokens = {dist = "lognormal", median = 450, sigma = 0.9}', "output_tokens = 450")
    a = _serve_json(capsys, tmp_path, fixed)
    b = _serve_json(capsys, tmp_path, fixed.replace("input_tokens = 800",
                                                    'input_tokens = {dist = "uniform", low = 800, high = 800}'))
    for k in ("wh_per_request", "gco2e_per_request", "tpot_s", "ttft_s", "replicas", "max_batch"):
        assert b[k] == pytest.approx(a[k], rel=1e-12), k
    assert b["wh_per_request_p5"] == pytest.approx(a["wh_per_request"], rel=1e-12)  # every request alike


def test_the_mix_is_drawn_from_its_seed_and_its_moments_are_the_draws(db):
    from sweep.spec import KEYS

    v = {k: key.default for k, key in KEYS.items()}
    v.update(input_tokens={"dist": "lognormal", "median": 800.0, "sigma": 0.8},
             output_tokens={"dist": "triangular", "low": 10.0, "mode": 200.0, "high": 2000.0}, mix_samples=4000)
    mix, d = serving.request_mix("s.toml", v)
    again, d2 = serving.request_mix("s.toml", v)
    other, _ = serving.request_mix("s.toml", {**v, "mix_seed": 1})
    np.testing.assert_array_equal(d["input_tokens"], d2["input_tokens"])
    assert other["context_tokens"] != mix["context_tokens"]
    i, o = d["input_tokens"], d["output_tokens"]
    assert i.shape == (4000,) and (o >= 10).all() and (np.round(i) == i).all()
    assert mix["context_tokens"] == pytest.approx(np.sum(o * (i + o / 2)) / np.sum(o), rel=1e-12)  # slot-weighted
    assert mix["seq_tokens"] == pytest.approx(np.sum(o * (i + o)) / np.sum(o), rel=1e-12)
    # the draws follow their distributions: lognormal median 800, triangular mean (10 + 200 + 2000)/3
    assert np.median(i) == pytest.approx(800.0, rel=0.06)
    assert o.mean() == pytest.approx(2210.0 / 3.0, rel=0.03)


def test_a_mix_meets_the_ttft_target_at_its_95th_percentile(tmp_path, capsys):
    # a mix whose long prompts (lognormal, sigma 1.5) push the p95 TTFT far above the mean request's
    text = STUDY.replace('median = 800, sigma = 0.8}', 'median = 4000, sigma = 1.5}')
    free = _serve_json(capsys, tmp_path, text.replace("ttft_target_s = 1.0", "ttft_target_s = 100.0"))
    assert free["ttft_p95_s"] > 2.0 * free["ttft_s"]
    target = 0.5 * (free["ttft_p95_s"] + free["ttft_p50_s"])  # between the median and p95: binding
    held = _serve_json(capsys, tmp_path, text.replace("ttft_target_s = 1.0", f"ttft_target_s = {target!r}"))
    assert held["ttft_p95_s"] <= target
    assert (held["replica_devices"], held["concurrency"]) != (free["replica_devices"], free["concurrency"])


def test_estimate_with_a_serving_mix_reports_its_spread(tmp_path, capsys):
    p, out = _estimate_with_serving(tmp_path, capsys, '{dist = "lognormal", median = 500, sigma = 0.7}')
    sv = out["serving"]
    assert sv["mix_samples"] == 1000 and sv["output_tokens_mean"] == 300.0
    # every request has 300 output tokens: each holds its slot as long, so the spread is nil
    assert sv["wh_per_request_p5"] == pytest.approx(sv["wh_per_request_p95"], rel=1e-12)
    assert sv["ttft_p95_s"] > sv["ttft_p50_s"]
    p.write_text(p.read_text().replace("median = 500", "median = 0"))
    assert main(["estimate", str(p)]) == 2
    assert "[serving] input_tokens: median must be greater than 0" in capsys.readouterr().err
