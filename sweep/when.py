"""When a run runs: hourly carbon-intensity profiles, the start time, a carbon-aware pause.

Profiles: the packaged typical years (hardware_db/carbon_profiles.nc, sources and licences in
carbon_profiles.toml) and a user's own, ``carbon_profiles/<region>.csv`` in a ``--db`` folder
(columns ``timestamp, carbon_intensity_kg_per_kwh``; hourly, one year's 8,760 hours, any year; UTC
unless the timestamp carries an offset; 29 February dropped). A packaged profile gives its region's
hourly *shape*, the region's annual figure its level (``level = "region"``); a user's profile gives
its own values (``level = "profile"``: the region's annual figure becomes the profile's mean).

A run's operational carbon integrates its (constant) power over the hours it runs
(``kernels.grid_carbon``): operational carbon at the effective intensity ``annual × ratio``, ratio =
the profile's mean over the run's hours / its annual mean. Serving (inference_tco2e) stays at the
annual figure: its hours are not scheduled here.

Start: an ISO date or datetime (``2023-06-01``, ``2023-06-01T14:00``, ``…+02:00``), the year
ignored (a typical year), or ``"best"``: the hour of the year with the least operational carbon,
searched over all 8,760 starts.
"""

from __future__ import annotations

import csv
import datetime as dt
import functools
import math
from pathlib import Path

import numpy as np

from hardware_db import HERE, DatabaseError

from .dates import HOURS, hour_label, hour_of_year
from .spec import SpecError

PROFILE_FILE = "carbon_profiles.nc"
USER_FOLDER = "carbon_profiles"
# what a start adds to a grid (units, description)
GRID_OUTPUTS = {
    "carbon_intensity_kg_per_kwh": ("kg CO2e/kWh", "effective grid carbon intensity over the hours the run runs"),
    "wall_clock_days": ("d", "wall-clock from start to end, paused hours included"),
    "pause_days": ("d", "wall-clock added by the carbon-aware pause"),
}
# the carbon outputs that scale with the operational carbon intensity (the rest are unchanged)
OPERATIONAL = ("operational_device_tco2e", "operational_host_tco2e", "operational_tco2e")


# -- start times --------------------------------------------------------------------------------
# -- profiles -----------------------------------------------------------------------------------
def _packaged() -> tuple[dict[str, np.ndarray], dict]:
    import xarray as xr

    with xr.open_dataset(HERE / PROFILE_FILE, engine="h5netcdf") as ds:
        ci = ds["carbon_intensity_kg_per_kwh"].values.astype(np.float64)
        zones = [str(z) for z in ds["zone"].values]
    return dict(zip(zones, ci)), {}


@functools.lru_cache(maxsize=8)
def _packaged_cached():
    return _packaged()


def read_user_profile(path: Path) -> np.ndarray:
    """A user's profile CSV → 8,760 hourly values (kg CO2e/kWh); DatabaseError naming file and line."""
    where = lambda n, msg: DatabaseError(f"{path}: line {n}: {msg}")  # noqa: E731
    try:
        with open(path, newline="", encoding="utf-8") as fh:
            rows = [(n, r) for n, r in enumerate(csv.reader(fh), start=1) if r and not r[0].lstrip().startswith("#")]
    except OSError as exc:
        raise DatabaseError(f"{path}: cannot be read ({exc.strerror})") from None
    if not rows or [c.strip() for c in rows[0][1]] != ["timestamp", "carbon_intensity_kg_per_kwh"]:
        raise DatabaseError(f"{path}: the header must be 'timestamp,carbon_intensity_kg_per_kwh'")
    out = np.full(HOURS, np.nan)
    for n, r in rows[1:]:
        if len(r) != 2:
            raise where(n, f"{len(r)} fields; a row is timestamp,carbon_intensity_kg_per_kwh")
        stamp, raw = r[0].strip(), r[1].strip()
        try:
            when = dt.datetime.fromisoformat(stamp)
        except ValueError:
            raise where(n, f"timestamp '{stamp}' is not an ISO date-time (e.g. 2023-06-01T14:00)") from None
        if when.month == 2 and when.day == 29:
            continue
        try:
            value = float(raw)
        except ValueError:
            raise where(n, f"'{raw}' is not a number (kg CO2e/kWh)") from None
        if not math.isfinite(value) or value < 0:
            raise where(n, f"{raw} is not allowed (a finite number >= 0, kg CO2e/kWh)")
        h = hour_of_year(when)
        if h != int(h):
            raise where(n, f"timestamp '{stamp}' is not on the hour (an hourly profile)")
        if not math.isnan(out[int(h)]):
            raise where(n, f"timestamp '{stamp}': that hour of the year is given twice")
        out[int(h)] = value
    gaps = np.flatnonzero(np.isnan(out))
    if len(gaps):
        raise DatabaseError(f"{path}: {len(gaps)} of the year's 8,760 hours are missing (first: {hour_label(gaps[0])} "
                            "UTC); give one value per hour of a year")
    return out


@functools.lru_cache(maxsize=8)
def _user_profiles(folders: tuple) -> dict[str, np.ndarray]:
    out = {}
    for folder in folders:
        d = Path(folder) / USER_FOLDER
        if d.is_dir():
            for path in sorted(d.glob("*.csv")):
                out[path.stem] = read_user_profile(path)
    return out


def profile(db, region: str | None) -> tuple[np.ndarray | None, str]:
    """(hourly values, level) of a region: level "region" (shape; the region's annual figure is the
    level) or "profile" (its own values); (None, "") for a region with no hourly profile."""
    if not region:
        return None, ""
    users = _user_profiles(tuple(str(f) for f in db.folders[1:]))
    if region in users:
        return users[region], "profile"
    entry = db.docs.get("carbon_profiles.toml", {}).get("region", {}).get(region)
    if not entry:
        return None, ""
    zones, _ = _packaged_cached()
    if entry["zone"] not in zones:
        raise DatabaseError(f"carbon_profiles.toml: [region.{region}] zone '{entry['zone']}' is not in {PROFILE_FILE}")
    return zones[entry["zone"]], entry.get("level", "region")


def regions_with_profiles(db) -> list[str]:
    users = _user_profiles(tuple(str(f) for f in db.folders[1:]))
    packaged = db.docs.get("carbon_profiles.toml", {}).get("region", {})
    return sorted(set(packaged) | set(users))


def shape_of(db, region) -> np.ndarray:
    """The region's hourly profile over its annual mean (ones where it has none)."""
    values, _ = profile(db, region)
    if values is None:
        return np.ones(HOURS)
    mean = values.mean()
    return values / mean if mean > 0 else np.ones(HOURS)


def annual_level(db, region) -> float | None:
    """The annual figure a user's profile sets for its region (its mean); None otherwise. A packaged
    profile of level "region" (a shape only) sets none, so the packaged file is not read for it
    (opening it costs ~2 s of imports and reading on a cold start, for every sweep with a region)."""
    if not region:
        return None
    users = _user_profiles(tuple(str(f) for f in db.folders[1:]))
    entry = db.docs.get("carbon_profiles.toml", {}).get("region", {}).get(region)
    if region not in users and (not entry or entry.get("level", "region") != "profile"):
        return None
    values, level = profile(db, region)
    return float(values.mean()) if values is not None and level == "profile" else None


# -- the kernel on profile tables ---------------------------------------------------------------
def tables(shapes: np.ndarray, pause_fraction, dtype=np.float64):
    """(shape, C, N) for profiles (P, Y) at a pause fraction per profile (kernels.grid_carbon)."""
    import jax.numpy as jnp

    from kernels import grid_carbon

    ci = jnp.asarray(shapes, dtype)
    runs = grid_carbon.running_hours(ci, jnp.broadcast_to(jnp.asarray(pause_fraction, dtype), ci.shape[:-1]))
    c, n = grid_carbon.cumulative_tables(ci, runs)
    return ci, c, n


def ratio_and_wall(shapes, pause_fraction, profile_ix, start_h, run_hours, dtype=np.float64):
    """(ratio of the run's mean intensity to the annual, wall-clock hours) for runs on profiles."""
    from kernels import grid_carbon

    ci, c, n = tables(shapes, pause_fraction, dtype)
    integral, wall = grid_carbon.run_integral(ci, c, n, profile_ix, start_h, run_hours)
    return np.asarray(grid_carbon.effective_intensity(integral, run_hours)), np.asarray(wall)


def best_starts(shapes, pause_fraction, profile_ix, run_hours, dtype=np.float64):
    """(best start hour, ratio, wall-clock hours) over the year's 8,760 hourly starts, per run."""
    import jax.numpy as jnp

    from kernels import grid_carbon

    ci, c, n = tables(shapes, pause_fraction, dtype)
    run_hours = jnp.asarray(run_hours, dtype)
    h, integral, wall = grid_carbon.best_start(ci, c, n, profile_ix, run_hours, jnp.arange(HOURS, dtype=dtype))
    return np.asarray(h), np.asarray(integral / run_hours), np.asarray(wall)


def scale_carbon(out: dict, ratio, scale=lambda a, r: a * r) -> dict:
    """The carbon outputs of ``out`` with the operational carbon at ``ratio`` × its annual figure:
    operational, total, embodied share, earlier experiments, life cycle, break-even (works on
    numbers, arrays and xarray variables)."""
    new = {k: scale(out[k], ratio) for k in OPERATIONAL if k in out and out[k] is not None}
    if "total_tco2e" in out and out["total_tco2e"] is not None and "operational_tco2e" in new:
        total = out["total_tco2e"] - out["operational_tco2e"] + new["operational_tco2e"]
        new["total_tco2e"] = total
        if "embodied_tco2e" in out:
            new["embodied_share"] = out["embodied_tco2e"] / total
        if "experimentation_tco2e" in out and out["experimentation_tco2e"] is not None:
            factor = out["experimentation_tco2e"] / out["total_tco2e"]
            new["experimentation_tco2e"] = factor * total
        if "lifecycle_tco2e" in out and out["lifecycle_tco2e"] is not None:
            new["lifecycle_tco2e"] = out["lifecycle_tco2e"] - out["total_tco2e"] - out.get("experimentation_tco2e", 0) \
                + total + new.get("experimentation_tco2e", 0)
        if "breakeven_served_tokens" in out and out["breakeven_served_tokens"] is not None:
            new["breakeven_served_tokens"] = out["breakeven_served_tokens"] * total / out["total_tco2e"]
    return new


# -- estimate -----------------------------------------------------------------------------------
def apply_estimate(v: dict, out: dict, db) -> dict:
    """What the start and pause change in an estimate's outputs (an empty dict when neither is given).

    ``carbon_intensity_kg_per_kwh`` becomes the run's effective figure; the annual one is kept as
    ``annual_carbon_intensity_kg_per_kwh``; ``wall_clock_days`` includes the paused hours."""
    start, pause = v.get("start"), v.get("pause_fraction") or 0.0
    if start is None and not pause:
        return {}
    days = out.get("train_days")
    annual = out.get("carbon_intensity_kg_per_kwh")
    if days is None or not math.isfinite(days):
        return {"start": start}
    hours = days * 24.0
    shape = shape_of(db, v.get("region"))[None, :]
    if start == "best":
        h, ratio, wall = best_starts(shape, pause, 0, hours)
    else:
        h = hour_of_year(start)
        ratio, wall = ratio_and_wall(shape, pause, 0, h, hours)
    h, ratio, wall = (float(np.asarray(a).ravel()[0]) for a in (h, ratio, wall))
    wall = hours if not pause else max(wall, hours)  # (no pause: the wall-clock is the run's, exactly)
    new = scale_carbon(out, ratio)
    new.update({
        "start": hour_label(h), "start_hour": h, "pause_fraction": pause,
        "hourly_profile": profile(db, v.get("region"))[0] is not None,
        "annual_carbon_intensity_kg_per_kwh": annual,
        "carbon_intensity_kg_per_kwh": annual * ratio if annual is not None else None,
        "wall_clock_days": wall / 24.0, "pause_days": wall / 24.0 - days,
    })
    return new


# -- grids: [grid] start = [...] or "best" -----------------------------------------------------
def grid_starts(file, raw):
    """``[grid] start``: a list of dates → (hours, labels as given); "best" → "best"; SpecError else."""
    if isinstance(raw, str) and raw.strip() == "best":
        return "best"
    if not isinstance(raw, list) or not raw:
        raise SpecError(file, "grid", "start", f"must be a non-empty list of ISO dates or datetimes, or \"best\", "
                        f"not {raw!r}")
    hours, labels = [], []
    for value in raw:
        try:
            hours.append(hour_of_year(value))
        except ValueError as exc:
            raise SpecError(file, "grid", "start",
                            f"{exc} (allowed: a list of ISO dates or datetimes, or \"best\")") from None
        labels.append(value if isinstance(value, str) else value.isoformat())
    if len(set(hours)) != len(hours):
        raise SpecError(file, "grid", "start", "has repeated values (the same hour of the typical year)")
    return np.asarray(hours), labels


def _site_axes(ds, study, db, annual_of):
    """The grid's region and pause axes: (profile shapes (P, Y), pause per profile, profile index
    (an xarray variable over the grid's region/pause dims), annual intensity (likewise))."""
    import xarray as xr

    base = study.base
    regions = list(ds["region"].values) if "region" in ds.dims else [base.get("region")]
    pauses = list(ds["pause_fraction"].values) if "pause_fraction" in ds.dims else [base.get("pause_fraction") or 0.0]
    shapes = np.stack([shape_of(db, r) for r in regions for _ in pauses])
    pause = np.array([p for _ in regions for p in pauses], float)
    ix = np.arange(len(regions))[:, None] * len(pauses) + np.arange(len(pauses))[None, :]
    dims = [d for d in ("region", "pause_fraction") if d in ds.dims]
    ix = ix[:, :] if dims == ["region", "pause_fraction"] else ix.ravel() if dims else ix[0, 0]
    ix = xr.DataArray(ix, dims=dims) if dims else xr.DataArray(ix)
    if "carbon_intensity" in ds.dims:
        annual = ds["carbon_intensity"]
    else:
        ci = [annual_of(r) for r in regions]
        annual = xr.DataArray(ci, dims=["region"]) if "region" in ds.dims else xr.DataArray(ci[0])
    return shapes, pause, ix, annual


def expand_grid(result, study, db, annual_of):
    """A run's result with the start time applied: a ``start`` dimension (a list of starts) or, for
    "best", each design at its best start (``start_hour``). The carbon outputs are rescaled
    (``scale_carbon``), the effective ``carbon_intensity_kg_per_kwh``, ``wall_clock_days`` and
    ``pause_days`` added; Pareto fronts and top-k are taken again over the expanded grid.
    ``annual_of(region)``: the region's annual intensity as the chain's inputs have it (sweep.inputs
    site_row; passed in, as sweep.inputs reads this module's profiles)."""
    import xarray as xr

    if result.dataset is None:
        raise SpecError(study.file, "grid", "start", "needs the full grid ([study] keep_full_grid = true)")
    ds = result.dataset.load()
    dtype = np.float32 if study.options["dtype"] == "float32" else np.float64
    shapes, pause, ix, annual = _site_axes(ds, study, db, annual_of)
    hours = ds["train_days"] * 24.0
    hours, ix_b = xr.broadcast(hours, ix)
    flat_h, flat_ix = hours.values.ravel(), ix_b.values.ravel().astype(np.int64)
    ci, c, n = tables(shapes, pause, dtype)
    from kernels import grid_carbon

    if isinstance(study.start, str):  # "best"
        h, integral, wall = grid_carbon.best_start(ci, c, n, flat_ix, flat_h.astype(dtype),
                                                   np.arange(HOURS, dtype=dtype))
        ratio = np.asarray(integral) / flat_h
        shape, dims, extra = hours.shape, hours.dims, {}
        start_hour = xr.DataArray(np.asarray(h, np.float64).reshape(shape), dims=dims,
                                  attrs={"units": "h", "long_name": "best start, hour of the typical year (UTC)"})
    else:
        starts, labels = study.start
        integral, wall = grid_carbon.run_integral(ci, c, n, flat_ix[:, None], starts[None, :].astype(dtype),
                                                  flat_h[:, None].astype(dtype))
        ratio = np.asarray(integral) / flat_h[:, None]
        shape, dims = hours.shape + (len(starts),), hours.dims + ("start",)
        extra = {"start": ("start", labels, {"units": "1", "long_name": "start (year ignored: a typical year, UTC)"}),
                 "start_hour": ("start", starts, {"units": "h", "long_name": "start, hour of the typical year (UTC)"})}
        start_hour = None
    ratio = xr.DataArray(np.asarray(ratio, np.float64).reshape(shape), dims=dims, coords=extra or None)
    wall = xr.DataArray(np.asarray(wall, np.float64).reshape(shape), dims=dims, coords=extra or None)
    paused = xr.DataArray(pause[ix_b.values.astype(np.int64)], dims=hours.dims) > 0
    wall = xr.where(paused, np.maximum(wall, hours), hours)
    new = scale_carbon({k: ds[k] for k in ds.data_vars}, ratio)
    out = ds.assign(**new)
    out = out.assign(carbon_intensity_kg_per_kwh=annual * ratio, wall_clock_days=wall / 24.0,
                     pause_days=(wall - hours) / 24.0)
    if start_hour is not None:
        out = out.assign(start_hour=start_hour)
    for k, (unit, text) in GRID_OUTPUTS.items():
        if k in out:
            out[k].attrs.update({"units": unit, "long_name": text})
    order = [d for d in ds.dims] + (["start"] if "start" in out.dims else [])
    out = out.transpose(*order)
    result.dataset = out
    _reduce_again(result, study, out)
    result.summary["dims"] = {**result.summary.get("dims", {}), **({"start": list(study.start[1])}
                                                                  if not isinstance(study.start, str) else {})}
    result.summary["start"] = "best" if isinstance(study.start, str) else list(study.start[1])
    return result


def _reduce_again(result, study, ds) -> None:
    """Pareto fronts and top-k over the expanded grid (sweep.reductions' functions)."""
    import pandas as pd

    from . import reductions as red
    from .results import front_name

    df = ds.to_dataframe().reset_index()
    df.insert(len(ds.dims), "index", np.arange(len(df), dtype=np.int64))
    ok = df[df["reason"] == 0] if "reason" in df else df
    cols = {k: ok[k].to_numpy() for k in ok.columns if ok[k].dtype.kind in "fiub"}
    for objectives in study.options["pareto"]:
        names = [red.parse_objective(o)[0] for o in objectives]
        good = np.all([np.isfinite(cols[k]) for k in names], axis=0)
        mask = np.zeros(len(ok), bool)
        mask[np.flatnonzero(good)[red.pareto_mask(red.objective_matrix({k: cols[k][good] for k in names},
                                                                         objectives))]] = True
        result.pareto[front_name(objectives)] = ok[mask].sort_values(names[0]).reset_index(drop=True)
    top = study.options["top"]
    if top:
        name, sign = red.parse_objective(top["by"])
        key = sign * ok[name].to_numpy(np.float64)
        result.top = ok.iloc[np.lexsort((ok["index"].to_numpy(), key))[:top["n"]]].reset_index(drop=True)
    result.summary["n_points"] = int(len(df))
    if "reason" in df:
        result.summary["n_feasible"] = int((df["reason"] == 0).sum())
    _ = pd  # (pandas: the tables' type)
