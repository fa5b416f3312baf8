"""The `carbon-sweep` command line: estimate, validate, layout, run, optimize, plot, hardware, regions.

Every command and all printing live here; the library modules return values and log. Nothing
imports this module (tests/test_architecture_layers.py checks). Bad input (spec or data) ends with
one message naming the file, section and key, exit status 2, no traceback and nothing written.
"""

from __future__ import annotations

import argparse
import json
import logging
import math
import os
import sys
import textwrap
from pathlib import Path

import hardware_db
from hardware_db import DatabaseError
from kernels.reasons import REASONS

from .calibrate import DEFAULT_FIT, DEFAULT_SHARED, FITTABLE, calibration_toml, fit, load_runs
from .engine import run
from .estimate import evaluate
from .layouts import best_layouts, check_layout_spec
from .names import ESTIMATE_TABLE, LIFECYCLE_PHASES, output_units
from .results import open_result
from .search import json_default, optimize, unit_suffix
from .spec import OBJECTIVE_OUTPUT, SpecError, load_estimate, read_toml
from .study import load_study
from .validate import validation_rows

EPILOG = textwrap.dedent(
    """\
    examples:
      carbon-sweep estimate studies/llama2_70b.toml          footprint of one training run
      carbon-sweep estimate run.toml --json                  the same as one JSON object
      carbon-sweep estimate run.toml --samples 1000 --sensitivity
                                                             ranges (p5/p50/p95) and what drives them
      carbon-sweep layout run.toml --objective co2e --top 5  best parallelism layouts
      carbon-sweep validate                                  predictions vs published runs
      carbon-sweep serve studies/serving.toml                serving: energy per request, best batch
      carbon-sweep hardware list                             accelerator ids and key figures
      carbon-sweep regions list                              region ids, carbon intensity, PUE

    A spec is a TOML file with [model], [training], [cluster], [site], [lifecycle] sections;
    see README.md. Your own devices and regions: put accelerators.csv / regions.csv / ... in a
    folder and pass --db FOLDER or set CARBON_SWEEP_DB (hardware_db/SCHEMA.md gives the columns).
    """
)


def _fmt(value, unit=""):
    if value is None:
        return "n/a"
    if isinstance(value, str):
        return value
    if isinstance(value, bool):
        return "yes" if value else "no"
    if isinstance(value, int) or (isinstance(value, float) and value.is_integer() and abs(value) < 1e15):
        s = f"{int(value):,}"
    elif abs(value) >= 1e6 or (value != 0 and abs(value) < 1e-3):
        s = f"{value:.4g}"
    else:
        s = f"{value:,.4g}"
    return f"{s} {unit}".rstrip()


def _unused_phase(out: dict, key: str) -> bool:
    """A life-cycle row with nothing to say: a phase the spec does not have (serving, experiments or
    storage of zero), or the life-cycle total when there is no phase beside training."""
    if key in LIFECYCLE_PHASES:
        return not out.get(key)
    if key == "lifecycle_tco2e":
        return not any(out.get(k) for k in LIFECYCLE_PHASES)
    return False


def print_estimate(out: dict, title: str) -> None:
    print(title)
    if out.get("reason"):  # first: the figures below are of a run that cannot happen as specified
        why = REASONS.get(out["reason"], out["reason"])
        if why == "missing_data":  # the run could happen: a figure it needs is not published
            print(f"\n  UNKNOWN: missing_data: not published for {out['hardware']} or its site: "
                  f"{'; '.join(out.get('missing_figures') or ['a figure'])}. Give them in your own files "
                  "(--db FOLDER; hardware_db/SCHEMA.md). Below, what does not depend on them")
        elif out.get("tp") is None and out.get("mfu") is None:  # the optimiser found no layout at all
            print(f"\n  INFEASIBLE: {why}: no parallelism layout of this model runs on these devices "
                  "(carbon-sweep layout lists why); below, what the design alone fixes")
        else:
            print(f"\n  INFEASIBLE: {why}: the figures below are the model's for the run as given, "
                  "which cannot run")
    for group, rows in ESTIMATE_TABLE:
        lines = []
        for key, label, unit in rows:
            if group == "Life cycle" and _unused_phase(out, key):
                continue
            if key in out and out[key] is not None:
                pct = ""
                if key in ("operational_tco2e", "embodied_tco2e") and out.get("total_tco2e"):
                    pct = f"  ({100 * out[key] / out['total_tco2e']:.1f} %)"
                if f"{key}_p50" in out and out[f"{key}_p50"] is not None:  # sampled: p5 / p50 / p95 beside it
                    band = "  ".join(_fmt(out[f"{key}_{q}"]) for q in ("p5", "p50", "p95"))
                    pct = f"{pct}   [p5 p50 p95: {band}]"
                lines.append(f"    {label:<28} {_fmt(out[key], unit)}{pct}")
        if group == "Materials":
            for m in out.get("materials") or []:
                note = " (derived)" if m["derived"] else ""
                lines.append(f"      {m['name']:<30} {_fmt(m['mass_kg'], 'kg')}{note}")
        if group == "Quality" and out.get("loss_in_range") is False:
            lines.append("    (outside the law's fitted range: an extrapolation)")
        if lines:  # (a group with nothing known is left out)
            print(f"\n  {group}")
            print("\n".join(lines))


def print_uncertainty(out: dict) -> None:
    u = out.get("uncertainty")
    if not u:
        return
    bad = sum(u["infeasible_samples"].values())
    print(f"\n  Uncertainty: {u['samples']:,} samples (seed {u['seed']}); {bad:,} infeasible"
          + (f" ({', '.join(f'{k}: {n:,}' for k, n in u['infeasible_samples'].items())})" if bad else ""))
    for d in u["inputs"]:
        params = ", ".join(f"{k} = {_fmt(val)}" for k, val in d["params"].items())
        kind = f"{d['dist']} factor" if d["relative"] else d["dist"]
        print(f"    {d['input']:<30} {kind} ({params}){'  [default]' if d['source'] == 'default' else ''}")


def print_sensitivity(out: dict, top: int = 12) -> None:
    sens = out.get("sensitivity")
    if not sens:
        return
    el = sens["elasticities"]["total_tco2e"]
    sobol = sens.get("sobol_total_tco2e") or {}
    print("\n  Sensitivity of total_tco2e (elasticity: % change per 1 % change of the input; layout held fixed)")
    head = f"    {'input':<30} {'elasticity':>10}"
    if sobol:
        head += f" {'Sobol S1':>9} {'total ST':>9}"
    print(head)
    for name in sens["inputs"][:top]:
        line = f"    {name:<30} {el[name]:>+10.3f}" if el[name] is not None else f"    {name:<30} {'n/a':>10}"
        if sobol:
            si = sobol.get(name)
            line += (f" {si['S1']:>9.3f} {si['ST']:>9.3f}" if si and si["S1"] is not None else f" {'-':>9} {'-':>9}")
        print(line)
    if len(sens["inputs"]) > top:
        print(f"    ... {len(sens['inputs']) - top} more with --json")


def cmd_estimate(args, db):
    v = load_estimate(args.spec, db)
    doc = read_toml(args.spec)
    serving_spec = None
    if "serving" in doc:  # checked before any work
        from . import serving

        serving_spec = serving.serving_inputs(args.spec, doc, db)
    out = evaluate(v, db, file=args.spec, objective=args.objective, sensitivity=args.sensitivity,
                   keep_samples=args.figures is not None, samples=args.samples, seed=args.seed)
    samples = out.pop("_samples", None)
    if args.figures is not None:
        from .plots import estimate_figures
        for path in estimate_figures(out, samples, args.figures):
            print(f"wrote {path}", file=sys.stderr)
    serve = None
    if serving_spec is not None:  # the serving model (kernels/serving.py) beside the training run
        s = serving_spec
        pick = serving.best(s)
        life = serving.lifecycle(s, pick, out.get("total_tco2e"), float(v["serving_days"]))
        serve = (s, pick, life)
        out["serving"] = {**pick, **life}
    if args.json:
        print(json.dumps(out, indent=2))
    else:
        print_estimate(out, f"carbon-sweep estimate: {args.spec}")
        print_uncertainty(out)
        print_sensitivity(out)
        if serve:
            print()
            print_serving(*serve, "  Serving ([serving], kernels/serving.py)")


def cmd_compare(args, db):
    from .cost import compare

    outs = [evaluate(load_estimate(f, db), db, file=f, objective=args.objective) for f in (args.a, args.b)]
    res = compare(*outs)
    if args.json:
        print(json.dumps(res, indent=2))
        return
    print(f"carbon-sweep compare: A = {args.a}, B = {args.b}")
    units = {"total_tco2e": "t CO2e", "operational_tco2e": "t CO2e", "embodied_tco2e": "t CO2e", "cost_usd": "USD",
             "train_days": "days", "energy_mwh": "MWh"}
    for k, unit in units.items():
        print(f"    {k:<22} A {_fmt(res['a'][k], unit):>18}   B {_fmt(res['b'][k], unit):>18}")
    print(f"    {'tCO2e avoided by B':<22} {_fmt(res['tco2e_avoided'], 't CO2e')}")
    print(f"    {'extra cost of B':<22} {_fmt(res['extra_cost_usd'], 'USD')}")
    print(f"    {'USD per tCO2e avoided':<22} {_fmt(res['usd_per_tco2e_avoided'], 'USD/t')}"
          + ("  (cost_usd unknown: give [cluster] offer or price_usd_per_device_hour, or capex and energy price)"
             if res["usd_per_tco2e_avoided"] is None else ""))


def cmd_prices_list(args, db):
    rows = db.tables.get("prices.csv", {})
    print(f"{'id':<26} {'hardware':<18} {'USD/device-h':>12}  {'date':<8} offer")
    for k, r in rows.items():
        print(f"{k:<26} {r['hardware']:<18} {r['usd_per_instance_hour'] / r['devices_per_instance']:>12.3f}  "
              f"{r['date']:<8} {r['provider']} {r['instance']} {r['offer']}")


def _no_nan(obj):
    """``obj`` with every non-finite float (an infeasible run's prediction, a skipped leave-one-out) as
    None, in nested dicts and lists: JSON has no NaN, and strict parsers reject Python's."""
    if isinstance(obj, dict):
        return {k: _no_nan(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_no_nan(v) for v in obj]
    if isinstance(obj, float):
        return obj if math.isfinite(obj) else None
    return obj


def _by_kind(rows, set_name: str) -> str:
    """'dense N runs: mean x %, max y %; MoE ...' over the rows of one layout set."""
    parts = []
    for kind in ("dense", "moe"):
        e = [abs(r["error_pct"]) for r in rows if r.get("set") == set_name and r["kind"] == kind
             and math.isfinite(r["error_pct"])]
        if e:
            parts.append(f"{'MoE' if kind == 'moe' else kind} {len(e)} runs: mean {sum(e) / len(e):.1f} %, "
                         f"max {max(e):.1f} %")
    return "; ".join(parts)


def cmd_validate(args, db):
    rows = validation_rows(db)
    if args.json:
        print(json.dumps(_no_nan(rows), indent=2))
        return
    w = max(len(r["case"]) for r in rows)
    print(f"{'case':<{w}}  {'quantity':<20} {'predicted':>12} {'published':>12} {'error':>8}  unit")
    for r in rows:
        print(f"{r['case']:<{w}}  {r['quantity']:<20} {r['predicted']:>12.4g} {r['published']:>12.4g} "
              f"{r['error_pct']:>+7.2f}%  {r['unit']}")
    a100 = [abs(r["error_pct"]) for r in rows if r["quantity"] in ("iteration_time_s", "tflops_per_device")]
    if a100:
        print(f"\nA100 set (Korthikanti et al. 2022, Narayanan et al. 2021; {len(a100)} rows): mean abs. error "
              f"{sum(a100) / len(a100):.1f} %, max {max(a100):.1f} % (targets: mean <= 4 %, max <= 10 %)")
    from .validate_layout import HELDOUT_SETS, modern_loo_note

    if any(r.get("set") == "modern" for r in rows):
        loo = modern_loo_note(db)
        print(f"modern set (throughput_runs_modern.toml), packaged constants: {_by_kind(rows, 'modern')} "
              f"(targets: mean <= 10 %, max <= 25 % per kind)" + (f"; when fitted, {loo}" if loo else ""))
    for _, set_name, opening in HELDOUT_SETS:
        held = [r for r in rows if r.get("set") == set_name]
        if held:
            infeasible = sum(not math.isfinite(r["error_pct"]) for r in held)
            print(f"{opening}; no constant fitted on them), packaged constants: {_by_kind(rows, set_name)}"
                  + (f"; {infeasible} infeasible with the published layout" if infeasible else ""))
    serving = [r for r in rows if r["quantity"] == "gpu_j_per_output_token"]
    if serving:
        from .serving import summary

        s = summary([r["error_pct"] / 100 for r in serving], [r["kind"] for r in serving])
        gpus = sorted({r["gpu"] for r in serving})
        print(f"\nserving (ML.ENERGY, {s['n']} rows, {', '.join(gpus)}): |error| median {s['median_abs_pct']:.1f} %, "
              f"mean {s['mean_abs_pct']:.1f} %, max {s['max_abs_pct']:.1f} % (dense median "
              f"{s['dense_median_abs_pct']:.1f} %, MoE {s['moe_median_abs_pct']:.1f} %); leave-one-out in "
              "hardware_db/serving.toml")


def print_serving(s: dict, pick: dict, life: dict | None, title: str) -> None:
    from .serving import SERVING_OUTPUTS

    lab = lambda k: SERVING_OUTPUTS[k][1].split(" (")[0]  # noqa: E731
    print(title)
    if not s["fitted_class"]:
        print(f"\n  NOTE: {s['hw_id']} is not in a fitted class of hardware_db/serving.toml (H100, B200): its power "
              "constants are the fitted classes' mean, an extrapolation")
    if not pick["feasible"]:
        why = "no configuration fits in memory" if not pick["fits"] else "no configuration meets the latency targets"
        print(f"\n  INFEASIBLE: {why}; below, the fastest configuration that fits")
    if "mix_samples" in pick:
        print(f"\n  Request mix: {pick['mix_samples']:,} requests drawn; "
              f"mean {_fmt(pick['input_tokens_mean'], 'token')} in, "
              f"{_fmt(pick['output_tokens_mean'], 'token')} out "
              "(below: the mix's mean figures, with its p5-p95 per request)")
    print("\n  Configuration")
    for k in ("replica_devices", "concurrency", "max_batch", "replicas", "load"):
        print(f"    {lab(k):<44} {_fmt(pick[k], '' if SERVING_OUTPUTS[k][0] == '1' else SERVING_OUTPUTS[k][0])}")
    print("\n  Latency and throughput")
    for k in ("ttft_s", "ttft_p50_s", "ttft_p95_s", "tpot_s", "tokens_per_s_per_replica"):
        if k in pick:
            print(f"    {lab(k):<44} {_fmt(pick[k], SERVING_OUTPUTS[k][0])}")
    print("\n  Energy and carbon")
    for k in ("device_power_w", "gpu_j_per_output_token", "device_hours_per_day", "energy_kwh_per_day",
              "wh_per_request", "wh_per_1k_output_tokens", "gco2e_per_request", "gco2e_per_1k_output_tokens",
              "tco2e_per_day"):
        spread = ""
        if f"{k}_p5" in pick:
            spread = f"   (p5 {_fmt(pick[k + '_p5'])}, p50 {_fmt(pick[k + '_p50'])}, p95 {_fmt(pick[k + '_p95'])})"
        print(f"    {lab(k):<44} {_fmt(pick[k], SERVING_OUTPUTS[k][0])}{spread}")
    if life:
        print("\n  Life cycle")
        print(f"    {'serving over ' + _fmt(life['serving_days'], 'days'):<44} {_fmt(life['serving_tco2e'], 't CO2e')}")
        if "breakeven_requests" in life:
            print(f"    {'break-even with training (requests)':<44} {_fmt(life['breakeven_requests'])}")
            print(f"    {'break-even with training (days)':<44} {_fmt(life['breakeven_days'], 'd')}")


def cmd_serve(args, db):
    from . import serving
    from .spec import read_toml

    if args.fit:
        r = serving.fit(db)
        s = serving.summary(r["loo_errors"], r["kinds"])
        if args.json:
            print(json.dumps({"constants": r["constants"], "class_constants": r["class_constants"],
                              "leave_one_out": s, "fit": serving.summary(r["errors"], r["kinds"])}, indent=2))
        else:
            for lab, e, o in zip(r["labels"], r["errors"], r["loo_errors"]):
                print(f"{lab:<42} fit {100 * e:+6.1f} %   leave-one-out {100 * o:+6.1f} %")
            print(f"\nleave-one-out |error|: median {s['median_abs_pct']:.1f} %, mean {s['mean_abs_pct']:.1f} % "
                  f"({s['n']} rows; dense median {s['dense_median_abs_pct']:.1f} %, "
                  f"MoE {s['moe_median_abs_pct']:.1f} %)")
        return
    if not args.spec:
        raise CliError("serve needs a spec file (or --fit)")
    doc = read_toml(args.spec)
    s = serving.serving_inputs(args.spec, doc, db)
    pick = serving.best(s)
    life = None
    days = doc.get("lifecycle", {}).get("serving_days")
    if days is not None or "training" in doc:
        training = None
        if "training" in doc and "cluster" in doc and "devices" in doc["cluster"]:
            training = evaluate(load_estimate(args.spec, db), db, file=args.spec)["total_tco2e"]
        life = serving.lifecycle(s, pick, training, float(days if days is not None else 365.0))
    files = []
    if args.out:
        from pathlib import Path

        from .serving_plots import write_figures

        Path(args.out).mkdir(parents=True, exist_ok=True)
        files = write_figures(s, db, args.out)
        Path(args.out, "serving.json").write_text(json.dumps({"best": pick, "lifecycle": life}, indent=2))
    if args.json:
        print(json.dumps({"best": pick, "lifecycle": life, "hardware": s["hw_id"], "figures": files}, indent=2))
    else:
        print_serving(s, pick, life, f"carbon-sweep serve: {args.spec}")
        for f in files:
            print(f"  figure: {f}")


def cmd_calibrate(args, db):
    constants = tuple(c.strip() for c in args.fit.split(",")) if args.fit else DEFAULT_FIT
    for c in constants:
        if c not in FITTABLE:
            raise CliError(f"--fit: unknown constant '{c}' (allowed: {', '.join(FITTABLE)})")
    shared = tuple(c for c in DEFAULT_SHARED if c in constants)
    out = Path(args.out)
    if out.is_dir():
        raise CliError(f"--out {out}: is a folder; --out names the calibration file to write, "
                       f"e.g. {out / 'calibration.toml'}")
    if out.exists() and not args.force:
        raise CliError(f"--out {out}: exists (use --force to replace it)")
    if not out.parent.is_dir():
        raise CliError(f"--out {out}: folder {out.parent} does not exist")
    runs, skipped = load_runs(read_toml(args.runs), db, args.runs)
    if len(runs) < 2:
        raise SpecError(args.runs, "run", None,
                        f"needs at least 2 runs with known hardware to fit ({len(runs)} usable)")
    if not args.quiet and not args.json:
        print(f"carbon-sweep calibrate: {args.runs}: {len(runs)} runs, fitting {', '.join(constants)}"
              f"{' with leave-one-out refits' if not args.no_loo else ''} ...", file=sys.stderr)
    res = fit(db, runs, constants=constants, shared=shared, leave_one_out=not args.no_loo)
    text = calibration_toml(res, db, str(args.runs))
    tmp = out.with_name(out.name + ".tmp")
    tmp.write_text(text)
    tmp.replace(out)
    res["skipped"], res["written"] = skipped, str(out)
    if args.json:
        print(json.dumps(_no_nan(res), indent=2, default=float))
        return
    w = max(len(r["id"]) for r in res["rows"])
    print(f"{'run':<{w}} {'kind':<5} {'class':<8} {'quantity':<24} {'published':>10} {'fitted':>10} {'error':>8} "
          f"{'LOO':>8}")
    for r in res["rows"]:
        loo = f"{r['loo_error_pct']:+7.1f}%" if math.isfinite(r["loo_error_pct"]) else "       -"
        err = f"{r['error_pct']:+7.1f}%" if math.isfinite(r["error_pct"]) else "infeasible"
        print(f"{r['id']:<{w}} {r['kind']:<5} {r['class']:<8} {r['quantity']:<24} {r['published']:>10.4g} "
              f"{r['predicted']:>10.4g} {err:>8} {loo:>8}")
    print()
    for group, g in res["summary"].items():
        print(f"{group:>5}: {g['n']} runs, mean |error| {g['error']['mean']:.1f} % (max {g['error']['max']:.1f} %), "
              f"leave-one-out {g['loo_error']['mean']:.1f} % (max {g['loo_error']['max']:.1f} %); "
              f"before the fit {g['error_start']['mean']:.1f} %")
    print("fitted constants:")
    for cls, values in res["constants"].items():
        print(f"  {cls}: " + ", ".join(f"{k} = {v:.4g}" for k, v in values.items()))
    for cls, values in res.get("derived", {}).items():
        print(f"  {cls} (no runs measure these; benchmark x the fitted classes' ratio): "
              + ", ".join(f"{k} = {v:.4g}" for k, v in values.items()))
    for s_ in skipped:
        print(f"skipped {s_['id']}: {s_['reason']}")
    print(f"written: {out} (use it with --db FOLDER as FOLDER/calibration.toml, or [cluster] calibration = \"{out}\")")


def cmd_hardware_list(args, db):
    rows = []
    for hw_id, r in db.accelerators.items():
        rows.append({
            "id": hw_id, "name": r["name"], "peak_bf16_tflops": r["peak_bf16_tflops"],
            "peak_fp16_tflops": r["peak_fp16_tflops"], "peak_fp8_tflops": r["peak_fp8_tflops"],
            "hbm_gb": r["hbm_gb"], "hbm_bw_gbs": r["hbm_bw_gbs"], "tdp_w": r["tdp_w"],
            "devices_per_node": r["devices_per_node"], "process_node": r["process_node"],
        })
    if args.json:
        print(json.dumps(_no_nan(rows), indent=2))
        return
    w = max(len(r["id"]) for r in rows)  # your own ids may be longer than the packaged ones
    print(f"{'id':<{w}} {'bf16 TFLOP/s':>12} {'fp16 TFLOP/s':>12} {'fp8 TFLOP/s':>11} {'HBM GB':>7} "
          f"{'HBM GB/s':>9} {'TDP W':>6} {'per node':>8}  node  name")
    for r in rows:
        f = lambda x: "-" if isinstance(x, float) and math.isnan(x) else f"{x:g}"  # noqa: E731
        print(f"{r['id']:<{w}} {f(r['peak_bf16_tflops']):>12} {f(r['peak_fp16_tflops']):>12} "
              f"{f(r['peak_fp8_tflops']):>11} {f(r['hbm_gb']):>7} {f(r['hbm_bw_gbs']):>9} {f(r['tdp_w']):>6} "
              f"{r['devices_per_node']:>8}  {r['process_node'] or '-':<5} {r['name']}")


def cmd_regions_list(args, db):
    rows = []
    for rid, r in db.regions.items():
        rows.append({"id": rid, "name": r["name"], "kind": r["kind"],
                     "carbon_intensity_kg_per_kwh": r["carbon_intensity_kg_per_kwh"], "year": r["year"],
                     "pue": r["pue"], "wue_l_per_kwh": r["wue_l_per_kwh"]})
    if args.json:
        print(json.dumps(_no_nan(rows), indent=2))
        return
    w = max(len(r["id"]) for r in rows)  # your own ids may be longer than the packaged ones
    print(f"{'id':<{w}} {'kg CO2e/kWh':>11} {'year':>5} {'PUE':>5} {'WUE L/kWh':>9}  name")
    for r in sorted(rows, key=lambda r: r["carbon_intensity_kg_per_kwh"]):
        f = lambda x: "-" if isinstance(x, float) and math.isnan(x) else f"{x:g}"  # noqa: E731
        print(f"{r['id']:<{w}} {r['carbon_intensity_kg_per_kwh']:>11.3f} {f(r['year']):>5} {f(r['pue']):>5} "
              f"{f(r['wue_l_per_kwh']):>9}  {r['name']}")


class CliError(Exception):
    """A usage error found after parsing (exit 2)."""


def cmd_layout(args, db):
    if args.top < 1:
        raise CliError("--top must be at least 1")
    v = load_estimate(args.spec, db)
    check_layout_spec(v, args.spec)
    res = best_layouts(v, db, objective=args.objective, top=args.top)
    if args.json:
        doc = {k: res[k] for k in ("evaluated", "infeasible", "layouts")}
        doc["feasible"] = res.get("feasible", 0)
        doc["objective"] = res.get("objective")
        print(json.dumps(doc, indent=2))
        return
    print(f"carbon-sweep layout: {args.spec}: {v['devices']:,} × {v['hardware']}, objective {args.objective}")
    print(f"  {res['evaluated']:,} layouts evaluated, {res.get('feasible', 0):,} feasible, "
          f"{res['evaluated'] - res.get('feasible', 0):,} infeasible in {res['elapsed_s']:.2f} s")
    for reason, k in sorted(res["infeasible"].items(), key=lambda t: -t[1]):
        print(f"    {reason}: {k:,}")
    if not res["layouts"]:
        if "missing_data" in res["infeasible"]:
            print(f"  no feasible layout: {res['infeasible']['missing_data']:,} would be valid but a figure the layout "
                  f"model needs is not published for {v['hardware']} (estimate names it); give it in your own "
                  "hardware_db files (--db FOLDER; hardware_db/SCHEMA.md)")
        else:
            print("  no feasible layout: more devices, more memory per device, or full recompute may help")
        return
    head = (f"  {'#':>3} {'tp':>3} {'pp':>3} {'cp':>3} {'dp':>5} {'ep':>3} {'etp':>3} {'mb':>3} {'recompute':>9} "
            f"{'il':>3} {'sp':>3} {'zero':>4} {'MFU':>6} {'step s':>8} {'days':>7} {'mem GB':>7} {'t CO2e':>9}")
    print(head)
    yes = lambda flag: "yes" if flag else "no"  # noqa: E731
    for i, r in enumerate(res["layouts"], 1):
        print(f"  {i:>3} {r['tp']:>3} {r['pp']:>3} {r['cp']:>3} {r['dp']:>5} {r['ep']:>3} {r['etp']:>3} "
              f"{r['microbatch']:>3} {r['recompute']:>9} {r['interleave']:>3} {yes(r['sequence_parallel']):>3} "
              f"{r['zero_stage']:>4} {r['mfu']:>6.3f} {r['step_time_s']:>8.2f} "
              f"{r['train_days']:>7.1f} {r['memory_gb']:>7.1f} {r['total_tco2e']:>9.1f}")
    print("  cp: context parallel; mb: micro-batch (sequences); etp: expert tensor parallel; il: virtual pipeline "
          "stages per device (interleaved 1F1B); sp: sequence parallelism; zero: ZeRO stage (1: optimizer states "
          "sharded over data parallel, 2: and gradients, 3: and weights, FSDP)")


def cmd_run(args, db):
    study = load_study(args.study, db)
    if args.chunk_size is not None and args.chunk_size < 1:
        raise SpecError(args.study, None, None, "--chunk-size must be at least 1")
    result = run(study, args.out, resume=args.resume, chunk_size=args.chunk_size, scheduler=args.scheduler,
                 quiet=args.quiet, db=db)
    s = result.summary
    if study.options["kind"] == "validation":
        print(f"carbon-sweep run: {study.name}: {s['n_points']} reference rows; largest |error| by quantity:")
        for q, e in s["max_abs_error_pct"].items():
            print(f"  {q}: {e:.2f} %")
        _figures_and_report(args, result.out_dir, db)
        print(f"  results: {result.out_dir}")
        return
    print(f"carbon-sweep run: {study.name}: {s['n_points']:,} points in {s['n_chunks']} chunks, "
          f"{s['n_feasible']:,} feasible, {s['elapsed_s']:.1f} s")
    for reason, n in s.get("infeasible", {}).items():
        print(f"  infeasible, {reason}: {n:,}")
    for name, df in result.pareto.items():
        print(f"  {name}: {len(df)} points")
    _figures_and_report(args, result.out_dir, db)
    print(f"  results: {result.out_dir}")


def _plot_folder(out_dir, db, svg=False):
    """The figures and the report of a finished result folder, read back from it."""
    from .plots import draw_figures  # (matplotlib: imported only by the commands that draw)
    from .report import write_report

    res = open_result(out_dir)
    try:
        files, index = draw_figures(res, out_dir / "figures", svg=svg)
    finally:
        if res.dataset is not None:
            res.dataset.close()
    write_report(out_dir, index, db=db)
    return files


def _figures_and_report(args, out_dir, db):
    if args.no_plot:
        return
    files = _plot_folder(out_dir, db)
    print(f"  figures: {len(files)} in {out_dir / 'figures'}")
    print(f"  report: {out_dir / 'report.html'} (and report.md)")


def _search_value(v) -> str:
    if isinstance(v, float):
        return f"{v:.6g}"
    return str(v)


def cmd_optimize(args, db):
    result = optimize(args.study, out=args.out, storage=args.storage, trials=args.trials, db=db,
                      quiet=args.quiet or args.json, write=True)
    if args.json:
        print(json.dumps(result.summary(), indent=2, default=json_default))
        return
    opts = result.options
    units = output_units()
    print(f"carbon-sweep optimize: {result.study.study_name}: {result.n_trials:,} trials ({result.n_new:,} new), "
          f"{result.n_feasible:,} feasible, sampler {opts.sampler}, {result.elapsed_s:.1f} s")
    if opts.constraints:
        print(f"  constraints: {', '.join(c.text for c in opts.constraints)}")
    if result.best is None:
        print("  no feasible trial yet")
    else:
        b = result.best
        vals = ", ".join(f"{n} = {_search_value(v)}{unit_suffix(n, units)}" for n, v in b["values"].items())
        first = f" by {next(iter(b['values']))}" if len(b["values"]) > 1 else ""  # several: best in the first
        print(f"  best{first} (trial {b['trial']}): {vals}")
        print("    " + ", ".join(f"{k} = {_search_value(v)}" for k, v in b["params"].items()))
    if result.front is not None:
        print(f"  Pareto front: {len(result.front)} designs")
    print(f"  storage: {result.storage}  (optuna-dashboard {result.storage})")
    print(f"  results: {result.out_dir}")


def cmd_plot(args, db):
    out = Path(args.result_dir)
    files = _plot_folder(out, db, svg=getattr(args, "svg", False))
    for f in files:
        print(f)
    print(out / "report.md")
    print(out / "report.html")


def _at_least_2(text: str) -> int:
    try:
        n = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"must be a whole number, not {text!r}") from None
    if n < 2:
        raise argparse.ArgumentTypeError(f"must be at least 2, not {n}")
    return n


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="carbon-sweep",
        description="The carbon footprint of dense and mixture-of-experts LLMs: estimate one run, find the "
                    "layout that emits least, sweep design spaces, search for the lowest-carbon design "
                    "that reaches a quality target.",
        epilog=EPILOG, formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("--db", metavar="FOLDER", help=f"your own data files (overrides ${hardware_db.ENV_VAR})")
    sub = p.add_subparsers(dest="command", metavar="COMMAND", required=True)

    e = sub.add_parser("estimate", help="footprint of one training run from a spec file",
                       description="Footprint of one training run: parameters, FLOPs, time, energy, operational "
                                   "and embodied carbon, GPUs consumed and their material mass, with units.")
    e.add_argument("spec", help="TOML spec file")
    e.add_argument("--json", action="store_true", help="print one JSON object")
    e.add_argument("--objective", choices=tuple(OBJECTIVE_OUTPUT), default="co2e",
                   help="what the layout optimiser minimises when the spec gives no layout (default co2e)")
    e.add_argument("--samples", type=_at_least_2, metavar="N",
                   help="draw N samples of the uncertain inputs (the spec's [uncertainty] section, else the "
                        "shipped defaults of hardware_db/uncertainty.toml) and print p5 / p50 / p95 beside "
                        "every figure")
    e.add_argument("--seed", type=int, metavar="S", help="random seed of the samples (default: the spec's, else 0)")
    e.add_argument("--sensitivity", action="store_true",
                   help="elasticities d ln(output) / d ln(input) of every continuous input, ranked, by "
                        "differentiation through the model (and Sobol indices with samples)")
    e.add_argument("--figures", metavar="DIR", help="write a histogram of total_tco2e over the samples and a "
                                                     "tornado figure of the elasticities to DIR")
    e.set_defaults(func=cmd_estimate)

    cmp_ = sub.add_parser("compare", help="two designs: carbon, dollar cost, USD per tCO2e avoided",
                          description="Two estimate specs side by side: total CO2e, cost_usd, and what each tonne "
                                      "of CO2e avoided by B costs: (cost_B - cost_A) / (tCO2e_A - tCO2e_B).")
    cmp_.add_argument("a", help="TOML spec of design A (the reference)")
    cmp_.add_argument("b", help="TOML spec of design B")
    cmp_.add_argument("--json", action="store_true", help="print one JSON object")
    cmp_.add_argument("--objective", choices=tuple(OBJECTIVE_OUTPUT), default="co2e",
                      help="what the layout optimiser minimises when a spec gives no layout (default co2e)")
    cmp_.set_defaults(func=cmd_compare)
    pr = sub.add_parser("prices", help="the cloud price table (hardware_db/prices.csv)")
    prs = pr.add_subparsers(dest="prices_command", metavar="list", required=True)
    prs.add_parser("list", help="list the offers").set_defaults(func=cmd_prices_list)

    from .validate_layout import HELDOUT_SETS, MODERN  # light: no jax, read only for the file names

    v = sub.add_parser(
        "validate", help="predictions beside published figures",
        formatter_class=argparse.RawDescriptionHelpFormatter,
        description="Predictions beside the published reference runs, with the signed error of each:\n"
                    "  footprint          LLMCarbon and From FLOPs to Footprints (operational, embodied, GPUs)\n"
                    "and a summary line for each of these sets:\n"
                    "  A100 set           Megatron-LM 2021-22 iteration times and TFLOP/s (mean <= 4 %, max <= 10 %)\n"
                    f"  modern set         hardware_db/{MODERN}, the runs the layout model's\n"
                    "                     constants are fitted on (mean <= 10 %, max <= 25 % per kind), with the\n"
                    "                     leave-one-out errors the last refit recorded\n"
                    f"  held-out runs      {' and '.join(f for f, _, _ in HELDOUT_SETS)}:\n"
                    "                     published runs no constant is fitted on (a later release, an A/B,\n"
                    "                     another framework)\n"
                    "  serving            ML.ENERGY energy per output token\n"
                    "A run infeasible with its published layout shows nan (null with --json) and is counted.\n"
                    "carbon-sweep --db FOLDER validate checks a calibration you fitted (FOLDER/calibration.toml).")
    v.add_argument("--json", action="store_true", help="print a JSON list of rows (case, quantity, unit, predicted, "
                   "published, error_pct, source; set and kind for the throughput runs)")
    v.set_defaults(func=cmd_validate)

    sv = sub.add_parser(
        "serve", help="serving: energy and CO2e per request, best replica size and batch under latency targets",
        formatter_class=argparse.RawDescriptionHelpFormatter,
        description="Serving a model (kernels/serving.py): prefill and decode time from the architecture, the "
                    "hardware, the devices per replica, the weight precision and the batch; the KV cache bounds "
                    "the batch; power from static power plus energy per FLOP and per byte (fitted on ML.ENERGY "
                    "measurements, hardware_db/serving.toml).\n\n"
                    "The spec needs [model] (layers, d_model, heads, kv_heads, vocab; experts/top_k for MoE), "
                    "[cluster] hardware (or [serving] serve_hardware), [site] region, and [serving]:\n"
                    "  input_tokens, output_tokens    tokens per request (reasoning tokens are output)\n"
                    "  requests_per_day               sets the replicas; idle capacity draws static power\n"
                    "  ttft_target_s, tpot_target_s   optional latency targets\n"
                    "  weight_precision               bf16 | fp8 | int8 | int4 (weight-only)\n"
                    "  replica_devices, concurrency   fixed, or searched (1-8 devices, batch 1-1,024)\n"
                    "  serve_objective                co2e (default) or energy per request\n"
                    "With [training] and [cluster] devices the training run is estimated too, for the break-even.",
        epilog="examples:\n  carbon-sweep serve studies/serving.toml\n"
               "  carbon-sweep serve studies/serving.toml --out results/serving   (figures)\n"
               "  carbon-sweep serve --fit            (refit the constants, leave-one-out errors)")
    sv.add_argument("spec", nargs="?", help="TOML spec file with a [serving] section")
    sv.add_argument("--json", action="store_true", help="print one JSON object")
    sv.add_argument("--out", metavar="DIR", help="write figures and serving.json to DIR")
    sv.add_argument("--fit", action="store_true", help="refit the serving constants on hardware_db/serving_runs.toml "
                    "and print fit and leave-one-out errors")
    sv.set_defaults(func=cmd_serve)

    lay = sub.add_parser("layout", help="best parallelism layouts for a run",
                         description="Every valid layout (tp, pp, dp, ep, micro-batch, recompute, interleave) "
                                     "for the spec's model and cluster, best first by the objective.")
    lay.add_argument("spec", help="TOML spec file")
    lay.add_argument("--objective", choices=tuple(OBJECTIVE_OUTPUT), default="co2e",
                     help="rank by total tCO2e, training days or facility energy (default co2e)")
    lay.add_argument("--top", type=int, default=10, help="how many layouts to show (default 10)")
    lay.add_argument("--json", action="store_true", help="print one JSON object")
    lay.set_defaults(func=cmd_layout)

    c = sub.add_parser("calibrate", help="fit the layout model's constants to your own measured runs",
                       description="Fit the layout model's constants to measured runs (tokens/s per device, step "
                                   "time, MFU or GPU-hours, each with its layout) by least squares on log "
                                   "throughput through the JAX model (optax L-BFGS), print the fit, the residuals "
                                   "and the leave-one-out errors, and write a calibration file. The runs file's "
                                   "format: hardware_db/SCHEMA.md (throughput_runs_modern.toml is one). Each run is "
                                   "checked before the fit: an unknown key (with the closest allowed one), a switch "
                                   "not written true/false, or a word a key does not know stops the command with "
                                   "the run and the key (exit 2). Switches take the spec's names and values "
                                   "(ep_overlap, cuda_graphs = true) or Megatron-core's (moe_a2a_overlap, a "
                                   "moe_dispatcher or cuda_graphs string).")
    c.add_argument("runs", help="runs TOML file ([[run]] tables)")
    c.add_argument("--fit", metavar="NAMES", help="comma-separated constants to fit (default: "
                   "attention_eff, gemm_eff_fp8, gemm_eff_max per accelerator class; overlap_eff, "
                   "moe_layer_latency_s, moe_sync_latency_s, moe_expert_latency_s, "
                   "moe_expert_fp8_latency_s shared)")
    c.add_argument("--out", metavar="FILE", default="calibration.toml",
                   help="calibration file to write (default calibration.toml)")
    c.add_argument("--force", action="store_true", help="replace --out if it exists")
    c.add_argument("--no-loo", action="store_true", help="skip the leave-one-out refits (faster)")
    c.add_argument("--json", action="store_true", help="print one JSON object (constants, rows, summary)")
    c.add_argument("--quiet", action="store_true", help="no progress line on stderr")
    c.set_defaults(func=cmd_calibrate)

    r = sub.add_parser("run", help="sweep a study's grid",
                       description="Evaluate a study's [grid] in chunks; write the grid, Pareto fronts, top-k, "
                                   "figures and a report to the output folder.")
    r.add_argument("study", help="study TOML file")
    r.add_argument("--out", metavar="DIR", help="output folder (default results/<study name>)")
    r.add_argument("--resume", action="store_true", help="continue an interrupted run in --out")
    r.add_argument("--chunk-size", type=int, metavar="N",
                   help="points per chunk (default: by memory budget; at least 2 are taken)")
    r.add_argument("--scheduler", metavar="ADDRESS",
                   help="run the chunks as tasks of a dask.distributed cluster (e.g. tcp://host:8786; start it "
                        "with `dask scheduler` and `dask worker ADDRESS --nworkers N --nthreads 1`); the "
                        "workers write partial files into --out, which they must all see")
    r.add_argument("--quiet", action="store_true", help="no progress bar")
    r.add_argument("--no-plot", action="store_true", help="skip figures and report")
    r.set_defaults(func=cmd_run)

    o = sub.add_parser("optimize", help="optuna search over a study's grid",
                       description="Search a study's [grid] with optuna for the best designs under [search].")
    o.add_argument("study", help="study TOML file")
    o.add_argument("--out", metavar="DIR", help="output folder (default results/<study name>-search)")
    o.add_argument("--storage", metavar="URL", help="optuna storage URL (default: SQLite in the output folder)")
    o.add_argument("--trials", type=int, help="override [search] trials (a total: a search run again continues)")
    o.add_argument("--json", action="store_true", help="print one JSON object (best, n_trials, n_feasible, "
                   "elapsed_s, front)")
    o.add_argument("--quiet", action="store_true", help="no progress bar")
    o.set_defaults(func=cmd_optimize)

    pl = sub.add_parser("plot", help="figures and report for a result folder",
                        description="Draw again the figures (figures/) and the report (report.md, report.html) "
                                    "of a finished `carbon-sweep run` result folder.")
    pl.add_argument("result_dir", help="the folder `run` wrote (it holds study.json)")
    pl.add_argument("--svg", action="store_true", help="also write SVG")
    pl.set_defaults(func=cmd_plot)

    hw = sub.add_parser("hardware", help="the accelerator database")
    hws = hw.add_subparsers(dest="action", metavar="ACTION", required=True)
    hl = hws.add_parser("list", help="accelerator ids and key figures")
    hl.add_argument("--json", action="store_true", help="print a JSON list of rows")
    hl.set_defaults(func=cmd_hardware_list)

    rg = sub.add_parser("regions", help="the region database")
    rgs = rg.add_subparsers(dest="action", metavar="ACTION", required=True)
    rl = rgs.add_parser("list", help="region ids with carbon intensity, PUE, WUE")
    rl.add_argument("--json", action="store_true", help="print a JSON list of rows")
    rl.set_defaults(func=cmd_regions_list)
    return p


def _compilation_cache() -> None:
    """Persist compiled kernels between commands (JAX's on-disk cache): a cold start skips XLA.

    The folder is $CARBON_SWEEP_CACHE, else ~/.cache/carbon-sweep/jax; CARBON_SWEEP_CACHE=off disables it.
    """
    folder = (os.environ.get("CARBON_SWEEP_CACHE")
              or os.path.join(os.path.expanduser("~"), ".cache", "carbon-sweep", "jax"))
    if folder.lower() == "off":
        return
    try:
        os.makedirs(folder, exist_ok=True)
    except OSError:
        return
    import jax

    jax.config.update("jax_compilation_cache_dir", folder)
    jax.config.update("jax_persistent_cache_min_compile_time_secs", 0.5)


class _Stderr(logging.Handler):
    """The library's log messages (a figure that failed, no search figure) on stderr as they are,
    the stream looked up at each message."""

    def emit(self, record):
        print(self.format(record), file=sys.stderr)


def _log_to_stderr() -> None:
    log = logging.getLogger("sweep")
    if not any(isinstance(h, _Stderr) for h in log.handlers):
        log.addHandler(_Stderr())
    log.setLevel(logging.WARNING)


def main(argv=None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    _compilation_cache()
    _log_to_stderr()
    try:
        db = hardware_db.load(args.db)
        args.func(args, db)
    except (SpecError, DatabaseError, CliError) as exc:
        print(f"carbon-sweep: error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("carbon-sweep: interrupted", file=sys.stderr)
        return 130
    except BrokenPipeError:
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
    return 0


if __name__ == "__main__":
    sys.exit(main())
