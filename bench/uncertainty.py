"""Benchmarks of the uncertainty features (issue 18), for `make bench`:

1. an estimate with 10,000 samples and the sensitivity table (elasticities + Sobol), warm;
2. a reductions-only sweep of N points × 1,000 samples (float32): point-samples per second and the
   peak resident memory, against NumPy on a subsample of the same points and samples (the chain
   of bench/models.py over a sample axis, quantiles by np.quantile).

    python bench/uncertainty.py [--points 1000000] [--samples 1000]
"""

from __future__ import annotations

import argparse
import os
import resource
import tempfile
import time
from pathlib import Path

import numpy as np

import sweep  # noqa: F401  (float64 on)
from sweep.estimate import evaluate
from sweep.spec import load_estimate

ESTIMATE = """\
[model]
layers = 32
d_model = 4096
heads = 32
vocab = 32000
seq_len = 4096
[training]
tokens = 1e12
global_batch = 512
[cluster]
hardware = "h100-sxm5-80gb"
devices = 512
[site]
region = "de"
[uncertainty]
samples = 10000
"""


def study_text(points: int, samples: int) -> str:
    # points = layers × d_model × devices × lifespan × region (8 regions, 5 lifespans)
    per = max(1, round((points / 40) ** (1 / 3)))
    return f"""\
[study]
name = "bench-uncertainty"
pareto = [["loss", "total_tco2e_p95"]]
top = {{by = "total_tco2e_p50", n = 100}}
keep_full_grid = false
dtype = "float32"
[grid]
layers = {{start = 8, stop = 128, num = {per}}}
d_model = {{start = 1024, stop = 16384, num = {per}}}
devices = {{start = 256, stop = 8192, num = {per}}}
lifespan_years = [2, 3, 4, 5, 6]
region = ["us", "cn", "in", "de", "fr", "gb", "jp", "kr"]
[model]
heads = 16
vocab = 50000
seq_len = 2048
[training]
tokens = 1e12
[cluster]
hardware = "h100-sxm5-80gb"
mfu = 0.4
[uncertainty]
samples = {samples}
mfu = {{rel = 0.1}}
"""


def peak_rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0


def bench_estimate(folder: Path) -> dict:
    p = folder / "estimate.toml"
    p.write_text(ESTIMATE)
    v = load_estimate(p)
    evaluate(v, file=p, sensitivity=True)  # compile
    t = time.perf_counter()
    evaluate(v, file=p, sensitivity=True)
    return {"estimate_10000_samples_with_sensitivity_s": time.perf_counter() - t}


def numpy_reference(points: int, samples: int, rng) -> float:
    """Point-samples/s of the same arithmetic in NumPy: the fixed-MFU chain's total (operational +
    embodied) with sampled factors, then np.quantile over the samples."""
    flops = rng.uniform(1e22, 1e24, (points, 1))
    peak, devices, power = 989e12, rng.uniform(256, 8192, (points, 1)), 700.0
    ci, pue, emb, life = rng.uniform(0.1, 0.6, (points, 1)), 1.56, 30.0, rng.uniform(2, 6, (points, 1))
    f = {k: rng.lognormal(0, 0.1, (1, samples)) for k in ("mfu", "ci", "pue", "pu", "emb", "life")}
    t = time.perf_counter()
    hours = flops / (devices * peak * 0.4 * f["mfu"]) / 3600
    op = devices * power * 0.76 * f["pu"] * hours * pue * f["pue"] * ci * f["ci"] / 1e6
    em = devices * emb * f["emb"] * hours / (life * f["life"] * 8760) / 1000
    np.quantile(op + em, [0.05, 0.5, 0.95], axis=1)
    return points * samples / (time.perf_counter() - t)


def bench_sweep(folder: Path, points: int, samples: int) -> dict:
    p = folder / "study.toml"
    p.write_text(study_text(points, samples))
    from sweep.study import load_study
    n = load_study(p).n_points
    sweep.run(p, folder / "first")  # compile (and a first run)
    t = time.perf_counter()
    sweep.run(p, folder / "timed")
    wall = time.perf_counter() - t
    t = time.perf_counter()
    sweep.run(p, write=False)  # the same sweep without its files (fronts and top-k as CSV and NetCDF)
    in_memory = time.perf_counter() - t
    ref = numpy_reference(min(n, 2000), samples, np.random.default_rng(0))
    return {"points": n, "samples": samples, "wall_s": wall, "point_samples_per_s": n * samples / wall,
            "in_memory_s": in_memory, "in_memory_point_samples_per_s": n * samples / in_memory,
            "numpy_point_samples_per_s": ref, "peak_rss_mb": peak_rss_mb()}


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--points", type=int, default=1_000_000)
    ap.add_argument("--samples", type=int, default=1000)
    args = ap.parse_args(argv)
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp)
        e = bench_estimate(folder)
        print(f"estimate, 10,000 samples + sensitivities (elasticities, Sobol), warm: "
              f"{e['estimate_10000_samples_with_sensitivity_s']:.2f} s")
        s = bench_sweep(folder, args.points, args.samples)
        print(f"sweep, {s['points']:,} points × {s['samples']:,} samples, reductions only, float32: "
              f"{s['wall_s']:.2f} s with its files, {s['point_samples_per_s']:.3g} point-samples/s; in memory "
              f"{s['in_memory_s']:.2f} s, {s['in_memory_point_samples_per_s']:.3g}/s "
              f"(NumPy {s['numpy_point_samples_per_s']:.3g}/s, "
              f"{s['point_samples_per_s'] / s['numpy_point_samples_per_s']:.0f}×); "
              f"peak RSS {s['peak_rss_mb']:.0f} MB; load {os.getloadavg()[0]:.1f}")


if __name__ == "__main__":
    main()
