"""Benchmark (`make bench`): the best start time over a year, found by the vectorised engine.

    python bench/start_time.py [--designs N]

a) the kernel: N runs (durations spread over 4 … 120 days, each on one of the packaged hourly
   profiles) × 8,760 hourly starts = N·8,760 (design × start) points, ``kernels.grid_carbon.best_start``
   under jax.jit, without and with a carbon-aware pause (dirtiest 20 % of hours); cold (compile
   included) and warm (best of 3);
b) end to end: ``sweep.engine.run`` of a study with [grid] start = "best" over N designs
   (devices × regions), its grid evaluated, then every design × start (``sweep.when.expand_grid``).
Checks the kernel's best start against a float64 NumPy brute force on a few runs. Writes
bench/out/start_time.json and prints a table for the README.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))


def kernel_bench(n_designs: int, pause: float) -> dict:
    import jax
    import jax.numpy as jnp

    import hardware_db
    from kernels import grid_carbon
    from sweep import when

    db = hardware_db.load()
    regions = when.regions_with_profiles(db)
    shapes = np.stack([when.shape_of(db, r) for r in regions])
    rng = np.random.default_rng(0)
    ix = rng.integers(0, len(regions), n_designs)
    hours = rng.uniform(4 * 24, 120 * 24, n_designs)
    ci, c, n = when.tables(shapes, np.full(len(regions), pause))
    starts = jnp.arange(8760.0)
    fn = jax.jit(grid_carbon.best_start)
    t0 = time.perf_counter()
    h, integral, wall = jax.block_until_ready(fn(ci, c, n, ix, hours, starts))
    cold = time.perf_counter() - t0
    warm = []
    for _ in range(3):
        t0 = time.perf_counter()
        jax.block_until_ready(fn(ci, c, n, ix, hours + 1e-3, starts))
        warm.append(time.perf_counter() - t0)
    # float64 NumPy brute force on a few runs: every start's integral by the cumulative sum
    runs = np.asarray(grid_carbon.running_hours(jnp.asarray(shapes), jnp.full(len(regions), pause)))
    for d in range(3):
        r, H = ix[d], hours[d]
        cur, per = [], shapes[r] * runs[r]
        order = np.flatnonzero(np.tile(runs[r], 3) > 0)
        tiled = np.tile(per, 3)
        for s in range(8760):
            k = order[order >= s]
            whole = int(np.floor(H))
            cur.append(tiled[k[:whole]].sum() + (H - whole) * tiled[k[whole]])
        assert abs(float(h[d]) - int(np.argmin(cur))) < 1 or abs(min(cur) - float(integral[d])) < 1e-6 * min(cur)
    return {"points": int(n_designs * 8760), "designs": n_designs, "starts": 8760, "pause_fraction": pause,
            "cold_s": cold, "warm_s": min(warm), "points_per_s": n_designs * 8760 / min(warm)}


def engine_bench(n_devices: int) -> dict:
    from sweep.engine import run

    doc = {
        "model": {"layers": 32, "d_model": 4096, "heads": 32, "vocab": 32000, "seq_len": 4096},
        "training": {"tokens": 1e12, "global_batch": 1024},
        "cluster": {"hardware": "h100-sxm5-80gb", "mfu": 0.4},
        "site": {"pause_fraction": 0.2},
        "grid": {"devices": {"start": 64, "stop": 64 * n_devices, "num": n_devices},
                 "region": ["de", "fr", "gb", "pl", "es", "nl", "be", "fi", "ch", "gcp-europe-west4"],
                 "start": "best"},
        "study": {"name": "bench_start", "top": {"by": "total_tco2e", "n": 10}},
    }
    t0 = time.perf_counter()
    res = run(doc, write=False)
    dt = time.perf_counter() - t0
    n = int(res.dataset.sizes["devices"] * res.dataset.sizes["region"])
    return {"designs": n, "points": n * 8760, "end_to_end_s": dt}


def main(argv=None):
    ap = argparse.ArgumentParser()
    ap.add_argument("--designs", type=int, default=200)
    args = ap.parse_args(argv)
    out = {"cpus": os.cpu_count(), "load": os.getloadavg(),
           "kernel": [kernel_bench(args.designs, 0.0), kernel_bench(args.designs, 0.2)],
           "engine": engine_bench(20)}
    Path("bench/out").mkdir(parents=True, exist_ok=True)
    Path("bench/out/start_time.json").write_text(json.dumps(out, indent=2))
    print("| best start over a year | (design × start) points | cold (s) | warm (s) | points/s |")
    print("|---|---:|---:|---:|---:|")
    for k in out["kernel"]:
        print(f"| kernel, pause {k['pause_fraction']:.0%} | {k['points']:,} | {k['cold_s']:.2f} | {k['warm_s']:.3f} | "
              f"{k['points_per_s']:.3g} |")
    e = out["engine"]
    print(f"| engine run, [grid] start = \"best\" ({e['designs']} designs) | {e['points']:,} | {e['end_to_end_s']:.2f} "
          f"(end to end) | | |")
    print(f"(machine: {out['cpus']} CPUs, load {out['load'][0]:.1f})")


if __name__ == "__main__":
    main()
