"""The report of a study: ``report.md`` and a self-contained ``report.html`` (figures embedded).

Both are rendered from one list of blocks (headings, paragraphs, lists, tables, code, figures), so
they say the same thing: the study and its spec, the key numbers (points, feasibility, the best
design, ranges, Pareto fronts), the figures, and the assumptions with the source of every figure
the study used (scaling law, embodied method, each hardware id, host and region, global defaults).
Standard library only, beside the project's own modules.

Over 500 lines: a long document's content, rendered from one list of blocks.
"""

from __future__ import annotations

import base64
import datetime as _dt
import html as _html
import json
import math
import re
from pathlib import Path

import hardware_db

from .inputs import device_embodied_kgco2e, host_embodied_kgco2e
from .names import REPORT_BEST as BEST_OUTPUTS
from .names import REPORT_RANGES as MAIN_OUTPUTS
from .names import output_units
from .reductions import no_tradeoff, parse_objective
from .results import front_objectives, open_result, per_point
from .spec import KEYS

EMBODIED_METHODS = {
    "act": "ACT (Gupta et al., ISCA 2022): logic dies by process-node carbon per area and yield, plus HBM by "
           "kg CO2e per GB; hosts: CPUs, DRAM, SSD and the rest.",
    "llmcarbon": "LLMCarbon (Faiz et al., ICLR 2024): die area × carbon per area, die only (no yield, packaging "
                 "or memory), as in LLMCarbon's hardware table.",
    "vendor_pcf": "the vendor's product carbon footprint per device (hosts by ACT).",
}
LAYOUT_TEXT = {
    "mfu": "MFU is given (fixed or a grid dimension): time follows from FLOPs / (devices × peak × MFU); the "
           "layout model is bypassed.",
    "best": "the parallelism layout (tp, pp, dp, ep, micro-batch, recomputation, interleave) is chosen per design "
            "among all valid layouts by the study's objective, with the layout model's step time and MFU.",
    "fixed": "the layout given in the spec is used for every design, with the layout model's step time and MFU.",
}


# ---------------------------------------------------------------------------------------------
# formatting


def _fmt(v, unit="") -> str:
    if v is None:
        return "n/a"
    if isinstance(v, str):
        return v
    if isinstance(v, bool):
        return "yes" if v else "no"
    try:
        v = float(v)
    except (TypeError, ValueError):
        return str(v)
    if not math.isfinite(v):
        return "n/a"
    if v.is_integer() and abs(v) < 1e15:
        s = f"{int(v):,}"
    elif abs(v) >= 1e6 or (v != 0 and abs(v) < 1e-3):
        s = f"{v:.4g}"
    elif abs(v) >= 1e3:
        s = f"{v:,.0f}"
    else:
        s = f"{v:,.4g}"
    unit = "" if unit in ("1", None) else unit
    return f"{s} {unit}".rstrip()


def _toml_value(v) -> str:
    if isinstance(v, bool):
        return "true" if v else "false"
    if isinstance(v, int):
        return str(v)
    if isinstance(v, float):
        if math.isinf(v):
            return "inf" if v > 0 else "-inf"
        if math.isnan(v):
            return "nan"
        if abs(v) >= 1e6 and v.is_integer():  # as written: 5e10, not 50000000000.0
            p = next(p for p in range(17) if float(f"{v:.{p}e}") == v)  # the fewest digits that round-trip
            mantissa, exponent = f"{v:.{p}e}".split("e")
            return f"{mantissa}e{int(exponent)}"
        return repr(v)
    if isinstance(v, str):
        return json.dumps(v, ensure_ascii=False)
    if isinstance(v, (list, tuple)):
        return "[" + ", ".join(_toml_value(x) for x in v) + "]"
    if isinstance(v, dict):
        return "{" + ", ".join(f"{_toml_key(k)} = {_toml_value(x)}" for k, x in v.items()) + "}"
    return json.dumps(str(v))


def _toml_key(k) -> str:
    return k if re.fullmatch(r"[A-Za-z0-9_-]+", str(k)) else json.dumps(str(k))


def to_toml(doc: dict) -> str:
    """A spec dict back to TOML (sections as tables, nested tables inline)."""
    lines = [f"{_toml_key(k)} = {_toml_value(v)}" for k, v in doc.items() if not isinstance(v, dict)]
    for k, v in doc.items():
        if isinstance(v, dict):
            if lines:
                lines.append("")
            lines.append(f"[{_toml_key(k)}]")
            lines += [f"{_toml_key(kk)} = {_toml_value(vv)}" for kk, vv in v.items()]
    return "\n".join(lines) + "\n"


# ---------------------------------------------------------------------------------------------
# blocks → markdown / html


class Doc:
    def __init__(self):
        self.blocks = []

    def h(self, level, text):
        self.blocks.append(("h", level, text))

    def p(self, text):
        self.blocks.append(("p", text))

    def ul(self, items):
        if items:
            self.blocks.append(("ul", list(items)))

    def table(self, header, rows, align=None):
        if rows:
            self.blocks.append(("table", list(header), [list(r) for r in rows], align))

    def code(self, lang, text):
        self.blocks.append(("code", lang, text))

    def img(self, path, caption):
        self.blocks.append(("img", path, caption))

    # -- markdown --------------------------------------------------------------------------
    def markdown(self) -> str:
        out = []
        for b in self.blocks:
            kind = b[0]
            if kind == "h":
                out.append("#" * b[1] + " " + b[2])
            elif kind == "p":
                out.append(b[1])
            elif kind == "ul":
                out.append("\n".join(f"- {item}" for item in b[1]))
            elif kind == "table":
                header, rows, align = b[1], b[2], b[3]
                cell = lambda s: str(s).replace("|", "\\|").replace("\n", " ")  # noqa: E731
                al = align or ["l"] * len(header)
                sep = ["---:" if a == "r" else "---" for a in al]
                lines = ["| " + " | ".join(cell(c) for c in header) + " |", "| " + " | ".join(sep) + " |"]
                lines += ["| " + " | ".join(cell(c) for c in r) + " |" for r in rows]
                out.append("\n".join(lines))
            elif kind == "code":
                out.append(f"```{b[1]}\n{b[2].rstrip()}\n```")
            elif kind == "img":
                out.append(f"![{b[2]}]({b[1]})\n\n*{b[2]}*")
        return "\n\n".join(out) + "\n"

    # -- html ------------------------------------------------------------------------------
    def html(self, title, base: Path) -> str:
        body = []
        for b in self.blocks:
            kind = b[0]
            if kind == "h":
                body.append(f"<h{b[1]}>{_inline(b[2])}</h{b[1]}>")
            elif kind == "p":
                body.append(f"<p>{_inline(b[1])}</p>")
            elif kind == "ul":
                body.append("<ul>" + "".join(f"<li>{_inline(i)}</li>" for i in b[1]) + "</ul>")
            elif kind == "table":
                header, rows, align = b[1], b[2], b[3]
                al = align or ["l"] * len(header)
                th = "".join(f"<th>{_inline(str(c))}</th>" for c in header)
                trs = "".join("<tr>" + "".join(f'<td class="{"num" if a == "r" else ""}">{_inline(str(c))}</td>'
                                               for c, a in zip(r, al)) + "</tr>" for r in rows)
                body.append(f"<table><thead><tr>{th}</tr></thead><tbody>{trs}</tbody></table>")
            elif kind == "code":
                body.append(f"<pre><code>{_html.escape(b[2].rstrip())}</code></pre>")
            elif kind == "img":
                src = base / b[1]
                try:
                    data = base64.b64encode(src.read_bytes()).decode("ascii")
                    img = f'<img src="data:image/png;base64,{data}" alt="{_html.escape(b[2])}">'
                except OSError:
                    img = f"<p><em>missing figure {_html.escape(b[1])}</em></p>"
                body.append(f"<figure>{img}<figcaption>{_inline(b[2])}</figcaption></figure>")
        return HTML_TEMPLATE.format(title=_html.escape(title), css=CSS, body="\n".join(body))


def _inline(text: str) -> str:
    """Escape, then `code`, **bold**, *emphasis* and bare URLs as links."""
    s = _html.escape(str(text), quote=False)
    s = re.sub(r"`([^`]+)`", r"<code>\1</code>", s)
    s = re.sub(r"\*\*([^*]+)\*\*", r"<strong>\1</strong>", s)
    s = re.sub(r"(?<![\w*])\*([^*\s][^*]*)\*(?![\w*])", r"<em>\1</em>", s)
    s = re.sub(r"(?<![\"'=/])\b(https?://[^\s<>()]+[^\s<>().,;:])", r'<a href="\1">\1</a>', s)
    return s


CSS = """
body { font: 15px/1.55 -apple-system, "Segoe UI", Roboto, "Helvetica Neue", Arial, sans-serif; color: #1d1d1f;
       max-width: 1040px; margin: 2em auto; padding: 0 1.2em; }
h1 { font-size: 1.7em; border-bottom: 2px solid #2f6f9f; padding-bottom: .2em; }
h2 { font-size: 1.3em; margin-top: 1.8em; border-bottom: 1px solid #ddd; padding-bottom: .15em; }
h3 { font-size: 1.08em; margin-top: 1.3em; }
table { border-collapse: collapse; margin: .6em 0 1.2em; font-size: .92em; }
th, td { border: 1px solid #d5d5d5; padding: .28em .6em; vertical-align: top; text-align: left; }
th { background: #f2f5f8; }
td.num { text-align: right; font-variant-numeric: tabular-nums; white-space: nowrap; }
tbody tr:nth-child(even) { background: #fafafa; }
pre { background: #f6f8fa; border: 1px solid #e1e4e8; padding: .8em 1em; overflow-x: auto; font-size: .88em; }
code { font-family: "SFMono-Regular", Consolas, "Liberation Mono", monospace; font-size: .92em; }
figure { margin: 1.4em 0 2em; }
figure img { max-width: 100%; height: auto; border: 1px solid #e5e5e5; }
figcaption { color: #555; font-size: .92em; margin-top: .35em; }
li { margin: .2em 0; }
a { color: #2f6f9f; overflow-wrap: anywhere; }
"""

HTML_TEMPLATE = """<!DOCTYPE html>
<html lang="en">
<head>
<meta charset="utf-8">
<meta name="viewport" content="width=device-width, initial-scale=1">
<title>{title}</title>
<style>{css}</style>
</head>
<body>
{body}
</body>
</html>
"""


# ---------------------------------------------------------------------------------------------
# content


def _units():
    return output_units()


def _dim_unit(d):
    return KEYS[d].unit if d in KEYS and KEYS[d].unit != "1" else ""


def _best_design(res, dims):
    """(row as dict, where it came from) of the feasible design with the lowest total_tco2e."""
    import numpy as np

    cands = []
    ds = res.dataset
    if ds is not None and "total_tco2e" in ds.variables and not _lazy(ds):
        tot = ds["total_tco2e"]
        ok = np.isfinite(tot)
        if "reason" in ds.variables:
            ok = ok & (ds["reason"] == 0)
        vals = tot.where(ok).values
        if np.isfinite(vals).any():
            i = np.unravel_index(np.nanargmin(vals), vals.shape)
            point = ds.isel({d: int(k) for d, k in zip(tot.dims, i)})
            row = {d: point[d].values.item() for d in tot.dims}
            row.update({k: point[k].values.item() for k in ds.data_vars})
            return row, "the full grid"
    for name, df in [("top designs", res.top), *[(f"front {k}", v) for k, v in res.pareto.items()]]:
        if df is not None and "total_tco2e" in df and len(df):
            sub = df[np.isfinite(df["total_tco2e"])]
            if len(sub):
                cands.append((sub.loc[sub["total_tco2e"].idxmin()].to_dict(), name))
    if not cands:
        return None, None
    row, src = min(cands, key=lambda c: c[0]["total_tco2e"])
    return row, f"the kept {src} (the full grid was not kept in memory)"


def _lazy(ds):
    try:
        return any(getattr(v.variable, "chunks", None) is not None for v in ds.data_vars.values())
    except (AttributeError, TypeError):
        return False


def _law_range_note(res):
    import numpy as np

    ds = res.dataset
    if ds is None or "loss_in_range" not in ds.variables or _lazy(ds):
        return None
    ok = (ds["reason"] == 0) if "reason" in ds.variables else True
    inr = ds["loss_in_range"].where(ok)
    n_ok = int(np.isfinite(inr).sum())
    n_out = int((inr == 0).sum())
    if not n_ok:
        return None
    return n_out, n_ok


def _hardware_ids(doc, dims):
    if "hardware" in dims:
        return list(dims["hardware"])
    hw = (doc.get("cluster") or {}).get("hardware")
    return [hw] if hw else []


def _region_ids(doc, dims):
    if "region" in dims:
        return list(dims["region"])
    r = (doc.get("site") or {}).get("region")
    return [r] if r else []


def build_doc(out_dir, figures=None, db=None, result=None) -> Doc:
    """The report of a result: ``result`` in memory, else the finished folder ``out_dir``."""
    out_dir = Path(out_dir)
    db = db or hardware_db.load()
    if result is not None:
        return _build(out_dir, result, figures, db)
    res = open_result(out_dir)
    try:
        return _build(out_dir, res, figures, db)
    finally:
        if res.dataset is not None:
            res.dataset.close()


def _build(out_dir, res, figures, db) -> Doc:


    """The report's blocks for a result.

    Long: the report's sections in the order they are written, each a few blocks; split, the
    order would be hidden.
    """
    res = per_point(res)  # (kept samples: the report reads one value per point)
    s = res.summary
    spec = s.get("spec") or {}
    study_opts = spec.get("study") or {}
    dims = s.get("dims") or {}
    units = _units()
    d = Doc()
    d.h(1, f"carbon-sweep study: {s.get('name', out_dir.name)}")
    if study_opts.get("description"):
        d.p(study_opts["description"])
    when = _dt.datetime.now().strftime("%Y-%m-%d %H:%M")
    ver = (s.get("versions") or {}).get("carbon-sweep") or "?"
    d.p(f"Result folder `{out_dir}`; spec `{s.get('spec_file', '?')}` (hash `{s.get('spec_hash', '?')}`); "
        f"carbon-sweep {ver}; report written {when}.")

    # -- spec ---------------------------------------------------------------------------------
    d.h(2, "Spec")
    d.p("The study as run (values not given here take the defaults listed under assumptions):")
    d.code("toml", to_toml(spec))

    # -- key numbers ------------------------------------------------------------------------
    d.h(2, "Key numbers")
    n, nf = s.get("n_points") or 0, s.get("n_feasible") or 0
    pct = f" ({100 * nf / n:.1f} %)" if n else ""
    items = [f"**{_fmt(n)}** grid points over {len(dims)} dimension{'s' if len(dims) != 1 else ''}, "
             f"**{_fmt(nf)}** feasible{pct}"]
    if s.get("elapsed_s") is not None:
        items.append(f"evaluated in {s['elapsed_s']:.1f} s ({_fmt(s.get('n_chunks'))} chunk"
                     f"{'s' if s.get('n_chunks') != 1 else ''}"
                     + (f", {_fmt(s.get('n_layouts'))} candidate layouts per point" if (s.get("n_layouts") or 1) > 1
                        else "")
                     + (f", searched {_fmt(s['n_layout_searches'])} time{'s' if s['n_layout_searches'] != 1 else ''}: "
                        "once per design, device count and hardware, not per site, lifespan or token budget"
                        if s.get("n_layout_searches") else "") + ")")
    d.ul(items)
    d.table(["dimension", "values", "count", "unit"],
            [[k, _values_text(v), len(v), _dim_unit(k)] for k, v in dims.items()], ["l", "l", "r", "l"])
    inf = s.get("infeasible") or {}
    if inf:
        d.p("Infeasible designs by the first rule they break:")
        d.table(["reason", "designs", "share"],
                [[r, _fmt(c), f"{100 * c / n:.1f} %" if n else ""]
                 for r, c in sorted(inf.items(), key=lambda t: -t[1])],
                ["l", "r", "r"])
    best, src = _best_design(res, dims)
    if best is not None:
        d.h(3, "Lowest-CO2e design")
        design = ", ".join(f"{k} = {_fmt(best[k], _dim_unit(k))}" for k in dims if k in best)
        d.p(f"{design or 'the fixed design'} (from {src}):")
        rows = []
        for k in BEST_OUTPUTS:
            v = best.get(k)
            if v is None or (isinstance(v, float) and not math.isfinite(v)):
                continue
            u, desc = units.get(k, ("1", k))
            rows.append([k, _fmt(v), "" if u == "1" else u, desc])
        d.table(["output", "value", "unit", "meaning"], rows, ["l", "r", "l", "l"])
    mins, maxs = s.get("min") or {}, s.get("max") or {}
    rows, constant = [], []
    for k in MAIN_OUTPUTS:
        lo, hi = mins.get(k), maxs.get(k)
        if lo is None and hi is None:
            continue
        u = units.get(k, ("1", ""))[0]
        if lo is not None and hi is not None and hi == lo:
            constant.append(f"{k} = {_fmt(lo, u)}")
            continue
        rows.append([k, _fmt(lo), _fmt(hi), "" if u == "1" else u,
                     f"{hi / lo:.3g}×" if lo and hi and lo > 0 else ""])
    if rows or constant:
        d.h(3, "Ranges over the feasible designs")
        d.table(["output", "min", "max", "unit", "max / min"], rows, ["l", "r", "r", "l", "r"])
        if constant:
            d.p("The same for every feasible design: " + ", ".join(constant) + ".")
    if res.pareto:
        d.h(3, "Pareto fronts")
        objs = front_objectives(res)
        d.table(["front", "objectives", "designs", "file"],
                [[k, ", ".join(objs.get(k, [])), len(v), f"{k}.csv"] for k, v in res.pareto.items()],
                ["l", "l", "r", "l"])
        for k, v in res.pareto.items():
            if no_tradeoff(v, objs.get(k, [])):
                best = ", ".join(f"{o} = {_fmt(v[o].iloc[0], units.get(o, ('1',))[0])}"
                                 for o in dict.fromkeys(parse_objective(o)[0] for o in objs[k]))
                d.p(f"No trade-off on {k}: {'the one design' if len(v) == 1 else f'all {len(v)} designs'} "
                    f"on it {'is' if len(v) == 1 else 'are'} best in every objective at once ({best}), so it "
                    "has no figure.")
    if res.top is not None and len(res.top):
        top = study_opts.get("top") or {}
        by = top.get("by", "total_tco2e")
        by_name = parse_objective(by)[0]
        d.h(3, f"Top designs by {by}")
        cols = [c for c in dims if c in res.top and len(dims[c]) > 1] or [c for c in dims if c in res.top]
        outs = [c for c in dict.fromkeys([by_name, "total_tco2e", "loss", "train_days"]) if c in res.top]
        head = cols + [f"{c} ({units.get(c, ('1',))[0]})" if units.get(c, ("1",))[0] != "1" else c for c in outs]
        rows = [[_fmt(r[c]) for c in cols] + [_fmt(r[c]) for c in outs] for _, r in res.top.head(10).iterrows()]
        d.table(head, rows, ["l"] * len(cols) + ["r"] * len(outs))
        if len(res.top) > 10:
            d.p(f"First 10 of {len(res.top)}; all in `top.csv`.")

    # -- figures ----------------------------------------------------------------------------
    figs = _figure_list(out_dir, figures)
    if figs:
        d.h(2, "Figures")
        for path, caption in figs:
            d.img(path, caption)

    # -- assumptions and sources ------------------------------------------------------------
    d.h(2, "Assumptions and sources")
    mode = s.get("layout", "mfu")
    quality = spec.get("quality") or {}
    lifecycle = spec.get("lifecycle") or {}
    training = spec.get("training") or {}
    method = lifecycle.get("embodied_method", KEYS["embodied_method"].default)
    precision = training.get("precision", KEYS["precision"].default)
    objective = study_opts.get("objective", "co2e")
    items = [f"**Time and MFU**: {LAYOUT_TEXT.get(mode, mode)}"
             + (f" Objective: {objective}." if mode == "best" else "")]
    items.append(f"**Precision**: {precision} peak throughput of each accelerator.")
    items.append(f"**Embodied carbon** (method `{method}`): {EMBODIED_METHODS.get(method, method)} "
                 "Amortised over the hardware lifespan in proportion to the training time.")
    items.append("**Operational carbon**: IT energy (accelerators and hosts) × PUE × grid carbon intensity.")
    d.ul(items)

    law = s.get("law") or quality.get("law")
    laws = db.docs.get("scaling_laws.toml", {})
    if law and law in laws:
        t = laws[law]
        d.h(3, f"Scaling law: {law}")
        li = [f"**{t.get('name', law)}**: {t.get('paper', '')}",
              f"constants and ranges: {t.get('source', 'n/a')}"]
        if t.get("params_min") is not None:
            li.append(f"fitted range: {_fmt(t.get('params_min'))} to {_fmt(t.get('params_max'))} parameters "
                      f"({t.get('params_kind', 'total')}), {_fmt(t.get('tokens_min'))} to {_fmt(t.get('tokens_max'))} "
                      "tokens; the loss is on the paper's own data and tokenizer, comparable only under this law.")
        note = _law_range_note(res)
        if note:
            n_out, n_ok = note
            li.append(f"{_fmt(n_out)} of {_fmt(n_ok)} feasible designs lie outside the fitted range: their loss "
                      "is an extrapolation.")
        d.ul(li)

    hws = [h for h in _hardware_ids(spec, dims) if h in db.accelerators]
    if hws:
        d.h(3, "Hardware")
        rows, hosts = [], []
        for h in hws:
            r = db.accelerators[h]
            try:
                emb = device_embodied_kgco2e(db, h, method)
            except Exception:  # noqa: BLE001
                emb = math.nan
            host = (spec.get("cluster") or {}).get("host") or r.get("host") or ""
            if host and host not in hosts:
                hosts.append(host)
            emb_txt = _fmt(emb) if math.isfinite(emb) else "unknown (designs: missing_data)"
            rows.append([f"`{h}`", r.get("name", ""), _fmt(r.get(f"peak_{precision}_tflops")), _fmt(r.get("tdp_w")),
                         r.get("process_node") or "", emb_txt, host])
        d.table(["id", "name", f"peak {precision} TFLOP/s", "TDP W", "process", f"embodied kg CO2e / device ({method})",
                 "host"], rows, ["l", "l", "r", "r", "l", "r", "l"])
        d.p("Sources:")
        d.ul([f"`{h}`: {db.accelerators[h].get('source', 'n/a')}" for h in hws])
        em = []
        m = "act" if method == "vendor_pcf" else method
        nodes = sorted({db.accelerators[h].get("process_node") for h in hws if db.accelerators[h].get("process_node")})
        for node in nodes:
            row = db.tables.get("process_nodes.csv", {}).get((node, m))
            fig = (f"{_fmt(row['cpa_kgco2e_per_cm2'])} kg CO2e/cm², {row['source']}" if row
                   else "no figure in the database")
            em.append(f"process node `{node}` ({m}): {fig}")
        if method == "act":
            for kind in ("hbm",):
                row = db.tables.get("memory.csv", {}).get((kind, m))
                if row:
                    em.append(f"{kind.upper()} ({m}): {_fmt(row['kgco2e_per_gb'])} kg CO2e/GB, {row['source']}")
        if em:
            d.p("Embodied-carbon figures:")
            d.ul(em)
        if hosts:
            d.p("Hosts (CPUs, DRAM, network, the rest of the server):")
            li = []
            for hid in hosts:
                h = db.hosts.get(hid)
                if not h:
                    continue
                try:
                    he = host_embodied_kgco2e(db, hid, method)
                except Exception:  # noqa: BLE001
                    he = math.nan
                li.append(f"`{hid}` ({h.get('name', '')}; embodied {_fmt(he)} kg CO2e): {h.get('source', 'n/a')}")
            d.ul(li)

    regions = [r for r in _region_ids(spec, dims) if r in db.regions]
    site = spec.get("site") or {}
    pue_default = db.docs.get("defaults.toml", {}).get("pue", {}).get("value")
    if regions or site:
        d.h(3, "Regions and grid carbon intensity")
        over = [f"{k} = {site[k]}" for k in ("carbon_intensity", "pue", "wue") if k in site]
        if over:
            d.p("Given in the spec, overriding the region's figures: " + ", ".join(over) + ".")
        rows = []
        for rid in regions:
            r = db.regions[rid]
            pue = r.get("pue")
            known = isinstance(pue, (int, float)) and math.isfinite(pue)
            pue_txt = _fmt(pue) if known else f"{_fmt(pue_default)} (default)"
            year = r.get("year")
            year = str(int(year)) if isinstance(year, (int, float)) and math.isfinite(year) else "n/a"
            rows.append([f"`{rid}`", r.get("name", ""), _fmt(r.get("carbon_intensity_kg_per_kwh")), year, pue_txt])
        d.table(["id", "name", "kg CO2e/kWh", "year", "PUE"], rows, ["l", "l", "r", "r", "r"])
        d.p("Sources:")
        d.ul([f"`{rid}`: {db.regions[rid].get('source', 'n/a')}" for rid in regions])

    defaults = db.docs.get("defaults.toml", {})
    if defaults:
        d.h(3, "Defaults")
        d.p("Applied where neither the spec nor the data give a value:")
        d.ul([f"**{k}** = {_fmt(t.get('value'))}: {t.get('source', 'n/a')}" for k, t in defaults.items()
              if isinstance(t, dict)])

    d.h(2, "Files")
    names = sorted(p.name for p in out_dir.iterdir() if not p.name.startswith("."))
    listed = [f"`{n}/`" if (out_dir / n).is_dir() else f"`{n}`" for n in names]
    if "report.md" not in names:
        listed += ["`report.md`", "`report.html`"]
    d.ul(listed)
    return d


def _values_text(v, n=8):
    v = list(v)
    parts = [_fmt(x) if not isinstance(x, str) else x for x in v]
    if len(parts) > n:
        return ", ".join(parts[:3]) + ", …, " + ", ".join(parts[-2:])
    return ", ".join(parts)


def _figure_list(out_dir: Path, figures):
    """[(relative path, caption)] from plot_result's index, a list of paths, or figures/index.json."""
    fig_dir = out_dir / "figures"
    if figures is None:
        idx = fig_dir / "index.json"
        if idx.exists():
            try:
                figures = json.loads(idx.read_text())
            except (OSError, ValueError):
                figures = None
        if figures is None:
            figures = sorted(fig_dir.glob("*.png")) if fig_dir.is_dir() else []
    out = []
    for f in figures:
        if isinstance(f, dict):
            name, cap = f["file"], f.get("caption") or f["file"]
        else:
            p = Path(f)
            if p.suffix != ".png":
                continue
            name, cap = p.name, _caption_from_name(p.stem)
        out.append((f"figures/{name}", cap))
    return out


def _caption_from_name(stem):
    stem = re.sub(r"^\d+_", "", stem)
    return stem.replace("__", " vs ").replace("_", " ")


def write_report(out_dir, figures=None, db=None, result=None) -> tuple[Path, Path]:
    """Write ``report.md`` and ``report.html`` into the result folder; returns their paths.

    ``figures``: plot_result's index ([{file, caption}]) or figure paths; default: what
    ``figures/`` holds.
    """
    out_dir = Path(out_dir)
    doc = build_doc(out_dir, figures, db, result)
    md = out_dir / "report.md"
    html = out_dir / "report.html"
    title = next((b[2] for b in doc.blocks if b[0] == "h"), "carbon-sweep report")
    tmp = md.with_name(md.name + ".tmp")
    tmp.write_text(doc.markdown(), encoding="utf-8")
    tmp.replace(md)
    tmp = html.with_name(html.name + ".tmp")
    tmp.write_text(doc.html(title, out_dir), encoding="utf-8")
    tmp.replace(html)
    return md, html
