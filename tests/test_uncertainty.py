"""Uncertainty and sensitivity (issue 18): distributions through the same chain, quantiles, elasticities,
Sobol indices; checked against closed forms, finite differences and NumPy."""

import functools
import json
import math
from statistics import NormalDist

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import xarray as xr
from hypothesis import given, settings
from hypothesis import strategies as st

import sweep  # noqa: F401  (float64 on)
from kernels import uncertainty as ku
from kernels.footprint import footprint
from sweep.cli import main
from sweep.estimate import evaluate, held_layout_inputs
from sweep.inputs import point_inputs
from sweep.spec import SpecError, load_estimate
from sweep.uncertainty import SUMMARY_OUTPUTS

FIXED_MFU = """\
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
hardware = "a100-sxm4-80gb"
devices = 512
mfu = 0.45
[site]
region = "fr"
"""
PREDICTED = FIXED_MFU.replace("mfu = 0.45\n", "").replace("a100-sxm4-80gb", "h100-sxm5-80gb")
# every shipped default switched off: only what a test names varies
ALL_OFF = "pue = {rel = 0}\ncarbon_intensity = {rel = 0}\npower_util = {rel = 0}\ngoodput = {rel = 0}\n" \
          "lifespan_years = {rel = 0}\ndevice_embodied_kgco2e = {rel = 0}\nhost_embodied_kgco2e = {rel = 0}\n" \
          "mfu_scale = {rel = 0}\nwue_l_per_kwh = {rel = 0}\n"


def spec(tmp_path, text, unc="", name="run.toml"):
    p = tmp_path / name
    p.write_text(text + ("\n[uncertainty]\n" + unc if unc is not None else ""))
    return p


def run(tmp_path, text, unc="", **kw):
    p = spec(tmp_path, text, unc)
    return evaluate(load_estimate(p), file=p, **kw)


# --- the kernels --------------------------------------------------------------------------------


@settings(max_examples=30, deadline=None)
@given(n=st.sampled_from([2, 3, 17, 400]), ties=st.booleans(), seed=st.integers(0, 10_000), drop=st.floats(0.0, 0.6))
def test_sample_quantiles_equal_numpy_linear_quantiles_of_the_feasible_samples(n, ties, seed, drop):
    rng = np.random.default_rng(seed)
    v = rng.lognormal(0.0, 0.5, size=(3, n))
    if ties:
        v = np.round(v, 1)
    ok = rng.random((3, n)) >= drop
    got = np.asarray(ku.sample_quantiles(jnp.asarray(v), jnp.asarray(ok), (0.05, 0.5, 0.95)))
    for i in range(3):
        if ok[i].any():
            want = np.quantile(v[i][ok[i]], [0.05, 0.5, 0.95])
            np.testing.assert_allclose(got[:, i], want, rtol=1e-12)
        else:
            assert np.isnan(got[:, i]).all()


def test_sample_quantiles_in_float32_equal_numpy_on_the_same_float32_values():
    v = np.random.default_rng(1).lognormal(2.0, 0.3, size=(50, 1000)).astype(np.float32)
    ok = np.ones_like(v, bool)
    got = np.asarray(ku.sample_quantiles(jnp.asarray(v), jnp.asarray(ok), (0.05, 0.95)))
    want = np.quantile(v.astype(np.float64), [0.05, 0.95], axis=1)
    np.testing.assert_allclose(got, want, rtol=2e-7)


def test_zero_width_draws_are_the_parameter_exactly():
    codes = jnp.array([0, 1, 2, 3])
    a = jnp.array([1.0, 1.0, 0.7, 1.1])
    b = jnp.array([0.0, 0.0, 0.7, 1.1])
    c = jnp.array([0.0, 0.0, 0.0, 1.1])
    d = np.asarray(ku.draw(jax.random.key(0), codes, a, b, c, 100))
    assert (d == np.array([1.0, 1.0, 0.7, 1.1])).all()


def test_triangular_and_uniform_draws_have_their_closed_form_means_and_bounds():
    # triangular (1, 2, 4): mean (1 + 2 + 4) / 3 = 7/3; uniform (2, 5): mean 3.5
    d = np.asarray(ku.draw(jax.random.key(3), jnp.array([3, 2]), jnp.array([1.0, 2.0]), jnp.array([2.0, 5.0]),
                           jnp.array([4.0, 0.0]), 200_000))
    assert d[:, 0].min() >= 1.0 and d[:, 0].max() <= 4.0
    assert d[:, 1].min() >= 2.0 and d[:, 1].max() <= 5.0
    assert d[:, 0].mean() == pytest.approx(7.0 / 3.0, rel=5e-3)
    assert d[:, 1].mean() == pytest.approx(3.5, rel=5e-3)
    # the triangular CDF at the mode is (mode - low) / (high - low) = 1/3
    assert (d[:, 0] < 2.0).mean() == pytest.approx(1.0 / 3.0, abs=5e-3)


# --- estimate -----------------------------------------------------------------------------------


def test_lognormal_carbon_intensity_gives_the_closed_form_quantiles_of_operational_carbon(tmp_path):
    # operational carbon is linear in the carbon intensity: with a lognormal factor of median 1 and
    # sigma 0.2, its q-quantile is the point value × exp(0.2 · Φ⁻¹(q))
    out = run(tmp_path, FIXED_MFU, ALL_OFF.replace("carbon_intensity = {rel = 0}", "carbon_intensity = {rel = 0.2}")
              + "samples = 20000\n")
    point = out["operational_tco2e"]
    for q, p in (("p5", 0.05), ("p50", 0.5), ("p95", 0.95)):
        assert out[f"operational_tco2e_{q}"] == pytest.approx(point * math.exp(0.2 * NormalDist().inv_cdf(p)), rel=0.01)
    assert out["operational_tco2e_mean"] == pytest.approx(point * math.exp(0.2 ** 2 / 2), rel=0.005)
    # embodied carbon does not depend on it: one value
    assert out["embodied_tco2e_p5"] == out["embodied_tco2e_p95"] == pytest.approx(out["embodied_tco2e"], rel=1e-15)


@pytest.mark.parametrize("text", [FIXED_MFU, PREDICTED], ids=["mfu-given", "layout-model"])
def test_zero_width_distributions_give_the_point_estimate_exactly(tmp_path, text):
    out = run(tmp_path, text, ALL_OFF + "samples = 50\n")
    point = run(tmp_path, text, None)
    for k in SUMMARY_OUTPUTS:
        if point.get(k) is not None and math.isfinite(point[k]):
            assert out[f"{k}_p5"] == out[f"{k}_p50"] == out[f"{k}_p95"] == point[k], k


def test_a_seed_reproduces_the_samples_and_another_seed_does_not(tmp_path):
    a = run(tmp_path, FIXED_MFU, "samples = 500\nseed = 7\n")
    b = run(tmp_path, FIXED_MFU, "samples = 500\nseed = 7\n")
    c = run(tmp_path, FIXED_MFU, "samples = 500\nseed = 8\n")
    assert a["total_tco2e_p95"] == b["total_tco2e_p95"] and a["total_tco2e_mean"] == b["total_tco2e_mean"]
    assert c["total_tco2e_p95"] != a["total_tco2e_p95"]


def test_the_shipped_defaults_apply_to_inputs_the_section_does_not_name(tmp_path):
    out = run(tmp_path, PREDICTED, "samples = 100\npue = {rel = 0.05}\n")
    inputs = {d["input"]: d for d in out["uncertainty"]["inputs"]}
    assert inputs["pue"]["source"] == "spec" and inputs["pue"]["params"] == {"rel": 0.05}
    assert inputs["mfu_scale"]["source"] == "default"
    # a given MFU is the user's figure: the layout model's residual does not apply to it
    given = run(tmp_path, FIXED_MFU, "samples = 100\n")
    assert "mfu_scale" not in {d["input"] for d in given["uncertainty"]["inputs"]}


def test_infeasible_samples_are_counted_and_left_out_of_the_quantiles(tmp_path):
    # PUE ~ normal(1.05, 0.1): P(PUE < 1) = Φ(-0.5) = 0.3085 of the samples cannot be
    out = run(tmp_path, FIXED_MFU, ALL_OFF.replace("pue = {rel = 0}", 'pue = {dist = "normal", mean = 1.05, sd = 0.1}')
              + "samples = 4000\n")
    bad = out["uncertainty"]["infeasible_samples"]["sample_out_of_range"]
    assert bad / 4000 == pytest.approx(NormalDist().cdf(-0.5), abs=0.02)
    assert out["uncertainty"]["feasible_samples"] == 4000 - bad
    # the facility energy over the feasible samples is never below the IT energy (PUE ≥ 1)
    assert out["energy_mwh_p5"] >= out["it_energy_mwh"]


def test_integer_outputs_are_not_sampled(tmp_path):
    out = run(tmp_path, PREDICTED, "samples = 100\n")
    assert "dp_p50" not in out and isinstance(out["dp"], int) and "devices_p50" not in out


# --- sensitivities ------------------------------------------------------------------------------


@functools.lru_cache(maxsize=1)
def _chain(cal_items):
    cal = dict(cal_items)
    return jax.jit(lambda x: {k: footprint(x, cal)[k] for k in ("total_tco2e", "train_days", "embodied_tco2e",
                                                                "energy_mwh")})


def _finite_difference_elasticity(x, cal, name, output, h=1e-5):
    """Central difference of ln(output) in ln(input): (ln f(x·e^h) - ln f(x·e^-h)) / 2h."""
    f = _chain(tuple((k, float(v)) for k, v in cal.items()))
    up, down = dict(x), dict(x)
    nominal = x[name]  # (mfu_scale: 1, the layout model's own MFU)
    up[name], down[name] = nominal * math.exp(h), nominal * math.exp(-h)
    return (math.log(float(f(up)[output])) - math.log(float(f(down)[output]))) / (2 * h)


def test_elasticities_match_central_finite_differences_in_float64(tmp_path):
    p = spec(tmp_path, PREDICTED, None)
    v = load_estimate(p)
    out = evaluate(v, file=p, sensitivity=True)
    layout = {k: out[k] for k in ("tp", "pp", "cp", "ep", "etp", "microbatch", "interleave", "zero_stage",
                                  "recompute", "shard_optimizer", "sequence_parallel")}
    import hardware_db
    x, cal = held_layout_inputs(v, point_inputs(v, hardware_db.load()), layout, hardware_db.load())
    x = {k: np.float64(val) for k, val in x.items()} | {"mfu_scale": np.float64(1.0)}
    el = out["sensitivity"]["elasticities"]
    checked = 0
    for output in ("total_tco2e", "train_days", "embodied_tco2e", "energy_mwh"):
        for name in out["sensitivity"]["inputs"]:
            fd = _finite_difference_elasticity(x, cal, name, output)
            assert el[output][name] == pytest.approx(fd, abs=1e-4), (output, name)
            checked += 1
    assert checked >= 20


def test_elasticities_of_a_product_are_its_exponents(tmp_path):
    # operational carbon = energy × carbon intensity × PUE: elasticity 1 for both; time ∝ tokens / MFU
    out = run(tmp_path, FIXED_MFU, None, sensitivity=True)
    el = out["sensitivity"]["elasticities"]
    assert el["operational_tco2e"]["carbon_intensity_kg_per_kwh"] == pytest.approx(1.0, abs=1e-12)
    assert el["operational_tco2e"]["pue"] == pytest.approx(1.0, abs=1e-12)
    assert el["train_days"]["mfu"] == pytest.approx(-1.0, abs=1e-12)
    assert el["train_days"]["tokens"] == pytest.approx(1.0, abs=1e-12)
    # embodied carbon per run is amortised over the lifespan: elasticity -1
    assert el["embodied_tco2e"]["lifespan_years"] == pytest.approx(-1.0, abs=1e-12)
    ranked = out["sensitivity"]["inputs"]
    totals = [abs(el["total_tco2e"][n]) for n in ranked]
    assert totals == sorted(totals, reverse=True)


def test_sobol_indices_of_two_equal_lognormal_factors_split_the_variance(tmp_path):
    # operational carbon ∝ CI × PUE, both lognormal factors with sigma 0.1: ln of the product is a sum
    # of two equal-variance terms, and for small sigma each explains half of the variance (S1 ≈ ST ≈ 0.5)
    out = run(tmp_path, FIXED_MFU.replace('region = "fr"', 'region = "in"'),
              ALL_OFF.replace("pue = {rel = 0}", "pue = {rel = 0.1}")
              .replace("carbon_intensity = {rel = 0}", "carbon_intensity = {rel = 0.1}") + "samples = 4000\n",
              sensitivity=True)
    s = out["sensitivity"]["sobol_total_tco2e"]
    assert set(s) == {"pue", "carbon_intensity_kg_per_kwh"}
    for name in s:
        assert s[name]["S1"] == pytest.approx(0.5, abs=0.08)
        assert s[name]["ST"] == pytest.approx(0.5, abs=0.08)


# --- spec errors and the command line -------------------------------------------------------------


@pytest.mark.parametrize("unc, key, words", [
    ("pue_factor = {rel = 0.1}\n", "pue_factor", "pue"),
    ('pue = {dist = "beta", rel = 0.1}\n', "pue", "allowed: normal, lognormal, uniform, triangular"),
    ('pue = {dist = "normal", mean = 1.2}\n', "pue", "missing sd"),
    ("pue = {rel = -0.1}\n", "pue", "at least 0"),
    ('pue = {dist = "triangular", low = 1.3, mode = 1.1, high = 1.4}\n', "pue", "low ≤ mode ≤ high"),
    ("samples = 1\n", "samples", "at least 2"),
    ('outputs = ["total_co2"]\n', "outputs", "total_tco2e"),
])
def test_a_bad_uncertainty_entry_is_an_error_naming_the_key(tmp_path, unc, key, words):
    p = spec(tmp_path, FIXED_MFU, unc)
    with pytest.raises(SpecError) as e:
        evaluate(load_estimate(p), file=p)
    assert f"[uncertainty] {key}" in str(e.value) and words in str(e.value)


def test_cli_bad_uncertainty_exits_2_without_traceback(tmp_path, capsys):
    p = spec(tmp_path, FIXED_MFU, "pue = 1.2\n")
    assert main(["estimate", str(p)]) == 2
    err = capsys.readouterr().err
    assert "[uncertainty] pue" in err and "Traceback" not in err


def test_cli_estimate_json_has_quantiles_sensitivities_and_writes_figures(tmp_path, capsys):
    p = spec(tmp_path, FIXED_MFU, None)
    assert main(["estimate", str(p), "--samples", "300", "--sensitivity", "--json", "--figures",
                 str(tmp_path / "figs")]) == 0
    out = json.loads(capsys.readouterr().out)
    assert out["total_tco2e_p5"] < out["total_tco2e_p50"] < out["total_tco2e_p95"]
    assert out["uncertainty"]["samples"] == 300
    assert "sobol_total_tco2e" in out["sensitivity"]
    assert (tmp_path / "figs" / "histogram_total_tco2e.png").exists()
    assert (tmp_path / "figs" / "tornado_total_tco2e.png").exists()


# --- sweeps ---------------------------------------------------------------------------------------

STUDY = """\
[study]
name = "sampled"
pareto = [["loss", "total_tco2e_p95"]]
top = {by = "total_tco2e_p50", n = 4}
[grid]
layers = [16, 24, 32]
d_model = [2048, 4096]
region = ["us", "fr", "in"]
[model]
heads = 16
vocab = 50000
seq_len = 2048
[training]
tokens = 3e11
[cluster]
hardware = "h100-sxm5-80gb"
devices = 256
mfu = 0.4
[uncertainty]
samples = 400
seed = 3
mfu = {rel = 0.1}
"""


def _study(tmp_path, text, name="s.toml"):
    p = tmp_path / name
    p.write_text(text)
    return p


def test_a_sweep_keeps_quantiles_per_point_and_matches_the_estimate_of_that_point(tmp_path):
    res = sweep.run(_study(tmp_path, STUDY))
    ds = res.dataset
    for q in ("p5", "p50", "p95", "mean"):
        assert f"total_tco2e_{q}" in ds and ds[f"total_tco2e_{q}"].attrs["units"] == "t CO2e"
    point = ds.sel(layers=24, d_model=4096, region="in")
    est = run(tmp_path, FIXED_MFU.replace("layers = 32", "layers = 24").replace('region = "fr"', 'region = "in"')
              .replace("heads = 32", "heads = 16").replace("vocab = 32000", "vocab = 50000")
              .replace("seq_len = 4096", "seq_len = 2048").replace("tokens = 1e12", "tokens = 3e11")
              .replace("a100-sxm4-80gb", "h100-sxm5-80gb").replace("devices = 512", "devices = 256")
              .replace("mfu = 0.45", "mfu = 0.4"), "samples = 400\nseed = 3\nmfu = {rel = 0.1}\n")
    for q in ("p5", "p50", "p95", "mean"):
        assert float(point[f"total_tco2e_{q}"]) == pytest.approx(est[f"total_tco2e_{q}"], rel=1e-9), q
    assert int(point["infeasible_samples"]) == sum(est["uncertainty"]["infeasible_samples"].values())
    # the front is on the quantile the study names
    front = res.pareto["pareto_loss__total_tco2e_p95"]
    assert "total_tco2e_p95" in front.columns and len(front) >= 2
    assert list(res.top["total_tco2e_p50"]) == sorted(res.top["total_tco2e_p50"])


def test_a_seed_gives_identical_sweeps_chunked_and_unchunked(tmp_path):
    whole = sweep.run(_study(tmp_path, STUDY)).dataset
    chunked = sweep.run(_study(tmp_path, STUDY.replace('name = "sampled"', 'name = "sampled"\nchunk_size = 5'),
                               "c.toml")).dataset
    for q in ("p5", "p50", "p95", "mean"):
        np.testing.assert_array_equal(whole[f"total_tco2e_{q}"].values, chunked[f"total_tco2e_{q}"].values)
    np.testing.assert_array_equal(whole["infeasible_samples"].values, chunked["infeasible_samples"].values)


def test_a_float32_sweep_gives_the_float64_quantiles_to_float32_precision(tmp_path):
    f64 = sweep.run(_study(tmp_path, STUDY)).dataset
    f32 = sweep.run(_study(tmp_path, STUDY.replace('name = "sampled"', 'name = "sampled"\ndtype = "float32"'),
                           "f.toml")).dataset
    np.testing.assert_allclose(f32["total_tco2e_p95"].values, f64["total_tco2e_p95"].values, rtol=2e-5)
    np.testing.assert_array_equal(f32["infeasible_samples"].values, f64["infeasible_samples"].values)


def test_zero_width_distributions_give_the_sweeps_point_values(tmp_path):
    text = STUDY.replace("mfu = {rel = 0.1}\n", "mfu = {rel = 0}\n" + ALL_OFF)
    ds = sweep.run(_study(tmp_path, text)).dataset
    np.testing.assert_array_equal(ds["total_tco2e_p50"].values, ds["total_tco2e"].values)
    np.testing.assert_array_equal(ds["total_tco2e_p5"].values, ds["total_tco2e"].values)
    assert int(ds["infeasible_samples"].sum()) == 0


def test_a_front_on_a_quantile_is_drawn_with_each_designs_p5_to_p95_band(tmp_path):
    from sweep.plots import quantile_band, pareto_figure

    res = sweep.run(_study(tmp_path, STUDY))
    front = res.pareto["pareto_loss__total_tco2e_p95"]
    lo, hi, base = quantile_band(front, "total_tco2e_p95")
    assert base == "total_tco2e" and (lo <= hi).all() and (hi == front["total_tco2e_p95"].to_numpy()).all()
    fig = pareto_figure(res.dataset, front, "loss", "total_tco2e_p95")
    assert any("p5–p95" in t.get_text() for t in fig.legends[0].get_texts())


def test_lines_of_a_sampled_study_carry_the_p5_to_p95_band_of_the_designs_they_show(tmp_path):
    from sweep.plots import line_band, line_figure

    res = sweep.run(_study(tmp_path, STUDY))
    ds = res.dataset
    lo, hi = line_band(ds, "total_tco2e", ["layers"], "min")
    # at each layers value the band is the p5/p95 of the design of least total CO2e
    for layers in (16, 24, 32):
        sub = ds.sel(layers=layers).stack(p=("d_model", "region"))
        best = int(sub["total_tco2e"].argmin("p"))
        assert float(lo.sel(layers=layers)) == float(sub["total_tco2e_p5"][best])
        assert float(hi.sel(layers=layers)) == float(sub["total_tco2e_p95"][best])
    fig = line_figure(ds, "layers", ["total_tco2e"], None, "min")
    assert len(fig.axes[0].collections) >= 1  # the shaded band
    assert line_band(ds.drop_vars(["total_tco2e_p5", "total_tco2e_p95"]), "total_tco2e", ["layers"]) is None


def test_a_sampled_study_draws_its_quantile_surface(tmp_path):
    from sweep.plots import plan_figures

    res = sweep.run(_study(tmp_path, STUDY.replace("layers = [16, 24, 32]", "layers = [16, 24, 32, 40]")
                           .replace("d_model = [2048, 4096]", "d_model = [2048, 3072, 4096]")))
    plans = {p["name"]: p for p in plan_figures(res)}
    name = "surface_total_tco2e_p95_layers_d_model"
    assert name in plans and "95th percentile" in plans[name]["caption"]
    fig = plans[name]["make"]()
    assert "p95" in fig.axes[-1].get_ylabel() or "95" in fig.axes[-1].get_ylabel()


# --- kept samples: a `sample` dimension -----------------------------------------------------------

KEPT = STUDY.replace("seed = 3\n", "seed = 3\nkeep_samples = true\noutputs = [\"total_tco2e\", \"energy_mwh\"]\n")


def test_a_sweep_with_keep_samples_has_a_sample_dimension_whose_quantiles_are_the_quantile_outputs(tmp_path):
    ds = sweep.run(_study(tmp_path, KEPT), tmp_path / "out").dataset
    for base in ("total_tco2e", "energy_mwh"):
        v = ds[f"{base}_samples"]
        assert v.dims == ("layers", "d_model", "region", "sample") and v.sizes["sample"] == 400
        assert v.attrs["units"] == ds[base].attrs["units"]
        values = v.values.reshape(-1, 400)
        for q, p in (("p5", 5), ("p50", 50), ("p95", 95)):
            np.testing.assert_allclose(np.nanpercentile(values, p, axis=1), ds[f"{base}_{q}"].values.ravel(),
                                       rtol=1e-12, err_msg=f"{base}_{q}")
        np.testing.assert_allclose(np.nanmean(values, axis=1), ds[f"{base}_mean"].values.ravel(), rtol=1e-12)
    # written with the grid, in the open format
    on_disk = xr.open_dataset(tmp_path / "out" / "grid.nc", engine="h5netcdf")
    np.testing.assert_array_equal(on_disk["total_tco2e_samples"].values, ds["total_tco2e_samples"].values)
    on_disk.close()


def test_kept_samples_are_the_same_chunked_and_unchunked(tmp_path):
    whole = sweep.run(_study(tmp_path, KEPT), write=False).dataset
    chunked = sweep.run(_study(tmp_path, KEPT.replace('name = "sampled"', 'name = "sampled"\nchunk_size = 5'),
                               "c.toml"), write=False).dataset
    np.testing.assert_array_equal(whole["total_tco2e_samples"].values, chunked["total_tco2e_samples"].values)


def test_infeasible_samples_are_nan_in_the_kept_samples_and_counted(tmp_path):
    text = KEPT.replace("mfu = {rel = 0.1}", 'mfu = {rel = 0.1}\npue = {dist = "normal", mean = 1.02, sd = 0.1}')
    ds = sweep.run(_study(tmp_path, text), write=False).dataset
    nan = np.isnan(ds["total_tco2e_samples"].values).sum(axis=-1)
    np.testing.assert_array_equal(nan, ds["infeasible_samples"].values)
    assert nan.min() > 0


@pytest.mark.parametrize("text, words", [
    (KEPT.replace("keep_samples = true", "keep_samples = 1"), "true or false"),
    (KEPT.replace('name = "sampled"', 'name = "sampled"\nkeep_full_grid = false'), "keep_full_grid = true"),
    (KEPT.replace("samples = 400", "samples = 10000000"), "at most 100,000,000 values"),
])
def test_a_bad_keep_samples_is_an_error_naming_the_key_before_any_work(tmp_path, text, words):
    with pytest.raises(SpecError) as e:
        sweep.run(_study(tmp_path, text), tmp_path / "out")
    assert "[uncertainty] keep_samples" in str(e.value) and words in str(e.value)
    assert not (tmp_path / "out").exists()


def test_keep_samples_in_an_estimate_is_an_error_naming_the_key(tmp_path):
    p = spec(tmp_path, FIXED_MFU, "keep_samples = true\n")
    with pytest.raises(SpecError) as e:
        evaluate(load_estimate(p), file=p)
    assert "[uncertainty] keep_samples" in str(e.value) and "carbon-sweep run" in str(e.value)


@settings(max_examples=40, deadline=None)
@given(st.lists(st.sampled_from([0.0, -1.0, 0.3, 5.0, float("nan"), float("inf")]), min_size=1, max_size=6),
       st.integers(0, 2**31 - 1))
def test_a_lognormal_factors_range_check_at_the_nominal_gives_the_per_sample_check(nominals, seed):
    """A lognormal factor is positive: on a range from 0 to infinity, checking the nominal once per
    point gives what checking every sample gives (zero, negative, NaN and infinite nominals too)."""
    from sweep.uncertainty import sampled_inputs

    x = {"carbon_intensity_kg_per_kwh": jnp.asarray(nominals)[:, None], "idle_w": jnp.asarray(nominals)[:, None]}
    draws = jnp.asarray(np.random.default_rng(seed).lognormal(0.0, 0.5, (64, 2)))
    names, rel = ("carbon_intensity_kg_per_kwh", "idle_w"), (True, True)
    codes = (ku.DIST["lognormal"], ku.DIST["lognormal"])
    per_sample = sampled_inputs(x, names, rel, draws)
    per_point = sampled_inputs(x, names, rel, draws, codes)
    np.testing.assert_array_equal(np.asarray(per_sample[1]), np.asarray(per_point[1]))
    for k in names:
        np.testing.assert_array_equal(np.asarray(per_sample[0][k]), np.asarray(per_point[0][k]))


# --- elasticities kept by a sweep -----------------------------------------------------------------

ELASTIC = """\
[study]
name = "elastic"
outputs = ["total_tco2e", "operational_tco2e", "embodied_tco2e", "train_days", "total_tco2e_elasticity_pue",
           "total_tco2e_elasticity_carbon_intensity_kg_per_kwh", "total_tco2e_elasticity_lifespan_years",
           "train_days_elasticity_tokens", "operational_tco2e_elasticity_power_util"]
pareto = [["train_days", "total_tco2e"]]
[grid]
layers = [24, 32]
region = ["us", "fr", "in"]
""" + FIXED_MFU.replace("layers = 32\n", "").replace('[site]\nregion = "fr"\n', "")


def test_a_sweep_keeps_elasticities_as_outputs_with_their_closed_forms(tmp_path):
    """total = operational (∝ PUE × intensity) + embodied (∝ 1 / lifespan): d ln total / d ln PUE is the
    operational share, d ln total / d ln lifespan minus the embodied share; days ∝ tokens."""
    ds = sweep.run(_study(tmp_path, ELASTIC), write=False).dataset
    share = (ds.operational_tco2e / ds.total_tco2e).values
    np.testing.assert_allclose(ds["total_tco2e_elasticity_pue"].values, share, rtol=1e-12)
    np.testing.assert_allclose(ds["total_tco2e_elasticity_carbon_intensity_kg_per_kwh"].values, share, rtol=1e-12)
    np.testing.assert_allclose(ds["total_tco2e_elasticity_lifespan_years"].values,
                               -(ds.embodied_tco2e / ds.total_tco2e).values, rtol=1e-10)
    np.testing.assert_allclose(ds["train_days_elasticity_tokens"].values, 1.0, rtol=1e-12)
    assert ds["total_tco2e_elasticity_pue"].attrs["units"] == "1"


def test_a_sweeps_elasticities_are_the_estimates_at_that_point(tmp_path):
    ds = sweep.run(_study(tmp_path, ELASTIC), write=False).dataset
    point = ds.sel(layers=32, region="fr")
    est = run(tmp_path, FIXED_MFU, None, sensitivity=True)["sensitivity"]["elasticities"]
    for name in ("total_tco2e_elasticity_pue", "total_tco2e_elasticity_lifespan_years",
                 "operational_tco2e_elasticity_power_util", "train_days_elasticity_tokens"):
        output, _, inp = name.partition("_elasticity_")
        assert float(point[name]) == pytest.approx(est[output][inp], rel=1e-9), name


@pytest.mark.parametrize("name, words", [
    ("total_tco2e_elasticity_pue_factor", "is not an input an elasticity is taken for"),
    ("reason_elasticity_pue", "is not an output with an elasticity"),
])
def test_a_bad_elasticity_output_is_an_error_naming_the_key(tmp_path, name, words):
    text = ELASTIC.replace('"total_tco2e", "operational_tco2e"', f'"{name}", "operational_tco2e"')
    with pytest.raises(SpecError) as e:
        sweep.run(_study(tmp_path, text), write=False)
    assert "[study] outputs" in str(e.value) and words in str(e.value)


@pytest.mark.parametrize("dtype", ["float64", "float32"])
def test_gpus_consumed_stay_whole_numbers_in_every_kept_sample(tmp_path, dtype):
    text = KEPT.replace('outputs = ["total_tco2e", "energy_mwh"]', 'outputs = ["gpus_consumed"]') \
        .replace('name = "sampled"', f'name = "sampled"\ndtype = "{dtype}"')
    ds = sweep.run(_study(tmp_path, text), write=False).dataset
    v = ds["gpus_consumed_samples"].values
    v = v[np.isfinite(v)]
    assert v.size and (v == np.round(v)).all() and v.min() >= 1


def test_the_cli_draws_figures_and_a_report_for_a_study_with_kept_samples(tmp_path, capsys):
    """Figures and the report read one value per point: the `sample` dimension is left out of them."""
    out = tmp_path / "out"
    assert main(["run", str(_study(tmp_path, KEPT)), "--out", str(out)]) == 0
    assert (out / "report.html").exists() and any((out / "figures").glob("*.png"))
    assert "warning" not in capsys.readouterr().err
