"""The kernels' fixed-layout chain (MFU given) against two independent re-implementations.

bench.models holds a plain-Python and a NumPy version of the chain written from the kernels'
docstring equations. On a few hundred random configurations (dense and MoE, GQA, tied and untied
embeddings, biases, params-given and architecture-given, flops given, measured power or not) the
jitted kernel in float64 must equal both to rel 1e-12 on every output; in float32 it must stay
within rel 1e-5 of the float64 reference and give the same whole GPU counts. Hypothesis checks
monotonicity: more tokens never cost less, a longer lifespan never raises the embodied share, a
higher MFU never raises the GPUs consumed.
"""

import math

import jax
import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from bench.models import OUTPUT_NAMES, footprint_numpy, footprint_python
from kernels.footprint import INPUT_KEYS, OUTPUTS, footprint

FP = jax.jit(footprint)
N_RANDOM = 400


def _loguniform(rng, lo, hi, n):
    return np.exp(rng.uniform(math.log(lo), math.log(hi), n))


def random_configs(n: int, seed: int = 0) -> dict[str, np.ndarray]:
    """n random configurations of the fixed-layout chain, float64 columns (NaN = not given)."""
    rng = np.random.default_rng(seed)
    c = lambda *v: rng.choice(np.array(v, np.float64), n)  # noqa: E731
    heads = c(8, 12, 16, 32, 40, 64, 96, 128)
    group = c(1, 1, 2, 4, 8)  # GQA: kv_heads = heads / group
    kv_heads = np.maximum(heads / group, 1.0)
    head_dim = c(64, 80, 96, 128, 256)
    d_model = heads * head_dim * c(1, 1, 1, 0.5, 2)  # usually heads·head_dim, sometimes not
    moe = rng.random(n) < 0.4
    experts = np.where(moe, c(4, 8, 16, 64, 128), 1.0)
    top_k = np.where(moe, c(1, 2, 4, 8), 1.0)
    top_k = np.where(rng.random(n) < 0.03, experts + 1, top_k)  # a few infeasible: top_k > experts
    x = {
        "layers": rng.integers(1, 130, n).astype(np.float64),
        "d_model": d_model,
        "heads": heads,
        "kv_heads": kv_heads,
        "head_dim": head_dim,
        "d_ff": np.round(d_model * c(2.6875, 3.5, 4.0, 8 / 3)),
        "ffn_matrices": c(2, 3),
        "vocab": c(32000, 50257, 65536, 128256, 151936, 256000),
        "seq_len": c(512, 2048, 4096, 8192, 32768),
        "tied_embeddings": c(0, 1),
        "experts": experts,
        "top_k": top_k,
        "moe_every": c(1, 1, 2, 3),
        "first_dense_layers": c(0, 0, 1, 3),
        "shared_experts": np.where(moe, c(0, 0, 1, 2), 0.0),
        "expert_d_ff": np.round(d_model * c(0.5, 1.0, 2.0, 4.0)),
        "bias": c(0, 0, 1),
        "params": np.full(n, np.nan),
        "active_params": np.full(n, np.nan),
        "tokens": _loguniform(rng, 1e9, 2e13, n),
        "global_batch": c(256, 512, 1024, 1536, 2048),
        "flops": np.full(n, np.nan),
        "bytes_per_value": c(2.0),
        "devices": np.round(_loguniform(rng, 1, 32768, n)),
        "mfu": rng.uniform(0.05, 0.75, n),
        "avg_power_w": np.where(rng.random(n) < 0.3, rng.uniform(150, 900, n), np.nan),
        "power_util": rng.uniform(0.3, 1.0, n),
        "lifespan_years": rng.uniform(1.0, 8.0, n),
        "peak_flops": _loguniform(rng, 5e13, 2.5e15, n),
        "hbm_bytes": c(40e9, 80e9, 141e9),
        "hbm_bw_bytes_s": c(2e12, 3.35e12),
        "intra_bw_bytes_s": c(300e9, 450e9),
        "inter_bw_bytes_s": c(25e9, 50e9),
        "devices_per_node": c(4, 8, 16),
        "tdp_w": rng.uniform(250, 1200, n),
        "idle_w": rng.uniform(0, 120, n),
        "host_power_w": rng.uniform(0, 3000, n),
        "device_embodied_kgco2e": rng.uniform(10, 400, n),
        "host_embodied_kgco2e": np.where(rng.random(n) < 0.1, 0.0, rng.uniform(200, 4000, n)),
        "material_kg_per_device": rng.uniform(0.5, 3.0, n),
        "carbon_intensity_kg_per_kwh": rng.uniform(0.0, 0.9, n),
        "pue": rng.uniform(1.03, 1.8, n),
        "wue_l_per_kwh": np.where(rng.random(n) < 0.2, np.nan, rng.uniform(0, 3, n)),
    }
    for k in ("tp", "pp", "ep", "microbatch", "interleave"):
        x[k] = np.ones(n)
    x.update(recompute=np.zeros(n), shard_optimizer=np.ones(n), sequence_parallel=np.ones(n))
    # params given directly (with or without active_params) for a quarter; flops given for a few
    sized = rng.random(n) < 0.25
    x["params"] = np.where(sized, np.round(_loguniform(rng, 1e8, 2e12, n)), np.nan)
    x["active_params"] = np.where(sized & (rng.random(n) < 0.5), np.round(x["params"] * rng.uniform(0.05, 1, n)),
                                  np.nan)
    x["flops"] = np.where(rng.random(n) < 0.08, _loguniform(rng, 1e20, 1e26, n), np.nan)
    assert set(x) == set(INPUT_KEYS)
    return x


def _kernel(x, dtype=np.float64):
    out = FP({k: np.asarray(v, dtype) for k, v in x.items()}, None)
    return {k: np.asarray(v) for k, v in out.items()}


@pytest.fixture(scope="module")
def configs():
    return random_configs(N_RANDOM, seed=20240611)


@pytest.fixture(scope="module")
def reference(configs):
    return footprint_numpy(configs)


def test_reference_names_match_the_contract():
    """The references cover the training chain's outputs, in the contract's order (not the life-cycle phases)."""
    assert [k for k in OUTPUTS if k in OUTPUT_NAMES] == list(OUTPUT_NAMES)


def test_configs_cover_the_cases(configs):
    x = configs
    assert (x["experts"] > 1).sum() > 50 and (x["experts"] == 1).sum() > 50
    assert (x["kv_heads"] < x["heads"]).sum() > 50
    assert (x["tied_embeddings"] == 1).sum() > 50 and (x["tied_embeddings"] == 0).sum() > 50
    assert np.isfinite(x["params"]).sum() > 30 and np.isnan(x["params"]).sum() > 200
    assert np.isfinite(x["active_params"]).sum() > 10
    assert np.isfinite(x["avg_power_w"]).sum() > 50 and np.isnan(x["avg_power_w"]).sum() > 50
    assert (x["top_k"] > x["experts"]).sum() >= 1 and (x["bias"] == 1).sum() > 50


def test_kernel_float64_equals_numpy_reference(configs, reference):
    got = _kernel(configs)
    for k in OUTPUT_NAMES:
        np.testing.assert_allclose(got[k], reference[k], rtol=1e-12, atol=0, equal_nan=True, err_msg=k)
    np.testing.assert_array_equal(got["reason"], reference["reason"])
    assert (got["reason"] == 1).sum() == (configs["top_k"] > configs["experts"]).sum()


def test_kernel_float64_equals_python_loop(configs):
    got = _kernel(configs)
    n = len(configs["layers"])
    for i in range(n):
        ref = footprint_python({k: float(v[i]) for k, v in configs.items()})
        for k in OUTPUT_NAMES:
            a, b = float(got[k][i]), float(ref[k])
            if math.isnan(b):
                assert math.isnan(a), (i, k, a, b)
            else:
                assert a == pytest.approx(b, rel=1e-12, abs=0), (i, k, a, b)


def test_numpy_and_python_references_agree(configs, reference):
    """The two references share no code: their agreement checks the transcription of the equations."""
    for i in range(0, len(configs["layers"]), 7):
        ref = footprint_python({k: float(v[i]) for k, v in configs.items()})
        for k in OUTPUT_NAMES:
            np.testing.assert_allclose(reference[k][i], ref[k], rtol=1e-12, atol=0, equal_nan=True, err_msg=k)


def test_float32_kernel_within_1e_5_of_float64_reference(configs, reference):
    got = _kernel(configs, np.float32)
    assert got["total_tco2e"].dtype == np.float32
    for k in OUTPUT_NAMES:
        if k in ("reason", "gpus_consumed", "tokens_per_s"):  # tokens_per_s: see the next test
            continue
        np.testing.assert_allclose(got[k].astype(np.float64), reference[k], rtol=1e-5, atol=0, equal_nan=True,
                                   err_msg=k)
    np.testing.assert_array_equal(got["reason"], reference["reason"])
    np.testing.assert_array_equal(got["gpus_consumed"], reference["gpus_consumed"])
    np.testing.assert_allclose(got["material_kg"], reference["material_kg"], rtol=1e-6)


def test_float32_tokens_per_s_does_not_overflow(configs, reference):
    """tokens_per_s = F / (F / (devices·peak·mfu)) / per_token: XLA's simplifier rewrites a/(b/c) as
    (a·c)/b, so in float32 F·devices·peak·mfu (≈1e25·1e18) overflows to inf. Computing it as
    devices·peak_flops·mfu / per_token (the same quantity) avoids the overflow."""
    got = _kernel(configs, np.float32)
    np.testing.assert_allclose(got["tokens_per_s"].astype(np.float64), reference["tokens_per_s"], rtol=1e-5)


def test_numpy_reference_float32_follows_input_dtype(configs, reference):
    x32 = {k: v.astype(np.float32) for k, v in configs.items()}
    ref32 = footprint_numpy(x32)
    assert ref32["total_tco2e"].dtype == np.float32 and ref32["gpus_consumed"].dtype == np.float64
    np.testing.assert_allclose(ref32["total_tco2e"], reference["total_tco2e"], rtol=1e-5)


def test_engine_fixed_layout_grid_matches_reference():
    """The sweep engine's grid (inputs gathered from the database, defaults derived) equals the reference."""
    from sweep.engine import Evaluator, run

    import hardware_db
    from sweep.study import load_study

    doc = {
        "model": {"heads": 32, "vocab": 32000, "seq_len": 4096, "ffn": "swiglu"},
        "training": {"tokens": 1e12},
        "cluster": {"mfu": 0.4},
        "grid": {"layers": [16, 32, 48], "d_model": [2048, 4096, 8192], "devices": [256, 1024],
                 "hardware": ["a100-sxm4-80gb", "h100-sxm5-80gb"], "region": ["us", "fr"],
                 "lifespan_years": [2, 5]},
        "study": {"outputs": ["total_tco2e", "gpus_consumed", "train_days", "energy_mwh", "params"]},
    }
    db = hardware_db.load()
    res = run(doc, write=False, db=db)
    ev = Evaluator(load_study(doc, db), db)
    x, _ = ev.inputs(np.arange(res.summary["n_points"]))
    x = {k: np.broadcast_to(np.asarray(v, np.float64), (res.summary["n_points"],)) for k, v in x.items()}
    x = dict(x, head_dim=x["d_model"] / x["heads"], kv_heads=x["heads"], d_ff=4.0 * x["d_model"])
    x["expert_d_ff"] = x["d_ff"]
    ref = footprint_numpy(x)
    for k in ("total_tco2e", "gpus_consumed", "train_days", "energy_mwh", "params"):
        np.testing.assert_allclose(res.dataset[k].values.ravel(), ref[k], rtol=1e-12, err_msg=k)


# ---------------------------------------------------------------------------------------------
# invariants (hypothesis): one base configuration, one input varied


@st.composite
def configurations(draw):
    seed = draw(st.integers(0, 2**31 - 1))
    x = {k: float(v[0]) for k, v in random_configs(1, seed).items()}
    x["tokens"] = draw(st.floats(1e6, 1e14))
    x["mfu"] = draw(st.floats(0.01, 1.0))
    x["lifespan_years"] = draw(st.floats(0.25, 12.0))
    x["avg_power_w"] = draw(st.one_of(st.just(math.nan), st.floats(50.0, 1500.0)))
    return x


def _pair(x, key, a, b):
    """The kernel (float64) on two copies of x differing in ``key``."""
    arrs = {k: np.full(2, v) for k, v in x.items()}
    arrs[key] = np.array([a, b])
    return _kernel(arrs)


SETTINGS = settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])


@SETTINGS
@given(configurations(), st.floats(1.0, 1e3))
def test_more_tokens_never_cost_less(x, factor):
    out = _pair(x, "tokens", x["tokens"], x["tokens"] * factor)
    assert out["total_tco2e"][1] >= out["total_tco2e"][0]
    assert out["gpus_consumed"][1] >= out["gpus_consumed"][0]


@SETTINGS
@given(configurations(), st.floats(1.0, 10.0))
def test_longer_lifespan_never_raises_embodied_per_run(x, factor):
    out = _pair(x, "lifespan_years", x["lifespan_years"], x["lifespan_years"] * factor)
    assert out["embodied_tco2e"][1] <= out["embodied_tco2e"][0]
    assert out["operational_tco2e"][1] == out["operational_tco2e"][0]


@SETTINGS
@given(configurations(), st.floats(1.0, 50.0))
def test_higher_mfu_never_raises_gpus_consumed(x, factor):
    hi = min(1.0, x["mfu"] * factor)
    out = _pair(x, "mfu", x["mfu"], hi)
    assert out["gpus_consumed"][1] <= out["gpus_consumed"][0]
    assert out["train_days"][1] <= out["train_days"][0]
