"""The sweep engine: chunking, resume, dask, streaming reductions, masking and study-spec errors."""

import copy
import functools
import json
import math

import jax.numpy as jnp
import numpy as np
import pytest
import xarray as xr
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import hardware_db
from sweep import engine
from sweep.engine import Plan, run
from sweep.reductions import HostChunk, ParetoFront, Statistics, TopK, objective_matrix, pareto_mask
from sweep.spec import SpecError
from sweep.study import load_study

BASE = {
    "model": {"heads": 16, "vocab": 32000, "seq_len": 2048, "ffn": "swiglu"},
    "training": {"tokens": 3e11},
    "cluster": {"devices": 256, "mfu": 0.4},
    "site": {"region": "us"},
    "grid": {
        "layers": [12, 24, 36],
        "d_model": {"start": 1024, "stop": 4096, "num": 4},
        "hardware": ["a100-sxm4-80gb", "h100-sxm5-80gb"],
        "lifespan_years": {"start": 1, "stop": 5, "step": 1},
    },
    "study": {"pareto": [["loss", "total_tco2e"], ["train_days", "total_tco2e", "max:mfu"]],
              "top": {"by": "total_tco2e", "n": 7}},
}


def spec(**changes):
    s = copy.deepcopy(BASE)
    for path, value in changes.items():
        section, key = path.split("__")
        if value is None:
            s[section].pop(key, None)
        else:
            s.setdefault(section, {})[key] = value
    return s


def same_dataset(a: xr.Dataset, b: xr.Dataset):
    assert set(a.data_vars) == set(b.data_vars)
    for k in a.data_vars:
        np.testing.assert_array_equal(a[k].values, b[k].values, err_msg=k)
        norm = lambda attrs: {n: np.asarray(v).tolist() for n, v in attrs.items()}  # noqa: E731
        assert norm(a[k].attrs) == norm(b[k].attrs)
    for d in a.dims:
        np.testing.assert_array_equal(a[d].values, b[d].values)


def same_tables(a, b):
    assert list(a) == list(b)
    for name in a:
        np.testing.assert_array_equal(a[name]["index"].values, b[name]["index"].values)


# -- chunk plan ------------------------------------------------------------------------------

@given(st.lists(st.integers(1, 7), min_size=1, max_size=4), st.integers(1, 300))
def test_chunks_cover_the_grid_once_in_order(shape, size):
    plan = Plan.make(tuple(shape), size)
    seen = []
    for i in range(plan.n_chunks):
        a, b = plan.bounds(i)
        assert 0 < b - a <= max(size, 1) or plan.inner > size
        seen.extend(range(a, b))
        region = plan.region(i)
        assert int(np.prod([s.stop - s.start for s in region])) == b - a
    assert seen == list(range(int(np.prod(shape))))


@given(st.lists(st.integers(1, 70), min_size=1, max_size=4), st.integers(1, 5000))
def test_chunks_along_the_split_axis_are_as_few_as_the_budget_allows_and_of_equal_steps(shape, size):
    plan = Plan.make(tuple(shape), size)
    n = shape[plan.axis]
    widest = max(1, min(n, size // plan.inner))
    assert plan.per_outer == -(-n // widest)  # no more chunks than the widest step would make
    assert plan.step <= widest  # within the budget
    assert plan.per_outer * plan.step - n < plan.per_outer  # padding: less than one index per chunk


def test_a_split_axis_the_budget_does_not_divide_is_cut_in_equal_chunks_without_padding():
    # 64 indices, room for 42: two chunks of 32, not 42 + 22 padded to 42 (31 % of the work padding)
    plan = Plan.make((64, 64, 24576), 1 << 20)
    assert (plan.axis, plan.step, plan.n_chunks) == (1, 32, 128)
    assert plan.n_chunks * plan.capacity == 64 * 64 * 24576



@given(st.lists(st.tuples(st.integers(1, 4), st.booleans()), min_size=1, max_size=5), st.integers(0, 5))
def test_spreading_a_value_over_a_block_equals_numpy_broadcasting(axes, drop):
    block = tuple(n for n, _ in axes)
    shape = tuple(n if varies else 1 for n, varies in axes)[min(drop, len(axes)):]  # leading axes may be absent
    v = np.arange(int(np.prod(shape)), dtype=np.float64).reshape(shape)
    np.testing.assert_array_equal(np.asarray(engine.spread(jnp.asarray(v), block)),
                                  np.broadcast_to(v, block).reshape(-1))

# -- results ---------------------------------------------------------------------------------

def test_grid_dataset_has_named_dimensions_labels_and_units():
    res = run(spec(), write=False)
    ds = res.dataset
    assert tuple(ds.total_tco2e.dims) == ("layers", "d_model", "hardware", "lifespan_years")
    assert list(ds.hardware.values) == ["a100-sxm4-80gb", "h100-sxm5-80gb"]
    for k in ds.data_vars:
        assert ds[k].attrs.get("units"), k
        assert ds[k].attrs.get("long_name"), k
    assert ds.total_tco2e.attrs["units"] == "t CO2e"
    assert int((ds.reason == 0).sum()) == res.summary["n_feasible"] == 3 * 4 * 2 * 5


def test_chunked_and_unchunked_runs_give_identical_results():
    whole = run(spec(), write=False, chunk_size=10_000)
    chunked = run(spec(), write=False, chunk_size=5)
    assert chunked.summary["n_chunks"] > 10 and whole.summary["n_chunks"] == 1
    same_dataset(whole.dataset, chunked.dataset)
    same_tables(whole.pareto, chunked.pareto)
    np.testing.assert_array_equal(whole.top["index"].values, chunked.top["index"].values)


@pytest.mark.parametrize("mode", ["mfu given", "best layout"])
def test_chunks_of_one_or_two_points_give_the_unchunked_bits(mode):
    """A chunk size of 1 runs as 2 (XLA compiles a one-point block differently and rounds the last
    bit differently); both give the unchunked run's dataset."""
    s = spec(**MODES[mode])
    whole = run(s, write=False, chunk_size=10_000)
    for size in (1, 2):
        got = run(s, write=False, chunk_size=size)
        assert got.summary["n_chunks"] == 72  # 3 × 4 × 2 × ceil(5 / 2)
        same_dataset(whole.dataset, got.dataset)


@settings(max_examples=6, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(st.integers(1, 100))
def test_any_chunk_size_gives_the_same_front_and_top(size):
    ref = run(spec(), write=False, chunk_size=120)
    got = run(spec(), write=False, chunk_size=size)
    same_tables(ref.pareto, got.pareto)
    np.testing.assert_array_equal(ref.top["index"].values, got.top["index"].values)


def test_streaming_pareto_front_equals_brute_force():
    res = run(spec(), write=False, chunk_size=7)
    ds = res.dataset
    flat = {k: ds[k].values.ravel() for k in ("loss", "total_tco2e", "reason")}
    ok = np.flatnonzero(flat["reason"] == 0)
    pts = [(flat["loss"][i], flat["total_tco2e"][i]) for i in ok]
    brute = [i for i, p in zip(ok, pts)
             if not any(q[0] <= p[0] and q[1] <= p[1] and q != p for q in pts)]
    assert sorted(brute) == sorted(res.pareto["pareto_loss__total_tco2e"]["index"].tolist())


def test_pareto_mask_matches_definition_with_ties_in_three_objectives():
    rng = np.random.default_rng(0)
    f = rng.integers(0, 4, size=(300, 3)).astype(float)
    got = pareto_mask(f)
    want = np.array([not any((f[j] <= f[i]).all() and (f[j] < f[i]).any() for j in range(len(f)))
                     for i in range(len(f))])
    np.testing.assert_array_equal(got, want)


def test_pareto_mask_two_objectives_with_duplicates():
    f = np.array([[1, 5], [1, 5], [2, 4], [2, 6], [3, 1], [0, 9], [3, 1], [1, 4]], float)
    want = np.array([not any((f[j] <= f[i]).all() and (f[j] < f[i]).any() for j in range(len(f)))
                     for i in range(len(f))])
    np.testing.assert_array_equal(pareto_mask(f), want)


@given(st.integers(0, 2**32 - 1), st.integers(1, 200), st.sampled_from([2, 5, 50, 10**6]), st.booleans())
def test_two_objective_front_matches_the_definition(seed, n, levels, runs):
    """The two-objective front (one sort by the first objective, groups of its ties) equals the
    brute-force definition, duplicates and ties included; also when the first objective comes in
    sorted runs, as in grid order (another sort is used then)."""
    f = np.random.default_rng(seed).integers(0, levels, size=(n, 2)).astype(float)
    if runs:
        f[: n // 2] = f[: n // 2][np.argsort(f[: n // 2, 0])]
        f[n // 2:] = f[n // 2:][np.argsort(f[n // 2:, 0])]
    le = (f[None, :, :] <= f[:, None, :]).all(-1)  # [i, j]: j is no worse than i in both
    lt = (f[None, :, :] < f[:, None, :]).any(-1)
    np.testing.assert_array_equal(pareto_mask(f), ~(le & lt).any(1))


def test_maximised_objective_is_respected():
    cols = {"a": np.array([1.0, 2.0, 3.0]), "b": np.array([1.0, 2.0, 3.0]), "index": np.arange(3)}
    assert objective_matrix(cols, ["a", "max:b"]).tolist() == [[1, -1], [2, -2], [3, -3]]
    assert pareto_mask(objective_matrix(cols, ["a", "max:b"])).all()


def test_top_k_is_the_k_smallest_feasible():
    res = run(spec(), write=False)
    tot = res.dataset.total_tco2e.values.ravel()
    order = np.argsort(tot, kind="stable")[:7]
    np.testing.assert_array_equal(np.sort(res.top["index"].values), np.sort(order))


def test_invalid_designs_are_masked_with_a_reason_not_dropped():
    s = spec(grid__experts=[1, 4], grid__top_k=[1, 2])
    res = run(s, write=False)
    r = res.dataset.reason
    bad = r.sel(experts=1, top_k=2)
    assert (bad == 1).all()  # top_k_exceeds_experts
    assert (r.sel(experts=4, top_k=2) == 0).all()
    assert res.summary["infeasible"] == {"top_k_exceeds_experts": int((r == 1).sum())}
    assert r.size == res.summary["n_points"]


def test_heads_not_dividing_d_model_is_masked():
    res = run(spec(grid__d_model=[1000, 1024]), write=False)
    assert (res.dataset.reason.sel(d_model=1000) == 12).all()
    assert (res.dataset.reason.sel(d_model=1024) == 0).all()


def test_float32_sweep_agrees_with_float64_and_counts_do_not_drift():
    f64 = run(spec(), write=False).dataset
    f32 = run(spec(study__dtype="float32"), write=False).dataset
    assert f32.total_tco2e.dtype == np.float32
    np.testing.assert_allclose(f32.total_tco2e.values, f64.total_tco2e.values, rtol=1e-5)
    np.testing.assert_array_equal(f32.gpus_consumed.values, f64.gpus_consumed.values)


def test_float32_sweep_keeps_float32_outputs_except_the_counts():
    ds = run(spec(study__dtype="float32"), write=False).dataset
    wide = {k for k, v in ds.data_vars.items() if v.dtype.kind == "f" and v.dtype != np.float32}
    assert wide == {"gpus_consumed", "material_kg"}  # counted in float64 so they cannot drift
    assert ds.loss.dtype == np.float32


# -- files, resume, zarr, dask ---------------------------------------------------------------

def test_run_writes_open_formats_and_study_json(tmp_path):
    out = tmp_path / "res"
    res = run(spec(), out)
    names = {p.name for p in out.iterdir()}
    assert {"grid.nc", "study.json", "top.csv", "top.nc", "pareto_loss__total_tco2e.csv",
            "pareto_loss__total_tco2e.nc"} <= names
    assert ".chunks" not in names
    doc = json.loads((out / "study.json").read_text())
    for key in ("spec", "versions", "n_points", "n_feasible", "n_chunks", "elapsed_s"):
        assert key in doc
    assert doc["n_points"] == 3 * 4 * 2 * 5
    back = xr.open_dataset(out / "grid.nc", engine="h5netcdf")
    same_dataset(back.load(), res.dataset)


def test_resume_after_a_kill_gives_the_uninterrupted_result(tmp_path, monkeypatch):
    ref = run(spec(), tmp_path / "ref", chunk_size=5)
    real = engine.run_chunk
    calls = {"n": 0}

    def dying(*args, **kwargs):
        calls["n"] += 1
        if calls["n"] == 8:
            raise KeyboardInterrupt("killed")
        return real(*args, **kwargs)

    monkeypatch.setattr(engine, "run_chunk", dying)
    out = tmp_path / "killed"
    with pytest.raises(KeyboardInterrupt):
        run(spec(), out, chunk_size=5)
    assert not (out / "study.json").exists()  # never mistaken for a finished run
    parts = sorted((out / ".chunks").glob("chunk_*.npz"))
    # the other thread may finish the chunks it had started before the interruption reaches the loop
    assert 7 <= len(parts) < ref.summary["n_chunks"]
    (out / ".chunks" / "chunk_00000007.npz.tmp.npz").write_bytes(b"half-written")  # a torn write
    monkeypatch.setattr(engine, "run_chunk", real)
    res = run(spec(), out, resume=True, chunk_size=999)  # the saved plan wins over a new chunk size
    same_dataset(ref.dataset, res.dataset)
    same_tables(ref.pareto, res.pareto)
    assert res.summary["n_chunks"] == ref.summary["n_chunks"]


def test_resume_of_a_finished_run_returns_it(tmp_path):
    out = tmp_path / "r"
    a = run(spec(), out)
    b = run(spec(), out, resume=True)
    assert b.summary["n_points"] == a.summary["n_points"]


def test_resume_refuses_a_different_spec(tmp_path, monkeypatch):
    out = tmp_path / "r"
    monkeypatch.setattr(engine, "run_chunk", lambda *a, **k: (_ for _ in ()).throw(KeyboardInterrupt()))
    with pytest.raises(KeyboardInterrupt):
        run(spec(), out, chunk_size=5)
    monkeypatch.undo()
    with pytest.raises(SpecError, match="different spec"):
        run(spec(training__tokens=1e12), out, resume=True)


def test_large_grid_streams_to_zarr_and_matches_netcdf(tmp_path, monkeypatch):
    ref = run(spec(), write=False)
    monkeypatch.setattr(engine, "SMALL_GRID", 10)
    out = tmp_path / "big"
    res = run(spec(), out, chunk_size=8)
    assert (out / "grid.zarr").is_dir() and not (out / "grid.nc").exists()
    z = xr.open_zarr(out / "grid.zarr").load()
    same_dataset(ref.dataset, z)
    assert res.dataset is not None


@pytest.mark.parametrize("dim", ["mfu", "params"])
def test_a_dimension_named_like_an_output_is_the_grids_coordinate(tmp_path, monkeypatch, dim):
    # mfu, params and active_params are inputs and outputs alike: in [grid] the coordinate holds them
    values = {"mfu": [0.3, 0.45], "params": [7e9, 1.3e10]}[dim]
    s = {"model": {"params": 7e9}, "training": {"tokens": 2e11},
         "cluster": {"hardware": "a100-sxm4-80gb", "devices": 64, "mfu": 0.4}, "site": {"region": "us"},
         "grid": {dim: values, "lifespan_years": [2, 4]},
         "study": {"dtype": "float32", "pareto": [["loss", "total_tco2e"]], "top": {"by": "total_tco2e", "n": 3}}}
    del s["model" if dim == "params" else "cluster"][dim]
    mem = run(s, write=False)
    files = run(s, tmp_path / "nc")
    monkeypatch.setattr(engine, "SMALL_GRID", 2)
    zarr = run(s, tmp_path / "zarr", chunk_size=2)
    assert (tmp_path / "zarr" / "grid.zarr").is_dir()
    for ds in (mem.dataset, xr.open_dataset(tmp_path / "nc" / "grid.nc"),
               xr.open_zarr(tmp_path / "zarr" / "grid.zarr")):
        assert dim not in ds.data_vars and ds[dim].values.tolist() == values
        assert ds["total_tco2e"].dims == (dim, "lifespan_years")
    for res in (mem, files, zarr):
        assert set(res.top[dim]) <= set(values)  # the coordinate's labels, not float32 roundings of them
    assert float(mem.dataset["total_tco2e"].sel({dim: values[1], "lifespan_years": 2})) > 0


def test_a_default_full_grid_too_large_for_the_disk_is_a_spec_error_before_anything_is_written(tmp_path, monkeypatch):
    import collections

    n = 3 * 4 * 2 * 5  # BASE's grid; its 36 outputs of 8 bytes or fewer take < 40 kB
    usage = collections.namedtuple("usage", "total used free")
    monkeypatch.setattr(engine.shutil, "disk_usage", lambda path: usage(10**6, 10**6 - 1000, 1000))
    with pytest.raises(SpecError, match=r"\[study\] keep_full_grid: is not given.* GB before compression"):
        run(spec(), tmp_path / "out")
    assert not (tmp_path / "out").exists()
    assert run(spec(study__keep_full_grid=False), tmp_path / "reduced").summary["n_points"] == n
    assert run(spec(study__keep_full_grid=True), tmp_path / "asked").dataset is not None  # the user's choice


def test_a_best_layout_grid_records_the_whole_layout_estimate_picks_for_each_point():
    from sweep.estimate import evaluate

    s = {"model": {"layers": 24, "heads": 16, "vocab": 32000, "seq_len": 2048, "ffn": "swiglu"},
         "training": {"tokens": 1e11, "global_batch": 512}, "cluster": {"hardware": "h100-sxm5-80gb"},
         "site": {"region": "us"}, "grid": {"d_model": [1024, 2048], "devices": [16, 64]},
         "study": {"layout": "best"}}
    ds = run(s, write=False).dataset
    for d_model in (1024, 2048):
        for devices in (16, 64):
            point = {**s["model"], **s["training"], **s["cluster"], **s["site"], "d_model": d_model, "devices": devices}
            want = evaluate(point)
            got = ds.sel(d_model=d_model, devices=devices)
            for key in ("tp", "pp", "ep", "microbatch", "interleave", "sequence_parallel", "shard_optimizer"):
                assert float(got[key]) == float(want[key]), (d_model, devices, key)
            assert float(got["recompute"]) == {"none": 0, "selective": 1, "full": 2}[want["recompute"]]
            assert float(got["total_tco2e"]) == pytest.approx(want["total_tco2e"], rel=1e-9)


def test_reductions_only_keep_no_grid(tmp_path):
    res = run(spec(study__keep_full_grid=False), tmp_path / "r", chunk_size=9)
    assert res.dataset is None
    assert not (tmp_path / "r" / "grid.nc").exists()
    ref = run(spec(), write=False)
    same_tables(ref.pareto, res.pareto)


@pytest.mark.parametrize("mode", ["mfu given", "best layout"])
def test_dask_local_cluster_agrees_with_in_process(tmp_path, mode):
    from distributed import Client, LocalCluster

    s = spec(**MODES[mode])
    ref = run(s, tmp_path / "local", chunk_size=10)
    with LocalCluster(n_workers=1, threads_per_worker=1, processes=False, dashboard_address=None) as cluster:
        with Client(cluster) as client:
            res = run(s, tmp_path / "dask", chunk_size=10, scheduler=client)
    same_dataset(ref.dataset, res.dataset)
    same_tables(ref.pareto, res.pareto)


def test_workers_that_cannot_be_tuned_still_run_the_sweep_with_a_warning(tmp_path, monkeypatch):
    from distributed import Client, LocalCluster

    import sweep.cluster

    def refuse(client):
        raise OSError("no such thread")

    monkeypatch.setattr(sweep.cluster, "prepare_workers", refuse)
    ref = run(spec(), tmp_path / "local", chunk_size=10)
    with LocalCluster(n_workers=1, threads_per_worker=1, processes=False, dashboard_address=None) as cluster:
        with Client(cluster) as client, pytest.warns(RuntimeWarning, match="dask workers left as they are"):
            res = run(spec(), tmp_path / "dask", chunk_size=10, scheduler=client)
    same_tables(ref.pareto, res.pareto)


# -- study spec errors -----------------------------------------------------------------------

@pytest.mark.parametrize("changes,key,words", [
    ({"grid__layerz": [1, 2]}, "layerz", "unknown dimension"),
    ({"grid__layers": []}, "layers", "empty list"),
    ({"grid__layers": {"start": 10, "stop": 1, "num": 3}}, "layers", "below start"),
    ({"grid__layers": {"start": 1, "stop": 10, "num": 0}}, "layers", "num"),
    ({"grid__d_model": {"start": 0, "stop": 10, "num": 3, "scale": "log"}}, "d_model", "log range"),
    ({"grid__d_model": {"start": 1, "stop": 10, "nun": 3}}, "d_model", "unknown range key"),
    ({"grid__d_model": {"start": 1, "stop": 10, "step": -1}}, "d_model", "step"),
    ({"grid__hardware": ["a100-sxm4-80gb", "h100-sxm-80gb"]}, "hardware", "h100-sxm5-80gb"),
    ({"site__region": None, "grid__region": ["us", "atlantis"]}, "region", "unknown region"),
    ({"model__layers": 12}, "layers", "also given"),
    ({"grid__layers": [12, 12]}, "layers", "repeated"),
    ({"grid__layers": [12, 2.5]}, "layers", "whole number"),
    ({"grid__lifespan_years": [1, -2]}, "lifespan_years", "greater than 0"),
    ({"study__top": {"by": "total_tco2", "n": 3}}, "top", "total_tco2e"),
    ({"study__pareto": [["loss"]]}, "pareto", "two or more"),
    ({"study__layuot": "best"}, "layuot", "layout"),
    ({"cluster__mfu": None, "training__global_batch": 512, "cluster__tp": 4, "study__layout": "best"}, "tp",
     'layout = "fixed"'),
    ({"cluster__mfu": None, "training__global_batch": 512, "grid__pp": [1, 2], "study__layout": "best"}, "pp",
     "chosen per point"),
])
def test_study_spec_errors_name_the_key(changes, key, words):
    with pytest.raises(SpecError) as e:
        load_study(spec(**changes), hardware_db.load())
    assert e.value.key == key
    assert words in str(e.value)


def test_empty_grid_is_an_error():
    s = spec(model__layers=12, model__d_model=1024, cluster__hardware="a100-sxm4-80gb")
    s["grid"] = {}
    with pytest.raises(SpecError, match="empty"):
        run(s, write=False)


def test_layout_keys_given_mean_a_fixed_layout_unless_the_study_says_otherwise():
    """As for `estimate`: tp, pp, ... in [cluster] or [grid] are used as given (layout "fixed"); with
    none given the layout is optimised per point ("best")."""
    db = hardware_db.load()
    keys = {"cluster__mfu": None, "cluster__tp": 8, "cluster__pp": 4, "training__global_batch": 512}
    given = load_study(spec(**keys), db)
    assert given.options["layout"] == "fixed"
    same_dataset(run(given, write=False).dataset, run(spec(**keys, study__layout="fixed"), write=False).dataset)
    assert load_study(spec(cluster__mfu=None, training__global_batch=512), db).options["layout"] == "best"


def test_best_layout_grid_keeps_each_points_device_count():
    s = {
        "model": {"layers": 24, "d_model": 2048, "heads": 16, "vocab": 32000, "seq_len": 2048},
        "training": {"tokens": 1e11, "global_batch": 512},
        "cluster": {"hardware": "a100-sxm4-80gb"},
        "site": {"region": "us"},
        "grid": {"devices": [64, 256, 1024]},
        "study": {"layout": "best"},
    }
    ds = run(s, write=False).dataset
    tp, pp, dp = (ds[k].values for k in ("tp", "pp", "dp"))
    np.testing.assert_array_equal(tp * pp * dp, [64, 256, 1024])
    assert len(set(ds.train_days.values.round(6))) == 3


@pytest.mark.parametrize("size", [7, 40, 10_000])
def test_reductions_only_fast_path_equals_the_full_grid_path(size):
    full = run(spec(), write=False, chunk_size=size)
    fast = run(spec(study__keep_full_grid=False), write=False, chunk_size=size)
    same_tables(full.pareto, fast.pareto)
    np.testing.assert_array_equal(full.top["index"].values, fast.top["index"].values)
    for name in full.pareto:  # completed rows carry every output, equal to the grid's
        for col in ("params", "train_days", "energy_mwh", "total_tco2e"):
            np.testing.assert_allclose(fast.pareto[name][col].values, full.pareto[name][col].values, rtol=1e-12)
    assert fast.summary["infeasible"] == full.summary["infeasible"]
    assert fast.summary["n_feasible"] == full.summary["n_feasible"]
    assert fast.summary["min"]["total_tco2e"] == full.summary["min"]["total_tco2e"]



@pytest.mark.parametrize("size", [7, 10_000])
def test_fast_path_reads_the_per_design_loss_at_the_right_points_whatever_the_axis_order(size):
    # the kernel returns the loss once per design; design axes here come second and last
    grid = {"lifespan_years": [1, 3, 5], "layers": [12, 24, 36], "hardware": ["a100-sxm4-80gb", "h100-sxm5-80gb"],
            "d_model": {"start": 1024, "stop": 4096, "num": 4}}
    study = {"pareto": [["loss", "total_tco2e"]], "top": {"by": "total_tco2e", "n": 7}}
    full = run(spec() | {"grid": grid, "study": study}, write=False, chunk_size=size)
    fast = run(spec() | {"grid": grid, "study": {**study, "keep_full_grid": False}}, write=False, chunk_size=size)
    same_tables(full.pareto, fast.pareto)
    front = fast.pareto["pareto_loss__total_tco2e"]
    loss = full.dataset["loss"].values.reshape(-1)  # the grid's loss, point by point
    np.testing.assert_array_equal(front["loss"].values, loss[front["index"].values])
    assert fast.summary["min"]["loss"] == full.summary["min"]["loss"]

@functools.cache
def _prefilter_jit():
    """One compiled prefilter for the property test's fixed shapes (a front and a top-10)."""
    import jax

    reductions = (Statistics(), ParetoFront(("loss", "total_tco2e")), TopK("total_tco2e", 10))
    return jax.jit(lambda o, m: engine.prefilter(o, m, reductions))


@settings(max_examples=40, deadline=None)
@given(st.integers(0, 2**32 - 1), st.integers(1, 512), st.sampled_from([3, 40, 1000]),
       st.sampled_from([0.0, 0.2]), st.sampled_from(["none", "nan", "inf"]))
def test_prefilter_masks_keep_every_front_member_and_the_top_k(seed, n_valid, levels, p_infeasible, bad):
    """The in-kernel prefilter may keep extra candidates but never drops a member (ties included);
    its statistics count only the valid, feasible, finite points. Chunks with every point feasible
    and finite take a branch of their own, so both kinds are drawn."""
    rng = np.random.default_rng(seed)
    n = 512
    out = {"loss": rng.integers(0, levels, n).astype(np.float32),
           "total_tco2e": rng.integers(0, levels, n).astype(np.float32),
           "reason": np.where(rng.random(n) < p_infeasible, 3, 0).astype(np.int32)}
    if bad != "none":  # a non-finite objective on a feasible point: neither a candidate nor in the statistics
        out["total_tco2e"][rng.integers(0, n)] = np.nan if bad == "nan" else np.inf
    pad = rng.integers(0, n_valid, n - n_valid)  # as on the grid, padding repeats real points
    out = {k: np.concatenate([v[:n_valid], v[pad]]) for k, v in out.items()}
    res = {k: np.asarray(v) for k, v in _prefilter_jit()(out, np.int64(n_valid)).items()}
    ok = np.flatnonzero((out["reason"][:n_valid] == 0) & np.isfinite(out["total_tco2e"][:n_valid]))
    f = np.stack([out["loss"][ok], out["total_tco2e"][ok]], 1).astype(float)
    members = ok[pareto_mask(f)]
    assert res["__pareto0__mask"][members].all()
    assert not res["__pareto0__mask"][n_valid:].any()
    assert np.isfinite(out["total_tco2e"][res["__pareto0__mask"]]).all()
    order = ok[np.lexsort((ok, out["total_tco2e"][ok]))][:10]
    assert res["__top__mask"][order].all()
    assert not res["__top__mask"][n_valid:].any()
    feasible = np.flatnonzero(out["reason"][:n_valid] == 0)
    kernel = {k[len("__stats__"):]: v for k, v in res.items() if k.startswith("__stats__")}
    host = Statistics().host_reduce(HostChunk({k: v[:n_valid] for k, v in out.items()}, kernel, 0, [], (), False))
    np.testing.assert_array_equal(host["reasons"][[0, 3]], [len(feasible), n_valid - len(feasible)])
    assert res["__stats__min__total_tco2e"] == out["total_tco2e"][ok].min(initial=np.inf)  # ±inf: none
    assert res["__stats__max__total_tco2e"] == out["total_tco2e"][ok].max(initial=-np.inf)
    assert res["__stats__max__loss"] == out["loss"][feasible].max(initial=-np.inf)


@settings(max_examples=60, deadline=None)
@given(st.lists(st.floats(allow_nan=False, width=32), min_size=2, max_size=50), st.sampled_from(["float32", "float64"]))
def test_the_prefilters_bin_key_is_monotone_in_the_value(values, dtype):
    """Bins of the key keep the prefilters exact: a smaller value never gets a larger key (negatives,
    zeros, subnormals and infinities included)."""
    from sweep.reductions import bin_key

    v = np.sort(np.asarray(values, dtype))
    k = np.asarray(bin_key(jnp.asarray(v)))
    assert (np.diff(k) >= 0).all()


def test_prefilters_pass_few_points_of_a_grid_whose_inner_axes_repeat():
    """A chunk's inner axes repeat with a period (here tokens 3 × region 8 × hardware 4 = 96 points):
    the strided sample the prefilters bound with must see every residue, or the bounds come from a few
    expensive combinations and most of the chunk passes (a power-of-two stride saw 3 of the 96)."""
    n = 96 * 2048
    i = np.arange(n)
    design = np.exp(np.random.default_rng(0).normal(0.0, 1.0, n // 96)).repeat(96)
    region = np.array([0.8, 0.05, 0.7, 0.4, 0.06, 0.3, 0.5, 0.45])[(i // 3) % 8]
    tokens = np.array([1.0, 3.0, 10.0])[i % 3]
    days = design * tokens / np.array([1.0, 2.0, 2.5, 3.0])[(i // 24) % 4]
    out = {"loss": days, "total_tco2e": design * tokens * region, "reason": np.zeros(n, np.int32)}
    reductions = (Statistics(), ParetoFront(("loss", "total_tco2e")), TopK("total_tco2e", 10))
    res = {k: np.asarray(v) for k, v in engine.prefilter(
        {k: jnp.asarray(v) for k, v in out.items()}, np.int64(n), reductions).items()}
    assert res["__top__mask"].sum() < 0.01 * n
    assert res["__pareto0__mask"].sum() < 0.01 * n


@pytest.mark.parametrize("size", [7, 10_000])
def test_summary_min_and_max_cover_exactly_the_feasible_finite_points(size):
    """Every output's min and max in the summary are over feasible points with finite values only
    (here some designs are infeasible: top_k > experts)."""
    res = run(spec(grid__experts=[1, 4], grid__top_k=[1, 2], study__layout="best", cluster__mfu=None,
                   training__global_batch=512, cluster__devices=64), write=False, chunk_size=size)
    ds = res.dataset
    ok = (ds.reason == 0).values
    assert 0 < ok.sum() < ok.size
    for k in ds.data_vars:
        if k == "reason":
            continue
        v = ds[k].values
        good = ok & np.isfinite(v)
        if good.any():
            assert res.summary["min"][k] == v[good].min(), k
            assert res.summary["max"][k] == v[good].max(), k


@functools.cache
def _prefilter_per_design_jit(designs, per):
    """A compiled prefilter (a front and a top-10) for points laid out as designs × per, and the
    map from per-design values to points."""
    import jax

    expand = lambda v: jnp.broadcast_to(v.reshape(designs, 1), (designs, per)).reshape(-1)  # noqa: E731
    reductions = (Statistics(), ParetoFront(("loss", "total_tco2e")), TopK("total_tco2e", 10))
    return jax.jit(lambda o, m, low: engine.prefilter(o, m, reductions, low=low, expand=expand)), expand


@settings(max_examples=25, deadline=None)
@given(st.integers(0, 2**32 - 1), st.integers(1, 8), st.sampled_from([0.0, 0.2]), st.sampled_from([3, 1000]))
def test_prefilter_with_the_loss_per_design_gives_the_per_point_masks(seed, n_pad, p_infeasible, levels):
    """Given the loss once per design (as the grid path does), the prefilter computes what depends on
    it alone per design; its masks and statistics are those of the per-point computation, also in a
    chunk padded (as on the grid) by repeating its last row of designs."""
    rng = np.random.default_rng(seed)
    designs, per = 16, 32
    loss = rng.integers(0, levels, designs).astype(np.float64)
    total = rng.integers(0, levels, (designs, per)).astype(np.float64)
    reason = np.where(rng.random((designs, per)) < p_infeasible, 3, 0).astype(np.int32)
    real = designs - n_pad
    for a in (loss, total, reason):
        a[real:] = a[real - 1]
    prefilter, expand = _prefilter_per_design_jit(designs, per)
    out = {"loss": expand(jnp.asarray(loss)), "total_tco2e": jnp.asarray(total.ravel()), "reason": reason.ravel()}
    n_valid = np.int64(real * per)
    both = [prefilter(out, n_valid, low) for low in ({}, {"loss": jnp.asarray(loss)})]
    for k in both[0]:
        np.testing.assert_array_equal(np.asarray(both[0][k]), np.asarray(both[1][k]), err_msg=k)


def test_prefilter_statistics_of_a_padded_chunk_count_only_its_points():
    """The grid's last chunk along the split axis is padded by repeating its last row; its reason
    counts and min/max are those of the real points alone (every point feasible here)."""
    s = spec(study__keep_full_grid=False)
    full = run(spec(), write=False).dataset
    for size in (7, 40):
        fast = run(s, write=False, chunk_size=size)
        assert fast.summary["n_feasible"] == int((full.reason == 0).sum())
        assert fast.summary["min"]["total_tco2e"] == float(full.total_tco2e.min())
        assert fast.summary["max"]["total_tco2e"] == float(full.total_tco2e.max())


MODES = {"mfu given": {}, "fixed layout": {"cluster__mfu": None, "cluster__tp": 8, "cluster__pp": 4,
                                            "training__global_batch": 512},
         "best layout": {"cluster__mfu": None, "study__layout": "best", "training__global_batch": 512}}


@pytest.mark.parametrize("dtype", ["float32", "float64"])
@pytest.mark.parametrize("mode", list(MODES))
def test_points_evaluated_one_by_one_equal_the_grid_to_the_bit(dtype, mode):
    """The per-point path (search, completed rows) and the grid path (design terms on the design
    axes only, then every point) give the same bits for every output."""
    s = spec(study__dtype=dtype, **MODES[mode])
    ds = run(s, write=False, chunk_size=7).dataset
    ev = engine.Evaluator(load_study(s, hardware_db.load()), hardware_db.load())
    got = ev.evaluate(np.arange(ds.reason.size)[::-1].copy())  # any order, one call
    for k in ds.data_vars:
        np.testing.assert_array_equal(got[k][::-1], ds[k].values.ravel(), err_msg=k)


@pytest.mark.parametrize("dtype", ["float32", "float64"])
@pytest.mark.parametrize("mode", list(MODES))
def test_deployment_terms_once_per_deployment_or_in_every_point_give_the_same_bits(dtype, mode, monkeypatch):
    """A chunk computes its deployment terms once per deployment (buffers) or in the points' loops,
    by how many points it holds per deployment (engine.DEPLOYMENT_STAGE_RATIO): the same bits."""
    s = spec(study__dtype=dtype, **MODES[mode])
    got = {}
    for ratio in (1, 10**12):  # always once per deployment; never
        monkeypatch.setattr(engine, "DEPLOYMENT_STAGE_RATIO", ratio)
        got[ratio] = [run(s, write=False, chunk_size=size).dataset for size in (None, 7)]
    for a, b in zip(got[1], got[10**12]):
        same_dataset(a, b)


@pytest.mark.parametrize("mode", list(MODES))
def test_a_point_evaluated_alone_equals_the_grid_to_the_bit(mode):
    """One point on the per-point path (a front or top-k of one row is completed so) gives the
    grid's bits too: it is evaluated as two, since XLA compiles a one-point call differently."""
    s = spec(study__dtype="float32", **MODES[mode])
    ds = run(s, write=False).dataset
    ev = engine.Evaluator(load_study(s, hardware_db.load()), hardware_db.load())
    for i in (0, 37, 119):
        got = ev.evaluate(np.array([i]))
        for k in ds.data_vars:
            np.testing.assert_array_equal(got[k], ds[k].values.ravel()[i:i + 1], err_msg=k)


@settings(max_examples=30, deadline=None)
@given(st.lists(st.integers(0, 40), min_size=1, max_size=12), st.integers(1, 60), st.integers(0, 2**31))
def test_streaming_front_in_batches_equals_the_front_of_everything(sizes, batch, seed):
    from sweep.reductions import StreamingFront

    rng = np.random.default_rng(seed)
    sets, start = [], 0
    for n in sizes:  # integer objectives: many ties and duplicates
        sets.append({"a": rng.integers(0, 6, n).astype(float), "b": rng.integers(0, 6, n).astype(float),
                     "index": np.arange(start, start + n)})
        start += n
    sf = StreamingFront(["a", "max:b"], batch_rows=batch)
    for s in sets:
        sf.add(s)
    got = sf.result()
    everything = {k: np.concatenate([s[k] for s in sets]) for k in sets[0]}
    want = everything["index"][pareto_mask(objective_matrix(everything, ["a", "max:b"]))]
    np.testing.assert_array_equal(got["index"], np.sort(want))


def test_best_layout_candidates_are_the_sorted_union_of_each_designs_enumeration():
    """A best-layout grid searches the distinct layouts enumerated for any of its (devices, layers,
    heads, ...) combinations, each listed once, in lexicographic order of the layout keys."""
    from kernels.layout import enumerate_layouts

    s = spec(cluster__mfu=None, cluster__devices=None, study__layout="best", training__global_batch=512,
             grid__devices=[64, 96, 256], grid__layers=[12, 24, 36])
    ev = engine.Evaluator(load_study(s, hardware_db.load()), hardware_db.load())
    want = set()
    for devices in (64, 96, 256):
        for layers in (12, 24, 36):
            cand = enumerate_layouts(devices, layers, 16, 16, 1, 512, 8)
            keys = sorted(k for k in cand if k != "devices")
            want |= set(zip(*(cand[k].tolist() for k in keys)))
    got = list(zip(*(ev.layouts[k].tolist() for k in keys)))
    assert list(ev.layouts) == keys
    assert got == sorted(want)


BEST_SHARED = {"cluster__mfu": None, "study__layout": "best", "training__global_batch": 512, "site__region": None,
               "grid__region": ["us", "fr", "in"], "training__tokens": None, "grid__tokens": [1e11, 1e12]}


@pytest.mark.parametrize("dtype", ["float32", "float64"])
def test_best_layout_searched_once_for_all_sites_lifespans_and_tokens_gives_the_same_bits(dtype):
    """The layout search runs on the axes it depends on only (layers, d_model, hardware here; not
    region, lifespan or tokens). Any chunking, and the per-point path, give the same bits, with
    chunks inside one layout search, of part of an axis, and of the whole grid."""
    s = spec(study__dtype=dtype, **BEST_SHARED)
    whole = run(s, write=False, chunk_size=1_000_000).dataset
    assert whole.reason.size == 720 and int((whole.reason == 0).sum()) > 0
    for size in (7, 30, 61):
        same_dataset(whole, run(s, write=False, chunk_size=size).dataset)
    ev = engine.Evaluator(load_study(s, hardware_db.load()), hardware_db.load())
    got = ev.evaluate(np.arange(whole.reason.size))
    for k in whole.data_vars:
        np.testing.assert_array_equal(got[k], whole[k].values.ravel(), err_msg=k)


def test_best_layout_is_the_same_for_every_site_lifespan_and_token_budget():
    """At a fixed design, device count and hardware, the fastest layout has the least CO2e, time
    and energy whatever the site, lifespan or tokens: one layout per (layers, d_model, hardware)."""
    res = run(spec(**BEST_SHARED), write=False)
    assert res.summary["n_layout_searches"] == 3 * 4 * 2  # layers × d_model × hardware, of 720 points
    ds = res.dataset
    for k in ("tp", "pp", "microbatch", "recompute", "interleave", "step_time_s"):
        v = ds[k].where(ds.reason == 0)
        spread = v.max(["region", "lifespan_years", "tokens"]) - v.min(["region", "lifespan_years", "tokens"])
        assert float(np.nanmax(np.abs(spread.values))) == 0, k


def test_best_layout_chunks_bound_the_layout_evaluations_not_points_times_layouts():
    """The default chunk bounds the layout evaluations (the chunk's values of the searched axes ×
    candidates), not points × candidates: a grid with site, lifespan and token axes runs in one
    chunk where points × candidates would need dozens."""
    db = hardware_db.load()
    s = spec(**{**BEST_SHARED, "grid__region": ["us", "cn", "in", "de", "fr", "gb", "jp", "kr", "ca", "au"],
                "grid__lifespan_years": {"start": 1, "stop": 10, "num": 10}, "grid__tokens": [1e11, 3e11, 1e12, 3e12]})
    ev = engine.Evaluator(load_study(s, db), db)
    n = math.prod(ev.shape)
    assert n == 9600 and engine.DEFAULT_BUDGET // ev.n_layouts < n / 20
    plan = Plan.make(ev.shape, ev.default_chunk_size())
    assert plan.n_chunks == 1
    tables, _ = ev.grid_tables()
    assert math.prod(engine.searched_shape(plan.block, ev.dims[plan.axis:], tables)) * ev.n_layouts <= \
        engine.DEFAULT_BUDGET


@pytest.mark.parametrize("size", [7, 96, 10_000])
def test_chunks_whose_infeasible_points_are_whole_cells_reduce_as_the_full_grid(size):
    """Whole designs (top_k > experts) and a whole device (MI300X: no published die area) are
    infeasible here: such chunks reduce their statistics and count their reasons at the rank of
    the axes that decide them, and the summary, fronts and top-k equal the full grid's."""
    grid = {"experts": [1, 4], "top_k": [1, 2], "layers": [12, 24], "d_model": [1024, 2048],
            "lifespan_years": [1, 3, 5], "hardware": ["a100-sxm4-80gb", "mi300x", "h100-sxm5-80gb"],
            "tokens": [1e11, 3e11]}
    full = run(spec(training__tokens=None) | {"grid": grid}, write=False, chunk_size=size)
    fast = run(spec(training__tokens=None, study__keep_full_grid=False) | {"grid": grid}, write=False, chunk_size=size)
    assert set(full.summary["infeasible"]) == {"top_k_exceeds_experts", "missing_data"}
    assert fast.summary["infeasible"] == full.summary["infeasible"]
    assert fast.summary["n_feasible"] == full.summary["n_feasible"]
    for k in ("loss", "total_tco2e", "train_days", "mfu"):
        assert fast.summary["min"][k] == full.summary["min"][k], k
        assert fast.summary["max"][k] == full.summary["max"][k], k
    same_tables(full.pareto, fast.pareto)
    np.testing.assert_array_equal(full.top["index"].values, fast.top["index"].values)


@functools.cache
def _prefilter_cells_jit(block, deciding):
    import jax

    reductions = (Statistics(), ParetoFront(("loss", "total_tco2e")), TopK("total_tco2e", 10))
    expand = functools.partial(engine.spread, block=block)
    return jax.jit(lambda o, m: engine.prefilter(o, m, reductions, expand=expand, cells=(deciding, block)))


@settings(max_examples=30, deadline=None)
@given(st.integers(0, 2**32 - 1), st.integers(1, 6), st.sampled_from(["cells", "points"]),
       st.sampled_from(["none", "infeasible cell", "feasible cell"]))
def test_prefilter_by_cells_gives_the_per_point_masks_and_statistics(seed, n_pad, reasons, nan):
    """Given which axes decide feasibility, the prefilter's masks, statistics and reason counts are
    those of the per-point computation: when the reasons are constant within cells (computed at the
    cells' rank), and when they are not or a feasible cell holds a NaN (the general branch)."""
    rng = np.random.default_rng(seed)
    block, deciding = (6, 3, 4, 5), (True, False, True, False)
    cell = rng.integers(0, 3, (6, 1, 4, 1)) * (rng.random((6, 1, 4, 1)) < 0.3)
    reason = np.broadcast_to(cell, block).copy()
    if reasons == "points":
        reason[tuple(rng.integers(0, n) for n in block)] = 2
    total = rng.integers(0, 50, block).astype(np.float64)
    if nan != "none":
        pick = np.argwhere(np.broadcast_to(cell, block) != 0 if nan == "infeasible cell" else reason == 0)
        if len(pick):
            total[tuple(pick[rng.integers(0, len(pick))])] = np.nan
    loss = rng.integers(0, 20, block).astype(np.float64)
    real = block[0] - min(n_pad, block[0] - 1)
    for a in (total, loss, reason):  # the grid pads a chunk by repeating the last index of its first axis
        a[real:] = a[real - 1]
    out = {"total_tco2e": total.ravel(), "loss": loss.ravel(), "reason": reason.ravel().astype(np.int32)}
    n_valid = np.int64(real * 60)
    by_cells = {k: np.asarray(v) for k, v in _prefilter_cells_jit(block, deciding)(out, n_valid).items()}
    per_point = {k: np.asarray(v) for k, v in _prefilter_jit()(out, n_valid).items()}
    for k in per_point:
        if k != "__stats__reasons":
            np.testing.assert_array_equal(by_cells[k], per_point[k], err_msg=k)
    host = [Statistics().host_reduce(HostChunk({k: v[:n_valid] for k, v in out.items()},
                                               {k[len("__stats__"):]: v for k, v in r.items()
                                                if k.startswith("__stats__")},
                                               0, [], (), False))["reasons"] for r in (by_cells, per_point)]
    np.testing.assert_array_equal(host[0], host[1])


@pytest.mark.parametrize("offset", [0, 2**40])
def test_a_tables_netcdf_holds_its_csv_with_units_and_any_index(tmp_path, offset):
    """Fronts and top-k are written as CSV and NetCDF: NetCDF3 classic while it holds them (fast to
    write), NetCDF4 for an index beyond 2^31 (a grid of billions of points); the values are the CSV's."""
    import pandas as pd

    from sweep.results import df_to_files

    df = pd.DataFrame({"index": np.arange(4, dtype=np.int64) + offset, "hardware": ["h100-sxm5-80gb"] * 4,
                       "total_tco2e": [1.5, 2.25, np.nan, 4.0]})
    df_to_files(df, tmp_path / "top")
    csv = pd.read_csv(tmp_path / "top.csv")
    with xr.open_dataset(tmp_path / "top.nc") as nc:
        np.testing.assert_array_equal(nc["index"].values, csv["index"].values)
        np.testing.assert_array_equal(nc["total_tco2e"].values, csv["total_tco2e"].values)
        assert list(nc["hardware"].values) == list(csv["hardware"])
        assert nc["total_tco2e"].attrs["units"] == "t CO2e"
