"""Result folders: the one reader and writer of what `carbon-sweep run` leaves on disk.

A finished folder holds ``study.json`` (written last: its presence marks a finished run), the grid
(``grid.nc`` up to SMALL_GRID points, ``grid.zarr`` beyond, or none), one ``pareto_<objectives>``
table per front and ``top`` (each as CSV and NetCDF); ``.chunks/`` holds the partial result of each
chunk while a run is under way (what ``--resume`` reads). ``SweepResult`` has one shape whether it
comes from ``run()`` in memory or from a folder: ``summary`` is the study.json document.
"""

from __future__ import annotations

import dataclasses
import functools
import importlib.metadata
import json
import math
import os
import re
import shutil
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from kernels.reasons import REASONS

from .names import attrs_of, output_units
from .spec import KEYS, SpecError

PARTIAL_DIR = ".chunks"
OWNED = ("grid.nc", "grid.zarr", "top.csv", "top.nc", "study.json", PARTIAL_DIR, "figures", "report.md",
         "report.html")


@dataclass
class SweepResult:
    out_dir: Path | None
    dataset: object | None               # xarray.Dataset of the full grid (None if not kept)
    pareto: dict = field(default_factory=dict)   # name → pandas.DataFrame
    top: object | None = None             # pandas.DataFrame
    summary: dict = field(default_factory=dict)  # the study.json document (counts, spec, dims, outputs, ...)
    tables: dict = field(default_factory=dict)   # name → DataFrame: what registered reductions publish


def per_point(res: SweepResult) -> SweepResult:
    """``res`` without the kept samples (``[uncertainty] keep_samples``: the variables on the
    ``sample`` dimension): what figures and the report read, one value per point."""
    ds = res.dataset
    if ds is None or "sample" not in ds.dims:
        return res
    return dataclasses.replace(res, dataset=ds.drop_dims("sample"))


def front_name(objectives) -> str:
    """The table name of a Pareto front: ``pareto_`` and its objectives (``max:`` written ``max_``)."""
    return "pareto_" + "__".join(o.replace(":", "_") for o in objectives)


def front_objectives(res: SweepResult) -> dict[str, list[str]]:
    """Each front table's objectives, as the spec gives them (or read back from its name)."""
    spec_p = ((res.summary.get("spec") or {}).get("study") or {}).get("pareto") or []
    out = {front_name(o): list(o) for o in spec_p}
    for name in res.pareto:
        if name not in out:
            out[name] = name[len("pareto_"):].split("__")
    return out


def versions() -> dict:
    """Versions of the packages a result depends on (None when not installed)."""
    return dict(_installed_versions())


@functools.cache
def _installed_versions() -> tuple:
    """(package, version) pairs, looked up once a process (each lookup reads package metadata)."""
    out = {}
    for pkg in ("carbon-sweep", "jax", "numpy", "xarray", "optuna"):
        try:
            out[pkg] = importlib.metadata.version(pkg)
        except importlib.metadata.PackageNotFoundError:
            out[pkg] = None
    return tuple(out.items())


def to_python(out: dict) -> dict:
    """Arrays → floats/ints; NaN → None (JSON null)."""
    res = {}
    for k, val in out.items():
        a = np.asarray(val)
        f = float(a)
        if k in ("reason",) or (k in ("gpus_consumed",) and math.isfinite(f)):
            res[k] = int(f)
        else:
            res[k] = f if math.isfinite(f) else None
    return res


def finite_or_none(v):
    v = float(v)
    return v if math.isfinite(v) else None


# ---------------------------------------------------------------------------------------------
# variables and coordinates


def var_attrs(name) -> dict:
    """NetCDF attributes of an output variable: units, long name (and the reason codes' meanings)."""
    attrs = attrs_of(name)
    if name == "reason":
        attrs["flag_values"] = list(REASONS)
        attrs["flag_meanings"] = " ".join(REASONS.values())
    return attrs


def coords(study) -> dict:
    """The grid's coordinates with units and descriptions from the spec's KEYS."""
    out = {}
    for d, vals in study.dims.items():
        unit = KEYS[d].unit if d in KEYS else "1"
        out[d] = (d, vals, {"units": unit, "long_name": KEYS[d].help if d in KEYS else d})
    return out


# ---------------------------------------------------------------------------------------------
# the folder while a run is under way


def check_out_dir(out_dir: Path, file) -> None:
    """An output folder that is a file is a spec error, before anything is written."""
    if out_dir.exists() and not out_dir.is_dir():
        raise SpecError(file, None, None, f"--out {out_dir}: is a file, not a folder; name a folder for "
                        "the results")


def clean(out_dir: Path) -> None:
    """Remove what an earlier run wrote into the folder (only the files a run owns)."""
    for name in os.listdir(out_dir) if out_dir.exists() else []:
        if name in OWNED or name.startswith("pareto_"):
            p = out_dir / name
            shutil.rmtree(p) if p.is_dir() else p.unlink()


def atomic_savez(path: Path, arrays: dict) -> None:
    """Write to ``<name>.part`` then rename: a reader sees the whole file or none of it."""
    tmp = path.with_name(path.name + ".part")
    with open(tmp, "wb") as fh:
        np.savez(fh, **arrays)
    os.replace(tmp, path)


def partial_path(out_dir, i: int) -> Path:
    return Path(out_dir) / PARTIAL_DIR / f"chunk_{i:08d}.npz"


def write_partial(out_dir, i: int, arrays: dict) -> None:
    """Chunk i's partial result, atomically: a chunk counts as done only once its file is in place."""
    atomic_savez(partial_path(out_dir, i), arrays)


def read_partial(out_dir, i: int) -> dict[str, np.ndarray]:
    with np.load(partial_path(out_dir, i)) as z:
        return {k: z[k] for k in z.files}


def finished_chunks(part_dir: Path) -> set[int]:
    """Chunks whose partial file is complete (renamed into place); torn writes do not count."""
    done = set()
    for p in part_dir.iterdir() if part_dir.exists() else []:
        m = re.fullmatch(r"chunk_(\d{8})\.npz", p.name)
        if m:
            done.add(int(m.group(1)))
    return done


def read_plan(plan_file: Path) -> dict | None:
    return json.loads(plan_file.read_text()) if plan_file.exists() else None


def write_plan(plan_file: Path, doc: dict) -> None:
    plan_file.write_text(json.dumps(doc))


def finished_spec_hash(out_dir: Path) -> str | None:
    """The spec hash of a finished run in the folder (None without one)."""
    if (out_dir / "study.json").exists():
        return json.loads((out_dir / "study.json").read_text()).get("spec_hash")
    return None


def zarr_template(dims, shape, chunks, sample: dict, outputs, study, path: str) -> None:
    """An empty Zarr store for the full grid (one block per chunk), filled block by block."""
    import dask.array as da
    import xarray as xr

    data = {}
    for k in outputs:
        dt = sample[k].dtype
        fill = 0 if dt.kind in "iub" else np.nan
        data[k] = (dims, da.full(shape, fill, dtype=dt, chunks=chunks), var_attrs(k))
    ds = xr.Dataset(data, coords=coords(study))
    ds.to_zarr(path, mode="w", compute=False, zarr_format=2)


def write_zarr_block(dims, region, outputs, path: str, out: dict) -> None:
    """One chunk's outputs into its block of the Zarr store (``region``: slices of the grid's axes)."""
    import xarray as xr

    shape = tuple(s.stop - s.start for s in region)
    ds = xr.Dataset({k: (dims, out[k].reshape(shape)) for k in outputs})
    ds.to_zarr(path, region={d: s for d, s in zip(dims, region)})


# ---------------------------------------------------------------------------------------------
# a finished result


def study_doc(study, summary: dict, *, layout: str, outputs) -> dict:
    """The study.json document of a grid run (without ``files``, added when written)."""
    units = output_units()
    return {
        "name": study.name,
        "spec": study.doc,
        "spec_file": study.file,
        "spec_hash": study.spec_hash(),
        "versions": versions(),
        "dims": {d: _plain(vals) for d, vals in study.dims.items()},
        "outputs": {k: {"units": units.get(k, ("1", ""))[0], "description": units.get(k, ("", k))[1]}
                    for k in outputs},
        "layout": layout,
        "law": study.law,
        **summary,
    }


def _plain(values) -> list:
    """A dimension's coordinates as Python values (``tolist``: one C loop, not a call per value)."""
    if isinstance(values, np.ndarray):
        return values.tolist()
    return [v.item() if hasattr(v, "item") else v for v in values]


def df_to_files(df, path_stem: Path) -> None:
    """A table as CSV and NetCDF (outputs with their units as attributes; NetCDF3 classic, or
    NetCDF4 when a column needs it, e.g. an index beyond 2^31)."""
    import xarray as xr

    df.to_csv(path_stem.with_suffix(".csv"), index=False)
    ds = xr.Dataset.from_dataframe(df.reset_index(drop=True).rename_axis("point"))
    for k in ds.data_vars:
        if k in output_units():
            ds[k].attrs.update(var_attrs(k))
    tmp = path_stem.with_name(path_stem.name + ".tmp.nc")
    try:  # NetCDF3 (classic): a table's ~50 variables in ~10 ms, where HDF5 takes ~0.2 s
        ds.to_netcdf(tmp, engine="scipy")
    except (ValueError, TypeError, OverflowError):  # what NetCDF3 cannot hold (an index beyond int32)
        ds.to_netcdf(tmp, engine="h5netcdf")
    os.replace(tmp, path_stem.with_suffix(".nc"))


def local_writes():
    """A context in which xarray writes this process's files with a thread lock. With a dask
    distributed Client as the default scheduler, xarray takes the cluster's distributed lock for
    every variable a NetCDF write touches (a round trip to the scheduler each): writing a sweep's
    fronts and top-k after a run on a 2-worker LocalCluster took 0.7 s of 0.8 s in those locks.
    The files written here are the client's alone."""
    import contextlib

    try:
        import dask
    except ImportError:
        return contextlib.nullcontext()
    return dask.config.set(scheduler="synchronous")


def write_result(result: SweepResult, out_dir: Path) -> None:
    """The grid (NetCDF unless a Zarr store was filled), fronts, top-k, then study.json last."""
    with local_writes():
        _write_result(result, out_dir)


def _write_result(result: SweepResult, out_dir: Path) -> None:
    if result.dataset is not None and not (out_dir / "grid.zarr").exists():
        tmp = out_dir / "grid.tmp.nc"
        result.dataset.to_netcdf(tmp, engine="h5netcdf")
        os.replace(tmp, out_dir / "grid.nc")
    for name, df in result.pareto.items():
        df_to_files(df, out_dir / name)
    if result.top is not None:
        df_to_files(result.top, out_dir / "top")
    for name, df in result.tables.items():
        df_to_files(df, out_dir / name)
    doc = dict(result.summary)
    doc["files"] = sorted(p.name for p in out_dir.iterdir() if not p.name.startswith("."))
    tmp = out_dir / "study.json.tmp"
    tmp.write_text(json.dumps(doc, indent=2, default=str))
    os.replace(tmp, out_dir / "study.json")  # written last: its presence marks a finished run
    result.summary = doc


def write_validation(result: SweepResult, rows: list[dict], out_dir: Path) -> None:
    """A validation study's folder: the rows as CSV, JSON and NetCDF, then study.json."""
    clean(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    result.top.to_csv(out_dir / "validation.csv", index=False)
    (out_dir / "validation.json").write_text(json.dumps(rows, indent=2))
    result.dataset.to_netcdf(out_dir / "validation.nc", engine="h5netcdf")
    (out_dir / "study.json").write_text(json.dumps(result.summary, indent=2, default=str))


def load_result(out_dir) -> SweepResult:
    """Open a finished run's folder."""
    import pandas as pd
    import xarray as xr

    out_dir = Path(out_dir)
    doc = json.loads((out_dir / "study.json").read_text())
    ds = None
    if (out_dir / "grid.nc").exists():
        ds = xr.open_dataset(out_dir / "grid.nc", engine="h5netcdf")
    elif (out_dir / "grid.zarr").exists():
        ds = xr.open_zarr(out_dir / "grid.zarr")
    pareto = {p.stem: pd.read_csv(p) for p in sorted(out_dir.glob("pareto_*.csv"))}
    top = pd.read_csv(out_dir / "top.csv") if (out_dir / "top.csv").exists() else None
    return SweepResult(out_dir, ds, pareto, top, doc)


def open_result(out_dir) -> SweepResult:
    """``load_result`` for a folder a user names: what is not a run's finished folder is a SpecError
    that says what it is instead."""
    out_dir = Path(out_dir)
    if not (out_dir / "study.json").is_file():
        if (out_dir / "search.json").is_file():
            raise SpecError(out_dir, None, None, "is an optimize result: carbon-sweep optimize draws its figures "
                            "(figures/ in it) and optuna-dashboard opens its storage; plot takes a run's folder")
        raise SpecError(out_dir, None, None, "is not a carbon-sweep result folder (no study.json)")
    try:
        return load_result(out_dir)
    except (OSError, ValueError, json.JSONDecodeError) as exc:
        raise SpecError(out_dir, None, None, f"cannot be read as a carbon-sweep result ({exc})") from None
