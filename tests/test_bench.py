"""The benchmark's own measurements still run against the engine's internals (bench/run.py
catches a failing probe so a long `make bench` goes on; this is where such a break shows)."""

import hardware_db
from bench.run import fixed_spec, profile_chunk, structured_probe
from sweep.engine import Evaluator, Plan
from sweep.study import load_study


def _small():
    db = hardware_db.load()
    study = load_study(fixed_spec(n_layers=2, n_d_model=2), db)
    ev = Evaluator(study, db)
    return ev, Plan.make(study.shape, ev.default_chunk_size())


def test_structured_probe_runs_and_reads_the_reduced_columns():
    ev, plan = _small()
    res = structured_probe(ev, plan, repeats=1)
    assert res["needed_columns"] == ["loss", "total_tco2e", "reason"]
    assert res["all_outputs"]["points_per_s"] > 0 and res["needed_columns_only"]["points_per_s"] > 0


def test_chunk_profile_runs_on_the_grid_path():
    ev, plan = _small()
    assert profile_chunk(ev, plan, repeats=1)["engine_path"] == "grid (evaluate_chunk)"
