"""carbon-sweep benchmarks (`make bench`): speed and scale of the sweep engine, with the machine.

    python bench/run.py            full run (several minutes; the 1e9-point sweep may take longer)
    python bench/run.py --quick    smaller sizes, about a minute

Measures (warm-up excluded, best of a few repeats unless noted):
  a) the engine on a fixed-layout grid (MFU given) of ≥ 1e7 points keeping only a Pareto front and
     top-k, float32 and float64: end-to-end ``sweep.engine.run`` (its per-run jit compile included)
     and the warm chunk loop (compile excluded), with a per-stage profile of one chunk; the raw
     kernel ``jax.jit(footprint)`` on 1e7-element float32 arrays, all outputs materialised and fused
     down to total_tco2e;
  b) the plain-Python per-configuration loop (bench.models.footprint_python) on a sample,
     extrapolated, and the NumPy vectorisation (bench.models.footprint_numpy); speed-ups;
  c) a best-layout grid (``layout = "best"``): points/s of the engine, which searches the layouts
     once per value of the axes the search depends on, against the same search point by point in
     NumPy (bench.layout_models.best_layout_numpy, float32 and float64, on a spread of the grid's
     points) and in a plain-Python loop (best_layout_python, each point's own candidates, a sample);
  d) scaling 1e6 → 1e9 points in subprocesses (time, s per 1e6 points, peak RSS); the 1e9 run has a
     time limit, past which its rate so far is reported and the total extrapolated;
  e) the layout search for GPT-3 175B on 1024 A100-80GB: warm in-process time and the cold-start
     wall time of ``carbon-sweep layout SPEC --json``.
Writes bench/out/bench.json and bench/out/bench.md (a table for the README) and prints the table.
The machine is shared: load averages are recorded next to each section.
"""

from __future__ import annotations

import argparse
import datetime as _dt
import json
import math
import os
import platform
import shutil
import subprocess
import sys
import tempfile
import textwrap
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

import numpy as np  # noqa: E402

OUT = ROOT / "bench" / "out"
REGIONS = ["us", "cn", "in", "de", "fr", "gb", "jp", "kr", "ca", "au"]
DEVICES = [64, 128, 256, 512, 1024, 2048, 4096, 8192, 16384, 32768]
SECTIONS = ("engine", "kernel", "baselines", "best", "scaling", "layout")
TARGETS = {"vs_loop": 1e4, "vs_numpy": 3.0, "fixed_evals_per_s": 1e8, "peak_rss_gb_1e9": 2.0,
           "layout_warm_s": 1.0, "layout_cold_s": 10.0}


# ---------------------------------------------------------------------------------------------
# helpers


def load() -> list[float]:
    return [round(v, 2) for v in os.getloadavg()]


def best_of(fn, repeats: int, warmup: int = 1) -> tuple[float, list[float]]:
    """(best wall time, all times) of fn() after ``warmup`` untimed calls."""
    for _ in range(warmup):
        fn()
    times = []
    for _ in range(repeats):
        t = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t)
    return min(times), times


def machine() -> dict:
    import jax

    cpu = "unknown"
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    ram_gb = None
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemTotal"):
                ram_gb = round(int(line.split()[1]) / 1024**2, 1)
    except OSError:
        pass
    try:
        usable = len(os.sched_getaffinity(0))
    except AttributeError:
        usable = os.cpu_count()
    return {
        "cpu": cpu, "cores": os.cpu_count(), "usable_cores": usable, "ram_gb": ram_gb,
        "python": platform.python_version(), "jax": jax.__version__, "jaxlib": _version("jaxlib"),
        "numpy": np.__version__, "platform": platform.platform(),
        "jax_devices": [str(d) for d in jax.devices()],
        "date": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
        "load_avg_start": load(),
    }


def _version(pkg):
    import importlib.metadata as md

    try:
        return md.version(pkg)
    except md.PackageNotFoundError:
        return None


def fixed_spec(n_layers: int = 100, n_tokens: int = 1, dtype: str = "float32", n_d_model: int = 100,
               pareto=(("loss", "total_tco2e"),), top_n: int = 100) -> dict:
    """A fixed-layout study (MFU given): layers × d_model × devices × lifespan × region (× tokens).

    100 × 100 × 10 × 10 × 10 = 1e7 points with the defaults; n_tokens multiplies it.
    """
    grid = {
        "layers": {"start": 1, "stop": n_layers, "step": 1},
        "d_model": {"start": 1024, "stop": 1024 + 128 * (n_d_model - 1), "step": 128},
        "devices": DEVICES,
        "lifespan_years": {"start": 1, "stop": 10, "num": 10},
        "region": REGIONS,
    }
    training = {"tokens": 1e12}
    if n_tokens > 1:
        del training["tokens"]
        grid["tokens"] = {"start": 1e11, "stop": 2e13, "num": n_tokens, "scale": "log"}
    return {
        "model": {"heads": 32, "vocab": 32000, "seq_len": 4096, "ffn": "swiglu"},
        "training": training,
        "cluster": {"hardware": "h100-sxm5-80gb", "mfu": 0.4},
        "grid": grid,
        "study": {"name": "bench_fixed", "keep_full_grid": False, "dtype": dtype,
                  "pareto": [list(p) for p in pareto], "top": {"by": "total_tco2e", "n": top_n}},
    }


def grid_inputs(ev, flat: np.ndarray, dtype) -> dict[str, np.ndarray]:
    """The chain inputs at flat grid indices, with the engine's derived defaults
    (``kernels.design.derived_sizes``), as full arrays."""
    from kernels.design import derived_sizes

    x, _ = ev.inputs(flat)
    n = len(flat)
    x = {k: np.broadcast_to(np.asarray(v, dtype), (n,)).copy() for k, v in x.items()}
    x.update({k: np.array(v) for k, v in derived_sizes(x, ev.derive).items()})  # (copies, as NumPy arrays)
    return x


# ---------------------------------------------------------------------------------------------
# a) engine, fixed layout


def measure_engine(spec: dict, repeats: int, db, warm_spec: dict | None = None) -> dict:
    """`run()` end to end (best of ``repeats``; each call compiles its own jit) and the warm chunk
    loop (one Evaluator, compiled once, every chunk evaluated and reduced; merge excluded)."""
    from sweep.engine import Evaluator, Plan, chunk_partial, in_threads, run
    from sweep.study import load_study

    study = load_study(spec, db)
    n = study.n_points
    if warm_spec is not None:
        run(warm_spec, write=False, quiet=True, db=db)  # imports, caches
    t_run, times = best_of(lambda: run(spec, write=False, quiet=True, db=db), repeats, warmup=0)
    ev = Evaluator(study, db)
    plan = Plan.make(study.shape, ev.default_chunk_size())
    t0 = time.perf_counter()
    chunk_partial(ev, plan, 0, False)
    first = time.perf_counter() - t0

    def loop():  # as run() does it: the chunks worked on by two threads, each its call then its reductions
        for _ in in_threads(ev, plan, list(range(plan.n_chunks)), lambda i, h: chunk_partial(ev, plan, i, False, h)):
            pass

    t_loop, _ = best_of(loop, max(1, repeats - 1), warmup=0)
    return {
        "points": n, "layouts_per_point": ev.n_layouts, "chunks": plan.n_chunks, "chunk_points": plan.capacity,
        "run_s": t_run, "run_times_s": times, "run_points_per_s": n / t_run,
        "first_chunk_s": first, "warm_chunks_s": t_loop, "warm_points_per_s": n / t_loop,
        "load_avg": load(), "_ev": ev, "_plan": plan,
    }


def bench_engine_fixed(n_layers: int, repeats: int, res: dict):
    import hardware_db
    from sweep.engine import run

    db = hardware_db.load()
    out = {}
    for dtype in ("float32", "float64"):
        row = measure_engine(fixed_spec(n_layers=n_layers, dtype=dtype), repeats, db,
                             warm_spec=fixed_spec(n_layers=2, dtype=dtype))
        ev, plan = row.pop("_ev"), row.pop("_plan")
        row["profile_per_chunk"] = profile_chunk(ev, plan)
        out[dtype] = row
        n = row["points"]
        print(f"  engine fixed {dtype}: {n:,} points, run {row['run_s']:.2f} s = {row['run_points_per_s']:,.0f}/s; "
              f"warm chunks {row['warm_chunks_s']:.2f} s = {row['warm_points_per_s']:,.0f}/s", flush=True)
        if dtype == "float32":
            try:
                row["structured_kernel_probe"] = structured_probe(ev, plan)
            except Exception as e:  # engine internals changed: record and go on
                row["structured_kernel_probe"] = {"error": f"{type(e).__name__}: {e}"}
    res["engine_fixed"] = out
    full = {}
    for dtype in ("float32", "float64"):  # the full grid kept in memory: every output of every point
        spec = fixed_spec(n_layers=max(1, n_layers // 10), dtype=dtype)
        spec["study"]["keep_full_grid"] = True
        result = run(spec, write=False, quiet=True, db=db)
        t, times = best_of(lambda: run(spec, write=False, quiet=True, db=db), repeats, warmup=0)  # noqa: B023
        n = result.summary["n_points"]
        full[dtype] = {"points": n, "outputs": len(result.dataset.data_vars), "run_s": t, "run_times_s": times,
                       "run_points_per_s": n / t, "load_avg": load()}
        print(f"  engine fixed {dtype}, full grid kept: {n:,} points × {full[dtype]['outputs']} outputs, "
              f"run {t:.2f} s = {n / t:,.0f}/s", flush=True)
    res["engine_full_grid"] = full


def profile_chunk(ev, plan, i: int = 0, repeats: int = 3) -> dict:
    """Seconds per stage of one chunk: index → values, input gathering, the jitted call, device →
    numpy, reductions (Pareto, top-k, statistics), np.savez of the partial."""
    import jax

    from sweep.engine import chunk_partial
    from sweep.results import atomic_savez

    start, stop = plan.bounds(i)
    flat = np.arange(start, stop, dtype=np.int64)
    if len(flat) < plan.capacity:
        flat = np.concatenate([flat, np.full(plan.capacity - len(flat), flat[0])])
    stages = {}

    def timed(name, fn):
        best = math.inf
        for _ in range(repeats):
            t = time.perf_counter()
            r = fn()
            best = min(best, time.perf_counter() - t)
        stages[name] = best
        return r

    if hasattr(ev, "evaluate_chunk"):  # the grid path: one jitted call per hyper-rectangular chunk
        timed("evaluate_chunk (jitted grid call, to numpy)", lambda: ev.evaluate_chunk(plan, i))
        n_eval = 1
    else:  # the flat-index path: unravel, gather, call
        values = timed("values_at (unravel flat index)", lambda: ev.values_at(flat))
        x, cal = timed("inputs_from_values (gather, incl. label lookup)", lambda: ev.inputs_from_values(values))
        x["_points"] = np.zeros(len(flat), np.int8)
        dev = timed("jitted call (kernel + loss + reasons)", lambda: jax.block_until_ready(ev.fn(x, cal)))
        timed("device → numpy (np.asarray of outputs)", lambda: {k: np.asarray(v) for k, v in dev.items()})
        n_eval = 4
    total = timed("chunk_partial total", lambda: chunk_partial(ev, plan, i, False))
    res = total[0]
    with tempfile.TemporaryDirectory() as d:
        timed("np.savez of the partial", lambda: atomic_savez(Path(d) / "c.npz", res))
    evaluate = sum(stages[k] for k in list(stages)[:n_eval])
    stages["reductions (chunk_partial − evaluate)"] = max(stages["chunk_partial total"] - evaluate, 0.0)
    stages["points"] = len(flat)
    stages["engine_path"] = "grid (evaluate_chunk)" if n_eval == 1 else "flat index (values_at + gather)"
    return stages


def structured_probe(ev, plan, repeats: int = 3) -> dict:
    """What the engine could reach (a measurement for the profile, not the engine's own path): one
    chunk evaluated as a hyper-rectangle, each dimension a broadcast axis vector (no flat index, no
    gathered 1-D inputs; XLA computes what depends on few axes on the small shape), returning (i) all
    outputs, (ii) only the columns the reductions need; then (iii) NumPy reductions on those columns
    only: an O(n) bucket prefilter + exact Pareto front, argpartition top-k, min/max with where=."""
    import functools

    import jax

    from sweep import reductions as red
    from sweep.engine import evaluate_points

    region = plan.region(0)
    cshape = tuple(r.stop - r.start for r in region)
    nd = len(cshape)
    dt = ev.dtype
    x = {k: np.asarray(v, dt) for k, v in ev.base.items()}
    cal = {k: np.asarray(v, dt) for k, v in ev.cal.items()}
    for j, (d, r) in enumerate(zip(ev.dims, region)):
        bs = [1] * nd
        bs[j] = cshape[j]
        if d in ("hardware", "region"):
            for k, t in ev.tables[d].items():
                x[k] = t[r].astype(dt).reshape(bs)
            if d == "hardware":
                for k, t in ev.tables["cal"].items():
                    cal[k] = t[r].astype(dt).reshape(bs)
        elif d in ("ffn", "recompute"):
            raise NotImplementedError(d)
        else:
            x[d] = ev.study.dims[d][r].astype(dt).reshape(bs)
    x["_points"] = np.zeros(cshape, np.int8)
    n = int(np.prod(cshape))
    needed = tuple(ev.reduce_outputs)
    top = ev.study.options["top"]
    out = {"points": n, "chunk_shape": list(cshape), "needed_columns": list(needed)}
    for name, outs in (("all_outputs", tuple(ev.outputs)), ("needed_columns_only", needed)):
        f = jax.jit(functools.partial(evaluate_points, **ev.core_kwargs(outs)))
        t, _ = best_of(lambda: {k: np.asarray(v) for k, v in jax.block_until_ready(f(x, cal)).items()}, repeats)
        out[name] = {"s": t, "points_per_s": n / t}
    cols = {k: np.asarray(v).ravel() for k, v in f(x, cal).items()}

    def reductions():
        ok = cols["reason"] == 0
        res = {}
        for p in ev.study.options["pareto"]:
            names = [red.parse_objective(o) for o in p]
            g = [sg * cols[nm].astype(np.float64) for nm, sg in names]
            m = ok.copy()
            for a in g:
                m &= np.isfinite(a)
            idx = np.flatnonzero(m)
            if len(names) == 2 and len(idx):
                g0, g1 = g[0][idx], g[1][idx]
                lo, hi, nb = g0.min(), g0.max(), 4096
                b = np.minimum(((g0 - lo) / max(hi - lo, 1e-300) * nb).astype(np.int64), nb - 1)
                bm = np.full(nb, np.inf)
                np.minimum.at(bm, b, g1)
                excl = np.concatenate([[np.inf], np.minimum.accumulate(bm)[:-1]])
                idx = idx[g1 < excl[b]]
            res[tuple(p)] = idx[red.pareto_mask(np.stack([a[idx] for a in g], 1))]
        if top:
            nm, sg = red.parse_objective(top["by"])
            key = np.where(ok, sg * cols[nm].astype(np.float64), np.inf)
            res["top"] = np.argpartition(key, min(top["n"], len(key) - 1))[:top["n"]]
        for k, v in cols.items():
            if v.dtype.kind == "f":
                m = ok & np.isfinite(v)
                res[k] = (np.min(v, where=m, initial=np.inf), np.max(v, where=m, initial=-np.inf))
        return res

    t, _ = best_of(reductions, repeats)
    out["numpy_reductions_on_needed_columns"] = {"s": t, "points_per_s": n / t}
    print(f"  structured probe ({n:,}-point chunk): all outputs {n / out['all_outputs']['s']:,.0f}/s, needed "
          f"columns {n / out['needed_columns_only']['s']:,.0f}/s, reductions {n / t:,.0f}/s", flush=True)
    return out


def bench_kernel(n: int, repeats: int, res: dict):
    """Raw jax.jit(footprint) on n-element float32 arrays of the fixed-layout chain."""
    import jax
    import jax.numpy as jnp

    from kernels.footprint import footprint

    out = {}
    for dtype in (np.float32, np.float64):
        x = synthetic_inputs(n, dtype)
        xs = jax.device_put(x)
        f_all = jax.jit(footprint)
        f_tot = jax.jit(lambda x: footprint(x, None)["total_tco2e"])
        f_min = jax.jit(lambda x: jnp.min(footprint(x, None)["total_tco2e"]))
        row = {"points": n}
        for name, f, arg in (("all_outputs", f_all, (xs, None)), ("fused_total_tco2e", f_tot, (xs,)),
                             ("fused_min_total_tco2e", f_min, (xs,))):
            t, _ = best_of(lambda: jax.block_until_ready(f(*arg)), repeats)
            row[name] = {"s": t, "evals_per_s": n / t}
        row["load_avg"] = load()
        out[np.dtype(dtype).name] = row
        print(f"  kernel {np.dtype(dtype).name}: all outputs {row['all_outputs']['evals_per_s']:,.0f}/s, "
              f"fused total {row['fused_total_tco2e']['evals_per_s']:,.0f}/s", flush=True)
        del xs, x
    res["kernel"] = out


def synthetic_inputs(n: int, dtype, seed: int = 0) -> dict[str, np.ndarray]:
    """Fixed-layout chain inputs: layers, d_model, devices, lifespan and grid intensity vary over n
    points, the rest are scalars of an H100 run (the shape of a fixed-layout sweep chunk)."""
    rng = np.random.default_rng(seed)
    x = {
        "layers": 32.0, "d_model": 4096.0, "heads": 32.0, "kv_heads": 8.0, "head_dim": 128.0, "d_ff": 14336.0,
        "ffn_matrices": 3.0, "vocab": 32000.0, "seq_len": 4096.0, "tied_embeddings": 0.0, "experts": 1.0,
        "top_k": 1.0, "moe_every": 1.0, "first_dense_layers": 0.0, "shared_experts": 0.0, "expert_d_ff": 14336.0,
        "bias": 0.0, "params": np.nan, "active_params": np.nan, "tokens": 1e12, "global_batch": 1024.0,
        "flops": np.nan, "bytes_per_value": 2.0, "devices": 1024.0, "mfu": 0.4, "avg_power_w": np.nan,
        "power_util": 0.76, "tp": 1.0, "pp": 1.0, "ep": 1.0, "microbatch": 1.0, "recompute": 1.0,
        "interleave": 1.0, "shard_optimizer": 1.0, "sequence_parallel": 1.0, "lifespan_years": 5.0,
        "peak_flops": 989e12, "hbm_bytes": 80e9, "hbm_bw_bytes_s": 3.35e12, "intra_bw_bytes_s": 450e9,
        "inter_bw_bytes_s": 50e9, "devices_per_node": 8.0, "tdp_w": 700.0, "idle_w": 80.0,
        "host_power_w": 2000.0, "device_embodied_kgco2e": 150.0, "host_embodied_kgco2e": 2500.0,
        "material_kg_per_device": 2.0, "carbon_intensity_kg_per_kwh": 0.4, "pue": 1.2, "wue_l_per_kwh": 1.0,
    }
    x = {k: np.asarray(v, dtype) for k, v in x.items()}
    x["layers"] = rng.integers(1, 101, n).astype(dtype)
    x["d_model"] = (rng.integers(8, 108, n) * 128).astype(dtype)
    x["head_dim"] = x["d_model"] / x["heads"]
    x["d_ff"] = 4 * x["d_model"]
    x["devices"] = np.asarray(DEVICES, dtype)[rng.integers(0, len(DEVICES), n)]
    x["lifespan_years"] = rng.integers(1, 11, n).astype(dtype)
    x["carbon_intensity_kg_per_kwh"] = rng.uniform(0.02, 0.8, n).astype(dtype)
    return x


# ---------------------------------------------------------------------------------------------
# b) plain Python loop and NumPy


def bench_baselines(n_loop: int, n_numpy: int, repeats: int, res: dict):
    import hardware_db
    from bench.models import footprint_numpy, footprint_python
    from sweep.engine import Evaluator
    from sweep.study import load_study

    db = hardware_db.load()
    out = {}
    study = load_study(fixed_spec(dtype="float64"), db)
    ev = Evaluator(study, db)
    rng = np.random.default_rng(1)
    # the plain loop, on a random sample of the engine's grid
    flat = np.sort(rng.choice(study.n_points, n_loop, replace=False))
    x = grid_inputs(ev, flat, np.float64)
    points = [{k: float(v[i]) for k, v in x.items()} for i in range(n_loop)]
    t, _ = best_of(lambda: [footprint_python(p) for p in points], repeats=2)
    out["python_loop"] = {"points": n_loop, "s": t, "points_per_s": n_loop / t, "load_avg": load()}
    print(f"  python loop: {n_loop:,} points in {t:.2f} s = {n_loop / t:,.0f}/s", flush=True)
    # the same loop calling the jitted kernel once per configuration (what `estimate` does per spec)
    import jax

    from kernels.footprint import footprint

    f = jax.jit(footprint)
    few = points[: min(len(points), 300)]
    t, _ = best_of(lambda: [jax.block_until_ready(f(p, None)) for p in few], repeats=2)
    out["python_loop_of_jitted_kernel_calls"] = {"points": len(few), "s": t, "points_per_s": len(few) / t}
    print(f"  python loop of jitted kernel calls: {len(few) / t:,.0f}/s", flush=True)
    # same model? the engine on the same points
    eng = ev.evaluate(flat)
    ref = footprint_numpy(x)
    rel = np.nanmax(np.abs(eng["total_tco2e"] / ref["total_tco2e"] - 1))
    out["engine_vs_numpy_max_rel_diff_total_tco2e_float64"] = float(rel)
    # NumPy on a contiguous block of the grid (inputs gathered beforehand: not timed)
    for dtype in (np.float64, np.float32):
        flat = np.arange(n_numpy, dtype=np.int64) * (study.n_points // n_numpy)
        x = grid_inputs(ev, flat, dtype)
        t, _ = best_of(lambda x=x: footprint_numpy(x), repeats)
        out[f"numpy_{np.dtype(dtype).name}"] = {"points": n_numpy, "s": t, "points_per_s": n_numpy / t,
                                                "load_avg": load()}
        print(f"  numpy {np.dtype(dtype).name}: {n_numpy:,} points in {t:.2f} s = {n_numpy / t:,.0f}/s", flush=True)
        del x
    res["baselines"] = out


# ---------------------------------------------------------------------------------------------
# c) best-layout grid


def best_layout_spec(quick: bool) -> dict:
    return {
        "model": {"heads": 64, "vocab": 50257, "seq_len": 2048},
        "training": {"global_batch": 1536},
        "cluster": {"hardware": "a100-sxm4-80gb"},
        "grid": {  # a planner's question: which design, how many devices, where, for how long
            "layers": [48, 96] if quick else [48, 64, 96],
            "d_model": [8192, 12288],
            "devices": [512, 1024] if quick else [512, 1024, 2048],
            "lifespan_years": [3, 5] if quick else [3, 4, 5, 6],
            "region": REGIONS[:3] if quick else REGIONS,
            "tokens": [3e11] if quick else [1e11, 3e11, 1e12],
        },
        "study": {"name": "bench_best", "layout": "best", "keep_full_grid": False, "dtype": "float32",
                  "pareto": [["loss", "total_tco2e"]], "top": {"by": "total_tco2e", "n": 20}},
    }


def bench_best_layout(quick: bool, repeats: int, res: dict):
    try:
        import hardware_db

        db = hardware_db.load()
        row = measure_engine(best_layout_spec(quick), repeats, db)
        ev = row.pop("_ev")
        row.pop("_plan")
        nl = row["layouts_per_point"]
        # the search runs once per value of the axes it depends on (design, devices, hardware), not per point
        searched = list(ev.searched_dims)
        row["searched_dims"] = searched
        row["layout_problems"] = ev.n_layout_searches
        row["layout_evaluations"] = row["layout_problems"] * nl
        row["run_layout_evals_per_s"] = row["layout_evaluations"] / row["run_s"]
        res["engine_best_layout"] = row
        print(f"  engine best-layout: {row['points']:,} points ({row['layout_problems']} layout searches of {nl:,} "
              f"layouts: {', '.join(searched)}): run {row['run_s']:.3f} s = {row['run_points_per_s']:,.0f} points/s; "
              f"warm {row['warm_points_per_s']:,.0f} points/s", flush=True)
        row["baselines"] = best_layout_baselines(ev, repeats, n_loop=2 if quick else 4)
    except Exception as e:  # the layout model may be missing or failing: record and go on
        res["engine_best_layout"] = {"error": f"{type(e).__name__}: {e}"}
        print(f"  engine best-layout: skipped ({type(e).__name__}: {e})", flush=True)


def best_layout_baselines(ev, repeats: int, n_loop: int, n_numpy: int = 360) -> dict:
    """The best-layout search of the same grid (bench.layout_models), point by point as a plain
    vectorisation does it: NumPy over the engine's candidates in chunks of ~2^20 point×layout
    evaluations, on ``n_numpy`` points spread over the grid (inputs gathered beforehand, not
    timed), float32 and float64; the plain Python loop over each of ``n_loop`` sampled points' own
    enumeration (enumeration not timed; the engine's run() includes its own)."""
    from bench.layout_models import best_layout_numpy, best_layout_python
    from kernels.layout import enumerate_layouts

    size, nl = int(np.prod(ev.shape)), ev.n_layouts
    n = min(n_numpy, size)
    flat = np.linspace(0, size - 1, n).astype(np.int64)
    out = {}
    per = max(1, (1 << 20) // nl)
    for dtype in (np.float32, np.float64):
        x = grid_inputs(ev, flat, dtype)
        _, cal = ev.inputs(flat)
        cal = {k: np.broadcast_to(np.asarray(v, dtype), (n,)) for k, v in cal.items()}

        def search(x=x, cal=cal):
            return [best_layout_numpy({k: v[a:a + per] for k, v in x.items()}, ev.layouts,
                                      {k: v[a:a + per] for k, v in cal.items()}) for a in range(0, n, per)]

        t, _ = best_of(search, max(1, repeats - 1), warmup=0)
        name = np.dtype(dtype).name
        out[f"numpy_{name}"] = {"points": n, "s": t, "points_per_s": n / t, "evals_per_s": n * nl / t,
                                "load_avg": load()}
        print(f"  numpy best-layout {name}: {n:,} points × {nl:,} layouts in {t:.2f} s = {n / t:,.1f} points/s",
              flush=True)
        if dtype is np.float64:  # same model? the engine's picks against the float64 search
            ref = np.concatenate([r["total_tco2e"] for r in search()])
            eng = ev.evaluate(flat)["total_tco2e"]
            ok = np.isfinite(ref)
            out["engine_vs_numpy_max_rel_diff_total_tco2e"] = float(np.max(np.abs(eng[ok] / ref[ok] - 1)))
    # the loop reads the last pass's float64 inputs (x, cal)
    sample = np.random.default_rng(2).choice(n, n_loop, replace=False)
    cases = []
    for i in sample:
        p = {k: float(v[i]) for k, v in x.items()}
        cand = enumerate_layouts(p["devices"], p["layers"], p["heads"], p["kv_heads"], p["experts"],
                                 p["global_batch"], p["devices_per_node"])
        layouts = [{k: float(v[j]) for k, v in cand.items()} for j in range(len(cand["tp"]))]
        cases.append((p, layouts, {k: float(v[i]) for k, v in cal.items()}))
    t, _ = best_of(lambda: [best_layout_python(*c) for c in cases], 3, warmup=0)  # best of 3: fair to the loop
    evals = sum(len(c[1]) for c in cases)
    out["python_loop"] = {"points": n_loop, "s": t, "points_per_s": n_loop / t, "evals": evals,
                          "evals_per_s": evals / t, "load_avg": load()}
    print(f"  python loop best-layout: {n_loop} points ({evals:,} layouts) in {t:.2f} s = {n_loop / t:.2f} points/s",
          flush=True)
    return out


# ---------------------------------------------------------------------------------------------
# d) scaling in subprocesses, peak RSS


CHILD = textwrap.dedent("""
    import json, resource, sys, time
    sys.path.insert(0, {root!r})
    from bench.run import fixed_spec
    from sweep.engine import run
    spec = fixed_spec(n_layers={n_layers}, n_tokens={n_tokens}, dtype={dtype!r})
    t = time.perf_counter()
    r = run(spec, {out!r}, quiet=True, write=True)
    el = time.perf_counter() - t
    hwm = [int(l.split()[1]) for l in open("/proc/self/status") if l.startswith("VmHWM")]
    print(json.dumps({{"points": r.summary["n_points"], "chunks": r.summary["n_chunks"], "s": el,
                      "vmhwm_kb": hwm[0] if hwm else None,
                      "ru_maxrss_kb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss}}))
""")


def sweep_subprocess(n_layers: int, n_tokens: int, dtype: str, timeout_s: float) -> dict:
    """One sweep in a fresh interpreter: wall time, peak RSS (psutil polling and VmHWM); on
    timeout the child is stopped and the rate of the chunks it finished is extrapolated."""
    import psutil

    from sweep.engine import DEFAULT_BUDGET, PARTIAL_DIR, Plan

    tmp = Path(tempfile.mkdtemp(prefix="bench_sweep_", dir=OUT))
    shape = (n_layers, 100, len(DEVICES), 10, len(REGIONS)) + ((n_tokens,) if n_tokens > 1 else ())
    n = int(np.prod(shape))
    plan = Plan.make(shape, DEFAULT_BUDGET)
    code = CHILD.format(root=str(ROOT), n_layers=n_layers, n_tokens=n_tokens, dtype=dtype, out=str(tmp / "run"))
    t0 = time.perf_counter()
    proc = subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    ps = psutil.Process(proc.pid)
    peak = 0
    timed_out = False
    done_at = []
    while proc.poll() is None:
        try:
            peak = max(peak, ps.memory_info().rss)
        except psutil.Error:
            pass
        el = time.perf_counter() - t0
        if el > timeout_s:
            done = len(list((tmp / "run" / PARTIAL_DIR).glob("chunk_*.npz")))
            done_at.append((el, done))
            proc.kill()
            timed_out = True
            break
        time.sleep(0.25)
    stdout, stderr = proc.communicate()
    wall = time.perf_counter() - t0
    row = {"points": n, "chunks": plan.n_chunks, "dtype": dtype, "wall_s": wall, "peak_rss_gb_polled": peak / 1e9,
           "load_avg": load()}
    if timed_out:
        el, done = done_at[-1]
        row.update(timed_out=True, chunks_done=done, elapsed_s=el)
        if done:
            rate = done * plan.capacity / el
            row.update(points_per_s_so_far=rate, extrapolated_s=n / rate, s_per_1e6=1e6 / rate)
    elif proc.returncode != 0:
        row["error"] = stderr.strip().splitlines()[-1] if stderr.strip() else f"exit {proc.returncode}"
    else:
        doc = json.loads(stdout.strip().splitlines()[-1])
        # VmHWM: the child's own high-water mark (ru_maxrss of a forked child starts from the parent's)
        hwm = doc["vmhwm_kb"] * 1024 / 1e9 if doc.get("vmhwm_kb") else doc["ru_maxrss_kb"] * 1024 / 1e9
        row.update(s=doc["s"], points_per_s=n / doc["s"], s_per_1e6=doc["s"] / (n / 1e6),
                   peak_rss_gb=max(hwm, peak / 1e9), vmhwm_gb=hwm)
    shutil.rmtree(tmp, ignore_errors=True)
    return row


def bench_scaling(sizes: list[tuple[str, int, int]], timeout_1e9: float, res: dict):
    rows = {}
    for label, n_layers, n_tokens in sizes:
        timeout = timeout_1e9 if label == "1e9" else 3600.0
        row = sweep_subprocess(n_layers, n_tokens, "float32", timeout)
        rows[label] = row
        if "s" in row:
            print(f"  scaling {label}: {row['s']:.1f} s, {row['s_per_1e6']:.3f} s per 1e6 points, "
                  f"peak RSS {row['peak_rss_gb']:.2f} GB", flush=True)
        else:
            print(f"  scaling {label}: {row}", flush=True)
    prev = None
    for label, row in rows.items():
        if prev is not None and "s" in row and "s" in prev:
            row["marginal_s_per_1e6_from_previous"] = (row["s"] - prev["s"]) / ((row["points"] - prev["points"]) / 1e6)
        prev = row
    res["scaling"] = rows


# ---------------------------------------------------------------------------------------------
# e) layout search, GPT-3 175B on 1024 A100-80GB


GPT3_SPEC = """\
# GPT-3 175B (Brown et al. 2020) on 1024 A100-80GB, for the layout-search benchmark.
[model]
layers = 96
d_model = 12288
heads = 96
vocab = 50257
seq_len = 2048
ffn = "gelu"

[training]
tokens = 300e9
global_batch = 1536

[cluster]
hardware = "a100-sxm4-80gb"
devices = 1024

[site]
region = "us"
"""


def bench_layout_search(repeats: int, res: dict):
    import hardware_db

    spec_path = OUT / "gpt3_175b.toml"
    spec_path.write_text(GPT3_SPEC)
    out = {"spec": str(spec_path.relative_to(ROOT))}
    db = hardware_db.load()
    try:
        from sweep.layouts import best_layouts
        from sweep.spec import load_estimate

        v = load_estimate(str(spec_path), db)
        r = best_layouts(v, db)  # warm-up: compile
        t, times = best_of(lambda: best_layouts(v, db), repeats, warmup=0)
        out["warm"] = {"s": t, "times_s": times, "layouts": r["evaluated"], "feasible": r.get("feasible"),
                       "best": r["layouts"][0] if r["layouts"] else None, "via": "sweep.layouts.best_layouts"}
        print(f"  layout search warm: {r['evaluated']:,} layouts in {t:.3f} s", flush=True)
    except Exception as e:
        out["warm"] = {"error": f"{type(e).__name__}: {e}"}
        print(f"  layout search warm: failed ({type(e).__name__}: {e})", flush=True)
    exe = Path(sys.executable).with_name("carbon-sweep")
    cmd = [str(exe), "layout", str(spec_path), "--json"] if exe.exists() else \
        [sys.executable, "-m", "sweep.cli", "layout", str(spec_path), "--json"]
    cold = []
    err = None
    for _ in range(repeats):
        t = time.perf_counter()
        p = subprocess.run(cmd, capture_output=True, text=True, cwd=ROOT)
        el = time.perf_counter() - t
        if p.returncode != 0:
            err = (p.stderr.strip().splitlines() or [f"exit {p.returncode}"])[-1]
            break
        cold.append(el)
    out["cold"] = {"command": " ".join(Path(c).name if i == 0 else c
                                       for i, c in enumerate(cmd)).replace(str(ROOT) + "/", ""),
                   "times_s": cold, "s": min(cold) if cold else None, "error": err, "load_avg": load()}
    print(f"  layout search cold: {cold} s {err or ''}", flush=True)
    res["layout_search"] = out


# ---------------------------------------------------------------------------------------------
# report


def fmt_rate(v):
    if v is None:
        return "–"
    for unit, div in (("G", 1e9), ("M", 1e6), ("k", 1e3)):
        if v >= div:
            return f"{v / div:.3g} {unit}/s"
    return f"{v:.3g} /s"


def ok(flag):
    return "✅" if flag else "❌"


def table(res: dict) -> str:


    """The README's table from the measurements.

    Long: the table, row by row.
    """
    m = res["machine"]
    lines = [
        f"Machine: {m['cpu']}, {m['usable_cores']} cores, {m['ram_gb']} GB RAM; Python {m['python']}, "
        f"JAX {m['jax']}, NumPy {m['numpy']}; {m['date']}; load average at start {m['load_avg_start']} "
        f"(shared machine){'; QUICK run (small sizes)' if res['quick'] else ''}.",
        "",
        "| measurement | result | target |",
        "|---|---|---|",
    ]
    add = lines.append
    ef = res.get("engine_fixed", {})
    k = res.get("kernel", {})
    b = res.get("baselines", {})
    loop = b.get("python_loop", {}).get("points_per_s")
    np64 = b.get("numpy_float64", {}).get("points_per_s")
    np32 = b.get("numpy_float32", {}).get("points_per_s")
    for dt in ("float32", "float64"):
        e = ef.get(dt)
        if not e:
            continue
        add(f"| engine, fixed layout, {e['points']:.0e} points, {dt}, Pareto + top-k only: `run()` end to end | "
            f"{fmt_rate(e['run_points_per_s'])} ({e['run_s']:.2f} s) | ≥ 1e8/s {ok(e['run_points_per_s'] >= 1e8)} |")
        add(f"| engine, same grid, {dt}, warm chunk loop (compile and merge excluded) | "
            f"{fmt_rate(e['warm_points_per_s'])} ({e['warm_chunks_s']:.2f} s) | |")
    for dt, e in res.get("engine_full_grid", {}).items():
        npr = np32 if dt == "float32" else np64
        vs = f"{e['run_points_per_s'] / npr:.1f}× NumPy (which also computes every output)" if npr else ""
        add(f"| engine, same grid cut to {e['points']:.0e} points, {dt}, full grid kept in memory "
            f"({e['outputs']} outputs): `run()` end to end | {fmt_rate(e['run_points_per_s'])} "
            f"({e['run_s']:.2f} s) | {vs} |")
    sp = e32.get("structured_kernel_probe", {}) if (e32 := ef.get("float32")) else {}
    if "all_outputs" in sp:
        add(f"| probe, not the engine: one {sp['points']:,}-point chunk as a broadcast hyper-rectangle, float32: "
            f"all outputs / only {', '.join(sp['needed_columns'])} / NumPy reductions on those | "
            f"{fmt_rate(sp['all_outputs']['points_per_s'])} / {fmt_rate(sp['needed_columns_only']['points_per_s'])}"
            f" / {fmt_rate(sp['numpy_reductions_on_needed_columns']['points_per_s'])} | |")
    for dt in ("float32", "float64"):
        kk = k.get(dt)
        if kk:
            a, f = kk["all_outputs"], kk["fused_total_tco2e"]
            add(f"| diagnostic: raw kernel `jit(footprint)` on flat {kk['points']:.0e}-point {dt} arrays, "
                f"all outputs to memory | {fmt_rate(a['evals_per_s'])} | |")
            add(f"| diagnostic: raw kernel, {dt}, fused down to total_tco2e | {fmt_rate(f['evals_per_s'])} | |")
    if loop:
        add(f"| plain Python loop (bench.models.footprint_python per configuration) | {fmt_rate(loop)} | |")
    lk = b.get("python_loop_of_jitted_kernel_calls")
    if lk:
        add(f"| Python loop calling the jitted kernel per configuration | {fmt_rate(lk['points_per_s'])} | |")
    if np64:
        add(f"| NumPy vectorisation, float64 / float32 | {fmt_rate(np64)} / {fmt_rate(np32)} | |")
    e32 = ef.get("float32", {})
    e64 = ef.get("float64", {})
    if loop and e32:
        s = e32["run_points_per_s"] / loop
        add(f"| speed-up of the engine (float32, end to end) over the loop | {s:,.0f}× | ≥ 1e4× {ok(s >= 1e4)} |")
    if np32 and e32:
        s32 = e32["run_points_per_s"] / np32
        s64 = e64["run_points_per_s"] / np64 if e64 and np64 else float("nan")
        add(f"| speed-up of the engine over NumPy (float32 / float64, end to end) | {s32:.2f}× / {s64:.2f}× | "
            f"≥ 3× {ok(min(s32, s64) >= 3)} |")
        kk = k.get("float32")
        if kk:
            s = kk["all_outputs"]["evals_per_s"] / np32
            add(f"| diagnostic: raw kernel over NumPy (float32, all outputs) | {s:.1f}× | |")
            s = kk["all_outputs"]["evals_per_s"] / loop if loop else None
            if s:
                add(f"| diagnostic: raw kernel over the loop (float32, all outputs) | {s:,.0f}× | |")
    bl = res.get("engine_best_layout", {})
    if "error" in bl:
        add(f"| engine, best-layout grid | skipped: {bl['error']} | |")
    elif bl:
        add(f"| engine, best-layout grid, {bl['points']:,} points, float32: `run()` end to end; the search of "
            f"{bl['layouts_per_point']:,} candidate layouts runs {bl['layout_problems']} times (once per "
            f"{' × '.join(bl['searched_dims'])}), not once per point | {fmt_rate(bl['run_points_per_s'])} points "
            f"({bl['run_s']:.3f} s) | |")
        add(f"| engine, best-layout grid, warm chunk loop | {fmt_rate(bl['warm_points_per_s'])} points | |")
        bb = bl.get("baselines", {})
        lp, n32, n64 = bb.get("python_loop"), bb.get("numpy_float32"), bb.get("numpy_float64")
        if lp:
            add(f"| plain Python loop, best layout (bench.layout_models.best_layout_python, each point's own "
                f"{lp['evals'] // lp['points']:,} layouts) | {lp['points_per_s']:.2f} points/s = "
                f"{fmt_rate(lp['evals_per_s'])} point×layout | |")
        if n32 and n64:
            add(f"| NumPy best-layout search over the engine's candidates, point by point ({n32['points']} points), "
                f"float32 / float64 | {fmt_rate(n32['points_per_s'])} / {fmt_rate(n64['points_per_s'])} points | |")
        if lp and n32:
            s = bl["run_points_per_s"] / lp["points_per_s"]
            add(f"| speed-up of the engine (best layout, float32, end to end) over the loop | {s:,.0f}× | "
                f"≥ 1e4× {ok(s >= 1e4)} |")
            s = bl["run_points_per_s"] / n32["points_per_s"]
            add(f"| speed-up of the engine (best layout, float32, end to end) over NumPy (float32) | {s:.1f}× | "
                f"≥ 3× {ok(s >= 3)} |")
        if "engine_vs_numpy_max_rel_diff_total_tco2e" in bb:
            add(f"| same model? engine (float32) vs the float64 NumPy search, max rel. diff of the best total_tco2e "
                f"| {bb['engine_vs_numpy_max_rel_diff_total_tco2e']:.1e} | |")
    sc = res.get("scaling", {})
    for label, row in sc.items():
        if "s" in row:
            marg = row.get("marginal_s_per_1e6_from_previous")
            marg = f" ({marg:.3f} s per 1e6 beyond the previous size)" if marg is not None else ""
            add(f"| sweep of {label} points (float32, Pareto + top-k), fresh process | {row['s']:.1f} s, "
                f"{row['s_per_1e6']:.3f} s per 1e6 points{marg}, peak RSS {row['peak_rss_gb']:.2f} GB | "
                f"{'< 2 GB ' + ok(row['peak_rss_gb'] < 2) if label == '1e9' else 'linear'} |")
        elif row.get("timed_out"):
            ext = row.get("extrapolated_s")
            add(f"| sweep of {label} points, stopped after {row['elapsed_s']:.0f} s "
                f"({row['chunks_done']}/{row['chunks']} chunks) | "
                f"{row.get('s_per_1e6', float('nan')):.3f} s per 1e6 points so far → ~{(ext or 0) / 60:.0f} min "
                f"extrapolated; peak RSS so far {row['peak_rss_gb_polled']:.2f} GB | "
                f"< 2 GB {ok(row['peak_rss_gb_polled'] < 2)} |")
        else:
            add(f"| sweep of {label} points | failed: {row.get('error')} | |")
    ls = res.get("layout_search", {})
    w, c = ls.get("warm", {}), ls.get("cold", {})
    if "s" in w:
        add(f"| layout search GPT-3 175B on 1024 A100-80GB ({w['layouts']:,} layouts), warm | {w['s']:.3f} s | "
            f"< 1 s {ok(w['s'] < 1)} |")
    elif w:
        add(f"| layout search, warm | failed: {w.get('error')} | < 1 s |")
    if c.get("s") is not None:
        add(f"| `carbon-sweep layout gpt3_175b.toml --json`, cold start | {c['s']:.2f} s | < 10 s {ok(c['s'] < 10)} |")
    elif c:
        add(f"| `carbon-sweep layout`, cold start | not available: {c.get('error')} | < 10 s |")
    add("")
    add(f"Load average at the end: {res.get('load_avg_end')}; each section's load average is in bench.json.")
    by_run = {}
    for sec, st in res.get("section_runs", {}).items():
        by_run.setdefault((st["date"], str(st["load_avg_start"])), []).append(sec)
    if len(by_run) > 1:
        for (date, la), secs in sorted(by_run.items()):
            add(f"Sections {', '.join(secs)} measured at {date} (load average at start {la}).")
    return "\n".join(lines)


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--quick", action="store_true", help="small sizes, about a minute")
    ap.add_argument("--only", nargs="*", default=None,
                    help="run only these sections (engine kernel baselines best scaling layout)")
    ap.add_argument("--timeout-1e9", type=float, default=660.0,
                    help="seconds after which the 1e9-point sweep is stopped and extrapolated (default 660)")
    args = ap.parse_args(argv)
    OUT.mkdir(parents=True, exist_ok=True)
    q = args.quick
    want = lambda s: args.only is None or s in args.only  # noqa: E731
    name = "bench_quick" if q else "bench"
    res = {"quick": q, "machine": machine(), "targets": TARGETS}
    if args.only is not None and (OUT / f"{name}.json").exists():  # update the named sections only
        prior = json.loads((OUT / f"{name}.json").read_text())
        res = {**prior, "quick": q, "targets": TARGETS, "machine": res["machine"]}
        res.pop("earlier_runs", None)
    print(f"carbon-sweep bench{' (quick)' if q else ''}: {res['machine']['cpu']}, "
          f"{res['machine']['usable_cores']} cores, load {res['machine']['load_avg_start']}", flush=True)
    t0 = time.perf_counter()
    runs = res.setdefault("section_runs", {})
    stamp = {"date": res["machine"]["date"], "load_avg_start": res["machine"]["load_avg_start"]}
    for sec in SECTIONS:
        if want(sec):
            runs[sec] = stamp
    if want("engine"):
        bench_engine_fixed(n_layers=10 if q else 100, repeats=2 if q else 3, res=res)
    if want("kernel"):
        bench_kernel(n=1_000_000 if q else 10_000_000, repeats=3, res=res)
    if want("baselines"):
        bench_baselines(n_loop=2_000 if q else 20_000, n_numpy=1_000_000 if q else 10_000_000,
                        repeats=2 if q else 3, res=res)
    if want("best"):
        bench_best_layout(q, repeats=2, res=res)
    if want("scaling"):
        sizes = [("1e6", 10, 1), ("1e7", 100, 1)] if q else \
            [("1e6", 10, 1), ("1e7", 100, 1), ("1e8", 100, 10), ("1e9", 100, 100)]
        bench_scaling(sizes, args.timeout_1e9, res)
    if want("layout"):
        bench_layout_search(repeats=2 if q else 3, res=res)
    res["load_avg_end"] = load()
    res["bench_wall_s"] = time.perf_counter() - t0
    (OUT / f"{name}.json").write_text(json.dumps(res, indent=2, default=str))
    md = table(res)
    (OUT / f"{name}.md").write_text(md + "\n")
    print()
    print(md)


if __name__ == "__main__":
    main()
