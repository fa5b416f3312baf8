"""The layout model and the engine's best-layout search against two independent re-implementations.

bench.layout_models holds a plain-Python and a NumPy version of kernels/layout.py's ``step``,
written from its docstring equations, and of the best-layout search (every candidate layout of a
point through the layout model and the fixed-layout chain of bench.models, the least total_tco2e
among the feasible ones). On random designs (dense and MoE, GQA, flash attention or not, 2- and
4-byte training) and random layouts, most structurally valid and some broken on purpose, the
jitted kernel in float64 must equal both to rel 1e-12 on every output and give the same reason
codes. The engine's best-layout grid must equal the NumPy search over the engine's candidates and
the Python loop over each point's own enumeration: both search every point anew, the engine once
per design, device count and hardware for all sites and lifespans.
"""

import math

import jax
import numpy as np
import pytest

import hardware_db
from bench.layout_models import STEP_OUTPUTS, best_layout_numpy, best_layout_python, step_numpy, step_python
from bench.models import footprint_numpy
from kernels.architecture import moe_layer_count
from kernels.layout import enumerate_layouts, step
from sweep.calibration import calibration_for

STEP = jax.jit(step)
N_RANDOM = 2000


@pytest.fixture(scope="module")
def db():
    return hardware_db.load()


@pytest.fixture(scope="module")
def cal(db):
    return {k: float(v) for k, v in calibration_for(db, "a100-sxm4-80gb").items()}


def _divisors(n):
    return [d for d in range(1, int(n) + 1) if int(n) % d == 0]


def random_cases(n: int, seed: int = 7) -> tuple[dict, dict]:
    """n random (design, layout) pairs as float64 columns: the chain's inputs with params counted,
    and layouts built to be valid (tp | kv_heads, pp | layers, ep | experts and dp, microbatch·dp | batch),
    then one rule broken at random in a fifth of them."""
    rng = np.random.default_rng(seed)
    pick = lambda *v: float(rng.choice(v))  # noqa: E731
    rows, lays = [], []
    for _ in range(n):
        heads = pick(8, 16, 32, 64, 96)
        kv = heads / pick(1, 1, 2, 4, 8)
        hd = pick(64, 128)
        d_model = heads * hd
        moe = rng.random() < 0.4
        experts = pick(8, 16, 64) if moe else 1.0
        layers = pick(8, 12, 24, 32, 48, 64, 96)
        batch = pick(256, 512, 1024, 1536)
        p = {
            "layers": layers, "d_model": d_model, "heads": heads, "kv_heads": kv, "head_dim": hd,
            "d_ff": d_model * pick(4.0, 3.5), "ffn_matrices": pick(2, 3), "vocab": pick(32000, 50257, 128256),
            "seq_len": pick(1024, 2048, 4096), "tied_embeddings": pick(0, 1), "experts": experts,
            "top_k": pick(1, 2) if moe else 1.0, "moe_every": pick(1, 2) if moe else 1.0,
            "first_dense_layers": pick(0, 1), "shared_experts": pick(0, 1) if moe else 0.0,
            "expert_d_ff": d_model * pick(0.5, 1.0), "bias": pick(0, 1), "params": math.nan,
            "active_params": math.nan, "tokens": 1e11, "global_batch": batch, "flops": math.nan,
            "bytes_per_value": pick(2, 2, 4), "peak_flops": pick(312e12, 989e12), "hbm_bytes": pick(40e9, 80e9),
            "hbm_bw_bytes_s": pick(2.0e12, 3.35e12), "intra_bw_bytes_s": pick(300e9, 450e9),
            "inter_bw_bytes_s": pick(25e9, 50e9), "devices_per_node": pick(4, 8),
        }
        tp = pick(*[d for d in _divisors(kv) if d <= 16])
        pp = pick(*[d for d in _divisors(layers) if d <= 16])
        dp = pick(1, 2, 4, 8, 16, 32, 64)
        ep = pick(*[d for d in _divisors(experts) if dp % d == 0])
        mb = pick(*[m for m in (1, 2, 4, 8) if (batch / dp) % m == 0])
        v = pick(*[v for v in (1, 2, 3) if v == 1 or (pp > 1 and layers % (pp * v) == 0)])
        lay = {"devices": tp * pp * dp, "tp": tp, "pp": pp, "ep": ep, "microbatch": mb, "recompute": pick(0, 1, 2),
               "interleave": v, "shard_optimizer": pick(0, 1), "sequence_parallel": pick(0, 1) if tp > 1 else 0.0,
               "flash_attention": pick(0, 1)}
        if rng.random() < 0.2:  # break one rule
            key = str(rng.choice(["tp", "pp", "ep", "microbatch", "interleave", "devices", "top_k"]))
            if key == "top_k":
                p["top_k"] = experts + 1
            else:
                lay[key] = lay[key] + pick(1, 3)
        rows.append(p)
        lays.append(lay)
    x = {k: np.array([r[k] for r in rows]) for k in rows[0]}
    counted = footprint_numpy({**x, "mfu": np.ones(n), "devices": np.ones(n), "avg_power_w": np.full(n, np.nan),
                               "power_util": np.ones(n), "lifespan_years": np.ones(n), "tdp_w": np.ones(n),
                               "idle_w": np.zeros(n), "host_power_w": np.zeros(n),
                               "device_embodied_kgco2e": np.zeros(n), "host_embodied_kgco2e": np.zeros(n),
                               "material_kg_per_device": np.zeros(n), "carbon_intensity_kg_per_kwh": np.zeros(n),
                               "pue": np.ones(n), "wue_l_per_kwh": np.zeros(n)})
    x["params"], x["active_params"] = counted["params"].copy(), counted["active_params"].copy()
    layout = {k: np.array([r[k] for r in lays]) for k in lays[0]}
    return x, layout


def _kernel_step(x, lay, cal):
    design = {k: x[k] for k in ("layers", "d_model", "heads", "kv_heads", "head_dim", "d_ff", "ffn_matrices",
                                "vocab", "seq_len", "tied_embeddings", "experts", "top_k", "expert_d_ff",
                                "shared_experts", "global_batch", "bytes_per_value", "params", "active_params")}
    design["moe_layers"] = np.asarray(moe_layer_count(x["layers"], x["experts"], x["moe_every"],
                                                      x["first_dense_layers"]))
    hw = {k: x[k] for k in ("peak_flops", "hbm_bytes", "hbm_bw_bytes_s", "intra_bw_bytes_s", "inter_bw_bytes_s",
                            "devices_per_node")}
    return {k: np.asarray(v) for k, v in STEP(design, hw, lay, cal).items()}


@pytest.fixture(scope="module")
def cases():
    return random_cases(N_RANDOM)


@pytest.fixture(scope="module")
def kernel(cases, cal):
    return _kernel_step(*cases, cal)


def test_layout_cases_cover_feasible_infeasible_moe_and_flash(cases, kernel):
    x, lay = cases
    reason = kernel["reason"]
    assert (reason == 0).sum() > 300
    assert {1, 2, 4, 5, 8, 9, 10} <= set(np.unique(reason).tolist())
    assert ((reason == 0) & (x["experts"] > 1) & (lay["ep"] > 1)).sum() > 20
    assert ((reason == 0) & (lay["flash_attention"] > 0) & (lay["recompute"] == 0)).sum() > 20


def test_layout_kernel_float64_equals_numpy_reference(cases, kernel, cal):
    ref = step_numpy(*cases, cal)
    np.testing.assert_array_equal(kernel["reason"], ref["reason"])
    for k in STEP_OUTPUTS:
        if k != "reason":
            np.testing.assert_allclose(kernel[k], ref[k], rtol=1e-12, err_msg=k)


def test_layout_kernel_float64_equals_python_loop(cases, kernel, cal):
    x, lay = cases
    for i in range(0, N_RANDOM, 7):
        got = step_python({k: float(v[i]) for k, v in x.items()}, {k: float(v[i]) for k, v in lay.items()}, cal)
        assert got["reason"] == kernel["reason"][i], i
        for k in STEP_OUTPUTS:
            if k != "reason":
                assert got[k] == pytest.approx(float(kernel[k][i]), rel=1e-12), (i, k)


def modern_cases(n: int, seed: int = 11) -> tuple[dict, dict]:
    """random_cases with today's layout terms drawn too: context parallel (cp | seq_len, or not),
    expert tensor parallel 1 or tp, ZeRO stages 0-3, overlap and expert-overlap switches, FP8
    training (1-byte GEMMs with a 16-bit attention peak), a given MoE imbalance, uneven
    pipelines (and more stages than layers) and KV heads replicated (tp > kv_heads)."""
    x, lay = random_cases(n, seed)
    rng = np.random.default_rng(seed + 1)
    pick = lambda *v: rng.choice(v, size=n)  # noqa: E731
    x["bytes_per_value"] = np.where(rng.random(n) < 0.4, 1.0, x["bytes_per_value"])
    x["peak_bf16_flops"] = x["peak_flops"] / np.where(x["bytes_per_value"] < 1.5, 2.0, 1.0)
    lay["cp"] = pick(1.0, 1.0, 2.0, 4.0, 3.0)
    lay["devices"] = lay["devices"] * lay["cp"]
    lay["etp"] = np.where(rng.random(n) < 0.5, 1.0, lay["tp"])
    lay["zero_stage"] = pick(0.0, 1.0, 2.0, 3.0)
    lay["overlap"] = pick(0.0, 1.0)
    lay["ep_overlap"] = pick(0.0, 1.0)
    lay["moe_imbalance"] = np.where(rng.random(n) < 0.5, np.nan, pick(1.0, 1.1, 1.5))
    lay["grad_bytes"] = np.where(rng.random(n) < 0.5, np.nan, 2.0)
    lay["offload_layers"] = pick(0.0, 0.0, 2.0)
    lay["ep_dedup"] = pick(0.0, 1.0)
    lay["moe_host_sync"] = pick(0.0, 1.0)
    lay["gemm_per_expert"] = pick(0.0, 1.0)
    lay["cuda_graphs"] = pick(0.0, 0.0, 1.0)
    lay["cp_allgather"] = pick(0.0, 1.0)
    x["dropout"] = pick(0.0, 1.0)
    x["sliding_window"] = pick(0.0, 0.0, 128.0, 1024.0, 1e6)  # none, short, long, longer than the sequence
    x["window_layers"] = np.where(x["sliding_window"] > 0, pick(0.5, 1.0), 0.0)
    uneven = rng.random(n) < 0.2  # pp that may not divide the layers (or exceed them)
    lay["pp"] = np.where(uneven, pick(2.0, 3.0, 4.0, 5.0, 8.0, 12.0, 16.0, 200.0), lay["pp"])
    replicated = rng.random(n) < 0.15  # tp above the KV heads
    lay["tp"] = np.where(replicated & (x["heads"] % (2 * x["kv_heads"]) == 0), 2 * x["kv_heads"], lay["tp"])
    lay["devices"] = (lay["tp"] * lay["pp"] * lay["cp"]
                      * np.maximum(np.round(lay["devices"] / (lay["tp"] * lay["pp"] * lay["cp"])), 1))
    return x, lay


MODERN_CAL = {"gemm_eff_fp8": 0.6, "grouped_gemm_eff": 0.8, "overlap_eff": 0.7, "fp8_cast_bytes": 3.0,
              "fp8_weight_bytes": 1.0, "layer_latency_s": 2e-4, "moe_layer_latency_s": 5e-4, "moe_sync_latency_s": 7e-4,
              "attention_exp_per_s": 4e12, "attention_eff": 0.55, "moe_expert_latency_s": 3e-5,
              "moe_expert_fp8_latency_s": 9e-5}


def test_modern_layout_terms_kernel_equals_numpy_and_python(cal):
    x, lay = modern_cases(1500)
    c = {**cal, **MODERN_CAL}
    design = {k: x[k] for k in ("layers", "d_model", "heads", "kv_heads", "head_dim", "d_ff", "ffn_matrices",
                                "vocab", "seq_len", "tied_embeddings", "experts", "top_k", "expert_d_ff",
                                "shared_experts", "global_batch", "bytes_per_value", "params", "active_params",
                                "dropout", "sliding_window", "window_layers")}
    design["moe_layers"] = np.asarray(moe_layer_count(x["layers"], x["experts"], x["moe_every"],
                                                      x["first_dense_layers"]))
    hw = {k: x[k] for k in ("peak_flops", "peak_bf16_flops", "hbm_bytes", "hbm_bw_bytes_s", "intra_bw_bytes_s",
                            "inter_bw_bytes_s", "devices_per_node")}
    kernel = {k: np.asarray(v) for k, v in STEP(design, hw, lay, c).items()}
    ref = step_numpy(x, lay, c)
    reason = kernel["reason"]
    assert (reason == 0).sum() > 200
    assert (reason == 15).any()  # cp = 3 divides no power-of-two sequence
    np.testing.assert_array_equal(reason, ref["reason"])
    for k in STEP_OUTPUTS:
        if k != "reason":
            np.testing.assert_allclose(kernel[k], ref[k], rtol=1e-12, err_msg=k)
    ok = np.flatnonzero(reason == 0)
    assert (x["sliding_window"][ok] == 128).any() and (lay["tp"][ok] > x["devices_per_node"][ok]).any()
    assert (lay["zero_stage"][ok] == 3).any() and (lay["cp"][ok] > 1).any() and (x["bytes_per_value"][ok] < 1.5).any()
    for i in range(0, 1500, 11):
        got = step_python({k: float(v[i]) for k, v in x.items()}, {k: float(v[i]) for k, v in lay.items()}, c)
        assert got["reason"] == reason[i], i
        for k in STEP_OUTPUTS:
            if k != "reason":
                assert got[k] == pytest.approx(float(kernel[k][i]), rel=1e-12, nan_ok=True), (i, k)


BEST_GRID = {
    "model": {"heads": 16, "vocab": 32000, "seq_len": 2048, "ffn": "swiglu", "top_k": 2},
    "training": {"tokens": 2e11, "global_batch": 512},
    "grid": {"layers": [12, 24], "d_model": [2048, 4096], "experts": [1, 8], "devices": [8, 128],
             "hardware": ["a100-sxm4-80gb", "h100-sxm5-80gb"], "region": ["us", "fr"], "lifespan_years": [3, 5]},
    "study": {"layout": "best", "dtype": "float64"},
}


@pytest.fixture(scope="module")
def best_grid(db):
    from bench.run import grid_inputs
    from sweep.engine import Evaluator, run
    from sweep.study import load_study

    res = run(BEST_GRID, write=False, quiet=True, db=db)
    ev = Evaluator(load_study(BEST_GRID, db), db)
    n = res.summary["n_points"]
    x = grid_inputs(ev, np.arange(n), np.float64)
    _, cal = ev.inputs(np.arange(n))
    cal = {k: np.broadcast_to(np.asarray(v, np.float64), (n,)) for k, v in cal.items()}
    return res.dataset, ev, x, cal


def test_best_layout_grid_covers_feasible_and_infeasible_points(best_grid):
    ds = best_grid[0]
    reason = set(np.unique(ds["reason"].values).tolist())
    assert {0, 1, 10} <= reason  # feasible, top_k > experts, out of memory on 8 devices


def test_engine_best_layout_equals_numpy_search_over_its_candidates(best_grid):
    ds, ev, x, cal = best_grid
    ref = best_layout_numpy(x, ev.layouts, cal)
    np.testing.assert_array_equal(ds["reason"].values.ravel(), ref["reason"])
    ok = ref["reason"] == 0
    for k in ("total_tco2e", "mfu", "step_time_s", "train_days", "gpus_consumed"):
        np.testing.assert_allclose(ds[k].values.ravel()[ok], ref[k][ok], rtol=1e-12, err_msg=k)
    for k in ("tp", "pp", "ep", "microbatch", "interleave", "recompute"):
        np.testing.assert_array_equal(ds[k].values.ravel()[ok], ev.layouts[k][ref["layout"][ok]], err_msg=k)


def test_engine_best_layout_equals_python_loop_over_each_points_own_layouts(best_grid):
    ds, _, x, cal = best_grid
    total, reason = ds["total_tco2e"].values.ravel(), ds["reason"].values.ravel()
    for i in range(0, len(reason), 7):
        p = {k: float(v[i]) for k, v in x.items()}
        cand = enumerate_layouts(p["devices"], p["layers"], p["heads"], p["kv_heads"], p["experts"],
                                 p["global_batch"], p["devices_per_node"])
        layouts = [{k: float(v[j]) for k, v in cand.items()} for j in range(len(cand["tp"]))]
        got = best_layout_python(p, layouts, {k: float(v[i]) for k, v in cal.items()})
        assert got["reason"] == reason[i], i
        if reason[i] == 0:
            assert got["total_tco2e"] == pytest.approx(total[i], rel=1e-12), i


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_every_objective_is_non_decreasing_in_step_time_at_a_fixed_point(cases, cal, dtype):
    """What the shared layout search rests on: at a fixed point (design, devices, hardware, site,
    lifespan, tokens), total_tco2e, train_days and energy_mwh never fall as the step time grows, in
    floating point too, so the fastest feasible layout is the least of each (engine._layout_stage)."""
    from test_reference import random_configs

    from kernels.footprint import INPUT_KEYS, footprint

    x, lay = cases
    chain = random_configs(N_RANDOM, seed=3)
    blocks = []  # every enumerated layout of every 40th design, in one call (one compile)
    for i in range(0, N_RANDOM, 40):
        p = {k: float(v[i]) for k, v in x.items()}
        cand = enumerate_layouts(lay["devices"][i], p["layers"], p["heads"], p["kv_heads"], p["experts"],
                                 p["global_batch"], p["devices_per_node"])
        n = len(cand["tp"])
        inp = {k: np.full(n, float(chain[k][i])) for k in INPUT_KEYS}
        inp.update({k: np.full(n, v) for k, v in p.items()})
        inp.update({k: np.asarray(v, np.float64) for k, v in cand.items()})
        inp["mfu"] = np.full(n, np.nan)
        blocks.append(inp)
    inp = {k: np.concatenate([b[k] for b in blocks]).astype(dtype) for k in blocks[0]}
    out = {k: np.asarray(v) for k, v in jax.jit(footprint)(inp, {k: dtype(v) for k, v in cal.items()}).items()}
    checked, start = 0, 0
    for b in blocks:
        rows = slice(start, start + len(b["tp"]))
        start = rows.stop
        ok = (out["reason"][rows] == 0) & np.isfinite(out["total_tco2e"][rows])
        order = np.argsort(out["step_time_s"][rows][ok], kind="stable")
        for k in ("total_tco2e", "train_days", "energy_mwh"):
            assert np.all(np.diff(out[k][rows][ok][order]) >= 0), (rows, k)
        checked += int(ok.sum() > 1)
    assert checked >= 20
