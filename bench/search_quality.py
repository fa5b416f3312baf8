"""How good is `carbon-sweep optimize`? The search against the exhaustive answer of the same grid.

    .venv/bin/python bench/search_quality.py [--study studies/search_dense_moe.toml] [--seeds 10]

1. Exhaustive: the study's whole grid (1e5–1e6 points) through the sweep engine in memory; the
   constrained optimum of [search] objectives[0] under [search] constraints (and reason = 0), and the
   Pareto front of (loss, objective) under the constraints on other outputs than loss.
2. Single objective: the search (the study's sampler, batch, ≤ --trials trials) for each seed;
   relative gap of its best feasible value to the optimum; median over seeds, and the number of
   trials each seed needed to come within 1 %.
3. Multi-objective: the same search with objectives [loss, objective]; hypervolume of its feasible
   front over the grid front's, reference point = the grid front's nadir + 10 % of its range.
   Hypervolume: moocore.hypervolume when installed, else the exact 2-D sweep below (both agree).
4. Throughput: trials per second of the batched search with optuna's in-memory storage, for the
   random sampler (the batching machinery: ask, one jitted evaluation, tell) and for TPE (whose own
   sampling cost dominates), JIT compilation included.

Writes bench/out/search_quality.json and prints a markdown table.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import platform
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

import numpy as np  # noqa: E402

import hardware_db  # noqa: E402
import sweep  # noqa: E402,F401  (float64)
from sweep import reductions as red  # noqa: E402
from sweep.engine import run  # noqa: E402
from sweep.search import optimize, parse_search  # noqa: E402
from sweep.study import load_study  # noqa: E402


def hypervolume_2d(points: np.ndarray, ref: np.ndarray) -> float:
    """Exact hypervolume (area) dominated by 2-D points (minimised) inside the box below ``ref``.

    Keep the points strictly below ref, take their non-dominated set sorted by f0 ascending (so f1
    descends), and add the rectangles [f0_i, f0_{i+1}) x [f1_i, ref1).
    """
    p = np.asarray(points, np.float64)
    p = p[np.all(p < ref, axis=1)]
    if len(p) == 0:
        return 0.0
    p = p[red.pareto_mask(p)]
    p = np.unique(p, axis=0)
    p = p[np.argsort(p[:, 0], kind="stable")]
    x_next = np.append(p[1:, 0], ref[0])
    return float(np.sum((x_next - p[:, 0]) * (ref[1] - p[:, 1])))


def hypervolume(points, ref) -> tuple[float, str]:
    try:
        import moocore

        p = np.asarray(points, np.float64)
        p = p[np.all(p < ref, axis=1)]
        return (float(moocore.hypervolume(p, ref=ref)) if len(p) else 0.0), "moocore"
    except ImportError:
        return hypervolume_2d(points, ref), "numpy exact 2-D"


def main(argv=None):


    """Measure the search against the exhaustive grid and write the table.

    Long: the benchmark's steps in order, printed as it goes.
    """
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--study", default=str(ROOT / "studies" / "search_dense_moe.toml"))
    ap.add_argument("--seeds", type=int, default=10)
    ap.add_argument("--trials", type=int, default=300)
    ap.add_argument("--sampler", default=None, help="override [search] sampler (single objective)")
    ap.add_argument("--mo-sampler", default=None, help="sampler of the multi-objective search")
    ap.add_argument("--batch", type=int, default=None)
    ap.add_argument("--skip-throughput", action="store_true")
    ap.add_argument("--out", default=str(ROOT / "bench" / "out" / "search_quality.json"))
    args = ap.parse_args(argv)

    db = hardware_db.load()
    study = load_study(args.study, db)
    opts = parse_search(study)
    sampler = args.sampler or opts.sampler
    mo_sampler = args.mo_sampler or sampler
    batch = args.batch or opts.batch
    obj, sign = red.parse_objective(opts.objectives[0])

    # 1. exhaustive
    t0 = time.perf_counter()
    grid = run(study, write=False, db=db).dataset
    t_grid = time.perf_counter() - t0
    n_points = int(np.prod([grid.sizes[d] for d in study.dims]))
    cols = {k: grid[k].values.ravel() for k in grid.data_vars}
    ok = cols["reason"] == 0
    for c in opts.constraints:
        ok &= c.violation(cols[c.name]) <= 0
    val = sign * cols[obj]
    opt = float(val[ok & np.isfinite(val)].min()) * sign
    ok_mo = cols["reason"] == 0
    for c in opts.constraints:
        if c.name != "loss":
            ok_mo &= c.violation(cols[c.name]) <= 0
    f_grid = np.stack([cols["loss"][ok_mo], sign * cols[obj][ok_mo]], axis=1)
    f_grid = f_grid[np.all(np.isfinite(f_grid), axis=1)]
    front_grid = f_grid[red.pareto_mask(f_grid)]
    nadir, ideal = front_grid.max(axis=0), front_grid.min(axis=0)
    ref = nadir + 0.1 * (nadir - ideal)
    hv_grid, hv_how = hypervolume(front_grid, ref)
    hv_check = hypervolume_2d(front_grid, ref)
    print(f"grid: {n_points:,} points in {t_grid:.1f} s; constrained optimum {obj} = {opt:.6g}; "
          f"grid front {len(np.unique(front_grid, axis=0))} distinct points", file=sys.stderr)

    # 2. single objective
    single = []
    for seed in range(args.seeds):
        t = time.perf_counter()
        r = optimize(study, write=False, trials=args.trials, seed=seed, sampler=sampler, batch=batch, db=db)
        dt = time.perf_counter() - t
        best = r.best["values"][obj] if r.best else float("nan")
        gap = sign * (best - opt) / abs(opt)
        # trials to reach 1 %: running best of feasible trials, in trial order
        to1 = None
        run_best = np.inf
        for tr in sorted(r.study.trials, key=lambda t: t.number):
            if tr.values is None or any(v > 0 for v in tr.constraints.values()):
                continue
            run_best = min(run_best, sign * tr.values[0])
            if sign * (run_best * sign - opt) / abs(opt) <= 0.01:
                to1 = tr.number + 1
                break
        single.append({"seed": seed, "best": best, "gap": gap, "trials_to_1pct": to1, "n_feasible": r.n_feasible,
                       "elapsed_s": dt})
        print(f"  single seed {seed}: best {best:.6g} gap {100 * gap:.3f} % to-1% {to1} ({dt:.1f} s)",
              file=sys.stderr)

    # 3. multi-objective
    mo_doc = json.loads(json.dumps(study.doc))
    mo_doc["search"] = {**mo_doc.get("search", {}), "objectives": ["loss", opts.objectives[0]],
                        "constraints": [c.text for c in opts.constraints if c.name != "loss"]}
    mo_study = dataclasses.replace(load_study(mo_doc, db), file=study.file)
    multi = []
    for seed in range(args.seeds):
        t = time.perf_counter()
        r = optimize(mo_study, write=False, trials=args.trials, seed=seed, sampler=mo_sampler, batch=batch, db=db)
        dt = time.perf_counter() - t
        f = np.array([[e["values"]["loss"], sign * e["values"][obj]] for e in r.front]) if r.front else np.zeros((0, 2))
        hv, _ = hypervolume(f, ref)
        multi.append({"seed": seed, "hv_ratio": hv / hv_grid, "front_size": len(f), "elapsed_s": dt})
        print(f"  multi seed {seed}: hv ratio {hv / hv_grid:.4f} front {len(f)} ({dt:.1f} s)", file=sys.stderr)

    # 4. throughput (in memory)
    throughput = []
    if not args.skip_throughput:
        for s, n, b in (("random", 5000, 32), ("random", 20000, 1024), (sampler, args.trials, batch)):
            t = time.perf_counter()
            optimize(study, write=False, trials=n, sampler=s, batch=b, db=db)
            dt = time.perf_counter() - t
            throughput.append({"sampler": s, "trials": n, "batch": b, "elapsed_s": dt, "trials_per_s": n / dt})
            print(f"  throughput {s} batch {b}: {n / dt:,.0f} trials/s", file=sys.stderr)

    gaps = np.array([x["gap"] for x in single])
    hvs = np.array([x["hv_ratio"] for x in multi])
    res = {
        "study": os.path.relpath(args.study, ROOT),
        "machine": {"cpus": os.cpu_count(), "platform": platform.platform(), "python": platform.python_version()},
        "grid": {"points": n_points, "sweep_s": t_grid, "objective": opts.objectives[0],
                 "constraints": [c.text for c in opts.constraints], "optimum": opt,
                 "front_points": int(len(np.unique(front_grid, axis=0))), "hv_reference": ref.tolist(),
                 "hypervolume": hv_grid, "hypervolume_method": hv_how, "hypervolume_numpy_check": hv_check},
        "single": {"sampler": sampler, "batch": batch, "trials": args.trials, "seeds": args.seeds,
                   "median_gap": float(np.median(gaps)), "max_gap": float(gaps.max()),
                   "within_1pct": int((gaps <= 0.01).sum()), "runs": single},
        "multi": {"sampler": mo_sampler, "batch": batch, "trials": args.trials, "seeds": args.seeds,
                  "objectives": ["loss", opts.objectives[0]], "median_hv_ratio": float(np.median(hvs)),
                  "min_hv_ratio": float(hvs.min()), "runs": multi},
        "throughput": throughput,
    }
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(res, indent=2))

    print(f"\nSearch quality on {res['study']} ({n_points:,}-point grid, swept exhaustively in {t_grid:.1f} s; "
          f"{os.cpu_count()} CPUs)\n")
    print("| measure | target | measured |")
    print("|---|---|---|")
    print(f"| single objective ({sampler}, batch {batch}, {args.trials} trials): median gap to the constrained "
          f"optimum over {args.seeds} seeds | ≤ 1 % | {100 * np.median(gaps):.2f} % (worst {100 * gaps.max():.2f} %, "
          f"{res['single']['within_1pct']}/{args.seeds} seeds within 1 %) |")
    print(f"| multi-objective ({mo_sampler}, loss × {obj}, {args.trials} trials): median hypervolume ratio to the "
          f"grid front | ≥ 95 % | {100 * np.median(hvs):.1f} % (worst {100 * hvs.min():.1f} %) |")
    for x in throughput:
        target = "≥ 1,000 trials/s" if x["sampler"] == "random" else "— (optuna's own TPE cost per trial)"
        print(f"| throughput, {x['sampler']}, batch {x['batch']}, {x['trials']:,} trials, in memory (JIT included) "
              f"| {target} | {x['trials_per_s']:,.0f} trials/s |")
    print(f"\nhypervolume: {hv_how}; reference point = grid front nadir + 10 % of its range")
    print(f"\nwritten: {os.path.relpath(out, ROOT)}")
    return res


if __name__ == "__main__":
    main()
