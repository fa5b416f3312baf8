"""Figures for a sweep result: Pareto fronts, surfaces, lines, heatmaps, breakdown bars, layout maps.

``plot_result(out_dir)`` chooses figures from what the result folder holds and writes them as PNG
(and SVG on request) to ``<out_dir>/figures/``, then the report (``sweep.report``). Every figure
function returns a ``matplotlib.figure.Figure`` (built without pyplot, so nothing global is
touched and nothing leaks) for a caller to add to, inspect or save:

    pareto_figure(cloud, front_df, x, y, group=None)   dominated cloud faint, front bold
    surface_figure(ds, x_dim, y_dim, var, reduce="min") filled contours over two numeric dims
    line_figure(ds, x_dim, var, hue=None)               one or more outputs against one dim
    heatmap_figure(ds, x_dim, y_dim, var)               annotated cells, for categorical dims
    breakdown_figure(df_or_ds, by)                       operational / embodied, device / host bars
    layout_map(ds, x_dim, y_dim=None)                    the best tp / pp / dp per point

Infeasible points (``reason != 0``) are masked, never plotted. Dimensions the figure does not show
are reduced over the feasible points (``min`` by default; ``"best"`` takes the value at the design
with the lowest total CO2e) and the title says so. Large (Zarr) grids are reduced lazily or
subsampled with xarray before anything reaches matplotlib.

Over 500 lines: a catalogue, one function per kind of figure (Pareto, surface, line, heatmap,
breakdown, layout map, validation) with their shared labels.
"""

from __future__ import annotations

import functools
import itertools
import json
import logging
import math
import sys
import warnings
from pathlib import Path

import matplotlib

if "matplotlib.pyplot" not in sys.modules:
    matplotlib.use("Agg")
import numpy as np  # noqa: E402
from matplotlib import colors as mcolors  # noqa: E402
from matplotlib import ticker  # noqa: E402
from matplotlib.figure import Figure  # noqa: E402
from matplotlib.lines import Line2D  # noqa: E402
from matplotlib.patches import Patch  # noqa: E402

from . import reductions as red  # noqa: E402
from .names import SHORT, output_units, short_label  # noqa: E402
from .reductions import no_tradeoff  # noqa: E402
from .results import front_objectives, open_result, per_point  # noqa: E402
from .spec import KEYS  # noqa: E402

log = logging.getLogger(__name__)

DPI = 150
STYLE = {
    "font.size": 11,
    "axes.titlesize": 12,
    "axes.titleweight": "bold",
    "axes.labelsize": 11,
    "xtick.labelsize": 10,
    "ytick.labelsize": 10,
    "legend.fontsize": 9.5,
    "legend.framealpha": 0.9,
    "axes.grid": True,
    "grid.alpha": 0.3,
    "grid.linewidth": 0.6,
    "axes.spines.top": False,
    "axes.spines.right": False,
    "figure.facecolor": "white",
    "savefig.facecolor": "white",
}
MAX_CLOUD = 60_000          # points of the dominated cloud drawn at most
MAX_IN_MEMORY = 2_000_000   # grid points loaded at once for a reduction that cannot stay lazy
MAX_SURFACES = 6
LAYOUT_COLS = ("tp", "pp", "dp", "ep")
COMPONENTS = (
    ("operational_device_tco2e", "operational, accelerators", "#d95f02"),
    ("operational_host_tco2e", "operational, hosts", "#fdae6b"),
    ("embodied_device_tco2e", "embodied, accelerators", "#1f5fa8"),
    ("embodied_host_tco2e", "embodied, hosts", "#9ecae1"),
)
GROUP_COLORS = ("#1b9e77", "#d95f02", "#7570b3", "#e7298a", "#66a61e", "#e6ab02", "#a6761d", "#666666")

UNIT_PRETTY = {"1": "", "t CO2e": "t CO₂e", "m3": "m³", "year": "years", "d": "days", "token": "tokens",
               "kg/kWh": "kg CO₂e/kWh", "L/kWh": "L/kWh", "%": "%"}
SHARE = "embodied_share"
class FigureSkipped(Exception):
    """The data hold nothing this figure could show (all infeasible, a constant, a missing variable)."""


# ---------------------------------------------------------------------------------------------
# labels and helpers


def _styled(fn):
    @functools.wraps(fn)
    def wrapper(*args, **kwargs):
        with matplotlib.rc_context(STYLE), warnings.catch_warnings():
            warnings.simplefilter("ignore", RuntimeWarning)
            return fn(*args, **kwargs)
    return wrapper


def _units_of(name, ds=None) -> str:
    if name == SHARE:
        return "%"
    if ds is not None:
        try:
            if name in ds.variables and "units" in ds[name].attrs:
                return str(ds[name].attrs["units"])
        except (AttributeError, TypeError):
            pass
    units = output_units(sampled=True)
    if name in units:
        return units[name][0]
    if name in KEYS:
        return KEYS[name].unit
    return "1"


def short_name(name, ds=None) -> str:
    if name in SHORT:
        return SHORT[name]
    if short_label(name):  # (the registry's: a sampled output's quantile, ...)
        return short_label(name)
    if ds is not None and name in getattr(ds, "variables", {}):
        ln = str(ds[name].attrs.get("long_name", "") or "")
        if ln and len(ln) <= 40:
            return ln
    return name.replace("_", " ")


def label(name, ds=None) -> str:
    """'total CO₂e (t CO₂e)': the short name with the variable's units."""
    unit = _units_of(name, ds)
    unit = UNIT_PRETTY.get(unit, unit)
    base = short_name(name, ds)
    return f"{base} ({unit})" if unit else base


def fmt_num(v, sig=3) -> str:
    """Compact number for ticks and annotations: 1,024 · 0.42 · 3.1e12."""
    if v is None:
        return "n/a"
    if isinstance(v, (str, np.str_)):
        return str(v)
    if isinstance(v, (bool, np.bool_)):
        return "yes" if v else "no"
    v = float(v)
    if not math.isfinite(v):
        return "n/a"
    if v == 0:
        return "0"
    a = abs(v)
    if a >= 1e6 or a < 1e-3:
        m, e = f"{v:.{sig - 1}e}".split("e")
        m = m.rstrip("0").rstrip(".")
        return f"{m}e{int(e)}"
    if float(v).is_integer() and a >= 1:
        return f"{int(v):,}"
    s = f"{v:.{sig}g}"
    if "e" in s:
        s = f"{v:,.0f}"
    return s


def _is_categorical(values) -> bool:
    arr = np.asarray(values)
    return arr.dtype.kind in "OUSb"


def _spans_decades(values, decades=2.0) -> bool:
    a = np.asarray(values, dtype=float)
    a = a[np.isfinite(a)]
    if a.size < 2 or (a <= 0).any():
        return False
    return math.log10(a.max() / a.min()) > decades


def _geometric(values) -> bool:
    """Coordinates better shown on a log axis: positive, > 1 decade, roughly evenly spaced in log."""
    a = np.asarray(values, dtype=float)
    if a.size < 3 or (a <= 0).any() or a.max() / a.min() < 10:
        return False
    r = np.diff(np.log(np.sort(a)))
    d = np.diff(np.sort(a))
    return np.std(r) / np.mean(r) < np.std(d) / np.mean(d)


def _feasible(ds):
    return (ds["reason"] == 0) if "reason" in ds.variables else None


def field(ds, var):
    """A variable (or the derived ``embodied_share`` in %) with infeasible points masked to NaN."""
    if var == SHARE:
        if "embodied_tco2e" not in ds.variables or "total_tco2e" not in ds.variables:
            raise FigureSkipped("no embodied_tco2e / total_tco2e")
        da = 100.0 * ds["embodied_tco2e"] / ds["total_tco2e"]
        da.attrs = {"units": "%", "long_name": SHORT[SHARE]}
    else:
        if var not in ds.variables:
            raise FigureSkipped(f"no variable {var}")
        da = ds[var]
        attrs = dict(da.attrs)
        if da.dtype.kind not in "f":
            da = da.astype(float)
        da.attrs = attrs
    ok = _feasible(ds)
    if ok is not None:
        da = da.where(ok)
    return da.where(np.isfinite(da))


def _is_lazy(ds) -> bool:
    try:
        return any(getattr(v.variable, "chunks", None) is not None for v in ds.data_vars.values())
    except (AttributeError, TypeError):
        return False


def limit(ds, keep=(), max_points=MAX_IN_MEMORY):
    """Stride the grid (dims not in ``keep`` first) until at most ``max_points`` points; (ds, subsampled)."""
    sizes = {d: int(n) for d, n in ds.sizes.items()}
    steps = {d: 1 for d in sizes}
    def count():
        return math.prod(math.ceil(sizes[d] / steps[d]) for d in sizes)
    while count() > max_points:
        pool = [d for d in sizes if d not in keep and math.ceil(sizes[d] / steps[d]) > 1] or \
               [d for d in sizes if math.ceil(sizes[d] / steps[d]) > 1]
        d = max(pool, key=lambda k: math.ceil(sizes[k] / steps[k]))
        steps[d] *= 2
    if all(s == 1 for s in steps.values()):
        return ds, False
    return ds.isel({d: slice(None, None, s) for d, s in steps.items() if s > 1}), True


def _others(ds, keep):
    return [d for d in ds.dims if d not in keep]


def at_best(ds, keep, by="total_tco2e", variables=None):
    """Every variable at the feasible design with the lowest ``by`` over the dims not in ``keep``.

    Returns a Dataset over ``keep`` (NaN where no design is feasible) and whether it was subsampled.
    """
    if by not in ds.variables:
        raise FigureSkipped(f"no variable {by}")
    keep = [d for d in keep if d in ds.dims]
    variables = [v for v in (variables or [v for v in ds.data_vars]) if v in ds.variables or v == SHARE]
    base = [v for v in variables if v != SHARE]
    if SHARE in variables:
        base += [v for v in ("embodied_tco2e", "total_tco2e") if v not in base]
    need = list(dict.fromkeys(base + [by] + (["reason"] if "reason" in ds.variables else [])))
    sub, sampled = limit(ds[need], keep)
    sub = sub.load()
    score = field(sub, by)
    others = _others(sub, keep)
    out = {}
    if not others:
        best = sub
        ok = np.isfinite(score)
    else:
        st = sub.stack(_other=others)
        s = score.stack(_other=others).fillna(np.inf)
        idx = s.argmin("_other")
        best = st.isel(_other=idx)
        ok = np.isfinite(s.min("_other"))
        best = best.drop_vars([c for c in best.coords if c not in keep], errors="ignore")
    for v in variables:
        da = field(best, v) if v in (SHARE,) or v in best.variables else None
        if da is None:
            continue
        out[v] = da.where(ok)
    import xarray as xr

    res = xr.Dataset(out)
    for v in res.data_vars:
        if v in ds.variables:
            res[v].attrs = dict(ds[v].attrs)
    if SHARE in res:
        res[SHARE].attrs = {"units": "%", "long_name": SHORT[SHARE]}
    return res, sampled


def reduce_to(ds, var, keep, reduce="min", by="total_tco2e"):
    """``var`` over the dims ``keep`` (in that order), the rest reduced; returns (DataArray, description)."""
    keep = list(keep)
    others = _others(ds, keep)
    singles = [d for d in others if ds.sizes[d] == 1]
    others = [d for d in others if ds.sizes[d] > 1]
    if singles:
        ds = ds.isel({d: 0 for d in singles})
    if not others:
        sub, sampled = limit(ds, keep)
        da = field(sub, var).transpose(*keep).load()
        return da, ("subsampled grid" if sampled else "")
    names = ", ".join(others)
    if reduce in ("min", "max", "mean"):
        if _is_lazy(ds):
            da = getattr(field(ds, var), reduce)(others).transpose(*keep).load()
            sampled = False
        else:
            sub, sampled = limit(ds, keep)
            da = getattr(field(sub, var), reduce)(others).transpose(*keep).load()
        desc = f"{reduce} over {names}"
    elif reduce == "best":
        res, sampled = at_best(ds, keep, by, [var])
        if var not in res:
            raise FigureSkipped(f"no variable {var}")
        da = res[var].transpose(*keep)
        desc = f"at the design with the lowest {short_name(by)} over {names}"
    else:
        raise ValueError(f"reduce must be min, max, mean or best, not {reduce!r}")
    if sampled:
        desc += " (subsampled grid)"
    return da, desc


def _coord_labels(values):
    return [fmt_num(v) if not isinstance(v, (str, np.str_)) else str(v) for v in np.asarray(values).tolist()]


def _set_numeric_axis(ax, which, values, name):
    """Log axis for geometric coordinates; ticks at the coordinates when there are few of them."""
    vals = np.asarray(values, dtype=float)
    axis = ax.xaxis if which == "x" else ax.yaxis
    if _geometric(vals):
        (ax.set_xscale if which == "x" else ax.set_yscale)("log")
    if len(vals) <= 10:
        axis.set_major_locator(ticker.FixedLocator(vals))
        axis.set_major_formatter(ticker.FixedFormatter(_coord_labels(vals)))
        axis.set_minor_locator(ticker.NullLocator())
    (ax.set_xlabel if which == "x" else ax.set_ylabel)(label(name))


def _pad_limits(ax, xs, ys, frac=0.035):
    """A small margin around a surface so markers at the edges do not sit on the tick labels."""
    for vals, setter, scale in ((xs, ax.set_xlim, ax.get_xscale()), (ys, ax.set_ylim, ax.get_yscale())):
        lo, hi = float(np.min(vals)), float(np.max(vals))
        if scale == "log" and lo > 0:
            f = (hi / lo) ** frac
            setter(lo / f, hi * f)
        elif hi > lo:
            d = (hi - lo) * frac
            setter(lo - d, hi + d)


def _value_axis(ax, which, values):
    if _spans_decades(values):
        (ax.set_xscale if which == "x" else ax.set_yscale)("log")


def _log_colorbar(cb):
    """Plain-number ticks (1, 2, 5, 10, ...) on a log colour bar instead of 2×10¹."""
    cb.ax.yaxis.set_major_locator(ticker.LogLocator(subs=(1.0, 2.0, 5.0)))
    cb.ax.yaxis.set_major_formatter(ticker.FuncFormatter(lambda v, _: fmt_num(v)))
    cb.ax.yaxis.set_minor_formatter(ticker.NullFormatter())


def _title(ax, main, sub=None, width=None):
    """Bold title at the left, a smaller grey subtitle (wrapped to the axes width) under it."""
    if width is None:
        w_in = ax.figure.get_figwidth() * ax.get_position().width
        width = max(40, int(w_in * 72 / (0.55 * 9.5)))
    lines = _wrap(sub, width) if sub else []
    ax.set_title(main, loc="left", pad=6 + 13.5 * len(lines) + (4 if lines else 0))
    if lines:
        ax.annotate("\n".join(lines), (0, 1), xycoords="axes fraction", xytext=(0, 5), textcoords="offset points",
                    ha="left", va="bottom", fontsize=9.5, color="#444444", annotation_clip=False)


def _new_figure(w=8.0, h=5.6, **kw):
    return Figure(figsize=(w, h), dpi=DPI, layout="constrained", **kw)


def _design_label(row, dims, sep=" · "):
    parts = []
    for d in dims:
        v = row[d]
        if d == "layers":
            parts.append(f"{fmt_num(v)} layers")
        elif isinstance(v, (str, np.str_)):  # a categorical dimension's word (hardware, region, ffn, ...)
            parts.append(str(v))
        elif d == "lifespan_years":
            parts.append(f"{fmt_num(v)} y life")
        elif d == "experts":
            parts.append("dense" if float(v) == 1 else f"{fmt_num(v)} experts")
        else:
            parts.append(f"{d} {fmt_num(v)}")
    return sep.join(parts)


# ---------------------------------------------------------------------------------------------
# Pareto fronts


def cloud_frame(cloud, columns, max_points=MAX_CLOUD):
    """Feasible points as a DataFrame with ``columns``; at most ``max_points`` (a fixed-seed sample).

    ``df.attrs["n_feasible"]`` holds how many feasible points there were before sampling (of the
    grid, or of its strided subsample for a grid too large to load).
    """
    import pandas as pd

    if cloud is None:
        return None
    if isinstance(cloud, pd.DataFrame):
        df = cloud
        if "reason" in df:
            df = df[df["reason"] == 0]
    else:
        data_cols = [c for c in columns if c in cloud.data_vars]
        need = list(dict.fromkeys(data_cols + (["reason"] if "reason" in cloud.variables else [])))
        sub, _ = limit(cloud[need], (), MAX_IN_MEMORY)
        sub = sub.load()
        if "reason" in sub.variables:
            sub = sub.where(sub["reason"] == 0)
        df = sub.to_dataframe().reset_index()
        if "reason" in df:
            df = df[df["reason"] == 0]
    cols = [c for c in columns if c in df]
    df = df[cols].copy()
    num = [c for c in cols if df[c].dtype.kind == "f"]
    if num:
        df = df[np.isfinite(df[num]).all(axis=1)]
    n = len(df)
    if n > max_points:
        df = df.sample(max_points, random_state=0)
    df.attrs["n_feasible"] = n
    return df


def _grouper(group, frames):
    """(labels for a frame, ordered label list) for grouping points by ``group``."""
    if group is None:
        return (lambda df: np.array(["all"] * len(df), dtype=object)), ["all"]
    if group == "experts":
        def lab(df):
            return np.where(np.asarray(df["experts"], float) > 1, "MoE (experts > 1)", "dense (experts = 1)")
        return lab, ["dense (experts = 1)", "MoE (experts > 1)"]
    values = []
    for f in frames:
        if f is not None and group in f:
            values.extend(np.asarray(f[group]).tolist())
    order = sorted(set(values), key=lambda v: (isinstance(v, str), v))

    def lab(df):
        return np.array([f"{v}" if isinstance(v, str) else f"{group} = {fmt_num(v)}" for v in df[group]],
                        dtype=object)
    return lab, [f"{v}" if isinstance(v, str) else f"{group} = {fmt_num(v)}" for v in order]


@_styled
def pareto_figure(ds_or_cloud, front_df, x, y, group=None, *, title=None, color=None, dims=None,
                  annotate=True):
    """A Pareto front (bold, markers, a staircase) over the faint cloud of feasible designs.

    ``ds_or_cloud``: the grid Dataset, a DataFrame of points, or None (front only). ``x``, ``y``:
    output names (a ``max:`` prefix is dropped). ``group``: a column to colour by (``experts``
    splits dense vs MoE). ``color``: an optional third output to colour the front markers by.

    Long: one figure drawn step by step (cloud, front, groups, labels, legend); split, the pieces
    would only pass the axes around.
    """
    (x, sx), (y, sy) = red.parse_objective(x), red.parse_objective(y)
    for v in (x, y):
        if v not in front_df:
            raise FigureSkipped(f"the front has no column {v}")
    front = front_df[np.isfinite(front_df[x]) & np.isfinite(front_df[y])].sort_values([x, y])
    if front.empty:
        raise FigureSkipped("the front is empty")
    extra = [c for c in ([group] if group else []) if c not in (x, y)]
    cloud = cloud_frame(ds_or_cloud, [x, y, *extra])
    if group is not None and group not in front:
        group = None
    if cloud is not None and group is not None and group not in cloud:
        cloud = None
    lab, order = _grouper(group, [front, cloud])
    palette = {g: (GROUP_COLORS[i % len(GROUP_COLORS)] if group else "#4c72b0") for i, g in enumerate(order)}
    fig = _new_figure(8.4, 5.8)
    ax = fig.add_subplot()
    handles = []
    n_cloud = 0
    if cloud is not None and len(cloud):
        glab = lab(cloud)
        n_cloud = len(cloud)
        size = 10 if n_cloud < 5000 else 4
        for g in order:
            m = glab == g
            if m.any():
                ax.scatter(cloud[x][m], cloud[y][m], s=size, color=palette[g], alpha=0.18, linewidths=0,
                           rasterized=True, zorder=1)
        total = cloud.attrs.get("n_feasible", n_cloud)
        shown = f"{n_cloud:,} of {total:,} shown" if total > n_cloud else f"{n_cloud:,}"
        handles.append(Line2D([], [], ls="", marker="o", ms=5, color="#888888", alpha=0.45,
                              label=f"feasible designs, faint ({shown})"))
    ax.plot(front[x], front[y], drawstyle="steps-post", color="black", lw=1.3, zorder=3, alpha=0.8)
    band = quantile_band(front, y)
    if band is not None:  # [uncertainty]: each front design's p5–p95 range of the y objective
        ax.fill_between(front[x], band[0], band[1], step="post", color="#4c72b0", alpha=0.16, lw=0, zorder=2)
        ax.vlines(front[x], band[0], band[1], color="#4c72b0", lw=1.0, alpha=0.7, zorder=3)
        handles.append(Patch(color="#4c72b0", alpha=0.3, label=f"p5–p95 of {short_name(band[2])} over the samples"))
    flab = lab(front)
    if color is not None and color in front:
        sc = ax.scatter(front[x], front[y], c=front[color], cmap="viridis", s=48, edgecolors="black",
                        linewidths=0.7, zorder=4)
        fig.colorbar(sc, ax=ax, label=label(color), shrink=0.9)
    else:
        for g in order:
            m = flab == g
            if m.any():
                ax.scatter(front[x][m], front[y][m], s=48, color=palette[g], edgecolors="black", linewidths=0.7,
                           zorder=4)
    handles.append(Line2D([], [], ls="-", lw=1.3, marker="o", ms=7, color="black",
                          mfc="white" if (group or color) else palette[order[0]], mec="black",
                          label=f"Pareto front ({len(front)} designs)"))
    if group and color is None:
        glab_all = set(flab) | (set(lab(cloud)) if cloud is not None and len(cloud) else set())
        for g in order:
            if g in glab_all:
                handles.append(Patch(color=palette[g], label=f"{g} ({int((flab == g).sum())} on the front)"))
    both = np.concatenate([front[x].to_numpy(float), cloud[x].to_numpy(float) if cloud is not None else []])
    _value_axis(ax, "x", both)
    both = np.concatenate([front[y].to_numpy(float), cloud[y].to_numpy(float) if cloud is not None else []])
    _value_axis(ax, "y", both)
    for a, which in ((ax.xaxis, "x"), (ax.yaxis, "y")):
        if (ax.get_xscale() if which == "x" else ax.get_yscale()) == "log":
            a.set_major_formatter(ticker.FuncFormatter(lambda t, _: fmt_num(t)))
    ax.set_xlabel(label(x))
    ax.set_ylabel(label(y))
    ab = []
    if annotate and dims:
        show = [d for d in dims if d in front and front[d].nunique() > 1] or [d for d in dims if d in front][:3]
        ends = [front.index[0]] if len(front) == 1 else [front.index[0], front.index[-1]]
        ux, uy = (UNIT_PRETTY.get(_units_of(v), _units_of(v)) for v in (x, y))
        for k, i in enumerate(ends):
            row = front.loc[i]
            tag = "AB"[k]
            ax.annotate(tag, (row[x], row[y]), xytext=(7, 5), textcoords="offset points", fontsize=10,
                        fontweight="bold", zorder=6)
            best = short_name(x) if k == 0 else short_name(y)
            ab.append(Line2D([], [], ls="", marker=f"$\\mathbf{{{tag}}}$", ms=8, color="black",
                             label=f"lowest {best}: {_design_label(row, show)}\n"
                                   f"{fmt_num(row[x])} {ux}, {fmt_num(row[y])} {uy}"))
    if ab:
        m = max(len(handles), len(ab))
        blank = Line2D([], [], ls="", label=" ")
        entries = handles + [blank] * (m - len(handles)) + ab + [blank] * (m - len(ab))
        fig.legend(handles=entries, loc="outside lower center", ncol=2, frameon=False, columnspacing=2.5)
    else:
        fig.legend(handles=handles, loc="outside lower center", ncol=min(3, len(handles)), frameon=False)
    sub = {(1, 1): "lower left is better", (-1, -1): "upper right is better", (1, -1): "upper left is better",
           (-1, 1): "lower right is better"}[(int(sx), int(sy))]
    if group == "experts":
        sub += "; colour: dense vs mixture-of-experts"
    elif group:
        sub += f"; colour: {short_name(group)}"
    _title(ax, title or f"Pareto front: {short_name(y)} vs {short_name(x)}", sub)
    return fig


# ---------------------------------------------------------------------------------------------
# surfaces, lines, heatmaps


def quantile_band(front, y):
    """(p5, p95, the output) of a front's y objective when the study sampled it: ``y`` is an output
    with ``_p5``/``_p95`` columns, or itself a quantile or mean of one; else None."""
    from .names import quantile_base
    base = quantile_base(y) or y
    lo, hi = f"{base}_p5", f"{base}_p95"
    if lo in front and hi in front and np.isfinite(front[lo]).any():
        return front[lo].to_numpy(float), front[hi].to_numpy(float), base
    return None


def _marks(ax, marks):
    """marks: [(x, y, text)]: reference points (e.g. a paper's figure) drawn as labelled diamonds."""
    for mx, my, txt in marks or []:
        ax.plot([mx], [my], marker="D", ms=8, color="#e41a1c", mec="white", mew=1.2, zorder=6, ls="")
        ax.annotate(txt, (mx, my), xytext=(8, 8), textcoords="offset points", fontsize=9, color="#b30000",
                    bbox=dict(boxstyle="round,pad=0.2", fc="white", ec="none", alpha=0.85), zorder=6)


@_styled
def surface_figure(ds, x_dim, y_dim, var, reduce="min", *, by="total_tco2e", marks=None, title=None, cmap=None):
    """Filled contours of ``var`` over two numeric dims; other dims reduced (``min``/``best``/...)."""
    da, desc = reduce_to(ds, var, [y_dim, x_dim], reduce, by)
    z = np.ma.masked_invalid(da.values.astype(float))
    if z.count() == 0:
        raise FigureSkipped(f"no feasible {var} over {x_dim} × {y_dim}")
    dropped = []
    for dim, axis in ((y_dim, 1), (x_dim, 0)):
        keep = ~np.ma.getmaskarray(z).all(axis=axis)
        if not keep.all():
            dropped.append(f"{int((~keep).sum())} of {keep.size} {dim} values with no feasible design left out")
            da = da.isel({dim: np.flatnonzero(keep)})
            z = np.ma.masked_invalid(da.values.astype(float))
    ys = np.asarray(da[y_dim].values, float)
    xs = np.asarray(da[x_dim].values, float)
    fig = _new_figure(8.0, 5.8)
    ax = fig.add_subplot()
    zmin, zmax = float(z.min()), float(z.max())
    cmap = matplotlib.colormaps[cmap or "viridis"].with_extremes(bad="#dddddd")
    log = _spans_decades(z.compressed())
    const = not (zmax > zmin * (1 + 1e-9) if zmin > 0 else zmax > zmin)
    if const or z.count() < 4 or min(z.shape) < 2:
        norm = mcolors.LogNorm(zmin, zmax) if log else (None if not const else mcolors.Normalize(zmin - 1, zmax + 1))
        cs = ax.pcolormesh(xs, ys, z, cmap=cmap, norm=norm, shading="nearest")
    elif log:
        levels = np.geomspace(zmin, zmax, 14)
        cs = ax.contourf(xs, ys, z, levels=levels, cmap=cmap, norm=mcolors.LogNorm(zmin, zmax))
        ax.contour(xs, ys, z, levels=levels[::2], colors="white", linewidths=0.6, alpha=0.7)
    else:
        levels = ticker.MaxNLocator(12).tick_values(zmin, zmax)
        cs = ax.contourf(xs, ys, z, levels=levels, cmap=cmap)
        ax.contour(xs, ys, z, levels=levels[::2], colors="white", linewidths=0.6, alpha=0.7)
    ax.grid(False)
    if np.ma.getmaskarray(z).any():
        bad = np.ma.masked_where(~np.ma.getmaskarray(z), np.ones(z.shape))
        ax.pcolormesh(xs, ys, bad, cmap=mcolors.ListedColormap(["#d9d9d9"]), shading="nearest", zorder=0.5)
    if z.size <= 900:
        gx, gy = np.meshgrid(xs, ys)
        ok = ~np.ma.getmaskarray(z)
        ax.scatter(gx[ok], gy[ok], s=6, color="black", alpha=0.35, linewidths=0, zorder=3, clip_on=False)
        if (~ok).any():
            ax.scatter(gx[~ok], gy[~ok], s=14, marker="x", color="#aa0000", linewidths=0.8, zorder=3)
    iy, ix = np.unravel_index(np.ma.argmin(z), z.shape)
    if var != SHARE:  # the lowest value: the best cell of a cost surface
        ax.plot(xs[ix], ys[iy], marker="*", ms=15, color="#ffdd00", mec="black", mew=0.8, zorder=5, ls="",
                clip_on=False)
        right, top = ix >= len(xs) / 2, iy >= len(ys) / 2
        ax.annotate(f"min {fmt_num(z[iy, ix])}", (xs[ix], ys[iy]), xytext=(-10 if right else 10, -10 if top else 10),
                    textcoords="offset points", ha="right" if right else "left", va="top" if top else "bottom",
                    fontsize=9, zorder=5, bbox=dict(boxstyle="round,pad=0.2", fc="white", ec="none", alpha=0.85))
    _marks(ax, marks)
    _set_numeric_axis(ax, "x", xs, x_dim)
    _set_numeric_axis(ax, "y", ys, y_dim)
    _pad_limits(ax, xs, ys)
    cb = fig.colorbar(cs, ax=ax, label=label(var, ds if var in getattr(ds, "variables", {}) else None))
    if log:
        _log_colorbar(cb)
    notes = ([desc] if desc else []) + dropped
    if np.ma.getmaskarray(z).any():
        notes.append("grey / ×: no feasible design")
    if const:
        notes.append(f"constant {fmt_num(zmin)}")
    _title(ax, title or f"{short_name(var)} over {short_name(x_dim)} × {short_name(y_dim)}", "; ".join(notes) or None)
    return fig


@_styled
def line_figure(ds, x_dim, var, hue=None, reduce="min", *, by="total_tco2e", marks=None, title=None,
                annotate_layout=None):
    """``var`` (a name or a list: one panel each) against ``x_dim``; one line per ``hue`` value.

    Other dims are reduced (``min``, or ``best``: at the lowest-``by`` design). With tp/pp in the
    data and no hue, the best layout is written at each point of the first panel.

    Long: one figure drawn step by step (panels, lines, marks, labels); split, the pieces would only
    pass the axes around.
    """
    variables = [var] if isinstance(var, str) else list(var)
    hue = hue if hue in getattr(ds, "dims", {}) and hue != x_dim else None
    keep = [x_dim] + ([hue] if hue else [])
    panels = []
    desc = ""
    for v in variables:
        try:
            da, d = reduce_to(ds, v, keep, reduce, by)
        except FigureSkipped:
            continue
        if np.isfinite(da.values).any():
            panels.append((v, da))
            desc = desc or d
    if not panels:
        raise FigureSkipped(f"no feasible values of {', '.join(variables)}")
    n = len(panels)
    fig = _new_figure(8.0, 1.5 + 2.45 * n)
    axes = fig.subplots(n, 1, sharex=True, squeeze=False)[:, 0]
    xcoord = ds[x_dim].values
    categorical = _is_categorical(xcoord)
    xpos = np.arange(len(xcoord)) if categorical else np.asarray(xcoord, float)
    hues = list(ds[hue].values) if hue else [None]
    banded = False
    for ax, (v, da) in zip(axes, panels):
        band = line_band(ds, v, keep, reduce, by)
        for i, h in enumerate(hues):
            line = da.sel({hue: h}) if hue else da
            vals = np.asarray(line.transpose(x_dim).values, float)
            lab = (str(h) if _is_categorical([h]) else f"{short_name(hue)} = {fmt_num(h)}") if hue else None
            color = GROUP_COLORS[i % len(GROUP_COLORS)] if hue else "#1f5fa8"
            ax.plot(xpos, vals, marker="o", ms=5, lw=1.8, color=color, label=lab)
            if band is not None:  # [uncertainty]: the line's designs' p5-p95 over the samples
                lo, hi = ((b.sel({hue: h}) if hue else b).transpose(x_dim).values for b in band)
                ax.fill_between(xpos, np.asarray(lo, float), np.asarray(hi, float), color=color, alpha=0.15, lw=0)
                banded = True
        _value_axis(ax, "y", np.concatenate([np.ravel(da.values)] + ([np.ravel(b.values) for b in band]
                                                                    if band is not None else [])))
        if ax.get_yscale() == "log":
            ax.yaxis.set_major_formatter(ticker.FuncFormatter(lambda t, _: fmt_num(t)))
        ax.set_ylabel("\n".join(_wrap(label(v, ds), 26)))
        if hue and ax is axes[0]:
            ax.legend(loc="best", title=short_name(hue))
    ax0 = axes[0]
    want_layout = annotate_layout if annotate_layout is not None else (
        hue is None and all(c in ds.variables for c in ("tp", "pp")))
    if want_layout:
        # layouts may be grid dimensions (every layout evaluated) rather than variables (best per point)
        names = {}
        for c in ("tp", "pp", "dp", "ep"):
            names[c] = c
            if c in ds.dims and by in ds:
                names[c] = f"{c}__layout"
                ds = ds.assign({names[c]: ds[c].broadcast_like(ds[by])})
        try:
            lay, _ = at_best(ds, [x_dim], by, [names[c] for c in ("tp", "pp", "dp", "ep")])
            lay = {c: lay[names[c]] for c in ("tp", "pp", "dp", "ep") if names[c] in lay}
            _, da0 = panels[0]
            y0 = np.asarray(da0.transpose(x_dim).values, float)
            for xp, yp, k in zip(xpos, y0, range(len(xpos))):
                if not np.isfinite(yp) or not np.isfinite(float(lay["tp"].values[k])):
                    continue
                txt = "tp{} pp{}".format(fmt_num(lay["tp"].values[k]), fmt_num(lay["pp"].values[k]))
                if "ep" in lay and float(lay["ep"].values[k]) > 1:
                    txt += " ep{}".format(fmt_num(lay["ep"].values[k]))
                ax0.annotate(txt, (xp, yp), xytext=(0, 9), textcoords="offset points", ha="center", fontsize=8,
                             color="#333333")
            ax0.margins(y=0.18)
        except FigureSkipped:
            pass
    last = axes[-1]
    if categorical:
        last.set_xticks(xpos, _coord_labels(xcoord), rotation=30 if max(len(str(c)) for c in xcoord) > 6 else 0,
                        ha="right" if max(len(str(c)) for c in xcoord) > 6 else "center")
        last.set_xlabel(label(x_dim))
    else:
        _set_numeric_axis(last, "x", xpos, x_dim)
    for ax in axes[:-1]:
        ax.tick_params(labelbottom=False)
        ax.set_xlabel("")
    for ax in axes:
        _marks(ax, [m for m in (marks or []) if len(m) == 3 and ax is axes[0]])
    head = title or (f"{short_name(panels[0][0])} vs {short_name(x_dim)}" if n == 1
                     else f"{', '.join(short_name(v) for v, _ in panels)} vs {short_name(x_dim)}")
    if banded:
        desc = "; ".join(filter(None, [desc, "band: p5–p95 over the uncertainty samples"]))
    _title(ax0, _shorten(head, 70), desc or None)
    return fig


def line_band(ds, var, keep, reduce="min", by="total_tco2e"):
    """(p5, p95) of ``var`` over ``keep`` at the designs a line of ``var`` shows, when the study
    sampled it (``var_p5``/``var_p95`` in ``ds``; a quantile or mean of an output bands its output):
    the design of least ``var`` for ``reduce = "min"``, of least ``by`` for ``"best"``; else None."""
    from .names import quantile_base
    base = quantile_base(var) or var
    lo, hi = f"{base}_p5", f"{base}_p95"
    if lo not in getattr(ds, "variables", {}) or hi not in ds.variables or reduce not in ("min", "best"):
        return None
    try:
        res, _ = at_best(ds, keep, var if reduce == "min" else by, [lo, hi])
    except FigureSkipped:
        return None
    if lo not in res or not np.isfinite(res[lo].values).any():
        return None
    return res[lo], res[hi]


def _wrap(text, width):
    import textwrap

    return textwrap.wrap(text, width) or [text]


def _shorten(text, n):
    return text if len(text) <= n else text[: n - 1] + "…"


@_styled
def heatmap_figure(ds, x_dim, y_dim, var, reduce="min", *, by="total_tco2e", title=None, cmap=None, fmt=None,
                   log=None):
    """Annotated cells of ``var`` over two (typically categorical) dims; other dims reduced."""
    da, desc = reduce_to(ds, var, [y_dim, x_dim], reduce, by)
    z = np.ma.masked_invalid(da.values.astype(float))
    if z.count() == 0:
        raise FigureSkipped(f"no feasible {var} over {x_dim} × {y_dim}")
    xl, yl = _coord_labels(da[x_dim].values), _coord_labels(da[y_dim].values)
    nx, ny = len(xl), len(yl)
    w = min(14.0, max(6.5, 1.6 + 1.05 * nx + 0.06 * max(len(s) for s in yl)))
    h = min(11.0, max(4.0, 1.9 + 0.62 * ny))
    fig = _new_figure(w, h)
    ax = fig.add_subplot()
    ax.grid(False)
    cmap = matplotlib.colormaps[cmap or "YlOrRd"].with_extremes(bad="#e6e6e6")
    if log is None:
        log = var != SHARE and _spans_decades(z.compressed(), 1.0)
    zmin, zmax = float(z.min()), float(z.max())
    if zmax <= zmin:
        zmax = zmin + (abs(zmin) * 1e-6 or 1.0)
    norm = mcolors.LogNorm(zmin, zmax) if log and zmin > 0 else mcolors.Normalize(zmin, zmax)
    im = ax.imshow(z, cmap=cmap, norm=norm, aspect="auto", interpolation="nearest")
    why = _masked_reasons(ds, x_dim, y_dim) if np.ma.getmaskarray(z).any() else None
    for i in range(ny):
        for j in range(nx):
            if np.ma.is_masked(z[i, j]):
                ax.text(j, i, "\n".join(_wrap(_why_text(why, i, j), 12)), ha="center", va="center", fontsize=8,
                        color="#666666")
                continue
            val = float(z[i, j])
            rgba = cmap(norm(val))
            lum = 0.299 * rgba[0] + 0.587 * rgba[1] + 0.114 * rgba[2]
            ax.text(j, i, (fmt or fmt_num)(val), ha="center", va="center", fontsize=9.5,
                    color="black" if lum > 0.5 else "white")
    long_x = max(len(s) for s in xl) > 6
    ax.set_xticks(np.arange(nx), xl, rotation=35 if long_x else 0, ha="right" if long_x else "center")
    ax.set_yticks(np.arange(ny), yl)
    ax.set_xlabel(label(x_dim))
    ax.set_ylabel(label(y_dim))
    cb = fig.colorbar(im, ax=ax, label=label(var, ds if var in getattr(ds, "variables", {}) else None))
    if log:
        _log_colorbar(cb)
    _title(ax, title or f"{short_name(var)} by {short_name(y_dim)} and {short_name(x_dim)}", desc or None)
    return fig


# ---------------------------------------------------------------------------------------------
# breakdown bars


def _breakdown_frame(df_or_ds, by, best_by="total_tco2e"):
    """A DataFrame of designs (rows) with the four component columns and a 'label' column."""
    import pandas as pd

    comps = [c for c, _, _ in COMPONENTS]
    if isinstance(df_or_ds, pd.DataFrame):
        df = df_or_ds.copy()
        if "reason" in df:
            df = df[df["reason"] == 0]
        by = [by] if isinstance(by, str) else list(by or [])
        if not by:
            by = [c for c in df.columns if c not in comps and c in SHORT and df[c].dtype.kind in "OUSb"]
        vary = [d for d in by if d in df and df[d].nunique() > 1] or [d for d in by if d in df]
        df["label"] = ([_design_label(r, vary) for _, r in df.iterrows()] if vary
                       else [f"#{i + 1}" for i in range(len(df))])
        return df, ""
    by = [by] if isinstance(by, str) else list(by)
    best, sampled = at_best(df_or_ds, by, best_by, comps + [best_by])
    df = best.to_dataframe().reset_index()
    df["label"] = [_design_label(r, by) for _, r in df.iterrows()]
    others = [d for d in df_or_ds.dims if d not in by and df_or_ds.sizes[d] > 1]
    desc = f"each bar: the design with the lowest {short_name(best_by)} over {', '.join(others)}" if others else ""
    if sampled:
        desc += " (subsampled grid)"
    return df, desc


@_styled
def breakdown_figure(df_or_ds, by=None, *, title=None, best_by="total_tco2e", max_bars=30):
    """Stacked horizontal bars: operational / embodied CO2e of accelerators and hosts, per design.

    ``df_or_ds``: a DataFrame of designs (e.g. top.csv; ``by`` names the columns used as labels) or
    the grid Dataset (``by``: one or two dims; each bar is the best design for that value). Left:
    t CO2e; right: the shares in %.
    """
    df, desc = _breakdown_frame(df_or_ds, by, best_by)
    comps = [c for c, _, _ in COMPONENTS if c in df]
    if len(comps) < 2:
        raise FigureSkipped("no component columns")
    vals = df[comps].to_numpy(float)
    ok = np.isfinite(vals).all(axis=1)
    df, vals = df[ok].head(max_bars), vals[ok][:max_bars]
    if not len(df):
        raise FigureSkipped("no feasible design with every component")
    labels = list(df["label"])
    totals = vals.sum(axis=1)
    n = len(df)
    lw = max(len(s) for s in labels)
    fig = _new_figure(min(15.0, 9.0 + 0.07 * lw), max(3.6, 1.6 + 0.42 * n))
    gs = fig.add_gridspec(1, 2, width_ratios=[2.3, 1])
    ax, ax2 = fig.add_subplot(gs[0]), fig.add_subplot(gs[1])
    ypos = np.arange(n)[::-1]
    left = np.zeros(n)
    left2 = np.zeros(n)
    share = vals / np.where(totals > 0, totals, np.nan)[:, None] * 100
    for k, c in enumerate(comps):
        _, name, col = next(t for t in COMPONENTS if t[0] == c)
        ax.barh(ypos, vals[:, k], left=left, color=col, edgecolor="white", linewidth=0.5, height=0.7, label=name)
        ax2.barh(ypos, share[:, k], left=left2, color=col, edgecolor="white", linewidth=0.5, height=0.7)
        left += vals[:, k]
        left2 += np.nan_to_num(share[:, k])
    emb = sum(vals[:, k] for k, c in enumerate(comps) if c.startswith("embodied"))
    for yp, t, e in zip(ypos, totals, emb):
        ax.text(t, yp, f"  {fmt_num(t)} t · emb. {fmt_num(100 * e / t if t else np.nan, 2)} %", va="center",
                fontsize=8.5, color="#333333")
    ax.set_xlim(0, totals.max() * 1.32)
    ax.set_yticks(ypos, labels)
    ax2.set_yticks(ypos, [""] * n)
    ax2.set_xlim(0, 100)
    ax.set_xlabel("CO₂e (t CO₂e)")
    ax2.set_xlabel("share of total (%)")
    ax.set_ylabel("design" if not isinstance(by, str) or not by else short_name(by))
    if isinstance(by, (list, tuple)) and len(by) >= 1:
        ax.set_ylabel(" · ".join(short_name(b) for b in by) if len(by) <= 2 else "design")
    for a in (ax, ax2):
        a.grid(axis="y", visible=False)
    fig.legend(handles=[Patch(color=c, label=n) for k, n, c in COMPONENTS if k in comps], loc="outside lower center",
               ncol=4, frameon=False, fontsize=9)
    _title(ax, title or "CO₂e breakdown: operational vs embodied, accelerators vs hosts", desc or None)
    return fig


# ---------------------------------------------------------------------------------------------
# layout maps


def _masked_reasons(ds, x_dim, y_dim):
    """For cells with nothing to show: the least reason code over the cell's points (y × x), or None."""
    if "reason" not in ds.variables:
        return None
    try:
        r = ds["reason"]
        others = [d for d in r.dims if d not in (x_dim, y_dim)]
        rr = r.where(r > 0)
        return (rr.min(others) if others else rr).transpose(y_dim, x_dim).values
    except Exception:  # noqa: BLE001  (a label only)
        return None


def _layout_where_total_unknown(ds, x_dim, y_dim):
    """{tp, pp: y × x}: the fastest layout of each cell's missing_data points (a figure the total needs
    is unpublished, the layout is known), NaN elsewhere; None without step times."""
    from kernels.reasons import CODE

    if not all(v in ds.variables for v in ("step_time_s", "reason", "tp", "pp")):
        return None
    sub = ds[["step_time_s", "tp", "pp"]].where((ds["reason"] == CODE["missing_data"]) & np.isfinite(ds["step_time_s"]))
    others = [d for d in sub.dims if d not in (x_dim, y_dim)]
    if others:
        st = sub.stack(_other=others)
        idx = st["step_time_s"].fillna(np.inf).argmin("_other")
        sub = st.isel(_other=idx)
    return {c: sub[c].where(np.isfinite(sub["step_time_s"])).transpose(y_dim, x_dim).values for c in ("tp", "pp")}


def _why_text(why, i, j) -> str:
    """The label of an empty cell: its reason ('missing data' where a figure is unpublished)."""
    from kernels.reasons import REASONS

    if why is not None and np.isfinite(why[i, j]):
        return REASONS.get(int(why[i, j]), "infeasible").replace("_", " ")
    return "infeasible"


@_styled
def layout_map(ds, x_dim, y_dim=None, *, by="total_tco2e", title=None):
    """The parallelism layout of the best design per point (when the study optimised layouts).

    Two dims: an annotated heatmap, cells 'tp·pp' coloured by tp×pp (devices per model replica).
    One dim: tp, pp, dp (and ep when used) against the dim, log₂ axis.

    Long: one figure drawn step by step (cells, their layouts or reasons, labels); split, the pieces
    would only pass the axes around.
    """
    if not all(c in ds.variables for c in ("tp", "pp")):
        raise FigureSkipped("no layout variables (tp, pp) in the result")
    keep = [x_dim] + ([y_dim] if y_dim else [])
    cols = [c for c in LAYOUT_COLS if c in ds.variables] + (["mfu"] if "mfu" in ds.variables else [])
    lay, sampled = at_best(ds, keep, by, cols)
    if not np.isfinite(lay["tp"].values).any():
        raise FigureSkipped("no feasible layout")
    others = [d for d in ds.dims if d not in keep and ds.sizes[d] > 1]
    desc = f"layout of the design with the lowest {short_name(by)}" + (f" over {', '.join(others)}" if others else "")
    if sampled:
        desc += " (subsampled grid)"
    if y_dim is None:
        fig = _new_figure(8.0, 5.0)
        ax = fig.add_subplot()
        xc = ds[x_dim].values
        cat = _is_categorical(xc)
        xpos = np.arange(len(xc)) if cat else np.asarray(xc, float)
        styles = {"tp": ("#1f5fa8", "o", 11, 4.0), "pp": ("#d95f02", "s", 7, 2.2), "dp": ("#1b9e77", "^", 7, 1.8),
                  "ep": ("#7570b3", "D", 5, 1.4)}
        top = 1.0
        for c in ("tp", "pp", "dp", "ep"):
            if c not in lay:
                continue
            v = np.asarray(lay[c].transpose(x_dim).values, float)
            if c == "ep" and not (v[np.isfinite(v)] > 1).any():
                continue
            col, mk, ms, lw = styles[c]
            ax.plot(xpos, v, marker=mk, ms=ms, lw=lw, color=col, label=short_name(c), alpha=0.55 if c == "tp" else 1)
            top = max(top, np.nanmax(v))
        ax.set_yscale("log", base=2)
        ax.yaxis.set_major_locator(ticker.LogLocator(base=2))
        ax.yaxis.set_major_formatter(ticker.FuncFormatter(lambda t, _: fmt_num(t)))
        ax.set_ylim(0.7, top * 1.6)
        ax.set_ylabel("parallel degree")
        if cat:
            ax.set_xticks(xpos, _coord_labels(xc))
            ax.set_xlabel(label(x_dim))
        else:
            _set_numeric_axis(ax, "x", xpos, x_dim)
        ax.legend(loc="upper left")
        _title(ax, title or f"best parallelism layout vs {short_name(x_dim)}", desc)
        return fig
    tp = lay["tp"].transpose(y_dim, x_dim).values
    pp = lay["pp"].transpose(y_dim, x_dim).values
    ep = lay["ep"].transpose(y_dim, x_dim).values if "ep" in lay else np.ones_like(tp)
    mfu = lay["mfu"].transpose(y_dim, x_dim).values if "mfu" in lay else np.full_like(tp, np.nan)
    mp = np.ma.masked_invalid(np.log2(tp * pp))
    xl, yl = _coord_labels(lay[x_dim].values), _coord_labels(lay[y_dim].values)
    nx, ny = len(xl), len(yl)
    lines = 2 + int(np.isfinite(mfu).any()) + int((ep[np.isfinite(ep)] > 1).any())
    fig = _new_figure(min(14.0, max(7.0, 2.2 + 1.05 * nx)), min(12.0, max(4.2, 1.9 + (0.3 + 0.2 * lines) * ny)))
    ax = fig.add_subplot()
    ax.grid(False)
    cmap = matplotlib.colormaps["Blues"].with_extremes(bad="#e6e6e6")
    vmax = max(1.0, float(mp.max()) if mp.count() else 1.0)
    origin = "upper" if _is_categorical(lay[y_dim].values) else "lower"
    im = ax.imshow(mp, cmap=cmap, vmin=0, vmax=vmax + 0.5, aspect="auto", interpolation="nearest", origin=origin)
    why = known = None
    if np.ma.getmaskarray(mp).any():
        why = _masked_reasons(ds, x_dim, y_dim)
        known = _layout_where_total_unknown(ds, x_dim, y_dim)
    for i in range(ny):
        for j in range(nx):
            if np.ma.is_masked(mp[i, j]):
                if known and why is not None and _why_text(why, i, j) == "missing data" and \
                        np.isfinite(known["tp"][i, j]):
                    txt = f"tp {fmt_num(known['tp'][i, j])}\npp {fmt_num(known['pp'][i, j])}\nCO₂e unknown"
                else:
                    txt = "\n".join(_wrap(_why_text(why, i, j), 12))
                ax.text(j, i, txt, ha="center", va="center", fontsize=8, color="#666666")
                continue
            txt = f"tp {fmt_num(tp[i, j])}\npp {fmt_num(pp[i, j])}"
            if np.isfinite(ep[i, j]) and ep[i, j] > 1:
                txt += f"\nep {fmt_num(ep[i, j])}"
            if np.isfinite(mfu[i, j]):
                txt += f"\nMFU {mfu[i, j]:.2f}"
            dark = mp[i, j] > 0.6 * (vmax + 0.5)
            ax.text(j, i, txt, ha="center", va="center", fontsize=8.5, color="white" if dark else "black")
    long_x = max(len(s) for s in xl) > 6
    ax.set_xticks(np.arange(nx), xl, rotation=35 if long_x else 0, ha="right" if long_x else "center")
    ax.set_yticks(np.arange(ny), yl)
    ax.set_xlabel(label(x_dim))
    ax.set_ylabel(label(y_dim))
    cb = fig.colorbar(im, ax=ax, label="tp × pp (devices per model replica)")
    cb.set_ticks(np.arange(0, int(vmax) + 1))
    cb.set_ticklabels([fmt_num(2 ** k) for k in range(int(vmax) + 1)])
    _title(ax, title or f"best parallelism layout over {short_name(y_dim)} × {short_name(x_dim)}", desc)
    return fig


# ---------------------------------------------------------------------------------------------
# validation studies


@_styled
def validation_figure(df, *, title=None, max_rows=60):
    """Signed error (%) of each prediction against its published figure, one bar per case · quantity."""
    df = df[np.isfinite(df["error_pct"].astype(float))].head(max_rows)
    if df.empty:
        raise FigureSkipped("no validation rows with an error")
    labels = [f"{c} · {q}" for c, q in zip(df["case"], df["quantity"])]
    err = df["error_pct"].to_numpy(float)
    n = len(df)
    fig = _new_figure(min(15.0, 7.5 + 0.075 * max(len(s) for s in labels)), max(3.5, 1.6 + 0.3 * n))
    ax = fig.add_subplot()
    ypos = np.arange(n)[::-1]
    col = np.where(np.abs(err) <= 10, "#1b9e77", np.where(np.abs(err) <= 25, "#e6ab02", "#d95f02"))
    ax.barh(ypos, err, color=col, height=0.7)
    ax.axvline(0, color="black", lw=0.8)
    lim = max(5.0, float(np.nanmax(np.abs(err))) * 1.3)
    ax.set_xlim(-lim, lim)
    for yp, e in zip(ypos, err):
        ax.text(e + (lim * 0.015 if e >= 0 else -lim * 0.015), yp, f"{e:+.1f} %", va="center",
                ha="left" if e >= 0 else "right", fontsize=8)
    ax.set_yticks(ypos, labels, fontsize=8.5)
    ax.set_ylim(-0.7, n - 0.3)
    ax.set_xlabel("signed error of the prediction (%)")
    ax.set_ylabel("case · quantity")
    ax.grid(axis="y", visible=False)
    fig.legend(handles=[Patch(color="#1b9e77", label="|error| ≤ 10 %"), Patch(color="#e6ab02", label="≤ 25 %"),
                        Patch(color="#d95f02", label="> 25 %")], loc="outside lower center", ncol=3, frameon=False)
    _title(ax, title or "Predictions beside published figures", "(predicted − published) / published")
    return fig


# ---------------------------------------------------------------------------------------------
# choosing figures for a result folder


def _dims_of(res):
    if res.dataset is not None:
        return {d: np.asarray(res.dataset[d].values) for d in res.dataset.dims}
    return {d: np.asarray(v) for d, v in (res.summary.get("dims") or {}).items()}


def _xy(objectives):
    """(x, y, colour) from a front's objectives: CO2e / cost on x, quality on y."""
    names = [red.parse_objective(o)[0] for o in objectives]
    costly = [n for n in names if n.endswith("tco2e") or n in ("energy_mwh", "train_days", "water_m3")]
    if len(names) >= 2 and costly and costly[0] != names[0]:
        x = costly[0]
        y = next(n for n in names if n != x)
    else:
        x, y = names[0], names[1]
    rest = [n for n in names if n not in (x, y)]
    return x, y, (rest[0] if rest else None)


def _has(ds, var):
    if ds is None or var not in ds.variables:
        return False
    return True


def plan_figures(res) -> list[dict]:
    """The figures worth drawing for a result: [{kind, name, caption, make}] (make() → Figure).

    Long: one decision list, which figure suits which result, read top to bottom.
    """
    ds = res.dataset
    dims = _dims_of(res)
    cat = [d for d, v in dims.items() if _is_categorical(v) and len(v) >= 2]
    num = [d for d, v in dims.items() if not _is_categorical(v) and len(v) >= 2]
    num3 = [d for d in num if len(dims[d]) >= 3]
    main = "total_tco2e" if (ds is None or _has(ds, "total_tco2e")) else None
    layout_vars = _has(ds, "tp") and _has(ds, "pp") and res.summary.get("layout") == "best"
    # a fixed-layout grid whose layouts are dimensions (every layout of a model): the best per x
    layout_dims = "tp" in dims and "pp" in dims
    plans = []

    def add(kind, name, caption, make):
        plans.append({"kind": kind, "name": name, "caption": caption, "make": make})

    vfile = Path(res.out_dir) / "validation.csv" if res.out_dir is not None else None
    if vfile is not None and vfile.exists():
        import pandas as pd

        add("validation", "validation_errors", "Signed error of each prediction against the published figure.",
            functools.partial(validation_figure, pd.read_csv(vfile)))
    marks = ((res.summary.get("spec") or {}).get("study") or {}).get("marks") or []

    def marks_for(a, b, var):
        """Published points with both coordinates; those naming outputs only on that output's figure."""
        out = []
        for m in marks:
            if a not in m or (b is not None and b not in m):
                continue
            named = [k for k in m if k not in dims and k != "label"]
            if named and var not in named:
                continue
            y = m[b] if b is not None else m.get(var)
            if y is None:
                continue
            out.append((m[a], y, m.get("label", "")))
        return out

    # Pareto fronts
    group = "experts" if "experts" in dims and len(dims["experts"]) > 1 else (
        next((d for d in cat if len(dims[d]) <= 8), None))
    for fname, objectives in front_objectives(res).items():
        df = res.pareto.get(fname)
        if df is None or len(objectives) < 2 or no_tradeoff(df, objectives):  # (the report says so)
            continue
        x, y, color = _xy(objectives)
        g = group if color is None else None
        cap = (f"Pareto front of {short_name(y)} against {short_name(x)} ({len(df)} designs, bold)"
               + (" over every feasible design of the grid (faint)" if ds is not None else "")
               + (f"; colour: {short_name(g)}" if g else "")
               + (f"; marker colour: {short_name(color)}" if color else "")
               + ".")
        add("pareto", f"{fname}", cap, functools.partial(pareto_figure, ds, df, x, y, g, color=color, dims=list(dims)))
    if ds is None or main is None:
        if res.top is not None:
            add("breakdown", "breakdown_top", "CO₂e breakdown of the top designs.",
                functools.partial(breakdown_figure, res.top, list(dims)))
        return plans
    # surfaces over pairs of numeric dims
    n_surf = 0
    embodied_dims = ("lifespan_years", "carbon_intensity", "pue", "devices")
    pairs = list(itertools.combinations(num3, 2))
    for a, b in pairs:
        if n_surf >= 4:
            break
        others = [d for d in dims if d not in (a, b) and len(dims[d]) > 1]
        red_txt = f", minimum over {', '.join(others)}" if others else ""
        add("surface", f"surface_{main}_{a}_{b}",
            f"{short_name(main)} over {short_name(a)} × {short_name(b)} (feasible designs{red_txt}).",
            functools.partial(surface_figure, ds, a, b, main, marks=marks_for(a, b, main)))
        n_surf += 1
    sampled = f"{main}_p95"
    if pairs and _has(ds, sampled):  # [uncertainty]: the quantile surface
        a, b = pairs[0]
        add("surface", f"surface_{sampled}_{a}_{b}",
            f"95th percentile of {short_name(main)} over the uncertainty samples, over {short_name(a)} × "
            f"{short_name(b)} (the least p95 of the feasible designs in each cell): what a design costs with "
            "19-in-20 confidence.", functools.partial(surface_figure, ds, a, b, sampled, marks=marks_for(a, b, main)))
        n_surf += 1
    for a, b in pairs:
        if n_surf >= MAX_SURFACES:
            break
        if a in embodied_dims or b in embodied_dims:
            add("surface", f"surface_{SHARE}_{a}_{b}",
                f"Embodied share of total CO₂e over {short_name(a)} × {short_name(b)}, at the lowest-CO₂e design "
                "for each cell.", functools.partial(surface_figure, ds, a, b, SHARE, "best", cmap="magma"))
            n_surf += 1
    chosen = ((res.summary.get("spec") or {}).get("study") or {}).get("outputs") or []
    for v in chosen:
        if n_surf >= MAX_SURFACES or not pairs:
            break
        if v in (main, "reason", "loss_in_range", "embodied_share") or v.endswith("tco2e") or not _has(ds, v):
            continue
        a, b = pairs[0]
        mk = marks_for(a, b, v)
        add("surface", f"surface_{v}_{a}_{b}", f"{short_name(v)} over {short_name(a)} × {short_name(b)}"
            + (" (red diamonds: published figures)" if mk else "") + ".",
            functools.partial(surface_figure, ds, a, b, v, marks=mk))
        n_surf += 1
    # lines
    line_dims = []
    if len(num3) == 1 or (not num3 and num):
        line_dims.append((num3 or num)[0])
    if "devices" in num and "devices" not in line_dims and (layout_vars or layout_dims):
        line_dims.append("devices")
    for xd in line_dims:
        if layout_vars or (layout_dims and xd == "devices"):
            variables = [main, "step_time_s", "mfu"]
        else:
            variables = [main, "train_days"] + (["loss"] if _has(ds, "loss") and "loss" in chosen else [])
        hue = next((d for d in cat if len(dims[d]) <= 8), None) or next(
            (d for d in num if d != xd and len(dims[d]) <= 6), None)
        best_line = layout_vars or (layout_dims and xd == "devices")
        if best_line and xd == "devices":
            hue = None
        reduce = "best" if best_line else "min"
        cap = (f"{', '.join(short_name(v) for v in variables)} against {short_name(xd)}"
               + (f", one line per {short_name(hue)}" if hue else "")
               + ("; each point is the lowest-CO₂e design, its layout written above" if best_line else "")
               + ("; shaded: p5–p95 over the uncertainty samples" if any(_has(ds, f"{v}_p5") for v in variables)
                  else "") + ".")
        add("line", f"line_{xd}", cap,
            functools.partial(line_figure, ds, xd, variables, hue, reduce))
    # heatmaps over two categorical dims
    if len(cat) >= 2:
        ydim, xdim = cat[0], cat[1]
        if len(dims[ydim]) > len(dims[xdim]) * 1.5:
            ydim, xdim = xdim, ydim
        add("heatmap", f"heatmap_{main}_{ydim}_{xdim}",
            f"{short_name(main)} by {short_name(ydim)} and {short_name(xdim)} (minimum over the other dims).",
            functools.partial(heatmap_figure, ds, xdim, ydim, main))
        if _has(ds, "embodied_tco2e"):  # (a study whose [study] outputs leave it out has no share)
            add("heatmap", f"heatmap_{SHARE}_{ydim}_{xdim}",
                f"Embodied share of total CO₂e by {short_name(ydim)} and {short_name(xdim)}, "
                "at the lowest-CO₂e design.",
                functools.partial(heatmap_figure, ds, xdim, ydim, SHARE, "best", cmap="Blues",
                                  fmt=lambda v: f"{fmt_num(v, 2)} %"))
    if ds is not None and "start" in ds.dims and "start_hour" in ds.coords:  # [grid] start (sweep.when)
        add("start", "start_total_tco2e", "Total CO₂e against the start date per region (hourly carbon-intensity "
            "profiles; least over the other dimensions).", functools.partial(start_figure, ds))
    # breakdown bars
    if cat:
        by = cat[:2] if math.prod(len(dims[d]) for d in cat[:2]) <= 30 else cat[:1]
        add("breakdown", f"breakdown_{'_'.join(by)}",
            f"CO₂e breakdown per {' × '.join(short_name(b) for b in by)}: the lowest-CO₂e design of each.",
            functools.partial(breakdown_figure, ds, by))
    elif res.top is not None and len(res.top):
        add("breakdown", "breakdown_top", f"CO₂e breakdown of the {min(len(res.top), 30)} top designs.",
            functools.partial(breakdown_figure, res.top, list(dims), title=None))
    elif num:
        add("breakdown", f"breakdown_{num[0]}", f"CO₂e breakdown per {short_name(num[0])}: the lowest-CO₂e design.",
            functools.partial(breakdown_figure, ds, [num[0]]))
    # layout maps
    if layout_vars:
        if len(num) >= 2:
            a, b = sorted(num, key=lambda d: -len(dims[d]))[:2]
            add("layout", f"layout_{a}_{b}", f"Best parallelism layout over {short_name(a)} × {short_name(b)}.",
                functools.partial(layout_map, ds, a, b))
        elif num:
            add("layout", f"layout_{num[0]}", f"Best parallelism layout against {short_name(num[0])}.",
                functools.partial(layout_map, ds, num[0]))
        elif cat:
            add("layout", f"layout_{'_'.join(cat[:2])}", "Best parallelism layout per category.",
                functools.partial(layout_map, ds, cat[0], cat[1] if len(cat) > 1 else None))
    return plans


def start_figure(ds, var="total_tco2e", *, title=None):
    """``var`` against the start date (hour of the typical year), one line per region: the least
    over the grid's other dimensions (a [grid] start study, sweep.when)."""
    import datetime as dt

    keep = [d for d in ("start", "region") if d in ds.dims]
    da = field(ds, var)
    other = [d for d in da.dims if d not in keep]
    da = da.min(other) if other else da
    hours = np.asarray(ds["start_hour"].values, float)
    order = np.argsort(hours)
    days = hours[order] / 24.0
    fig = _new_figure(8.6, 5.0)
    ax = fig.add_subplot(111)
    regions = list(ds["region"].values) if "region" in ds.dims else [None]
    for r in regions:
        y = (da.sel(region=r) if r is not None else da).values[order]
        ax.plot(days, y, marker="o", ms=3.5, lw=1.4, label=str(r) if r is not None else None)
    ticks = [(dt.date(2001, m, 1) - dt.date(2001, 1, 1)).days for m in range(1, 13)]
    ax.set_xticks(ticks, [dt.date(2001, m, 1).strftime("%b") for m in range(1, 13)])
    ax.set_xlim(-5, 370)
    ax.set_xlabel("start date (typical year, UTC)")
    ax.set_ylabel(label(var, ds))
    if regions[0] is not None:
        ax.legend(title="region", fontsize=8, loc="upper left", bbox_to_anchor=(1.01, 1.0))
    _title(ax, title or f"{short_name(var, ds)} against start date", "each region's hourly carbon-intensity profile")
    return fig


def save_figure(fig, path: Path, svg=False) -> list[Path]:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path.with_suffix(".png"), dpi=DPI, bbox_inches="tight", pad_inches=0.15)
    out = [path.with_suffix(".png")]
    if svg:
        fig.savefig(path.with_suffix(".svg"), bbox_inches="tight", pad_inches=0.15)
        out.append(path.with_suffix(".svg"))
    return out


def draw_figures(res, fig_dir, *, svg=False, strict=False) -> tuple[list[Path], list[dict]]:
    """Draw the figures worth drawing for a result (in memory or opened from a folder) into
    ``fig_dir`` (earlier figures there removed), with ``index.json`` listing them.

    Returns (figure files, index entries {file, kind, caption}). A figure that cannot be drawn is
    skipped with a log message (``strict=True`` raises instead).
    """
    fig_dir = Path(fig_dir)
    fig_dir.mkdir(parents=True, exist_ok=True)
    res = per_point(res)  # (kept samples: not a dimension of the figures)
    for old in list(fig_dir.glob("*.png")) + list(fig_dir.glob("*.svg")):
        old.unlink()
    files, index = [], []
    for k, plan in enumerate(plan_figures(res), start=1):
        name = f"{k:02d}_{plan['name']}"
        try:
            fig = plan["make"]()
        except FigureSkipped as exc:
            if strict:
                raise
            log.info("  figure %s skipped: %s", plan["name"], exc)
            continue
        except Exception as exc:  # noqa: BLE001  (one bad figure must not lose the others)
            if strict:
                raise
            log.warning("carbon-sweep plot: warning: figure %s failed: %s: %s", plan["name"], type(exc).__name__, exc)
            continue
        paths = save_figure(fig, fig_dir / name, svg)
        files += paths
        index.append({"file": paths[0].name, "kind": plan["kind"], "caption": plan["caption"]})
    (fig_dir / "index.json").write_text(json.dumps(index, indent=2))
    return files, index


def plot_result(out_dir, *, svg=False, strict=False) -> list[Path]:
    """Draw the figures of a result folder into ``<out_dir>/figures/`` (``draw_figures``); returns
    the figure files (PNG, and SVG with ``svg=True``). The report is ``sweep.report.write_report``."""
    out_dir = Path(out_dir)
    res = open_result(out_dir)
    try:
        return draw_figures(res, out_dir / "figures", svg=svg, strict=strict)[0]
    finally:
        if res.dataset is not None:
            res.dataset.close()


# ---------------------------------------------------------------------------------------------
# one estimate's distribution and sensitivities (carbon-sweep estimate --figures)


@_styled
def histogram_figure(samples, feasible, point, quantiles, var="total_tco2e", title=None):
    """A histogram of one output over the feasible samples, the point estimate and p5/p50/p95 marked."""
    v = np.broadcast_to(np.asarray(samples, float), np.shape(feasible))[np.asarray(feasible)]
    v = v[np.isfinite(v)]
    if v.size < 2 or np.ptp(v) == 0:
        raise FigureSkipped(f"{var} does not vary over the samples")
    fig = _new_figure(7.5, 4.8)
    ax = fig.add_subplot()
    ax.hist(v, bins=min(60, max(10, v.size // 40)), color="#9ecae1", edgecolor="#1f5fa8", linewidth=0.4)
    for name, q, style in (("p5", quantiles.get("p5"), ":"), ("p50", quantiles.get("p50"), "-"),
                           ("p95", quantiles.get("p95"), ":")):
        if q is not None:
            ax.axvline(q, color="#08306b", linestyle=style, linewidth=1.3)
            ax.annotate(f"{name} {fmt_num(q)}", (q, 1), xycoords=("data", "axes fraction"), xytext=(3, -12),
                        textcoords="offset points", fontsize=9, color="#08306b")
    if point is not None:
        ax.axvline(point, color="#d95f02", linewidth=1.6)
        ax.annotate(f"point estimate {fmt_num(point)}", (point, 0.85), xycoords=("data", "axes fraction"),
                    xytext=(3, 0), textcoords="offset points", fontsize=9, color="#d95f02")
    ax.set_xlabel(label(var))
    ax.set_ylabel("samples")
    _title(ax, title or f"{short_name(var)} over {v.size:,} samples",
           f"90 % of the samples lie between p5 and p95; the orange line is the estimate without uncertainty")
    return fig


@_styled
def tornado_figure(elasticities: dict, sobol: dict | None = None, var="total_tco2e", top=12, title=None):
    """Inputs ranked by |d ln(output) / d ln(input)|, as horizontal bars (a tornado), with the
    first-order Sobol index beside each bar when samples were drawn."""
    items = [(k, e) for k, e in elasticities.items() if e]
    items = sorted(items, key=lambda kv: -abs(kv[1]))[:top][::-1]
    if not items:
        raise FigureSkipped("no input moves the output")
    fig = _new_figure(7.5, 0.9 + 0.42 * len(items))
    ax = fig.add_subplot()
    names = [k for k, _ in items]
    vals = np.array([e for _, e in items])
    ax.barh(names, vals, color=np.where(vals > 0, "#d95f02", "#1f5fa8"))
    ax.axvline(0, color="#333333", linewidth=0.8)
    lim = max(abs(vals).max() * (1.75 if sobol else 1.35), 0.1)  # room for the labels beside the bars
    ax.set_xlim(-lim, lim)
    for i, (k, e) in enumerate(items):
        text = f"{e:+.2f}"
        if sobol and sobol.get(k) and sobol[k].get("S1") is not None:
            text += f"  (S1 {sobol[k]['S1']:.2f})"
        ax.annotate(text, (e, i), xytext=(4 if e >= 0 else -4, 0), textcoords="offset points",
                    ha="left" if e >= 0 else "right", va="center", fontsize=9)
    ax.set_xlabel(f"elasticity of {short_name(var)}: % change per +1 % of the input")
    ax.grid(axis="y", alpha=0)
    _title(ax, title or f"What drives {short_name(var)}",
           "orange raises it, blue lowers it; S1: share of the sampled variance the input explains alone")
    return fig


def estimate_figures(out: dict, samples: dict | None, folder, var="total_tco2e", svg=False) -> list[Path]:
    """The histogram (with samples) and the tornado (with sensitivities) of one estimate."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    written = []
    if samples is not None and var in samples:
        try:
            q = {k: out.get(f"{var}_{k}") for k in ("p5", "p50", "p95")}
            written += save_figure(histogram_figure(samples[var], samples["_feasible"], out.get(var), q, var),
                                   folder / f"histogram_{var}", svg)
        except FigureSkipped as why:
            log.info("histogram skipped: %s", why)
    sens = out.get("sensitivity")
    if sens:
        try:
            written += save_figure(tornado_figure(sens["elasticities"][var], sens.get("sobol_total_tco2e"), var),
                                   folder / f"tornado_{var}", svg)
        except FigureSkipped as why:
            log.info("tornado skipped: %s", why)
    return written
