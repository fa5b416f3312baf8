"""`carbon-sweep optimize` (sweep/search.py): constraints, resume, optimum, fronts, [search] errors, --json."""

import copy
import json
import warnings

import numpy as np
import optuna
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import hardware_db
import sweep  # noqa: F401
from sweep import reductions as red
from sweep.cli import main
from sweep.engine import run
from sweep.search import optimize, search_space
from sweep.spec import SpecError
from sweep.study import load_study

DB = hardware_db.load()

BASE = {
    "model": {"heads": 32, "vocab": 32000, "seq_len": 4096, "ffn": "swiglu"},
    "training": {"tokens": 1e11},
    "cluster": {"devices": 256, "mfu": 0.4, "hardware": "h100-sxm5-80gb"},
    "site": {"region": "us"},
    "grid": {"layers": [8, 16, 24, 32], "d_model": {"start": 1024, "stop": 4096, "step": 1024}},
    "study": {"name": "tiny"},
}
MOE_GRID = {"layers": [8, 16, 24], "d_model": [1024, 2048], "experts": [1, 2, 4], "top_k": [1, 2]}


def doc(grid=None, search=None, **sections):
    d = copy.deepcopy(BASE)
    if grid is not None:
        d["grid"] = grid
    d.update(sections)
    if search is not None:
        d["search"] = search
    return d


def exhaustive(d):
    """{output: flat array} over the grid, in flat-index order."""
    ds = run(d, write=False, db=DB).dataset
    return {k: ds[k].values.ravel() for k in ds.data_vars}


def flat_indices(study, trials):
    space = search_space(study)
    idx = [dim.indices([t.params[dim.name] for t in trials]) for dim in space]
    return np.ravel_multi_index(idx, study.shape)


def toml_text(d):
    def val(v):
        if isinstance(v, str):
            return json.dumps(v)
        if isinstance(v, bool):
            return "true" if v else "false"
        if isinstance(v, list):
            return "[" + ", ".join(val(x) for x in v) + "]"
        if isinstance(v, dict):
            return "{" + ", ".join(f"{k} = {val(x)}" for k, x in v.items()) + "}"
        return repr(v)
    return "\n".join(f"[{s}]\n" + "\n".join(f"{k} = {val(v)}" for k, v in body.items()) + "\n"
                     for s, body in d.items())


# ---------------------------------------------------------------------------------------------
# constraints


def test_constraints_mark_the_right_trials_infeasible():
    d = doc(grid=MOE_GRID)
    full = exhaustive(d)
    thr = float(np.median(full["loss"][full["reason"] == 0]))
    d["search"] = {"objectives": ["total_tco2e"], "constraints": [f"loss <= {thr!r}"], "sampler": "random",
                   "trials": 48, "batch": 8}
    study = load_study(d, DB)
    res = optimize(study, write=False, db=DB)
    trials = res.study.get_trials(states=(optuna.trial.TrialState.COMPLETE,))
    assert res.n_trials == len(trials) == 48
    flat = flat_indices(study, trials)
    reason_ok = full["reason"][flat] == 0
    expect = reason_ok & (full["loss"][flat] <= thr)
    got = np.array([all(c <= 0 for c in t.constraints.values()) for t in trials])
    assert (got == expect).all()
    assert res.n_feasible == int(expect.sum())
    assert 0 < res.n_feasible < 48 and not reason_ok.all()  # both kinds of infeasibility were met
    for t, ok, f in zip(trials, reason_ok, flat):
        assert set(t.constraints) == {"feasible", f"loss <= {thr!r}"}
        assert (t.constraints["feasible"] > 0) == (not ok)
        if not ok:
            assert t.user_attrs["reason"] == "top_k_exceeds_experts"
        else:
            assert t.values[0] == pytest.approx(full["total_tco2e"][f], rel=1e-12)
            # relative violation (v - t)/|t|
            assert t.constraints[f"loss <= {thr!r}"] == pytest.approx((full["loss"][f] - thr) / thr, abs=1e-12)
    # the best is the best feasible trial, and optuna agrees it is feasible
    best_val = min(t.values[0] for t, e in zip(trials, expect) if e)
    assert res.best["values"]["total_tco2e"] == pytest.approx(best_val)
    assert res.study.best_trial.number == res.best["trial"] or res.study.best_trial.value == pytest.approx(best_val)


def test_strict_and_greater_constraints():
    from sweep.search import Constraint

    le = Constraint("x <= 2", "x", "<=", 2.0)
    lt = Constraint("x < 2", "x", "<", 2.0)
    ge = Constraint("x >= 2", "x", ">=", 2.0)
    v = np.array([1.0, 2.0, 3.0, np.nan])
    assert le.violation(v).tolist() == [-0.5, 0.0, 0.5, 1.0]
    assert lt.violation(v)[1] > 0 and lt.violation(v)[0] < 0
    assert ge.violation(v).tolist() == [0.5, -0.0, -0.5, 1.0]


# ---------------------------------------------------------------------------------------------
# resume


def test_resume_from_sqlite_continues_the_trial_count(tmp_path):
    d = doc(search={"sampler": "tpe", "trials": 6, "batch": 4})
    url = f"sqlite:///{tmp_path / 'optuna.db'}"
    r1 = optimize(d, out=tmp_path / "s", storage=url, db=DB)
    r2 = optimize(d, out=tmp_path / "s", storage=url, trials=11, db=DB)
    assert (r1.n_trials, r2.n_trials, r2.n_new) == (6, 11, 5)
    assert len(optuna.load_study(study_name="tiny", storage=url).trials) == 11


def test_resume_from_the_journal_file_continues_the_trial_count(tmp_path):
    d = doc(search={"sampler": "tpe", "trials": 6, "batch": 4})
    out = tmp_path / "s"
    r1 = optimize(d, out=out, db=DB)
    assert (r1.n_trials, r1.n_new) == (6, 6)
    assert (out / "optuna.log").exists()
    r2 = optimize(d, out=out, trials=13, db=DB)
    assert (r2.n_trials, r2.n_new) == (13, 7)
    numbers = sorted(t.number for t in r2.study.trials)
    assert numbers == list(range(13))
    r3 = optimize(d, out=out, trials=13, db=DB)  # target reached: nothing to do
    assert (r3.n_trials, r3.n_new) == (13, 0)
    assert r3.elapsed_s >= r2.elapsed_s  # summed over runs
    from optuna.storages.journal import JournalFileBackend

    loaded = optuna.load_study(study_name="tiny",
                               storage=optuna.storages.JournalStorage(JournalFileBackend(str(out / "optuna.log"))))
    assert len(loaded.trials) == 13
    # a different spec under the same name in the same storage is refused
    d2 = doc(search={"trials": 30, "objectives": ["energy_mwh"]})
    with pytest.raises(SpecError) as e:
        optimize(d2, out=out, db=DB)
    assert e.value.section == "search"


# ---------------------------------------------------------------------------------------------
# quality on a tiny space


def test_tiny_space_finds_the_brute_force_optimum():
    d = doc()
    full = exhaustive(d)
    ok = (full["reason"] == 0) & (full["train_days"] <= 30)
    thr = float(np.quantile(full["loss"][ok], 0.5))
    ok &= full["loss"] <= thr
    best = full["total_tco2e"][ok].min()
    d["search"] = {"constraints": [f"loss <= {thr!r}", "train_days <= 30"], "trials": 40, "batch": 8, "seed": 3}
    res = optimize(d, write=False, db=DB)
    assert res.best["values"]["total_tco2e"] == pytest.approx(best, rel=1e-12)
    i = int(np.flatnonzero(ok & (full["total_tco2e"] == best))[0])
    assert res.best["index"] == i
    study = load_study(d, DB)
    assert res.best["params"] == {k: v.item() for k, v in zip(study.dims, (study.dims[k][j] for k, j in zip(
        study.dims, np.unravel_index(i, study.shape))))}


def test_multi_objective_front_is_non_dominated_and_feasible():
    d = doc(grid=MOE_GRID, search={"objectives": ["loss", "total_tco2e"], "sampler": "nsga2", "trials": 48,
                                   "batch": 8})
    full = exhaustive(d)
    res = optimize(d, write=False, db=DB)
    assert res.front and res.best is not None
    f = np.array([[e["values"]["loss"], e["values"]["total_tco2e"]] for e in res.front])
    assert red.pareto_mask(f).all()
    idx = np.array([e["index"] for e in res.front])
    assert len(set(idx.tolist())) == len(idx)
    assert (full["reason"][idx] == 0).all()
    assert np.allclose(f[:, 1], full["total_tco2e"][idx]) and np.allclose(f[:, 0], full["loss"][idx])
    # nothing the search evaluated and found feasible dominates a front point
    done = res.study.get_trials(states=(optuna.trial.TrialState.COMPLETE,))
    g = np.array([t.values for t in done if all(c <= 0 for c in t.constraints.values())])
    for p in f:
        assert not ((g <= p).all(1) & (g < p).any(1)).any()
    assert res.best == min(res.front, key=lambda e: (e["values"]["loss"], e["values"]["total_tco2e"]))
    assert set(res.tables) == {"best", "front"} and len(res.tables["front"]) == len(res.front)


def test_maximised_objective():
    d = doc(search={"objectives": ["max:tokens_per_s"], "trials": 24, "batch": 8})
    full = exhaustive(d)
    res = optimize(d, write=False, db=DB)
    assert res.study.directions == [optuna.study.StudyDirection.MAXIMIZE]
    assert res.best["values"]["tokens_per_s"] == pytest.approx(full["tokens_per_s"][full["reason"] == 0].max())


# ---------------------------------------------------------------------------------------------
# the search space


def test_search_space_distributions():
    from optuna.distributions import CategoricalDistribution as Cat
    from optuna.distributions import FloatDistribution as Flt
    from optuna.distributions import IntDistribution as Int

    d = doc(grid={"layers": {"start": 8, "stop": 32, "step": 8}, "d_model": [1024, 2048], "experts": [1, 2, 4, 8],
                  "top_k": [1, 3, 4], "devices": {"start": 64, "stop": 1024, "num": 5, "scale": "log"},
                  "lifespan_years": {"start": 2, "stop": 6, "num": 5}, "hardware": ["a100-sxm4-80gb", "h100-sxm5-80gb"],
                  "tied_embeddings": [False, True]})
    d["cluster"] = {"mfu": 0.4}
    dims = {x.name: x for x in search_space(load_study(d, DB))}
    assert dims["layers"].distribution == Int(8, 32, step=8)
    assert dims["experts"].distribution == Int(1, 8, log=True)          # geometric list: ordered, log
    assert isinstance(dims["top_k"].distribution, Cat)                 # irregular list: categorical
    assert dims["devices"].distribution == Int(64, 1024, log=True)
    assert dims["lifespan_years"].distribution == Flt(2.0, 6.0, step=1.0)
    assert dims["hardware"].distribution == Cat(["a100-sxm4-80gb", "h100-sxm5-80gb"])
    assert dims["tied_embeddings"].distribution == Cat([False, True])
    # sampled values snap to grid values
    assert dims["devices"].values[dims["devices"].indices([64, 100, 180, 1000])].tolist() == [64, 128, 128, 1024]
    assert dims["experts"].values[dims["experts"].indices([3, 5, 6])].tolist() == [4, 4, 8]


@settings(max_examples=60, deadline=None)
@given(st.sampled_from([0.0, 0.05, 0.1, 0.2, 0.3, 1.5]), st.sampled_from([0.01, 0.05, 0.1, 0.25, 0.3, 0.7]),
       st.integers(2, 12), st.booleans())
def test_every_value_of_a_decimal_progression_can_be_sampled(start, step, n, as_range):
    # optuna dropped the top value of mfu = {start = 0.2, stop = 0.6, step = 0.05}: its step check is
    # decimal, and 0.25 − 0.2 = 0.04999999999999999 does not divide 0.4
    values = [round(1 + start + k * step, 10) for k in range(n)]  # lifespans in years
    grid = {"start": values[0], "stop": values[-1], "step": step} if as_range else values
    study = load_study(doc(grid={**BASE["grid"], "lifespan_years": grid}), DB)
    dim = next(x for x in search_space(study) if x.name == "lifespan_years")
    dist = dim.distribution
    if isinstance(dist, optuna.distributions.CategoricalDistribution):
        reachable = set(dim.indices(list(dist.choices)))
    else:
        k = int(round((dist.high - dist.low) / dist.step))
        reachable = set(dim.indices([dist.low + i * dist.step for i in range(k + 1)]))
    assert reachable == set(range(n)), (study.dims["lifespan_years"].tolist(), dist)
    if as_range:  # range coordinates are the decimals written, without float noise
        assert study.dims["lifespan_years"].tolist() == values


# ---------------------------------------------------------------------------------------------
# bad [search] sections


BAD = [
    ({"objective": ["total_tco2e"]}, "objective", "did you mean 'objectives'"),
    ({"objectives": ["total_co2"]}, "objectives", "unknown output"),
    ({"objectives": []}, "objectives", "non-empty list"),
    ({"objectives": ["loss", "max:loss"]}, "objectives", "twice"),
    ({"constraints": ["lss <= 2"]}, "constraints", "unknown output 'lss'"),
    ({"constraints": ["loss =< 2"]}, "constraints", "OP: <=, >=, <, >"),
    ({"constraints": ["loss <= two"]}, "constraints", "output OP number"),
    ({"constraints": "loss <= 2 and x"}, "constraints", "output OP number"),
    ({"sampler": "cmaes"}, "sampler", "allowed: tpe, nsga2, gp, random"),
    ({"trials": 0}, "trials", "≥ 1"),
    ({"batch": 0}, "batch", "≥ 1"),
    ({"batch": 2.5}, "batch", "whole number"),
    ({"seed": "x"}, "seed", "whole number"),
    ({"seed": 1.5}, "seed", "whole number"),
    ({"storage": 5}, "storage", "storage URL"),
    ({"storage": "results/optuna.db"}, "storage", "not a URL"),
]


@pytest.mark.parametrize("search,key,text", BAD, ids=[f"{b[1]}-{i}" for i, b in enumerate(BAD)])
def test_bad_search_sections(search, key, text, tmp_path):
    with pytest.raises(SpecError) as e:
        optimize(doc(search=search), out=tmp_path / "o", db=DB)
    assert e.value.section == "search" and e.value.key == key
    assert text in str(e.value)


def test_bad_search_through_the_cli(tmp_path, capsys):
    for i, (search, key, _text) in enumerate(BAD[:6] + BAD[8:10]):
        path = tmp_path / f"bad{i}.toml"
        path.write_text(toml_text(doc(search=search)))
        assert main(["optimize", str(path), "--out", str(tmp_path / f"o{i}")]) == 2
        err = capsys.readouterr().err
        assert "Traceback" not in err and f"[search] {key}" in err and str(path) in err
    path = tmp_path / "ok.toml"
    path.write_text(toml_text(doc(search={"trials": 4})))
    assert main(["optimize", str(path), "--out", str(tmp_path / "oo"), "--trials", "0"]) == 2
    assert "--trials" in capsys.readouterr().err
    assert main(["optimize", str(path), "--out", str(tmp_path / "oo"), "--storage", "nope://x"]) == 2
    err = capsys.readouterr().err
    assert "Traceback" not in err and "cannot open optuna storage" in err


def test_gp_without_torch_is_a_clear_error():
    import importlib.util

    if importlib.util.find_spec("torch") is not None:
        pytest.skip("torch is installed")
    with pytest.raises(SpecError) as e:
        optimize(doc(search={"sampler": "gp", "trials": 4}), write=False, db=DB)
    assert e.value.key == "sampler" and "pip install torch" in str(e.value)


def test_output_not_computed_in_mfu_mode():
    with pytest.raises(SpecError) as e:
        optimize(doc(search={"objectives": ["tp"]}), write=False, db=DB)
    assert e.value.key == "objectives" and "not computed" in str(e.value)


# ---------------------------------------------------------------------------------------------
# the command: --json and files


def test_json_output_and_files(tmp_path, capsys):
    path = tmp_path / "s.toml"
    path.write_text(toml_text(doc(search={"trials": 8, "batch": 4, "constraints": ["train_days <= 1000"]})))
    out = tmp_path / "o"
    assert main(["optimize", str(path), "--out", str(out), "--json"]) == 0
    got = json.loads(capsys.readouterr().out)
    assert set(got) == {"best", "n_trials", "n_feasible", "elapsed_s"}
    assert got["n_trials"] == 8 and got["n_feasible"] == 8
    assert set(got["best"]) >= {"params", "values"} and set(got["best"]["params"]) == {"layers", "d_model"}
    for name in ("best.csv", "best.nc", "search.json", "optuna.log", "figures/optimization_history.png"):
        assert (out / name).exists(), name
    summary = json.loads((out / "search.json").read_text())
    assert summary["n_trials"] == 8 and summary["sampler"] == "tpe"

    path.write_text(toml_text(doc(grid=MOE_GRID, search={"objectives": ["loss", "total_tco2e"], "trials": 16,
                                                         "sampler": "random"})))
    out2 = tmp_path / "o2"
    assert main(["optimize", str(path), "--out", str(out2), "--json"]) == 0
    got = json.loads(capsys.readouterr().out)
    assert set(got) == {"best", "n_trials", "n_feasible", "elapsed_s", "front"}
    assert got["front"] and all(set(e["values"]) == {"loss", "total_tco2e"} for e in got["front"])
    for name in ("front.csv", "front.nc", "best.csv", "figures/pareto_front.png"):
        assert (out2 / name).exists(), name
    import pandas as pd

    front = pd.read_csv(out2 / "front.csv")
    assert list(front.columns[:6]) == ["layers", "d_model", "experts", "top_k", "index", "trial"]
    assert len(front) == len(got["front"])

    # human summary
    assert main(["optimize", str(path), "--out", str(out2), "--trials", "20", "--quiet"]) == 0
    text = capsys.readouterr().out
    assert "20 trials (4 new)" in text and "Pareto front" in text


def test_warnings_are_not_leaked():
    with warnings.catch_warnings(record=True) as w:
        warnings.simplefilter("always")
        optimize(doc(search={"trials": 8, "constraints": ["loss <= 3"]}), write=False, db=DB)
    assert not [x for x in w if "optuna" in str(x.filename)]


def test_the_summary_line_gives_units_only_where_there_are_some(tmp_path, capsys):
    path = tmp_path / "two.toml"
    path.write_text(toml_text(doc(grid={**BASE["grid"], "mfu": [0.3, 0.5]}, search={
        "objectives": ["total_tco2e", "max:mfu"], "trials": 8, "sampler": "random", "batch": 8},
        cluster={"devices": 256, "hardware": "h100-sxm5-80gb"})))
    assert main(["optimize", str(path), "--out", str(tmp_path / "o"), "--quiet"]) == 0
    line = next(ln for ln in capsys.readouterr().out.splitlines() if "best" in ln)
    assert line.strip().startswith("best by total_tco2e (trial")
    assert "t CO2e" in line and not line.rstrip().endswith(" 1")  # mfu is a pure number: no unit "1"


def test_objective_labels_carry_units_and_say_what_is_maximised():
    from sweep.search import objective_label
    from sweep.study import output_units

    units = output_units()
    assert objective_label("total_tco2e", units) == "total_tco2e [t CO2e]"
    assert objective_label("max:mfu", units) == "mfu (maximised)"  # a pure number: no '[1]'
    assert objective_label("min:train_days", units) == "train_days [d]"
