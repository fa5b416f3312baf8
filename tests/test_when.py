"""Hourly carbon intensity, start time and the carbon-aware pause (sweep.when, kernels.grid_carbon)."""

import datetime as dt
import math
import tomllib
from pathlib import Path

import numpy as np
import pytest
import xarray as xr
from hypothesis import given
from hypothesis import strategies as st

import hardware_db
from hardware_db import DatabaseError
from kernels import grid_carbon
from sweep import when
from sweep.estimate import evaluate
from sweep.spec import SpecError, load_estimate

DB = Path(hardware_db.__file__).parent
H100_BF16 = 989.5e12  # accelerators.csv h100-sxm5-80gb: datasheet 1,979 sparse / 2


def run_30_days(**site):
    """8 H100s at MFU 0.5 for exactly 30 days: FLOPs = 30 d · 86,400 s · 8 · 989.5e12 · 0.5."""
    return {"params": 7e9, "tokens": 1e11, "flops": 30 * 86400 * 8 * H100_BF16 * 0.5,
            "hardware": "h100-sxm5-80gb", "devices": 8, "mfu": 0.5, **site}


def de_profile():
    with xr.open_dataset(DB / "carbon_profiles.nc", engine="h5netcdf") as ds:
        return ds["carbon_intensity_kg_per_kwh"].sel(zone="DE").values.astype(np.float64)


def test_30_day_run_differs_from_the_annual_figure_by_the_profiles_weighted_mean():
    # Hand calculation. Start 1 March 00:00 UTC = hour (31 + 28) · 24 = 1,416 of the year; 30 days =
    # 720 hours, so the run draws its constant power in hours 1,416 … 2,135. The profile gives the
    # shape, the region's annual figure (regions.csv de, 0.38095) the level: the run's intensity is
    # 0.38095 · mean(profile[1416:2136]) / mean(profile), and the operational carbon scales by that
    # ratio; the embodied carbon does not change.
    ci = de_profile()
    ratio = ci[1416:2136].mean() / ci.mean()
    annual = evaluate(run_30_days(region="de"))
    hourly = evaluate(run_30_days(region="de", start="2023-03-01"))
    assert annual["train_days"] == pytest.approx(30.0, rel=1e-12)
    assert hourly["annual_carbon_intensity_kg_per_kwh"] == pytest.approx(0.38095)
    assert hourly["carbon_intensity_kg_per_kwh"] == pytest.approx(0.38095 * ratio, rel=1e-9)
    assert hourly["operational_tco2e"] == pytest.approx(annual["operational_tco2e"] * ratio, rel=1e-9)
    assert hourly["embodied_tco2e"] == pytest.approx(annual["embodied_tco2e"], rel=1e-12)
    assert hourly["total_tco2e"] == pytest.approx(annual["embodied_tco2e"] + annual["operational_tco2e"] * ratio,
                                                  rel=1e-9)
    assert hourly["wall_clock_days"] == pytest.approx(30.0) and hourly["pause_days"] == 0


def test_a_whole_years_run_has_the_annual_figure():
    # 365 days from any start covers every hour once: mean(profile over the year) / mean = 1
    v = run_30_days(region="de", start="2023-07-15T06:00")
    v["flops"] *= 365 / 30
    assert evaluate(v)["carbon_intensity_kg_per_kwh"] == pytest.approx(0.38095, rel=1e-9)


def test_best_start_is_the_least_of_every_hourly_start():
    # float64 NumPy: every start s of the 720-hour run, mean of ci[s:s+720] (the year wrapping)
    ci = de_profile()
    wrapped = np.concatenate([ci, ci])
    means = np.array([wrapped[s:s + 720].mean() for s in range(8760)])
    best = evaluate(run_30_days(region="de", start="best"))
    assert best["start_hour"] == int(np.argmin(means))
    assert best["carbon_intensity_kg_per_kwh"] == pytest.approx(0.38095 * means.min() / ci.mean(), rel=1e-9)


def test_pause_runs_only_in_the_cleanest_hours_and_states_the_days_it_costs():
    # pause in the dirtiest 25 % of hours: the run works in the 6,570 cleanest; 720 working hours
    # from hour 0 end where the 720th clean hour is, the wall-clock is that hour + 1
    ci = de_profile()
    clean = np.argsort(np.argsort(ci, kind="stable"), kind="stable") < 6570
    hours = np.flatnonzero(clean)[:720]
    out = evaluate(run_30_days(region="de", start="2023-01-01", pause_fraction=0.25))
    assert out["wall_clock_days"] == pytest.approx((hours[-1] + 1) / 24)
    assert out["pause_days"] == pytest.approx((hours[-1] + 1) / 24 - 30)
    assert out["carbon_intensity_kg_per_kwh"] == pytest.approx(0.38095 * ci[hours].mean() / ci.mean(), rel=1e-9)


@given(st.integers(0, 8759), st.floats(0.5, 30000), st.sampled_from([0.0, 0.1, 0.5]))
def test_kernel_integral_matches_an_hour_by_hour_loop(start, run_hours, pause):
    rng = np.random.default_rng(start)
    ci = rng.uniform(0.05, 0.8, 8760)
    runs = np.asarray(grid_carbon.running_hours(ci, pause))
    c, n = grid_carbon.cumulative_tables(ci, runs)
    integral, wall = grid_carbon.run_integral(ci, c, n, 0, start, run_hours)
    per_year = int(runs.sum())
    whole_years, rest = divmod(run_hours, per_year)
    if rest == 0:  # whole years only (the loop below needs a last, partial hour)
        assert float(integral) == pytest.approx(whole_years * (ci * runs).sum(), rel=1e-9)
        return
    order = np.flatnonzero(np.tile(runs, 2)[start:])[: int(math.ceil(rest))] + start
    weights = np.ones(len(order))
    weights[-1] = rest - (len(order) - 1)
    expect = whole_years * (ci * runs).sum() + (np.tile(ci, 2)[order] * weights).sum()
    assert float(integral) == pytest.approx(expect, rel=1e-9)
    assert float(wall) == pytest.approx(whole_years * 8760 + order[-1] + weights[-1] - start, rel=1e-9)


def test_float32_kernel_agrees_with_float64():
    ci = de_profile()
    runs = grid_carbon.running_hours(ci, 0.2)
    c64, n64 = grid_carbon.cumulative_tables(ci, runs)
    ci32 = ci.astype(np.float32)
    c32, n32 = grid_carbon.cumulative_tables(ci32, grid_carbon.running_hours(ci32, np.float32(0.2)))
    a = grid_carbon.run_integral(ci, c64, n64, 0, np.arange(0, 8760, 97.0), 1000.0)
    b = grid_carbon.run_integral(ci32, c32, n32, 0, np.arange(0, 8760, 97.0, dtype=np.float32), np.float32(1000.0))
    np.testing.assert_allclose(np.asarray(b[0]), np.asarray(a[0]), rtol=2e-5)
    np.testing.assert_allclose(np.asarray(b[1]), np.asarray(a[1]), rtol=1e-6)


def user_db(tmp_path, rows, region="de"):
    d = tmp_path / "db" / "carbon_profiles"
    d.mkdir(parents=True)
    (d / f"{region}.csv").write_text("timestamp,carbon_intensity_kg_per_kwh\n" + "\n".join(rows) + "\n")
    return hardware_db.load(tmp_path / "db")


def hourly_rows(value_of_hour):
    t0 = dt.datetime(2023, 1, 1)
    return [f"{(t0 + dt.timedelta(hours=h)).isoformat()},{value_of_hour(h)}" for h in range(8760)]


def test_users_profile_via_db_sets_its_own_values(tmp_path):
    # 0.1 kg/kWh at night (00-11 UTC), 0.5 by day: mean 0.3 becomes the annual figure; a run of
    # 12 hours from 00:00 has 0.1, from 12:00 has 0.5
    db = user_db(tmp_path, hourly_rows(lambda h: 0.1 if h % 24 < 12 else 0.5))
    v = run_30_days(region="de", start="2023-05-01")
    v["flops"] /= 60  # 12 hours
    night = evaluate(v, db)
    day = evaluate({**v, "start": "2023-05-01T12:00"}, db)
    assert night["annual_carbon_intensity_kg_per_kwh"] == pytest.approx(0.3)
    assert night["carbon_intensity_kg_per_kwh"] == pytest.approx(0.1)
    assert day["carbon_intensity_kg_per_kwh"] == pytest.approx(0.5)


@pytest.mark.parametrize("bad, message", [
    ("2023-01-01T05:00,abc", "line 7: 'abc' is not a number"),
    ("yesterday,0.3", "line 7: timestamp 'yesterday'"),
    ("2023-01-01T05:00,-1", "line 7: -1 is not allowed"),
    ("2023-01-01T05:00,0.3,9", "line 7: 3 fields"),
])
def test_profile_csv_with_a_bad_row_names_file_and_line(tmp_path, bad, message):
    rows = hourly_rows(lambda h: 0.2)
    rows[5] = bad  # line 7 of the file (after the header)
    db = user_db(tmp_path, rows)
    with pytest.raises(DatabaseError, match=message) as exc:
        evaluate(run_30_days(region="de", start="2023-05-01"), db)
    assert "de.csv" in str(exc.value)


def test_profile_csv_with_missing_hours_says_how_many(tmp_path):
    db = user_db(tmp_path, hourly_rows(lambda h: 0.2)[:-24])
    with pytest.raises(DatabaseError, match="24 of the year's 8,760 hours are missing"):
        evaluate(run_30_days(region="de", start="2023-05-01"), db)


@pytest.mark.parametrize("start", ["2023-13-01", "next tuesday", "2024-02-29"])
def test_unknown_start_format_is_a_spec_error_naming_the_key(tmp_path, start):
    spec = tmp_path / "s.toml"
    spec.write_text(f'[model]\nparams = 7e9\n[training]\ntokens = 1e11\n[cluster]\nhardware = "h100-sxm5-80gb"\n'
                    f'devices = 8\nmfu = 0.5\n[site]\nregion = "de"\nstart = "{start}"\n')
    with pytest.raises(SpecError, match=r"\[site\] start: .*(allowed: an ISO date or datetime, or \"best\")"):
        load_estimate(spec)


def test_toml_dates_are_starts(tmp_path):
    spec = tmp_path / "s.toml"
    spec.write_text('[model]\nparams = 7e9\n[training]\ntokens = 1e11\n[cluster]\nhardware = "h100-sxm5-80gb"\n'
                    'devices = 8\nmfu = 0.5\n[site]\nregion = "de"\nstart = 2023-03-01T00:00:00Z\n')
    assert when.hour_of_year(load_estimate(spec)["start"]) == 1416


def test_pause_without_a_start_is_a_spec_error():
    with pytest.raises(SpecError, match=r"\[site\] pause_fraction: needs \[site\] start"):
        evaluate(run_30_days(region="de", pause_fraction=0.2))


def test_grid_start_must_be_dates_or_best():
    from sweep.study import load_study

    doc = {"model": {"params": 7e9}, "training": {"tokens": 1e11},
           "cluster": {"hardware": "h100-sxm5-80gb", "devices": 8, "mfu": 0.5}, "site": {"region": "de"},
           "grid": {"devices": [8, 16], "start": ["2023-01-01", "soon"]}}
    with pytest.raises(SpecError, match=r"\[grid\] start: 'soon' is not an ISO date"):
        load_study(doc)


def test_grid_start_dimension_agrees_with_estimate():
    from sweep.engine import run

    doc = {"model": {"params": 7e9}, "training": {"tokens": 1e11, "flops": 30 * 86400 * 8 * H100_BF16 * 0.5},
           "cluster": {"hardware": "h100-sxm5-80gb", "mfu": 0.5}, "site": {"pause_fraction": 0.1},
           "grid": {"devices": [8, 16], "region": ["de", "fr"], "start": ["2023-03-01", "2023-09-01T12:00"]}}
    res = run(doc, write=False)
    ds = res.dataset
    assert ds["total_tco2e"].dims == ("devices", "region", "start")
    for devices in (8, 16):
        for region in ("de", "fr"):
            for start in ("2023-03-01", "2023-09-01T12:00"):
                one = evaluate({**run_30_days(region=region, start=start, pause_fraction=0.1), "devices": devices})
                at = ds.sel(devices=devices, region=region, start=start)
                assert float(at["total_tco2e"]) == pytest.approx(one["total_tco2e"], rel=1e-9)
                assert float(at["wall_clock_days"]) == pytest.approx(one["wall_clock_days"], rel=1e-9)


def test_profiles_file_schema_and_sources():
    doc = tomllib.loads((DB / "carbon_profiles.toml").read_text())
    regions = hardware_db.load().regions
    with xr.open_dataset(DB / "carbon_profiles.nc", engine="h5netcdf") as ds:
        ci = ds["carbon_intensity_kg_per_kwh"]
        assert ci.dims == ("zone", "hour") and ci.sizes["hour"] == 8760
        assert ci.attrs["units"] == "kg CO2e/kWh" and "ODbL" in ds.attrs["licence"]
        assert bool((ci >= 0).all()) and bool(np.isfinite(ci).all())
        zones = set(map(str, ds["zone"].values))
    assert zones == set(doc["zone"])
    for zone in doc["zone"].values():
        src = doc["source"][zone["source"]]
        assert src["licence"] and src["url"] and src["derivation"]
    assert len(doc["region"]) >= 15
    for rid, entry in doc["region"].items():
        assert rid in regions and entry["zone"] in zones and entry["level"] in ("region", "profile") and entry["note"]
