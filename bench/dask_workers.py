"""The same study on a dask.distributed LocalCluster of 1, 2 and 4 worker processes, beside the
in-process run (`make bench`).

    python bench/dask_workers.py                 the general grid of bench/suite.py, 1.0e8 points
    python bench/dask_workers.py --workers 1,2

Each configuration runs the study twice into a fresh output folder (chunk partial files written, as
``--scheduler`` runs do) and the second, warm run is timed: every worker process compiles the chunk
function once, on its first chunk. Workers have one thread each, and the engine gives each worker
process its share of the machine's cores (sweep.cluster.prepare_workers: XLA sizes its thread pool to
the cores a process may run on), so n workers use n cores: the in-process run uses every core. On a
machine with 2 cores, 4 workers share 2 cores, so the speed-up is bounded by the cores (and by the
scheduler's per-chunk overhead), not by the engine. Writes bench/out/dask_workers.json and .md with
the load average beside each row.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

OUT = ROOT / "bench" / "out"


def timed_run(s, db, scheduler=None) -> float:
    from sweep.engine import run

    folder = Path(tempfile.mkdtemp(prefix="cs-dask-"))
    try:
        run(s, out=str(folder / "a"), scheduler=scheduler, quiet=True, db=db)  # warm-up: compiles (per worker)
        t = time.perf_counter()
        run(s, out=str(folder / "b"), scheduler=scheduler, quiet=True, db=db)
        return time.perf_counter() - t
    finally:
        shutil.rmtree(folder, ignore_errors=True)


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--workers", default="1,2,4")
    a = ap.parse_args(argv)
    import hardware_db
    from distributed import Client, LocalCluster

    from bench.suite import spec
    from sweep.study import load_study

    db = hardware_db.load()
    s = spec("general", quick=False)
    n = load_study(s, db).n_points
    rows = [{"config": "in process", "points": n, "load": round(os.getloadavg()[0], 2), "seconds": timed_run(s, db)}]
    print(json.dumps(rows[-1]), flush=True)
    for w in [int(x) for x in a.workers.split(",")]:
        with LocalCluster(n_workers=w, threads_per_worker=1, processes=True, dashboard_address=None) as cluster, \
                Client(cluster) as client:
            rows.append({"config": f"{w} worker(s)", "points": n, "load": round(os.getloadavg()[0], 2),
                         "seconds": timed_run(s, db, scheduler=client)})
        print(json.dumps(rows[-1]), flush=True)
    base = rows[0]["seconds"]
    lines = ["| configuration | points | warm run | points/s | vs in process | load (1 min) |",
             "|---|---|---|---|---|---|"]
    for r in rows:
        lines.append(f"| {r['config']} | {r['points']:,} | {r['seconds']:.2f} s | {r['points'] / r['seconds']:.3g}/s | "
                     f"{base / r['seconds']:.2f}× | {r['load']} |")
    OUT.mkdir(parents=True, exist_ok=True)
    (OUT / "dask_workers.json").write_text(json.dumps(rows, indent=1))
    (OUT / "dask_workers.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
