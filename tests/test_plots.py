"""Figures and reports: produced, non-trivial, labelled, embedded; `carbon-sweep plot` exit codes."""

import json

import numpy as np
import pandas as pd
import pytest

from sweep import plots
from sweep.cli import main
from sweep.engine import run
from sweep.results import load_result
from sweep.report import write_report

MODEL = {"heads": 8, "vocab": 32000, "seq_len": 2048, "ffn": "swiglu"}

# Two numeric dims with 3 values (a surface), experts 1 vs 4 (dense vs MoE on the front), two
# categorical dims (a heatmap and breakdown bars), mi300x (no embodied figure: missing data).
GRID_STUDY = {
    "model": dict(MODEL),
    "training": {"tokens": 2e10},
    "cluster": {"devices": 64, "mfu": 0.4},
    "grid": {
        "layers": [8, 12, 16],
        "d_model": [512, 768, 1024],
        "experts": [1, 4],
        "hardware": ["a100-sxm4-80gb", "h100-sxm5-80gb", "mi300x"],
        "region": ["us", "fr", "se"],
    },
    "study": {"name": "tiny_grid", "description": "A tiny grid for the figure tests.",
              "pareto": [["loss", "total_tco2e"]], "top": {"by": "total_tco2e", "n": 5}},
}

# One numeric dim with the layout optimised per point: a line figure and a layout map.
LAYOUT_STUDY = {
    "model": {**MODEL, "layers": 8, "d_model": 512},
    "training": {"tokens": 2e10, "global_batch": 64},
    "cluster": {"hardware": "h100-sxm5-80gb"},
    "site": {"region": "fr"},
    "grid": {"devices": [8, 16, 32, 64]},
    "study": {"name": "tiny_layout", "layout": "best", "pareto": [["train_days", "total_tco2e"]],
              "top": {"by": "total_tco2e", "n": 4}},
}


@pytest.fixture(scope="module")
def grid_dir(tmp_path_factory):
    out = tmp_path_factory.mktemp("plots") / "grid"
    run(GRID_STUDY, out=out, quiet=True)
    return out


@pytest.fixture(scope="module")
def grid_files(grid_dir):
    files = plots.plot_result(grid_dir, strict=True)
    write_report(grid_dir)  # (as `carbon-sweep plot` does: figures, then the report)
    return files


@pytest.fixture(scope="module")
def layout_dir(tmp_path_factory):
    out = tmp_path_factory.mktemp("plots") / "layout"
    run(LAYOUT_STUDY, out=out, quiet=True)
    return out


def _main_axes(fig):
    return [ax for ax in fig.axes if not hasattr(ax, "_colorbar") and ax.get_visible() and ax.axison]


def _check_labels(fig, kind):
    axes = _main_axes(fig)
    assert axes, kind
    first = axes[0]
    assert first.get_ylabel().strip(), f"{kind}: no y label"
    assert any(ax.get_xlabel().strip() for ax in axes), f"{kind}: no x label"
    assert first.get_title(loc="left").strip(), f"{kind}: no title"
    for ax in axes:
        assert ax.get_xlabel().strip() or ax.get_ylabel().strip(), f"{kind}: an unlabelled panel"
        assert ax.has_data(), f"{kind}: an empty panel"


def test_plot_result_writes_nontrivial_pngs(grid_dir, grid_files):
    pngs = [f for f in grid_files if f.suffix == ".png"]
    assert pngs and all(f.parent == grid_dir / "figures" for f in pngs)
    for f in pngs:
        assert f.exists() and f.stat().st_size > 10_000, f
        assert f.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    index = json.loads((grid_dir / "figures" / "index.json").read_text())
    kinds = {e["kind"] for e in index}
    assert {"pareto", "surface", "heatmap", "breakdown"} <= kinds
    assert all(e["caption"] for e in index)


def test_a_front_with_nothing_to_trade_gets_words_not_a_figure(tmp_path):
    # over MFU × lifespan the highest MFU with the longest life is best in GPUs consumed and time alike
    study = {"model": {"params": 1e10}, "training": {"tokens": 2e11},
             "cluster": {"hardware": "a100-sxm4-40gb", "devices": 64}, "site": {"region": "us"},
             "grid": {"mfu": [0.3, 0.4, 0.5], "lifespan_years": [2, 3, 4]},
             "study": {"name": "one_point_front", "pareto": [["gpus_consumed", "train_days"]]}}
    out = tmp_path / "r"
    res = run(study, out=out, quiet=True)
    front = res.pareto["pareto_gpus_consumed__train_days"]
    assert set(front["mfu"]) == {0.5} and len(front[["gpus_consumed", "train_days"]].drop_duplicates()) == 1
    kinds = {p["kind"] for p in plots.plan_figures(load_result(out))}
    assert "pareto" not in kinds and "surface" in kinds
    plots.plot_result(out, strict=True)
    write_report(out)
    text = (out / "report.md").read_text()
    assert "No trade-off on pareto_gpus_consumed__train_days" in text and "gpus_consumed = " in text


def test_every_planned_figure_is_labelled(grid_dir):
    res = load_result(grid_dir)
    planned = plots.plan_figures(res)
    assert planned
    for p in planned:
        fig = p["make"]()
        _check_labels(fig, p["name"])
    res.dataset.close()


def test_layout_study_has_line_and_layout_map(layout_dir):
    files = plots.plot_result(layout_dir, strict=True)
    index = json.loads((layout_dir / "figures" / "index.json").read_text())
    kinds = {e["kind"] for e in index}
    assert {"pareto", "line", "layout", "breakdown"} <= kinds
    assert all(f.stat().st_size > 10_000 for f in files)
    res = load_result(layout_dir)
    for p in plots.plan_figures(res):
        _check_labels(p["make"](), p["name"])
    fig = plots.line_figure(res.dataset, "devices", ["total_tco2e", "step_time_s", "mfu"], reduce="best")
    labels = [ax.get_ylabel() for ax in _main_axes(fig)]
    assert labels[0].startswith("total CO₂e (t CO₂e)") and "step time (s)" in labels[1]
    res.dataset.close()


def test_figure_functions_label_with_units(grid_dir):
    res = load_result(grid_dir)
    ds = res.dataset
    fig = plots.surface_figure(ds, "layers", "d_model", "total_tco2e")
    ax = _main_axes(fig)[0]
    assert ax.get_xlabel() == "layers" and ax.get_ylabel().startswith("d_model")
    cbar = [a for a in fig.axes if hasattr(a, "_colorbar")]
    assert cbar and "t CO₂e" in cbar[0].get_ylabel()
    assert "min over" in ax.get_title(loc="left") + " ".join(t.get_text() for t in ax.texts)
    fig = plots.heatmap_figure(ds, "region", "hardware", "total_tco2e")
    ax = _main_axes(fig)[0]
    assert (ax.get_xlabel(), ax.get_ylabel()) == ("region", "hardware")
    texts = " ".join(t.get_text() for t in ax.texts)
    assert "missing data" in texts  # mi300x has no embodied figure: masked, named, not plotted
    fig = plots.pareto_figure(ds, res.pareto["pareto_loss__total_tco2e"], "total_tco2e", "loss", "experts")
    ax = _main_axes(fig)[0]
    assert ax.get_xlabel() == "total CO₂e (t CO₂e)" and ax.get_ylabel() == "predicted loss (nats/token)"
    fig = plots.breakdown_figure(res.top, ["layers", "d_model", "hardware", "region"])
    assert _main_axes(fig)[0].get_xlabel() == "CO₂e (t CO₂e)"
    ds.close()


def test_infeasible_points_are_masked(grid_dir):
    res = load_result(grid_dir)
    ds = res.dataset
    n_feasible = int((ds["reason"] == 0).sum())
    assert 0 < n_feasible < ds["reason"].size
    cloud = plots.cloud_frame(ds, ["total_tco2e", "loss", "experts"])
    assert len(cloud) == n_feasible
    masked = plots.field(ds, "total_tco2e")
    assert np.isnan(masked.where(ds["reason"] != 0)).all()
    share = plots.field(ds, plots.SHARE)
    assert float(share.max()) <= 100
    ds.close()


def test_log_scale_when_values_span_decades():
    front = pd.DataFrame({"a": [1.0, 10.0, 1000.0, 1e5], "b": [4.0, 3.0, 2.5, 2.4]})
    fig = plots.pareto_figure(None, front, "a", "b")
    ax = _main_axes(fig)[0]
    assert ax.get_xscale() == "log" and ax.get_yscale() == "linear"


def test_limit_keeps_large_grids_bounded():
    da = pytest.importorskip("dask.array")
    import xarray as xr

    ds = xr.Dataset({"total_tco2e": (("a", "b", "c"), da.zeros((400, 300, 100), chunks=(100, 300, 100)))},
                    coords={"a": np.arange(400), "b": np.arange(300), "c": np.arange(100)})
    sub, sampled = plots.limit(ds, keep=("a",), max_points=1_000_000)
    assert sampled and sub.sizes["a"] == 400
    assert np.prod(list(sub.sizes.values())) <= 1_000_000


def test_report_md_and_html(grid_dir, grid_files):
    md, html = grid_dir / "report.md", grid_dir / "report.html"
    assert md.exists() and html.exists()
    text = md.read_text()
    for heading in ("## Spec", "## Key numbers", "## Figures", "## Assumptions and sources"):
        assert heading in text
    assert "```toml" in text and "[grid]" in text
    assert "tokens = 2e10\n" in text  # large numbers as written, not 20000000000.0
    import tomllib

    spec_text = text.split("```toml\n", 1)[1].split("```", 1)[0]
    assert tomllib.loads(spec_text)["training"]["tokens"] == 2e10  # the spec shown is valid TOML
    assert "tiny_grid" in text and "A tiny grid for the figure tests." in text
    import hardware_db

    db = hardware_db.load()
    assert db.accelerators["h100-sxm5-80gb"]["source"] in text
    assert db.regions["fr"]["source"] in text
    assert db.docs["scaling_laws.toml"]["chinchilla"]["source"] in text
    assert db.docs["defaults.toml"]["pue"]["source"] in text
    assert "missing_data" in text  # infeasible counts by reason
    pngs = [f for f in grid_files if f.suffix == ".png"]
    for f in pngs:
        assert f"figures/{f.name}" in text
    page = html.read_text()
    assert page.startswith("<!DOCTYPE html>") and "</html>" in page
    assert page.count("data:image/png;base64,") == len(pngs)
    assert "<table>" in page and "<pre><code>" in page


def test_write_report_alone(grid_dir, grid_files):
    md, html = write_report(grid_dir)
    assert md.name == "report.md" and html.name == "report.html"
    assert "Lowest-CO2e design" in md.read_text()


def test_cli_plot(grid_dir, capsys):
    assert main(["plot", str(grid_dir), "--svg"]) == 0
    out = capsys.readouterr().out
    assert ".png" in out and "report.html" in out
    assert list((grid_dir / "figures").glob("*.svg"))


def test_cli_plot_not_a_result_folder(tmp_path, capsys):
    (tmp_path / "empty").mkdir()
    for target in (tmp_path / "empty", tmp_path / "missing"):
        assert main(["plot", str(target)]) == 2
        err = capsys.readouterr().err
        assert "is not a carbon-sweep result folder (no study.json)" in err
        assert "Traceback" not in err


def test_cli_plot_of_an_optimize_folder_says_where_its_figures_are(tmp_path, capsys):
    (tmp_path / "search").mkdir()
    (tmp_path / "search" / "search.json").write_text("{}")
    assert main(["plot", str(tmp_path / "search")]) == 2
    assert "is an optimize result: carbon-sweep optimize draws its figures" in capsys.readouterr().err


def test_layout_map_shows_known_layouts_whose_total_is_unknown_and_names_what_is_missing():
    # mi300x: the layout model runs, the embodied figure is unpublished (total unknown); tpu-v4: its
    # ICI bandwidth is unpublished, so no layout can be evaluated at all
    study = {"model": {**MODEL, "layers": 8, "d_model": 512}, "training": {"tokens": 2e10, "global_batch": 64},
             "cluster": {"devices": 16},
             "grid": {"hardware": ["h100-sxm5-80gb", "mi300x", "tpu-v4"], "region": ["us", "fr"]},
             "study": {"name": "missing", "layout": "best"}}
    ds = run(study, write=False).dataset
    assert np.isnan(ds["tp"].sel(hardware="tpu-v4").values).all()  # no layout works: none recorded
    assert np.isfinite(ds["tp"].sel(hardware="mi300x").values).all()
    fig = plots.layout_map(ds, "hardware", "region")
    texts = {(round(t.get_position()[0]), round(t.get_position()[1])): t.get_text() for t in fig.axes[0].texts}
    assert "MFU" in texts[(0, 0)] and "CO₂e unknown" in texts[(1, 0)] and texts[(2, 0)] == "missing data"
    assert all("infeasible" not in t for t in texts.values())


def test_figures_and_report_from_a_result_in_memory(tmp_path):
    # SweepResult has one shape: run() in memory gives what a folder gives, so nothing is read back
    res = run(GRID_STUDY, write=False)
    assert {"spec", "dims", "outputs", "n_points", "min"} <= set(res.summary)
    files, index = plots.draw_figures(res, tmp_path / "figures", strict=True)
    assert {"pareto", "surface", "heatmap", "breakdown"} <= {e["kind"] for e in index}
    assert all(f.exists() for f in files)
    md, html = write_report(tmp_path, index, result=res)
    text = md.read_text()
    assert "Lowest-CO2e design" in text and "tiny_grid" in text
    assert html.read_text().count("data:image/png;base64,") == len(index)
    assert not (tmp_path / "study.json").exists()
