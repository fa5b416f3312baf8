"""The engine's speed on grids of several shapes (`make bench`), each beside NumPy on the same grid.

    python bench/suite.py            every shape at its full size (the general grid: 1.0e8 points)
    python bench/suite.py --quick    each shape cut about 8x (a minute or two)
    python bench/suite.py --only general,deploy

Shapes (fixed layout, MFU given, unless noted; Pareto front + top-k only, keep_full_grid = false):
  general   the issue's grid: layers × d_model × experts × top_k (invalid top_k > experts included)
            × devices × lifespan × hardware × region × tokens, 100,663,296 points;
  design    design-heavy: many designs (layers × d_model × experts × top_k × heads), few deployments;
  deploy    deployment-heavy: two designs, many devices × lifespan × hardware × region × tokens × PUE;
  best_moe  best layout (no MFU given) with MoE axes: points/s and layout evaluations/s.

Each shape runs in a subprocess of its own (peak RSS is the child's): ``run()`` cold (its jit
compile included) and warm (the same study again, compiled; the best of three runs), then the NumPy reference
(bench.models.footprint_numpy, float64, every output of the fixed-layout chain; inputs gathered
beforehand, not timed) on a sample of the same grid's points; for best_moe the NumPy best-layout
search (bench.layout_models.best_layout_numpy) on a few points. The NumPy figure has no
reductions (the engine's has its Pareto front and top-k): a bound in NumPy's favour.
Writes bench/out/suite.json and bench/out/suite.md; the load average is recorded beside each row.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

import numpy as np  # noqa: E402

OUT = ROOT / "bench" / "out"
HARDWARE = ["a100-sxm4-80gb", "h100-sxm5-80gb", "h200-sxm-141gb", "mi300x"]
REGIONS = ["us", "cn", "in", "de", "fr", "gb", "jp", "kr"]
STUDY = {"keep_full_grid": False, "pareto": [["train_days", "total_tco2e"]], "top": {"by": "total_tco2e", "n": 100}}


def spec(shape: str, quick: bool) -> dict:
    """The study of a shape (a dict shaped like the TOML); ``quick`` cuts one axis about 8x."""
    model = {"heads": 16, "vocab": 50000, "seq_len": 2048}
    if shape == "general":
        grid = {"layers": {"start": 8, "stop": 128, "num": 16}, "d_model": {"start": 1024, "stop": 16384, "num": 16},
                "experts": [1, 8, 16, 32, 64, 128, 256, 512], "top_k": [1, 2, 4, 8],
                "devices": {"start": 256, "stop": 4096, "num": 16},
                "lifespan_years": [3] if quick else [1, 2, 3, 4, 5, 6, 7, 8],
                "hardware": HARDWARE, "region": REGIONS, "tokens": [1e11, 3e11, 1e12]}
        return {"study": {"name": "suite_general", **STUDY}, "grid": grid, "model": model,
                "cluster": {"mfu": 0.4}, "site": {"pue": 1.1}}
    if shape == "design":  # 64 × 64 × 8 × 4 × 4 = 524,288 designs × 8 × 2 × 2 × 3 × 2 deployments = 1.0e8
        grid = {"layers": {"start": 4, "stop": 130, "num": 64}, "d_model": {"start": 512, "stop": 16640, "num": 64},
                "experts": [1, 4, 8, 16, 32, 64, 128, 256], "top_k": [1, 2, 4, 8], "heads": [8, 16, 32, 64],
                "devices": [256, 512, 1024, 2048, 4096, 8192, 16384, 32768], "hardware": HARDWARE[1:3],
                "region": ["us", "fr"],
                "tokens": [1e12] if quick else [3e11, 1e12, 3e12], "lifespan_years": [3, 5]}
        if quick:
            grid["layers"]["num"] = 32
        return {"study": {"name": "suite_design", **STUDY}, "grid": grid, "model": {"vocab": 50000, "seq_len": 2048},
                "cluster": {"mfu": 0.4}, "site": {"pue": 1.1}}
    if shape == "deploy":  # 2 designs × 256 × 32 × 4 × 8 × 6 × 32 deployments = 1.0e8
        grid = {"layers": [32, 80], "devices": {"start": 256, "stop": 65536, "step": 256},
                "lifespan_years": {"start": 1, "stop": 8, "num": 32}, "hardware": HARDWARE, "region": REGIONS,
                "tokens": {"start": 1e11, "stop": 1e13, "num": 6, "scale": "log"},
                "pue": {"start": 1.05, "stop": 1.6, "num": 4 if quick else 32}}
        return {"study": {"name": "suite_deploy", **STUDY}, "grid": grid,
                "model": {**model, "d_model": 8192}, "cluster": {"mfu": 0.4}}
    if shape == "best_moe":  # best layout: no MFU, the layout search runs per design × devices × hardware
        grid = {"layers": [24, 48], "d_model": [4096, 8192], "experts": [1, 8, 16], "top_k": [1, 2],
                "devices": [256, 1024] if quick else [256, 512, 1024, 2048],
                "lifespan_years": [3, 5] if quick else [2, 3, 4, 5, 6],
                "region": REGIONS[:4] if quick else REGIONS, "tokens": [3e11, 1e12]}
        return {"study": {"name": "suite_best_moe", "layout": "best", **STUDY}, "grid": grid,
                "model": {"heads": 32, "vocab": 50000, "seq_len": 2048}, "training": {"global_batch": 1024},
                "cluster": {"hardware": "h100-sxm5-80gb"}}
    raise ValueError(shape)


SHAPES = ("general", "design", "deploy", "best_moe")


def child(shape: str, quick: bool, n_numpy: int) -> dict:
    """One shape, in this process: engine cold and warm, then NumPy on a sample of the grid."""
    import hardware_db
    from bench.run import grid_inputs
    from sweep.engine import Evaluator, run
    from sweep.study import load_study

    db = hardware_db.load()
    s = spec(shape, quick)
    study = load_study(s, db)
    n = study.n_points
    row = {"shape": shape, "points": n, "dims": {d: len(v) for d, v in study.dims.items()},
           "load_before": [round(v, 2) for v in os.getloadavg()]}
    t = time.perf_counter()
    r = run(s, write=False, quiet=True, db=db)
    row["cold_s"] = time.perf_counter() - t
    warm = []
    for _ in range(3):  # the machine's speed drifts: the best of three warm runs
        t = time.perf_counter()
        r = run(s, write=False, quiet=True, db=db)
        warm.append(time.perf_counter() - t)
    row["warm_s"], row["warm_runs_s"] = min(warm), warm
    row["chunks"] = r.summary["n_chunks"]
    row["n_feasible"] = r.summary["n_feasible"]
    row["cold_per_s"], row["warm_per_s"] = n / row["cold_s"], n / row["warm_s"]
    ev = Evaluator(study, db)
    row["layout"] = ev.mode
    rng = np.random.default_rng(0)
    if ev.mode == "best":
        row["layouts"] = ev.n_layouts
        row["layout_searches"] = ev.n_layout_searches
        row["warm_layout_evals_per_s"] = ev.n_layout_searches * ev.n_layouts / row["warm_s"]
        from bench.layout_models import best_layout_numpy

        flat = np.sort(rng.choice(n, min(n, 64), replace=False))
        x = grid_inputs(ev, flat, np.float64)
        _, cal = ev.inputs(flat)
        cal = {k: np.broadcast_to(np.asarray(v, np.float64), (len(flat),)) for k, v in cal.items()}
        per = max(1, (1 << 20) // ev.n_layouts)
        t = time.perf_counter()
        for a in range(0, len(flat), per):
            best_layout_numpy({k: v[a:a + per] for k, v in x.items()}, ev.layouts,
                              {k: v[a:a + per] for k, v in cal.items()})
        row["numpy_s"] = time.perf_counter() - t
        row["numpy_points"] = len(flat)
    else:
        from bench.models import footprint_numpy

        flat = np.sort(rng.choice(n, min(n, n_numpy), replace=False))
        x = grid_inputs(ev, flat, np.float64)
        footprint_numpy({k: v[:1000] for k, v in x.items()})  # warm-up
        t = time.perf_counter()
        footprint_numpy(x)
        row["numpy_s"] = time.perf_counter() - t
        row["numpy_points"] = len(flat)
    row["numpy_per_s"] = row["numpy_points"] / row["numpy_s"]
    row["warm_vs_numpy"] = row["warm_per_s"] / row["numpy_per_s"]
    row["cold_vs_numpy"] = row["cold_per_s"] / row["numpy_per_s"]
    row["peak_rss_mb"] = _peak_rss_mb()
    row["load_after"] = [round(v, 2) for v in os.getloadavg()]
    return row


def _peak_rss_mb():
    for line in open("/proc/self/status"):
        if line.startswith("VmHWM"):
            return int(line.split()[1]) / 1024
    return None


def table(rows: list[dict]) -> str:
    lines = ["| shape | points | run() cold (compile incl.) | run() warm | NumPy, same grid (sample) | warm / NumPy | "
             "peak RSS | load (1 min) |", "|---|---|---|---|---|---|---|---|"]
    for r in rows:
        if "error" in r:
            lines.append(f"| {r['shape']} | — | {r['error']} | | | | | |")
            continue
        extra = ""
        if r["layout"] == "best":
            extra = (f"; {r['layout_searches']:,} searches × {r['layouts']:,} layouts = "
                     f"{r['warm_layout_evals_per_s']:.3g} layout evals/s")
        lines.append(
            f"| {r['shape']} ({r['layout']} layout) | {r['points']:,} | "
            f"{r['cold_per_s']:.3g}/s ({r['cold_s']:.2f} s) | "
            f"{r['warm_per_s']:.3g}/s ({r['warm_s']:.2f} s){extra} | {r['numpy_per_s']:.3g}/s "
            f"({r['numpy_points']:,} points) | {r['warm_vs_numpy']:.0f}× | {r['peak_rss_mb']:.0f} MB | "
            f"{r['load_before'][0]}–{r['load_after'][0]} |")
    return "\n".join(lines)


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true")
    ap.add_argument("--only", default=",".join(SHAPES))
    ap.add_argument("--numpy-points", type=int, default=1 << 20)
    ap.add_argument("--child", help=argparse.SUPPRESS)
    a = ap.parse_args(argv)
    if a.child:
        print(json.dumps(child(a.child, a.quick, a.numpy_points)))
        return
    rows = []
    for shape in a.only.split(","):
        cmd = [sys.executable, __file__, "--child", shape, "--numpy-points", str(a.numpy_points)]
        cmd += ["--quick"] if a.quick else []
        p = subprocess.run(cmd, capture_output=True, text=True, env={**os.environ, "PYTHONPATH": str(ROOT)})
        if p.returncode:
            rows.append({"shape": shape, "error": p.stderr.strip().splitlines()[-1][:200]})
        else:
            rows.append(json.loads(p.stdout.strip().splitlines()[-1]))
        print(json.dumps(rows[-1]), flush=True)
    OUT.mkdir(parents=True, exist_ok=True)
    (OUT / "suite.json").write_text(json.dumps(rows, indent=1))
    md = table(rows)
    (OUT / "suite.md").write_text(md + "\n")
    print(md)


if __name__ == "__main__":
    main()
