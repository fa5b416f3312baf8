"""The `carbon-sweep` command line: estimate, validate, layout, run, optimize, plot, hardware, regions.

Bad input (spec or data) ends with one message naming the file, section and key, exit status 2, no
traceback and nothing written.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import sys
import textwrap

import hardware_db
from hardware_db import DatabaseError

from .spec import OBJECTIVE_OUTPUT, SpecError

EPILOG = textwrap.dedent(
    """\
    examples:
      carbon-sweep estimate studies/llama2_70b.toml          footprint of one training run
      carbon-sweep estimate run.toml --json                  the same as one JSON object
      carbon-sweep layout run.toml --objective co2e --top 5  best parallelism layouts
      carbon-sweep validate                                  predictions vs published runs
      carbon-sweep hardware list                             accelerator ids and key figures
      carbon-sweep regions list                              region ids, carbon intensity, PUE

    A spec is a TOML file with [model], [training], [cluster], [site], [lifecycle] sections;
    see README.md. Your own devices and regions: put accelerators.csv / regions.csv / ... in a
    folder and pass --db FOLDER or set CARBON_SWEEP_DB (hardware_db/SCHEMA.md gives the columns).
    """
)


class CliError(Exception):
    """A usage error found after parsing (exit 2)."""


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


ESTIMATE_GROUPS = [
    ("Model", [("params", "parameters", ""), ("active_params", "active parameters", ""),
               ("train_flops", "training FLOPs", "FLOP")]),
    ("Run", [("hardware", "hardware", ""), ("devices", "devices", ""), ("tp", "tensor parallel", ""),
             ("pp", "pipeline parallel", ""), ("dp", "data parallel", ""), ("ep", "expert parallel", ""),
             ("microbatch", "micro-batch", ""), ("recompute", "recompute", ""),
             ("interleave", "virtual stages per device", ""), ("sequence_parallel", "sequence parallel", ""),
             ("shard_optimizer", "optimizer sharded (ZeRO-1)", ""),
             ("mfu", "MFU", ""), ("step_time_s", "step time", "s"), ("memory_gb", "memory per device", "GB"),
             ("train_days", "training time", "days"), ("device_hours", "device hours", "h")]),
    ("Energy", [("it_energy_mwh", "IT energy", "MWh"), ("pue", "PUE", ""), ("energy_mwh", "facility energy", "MWh"),
                ("water_m3", "on-site water", "m³")]),
    ("Carbon", [("carbon_intensity_kg_per_kwh", "carbon intensity", "kg CO2e/kWh"),
                ("operational_device_tco2e", "operational, accelerators", "t CO2e"),
                ("operational_host_tco2e", "operational, hosts", "t CO2e"),
                ("operational_tco2e", "operational", "t CO2e"),
                ("embodied_device_tco2e", "embodied, accelerators", "t CO2e"),
                ("embodied_host_tco2e", "embodied, hosts", "t CO2e"),
                ("embodied_tco2e", "embodied", "t CO2e"), ("total_tco2e", "total", "t CO2e")]),
    ("Materials", [("gpus_consumed", "device lifetimes consumed", ""), ("material_kg", "material mass", "kg")]),
    ("Life cycle", [("inference_tco2e", "serving", "t CO2e"), ("inference_energy_mwh", "serving energy", "MWh"),
                    ("experimentation_tco2e", "earlier experiments", "t CO2e"),
                    ("storage_tco2e", "storage", "t CO2e"), ("lifecycle_tco2e", "life cycle, in all", "t CO2e"),
                    ("breakeven_served_tokens", "serving equals training at", "tokens served")]),
    ("Quality", [("loss", "predicted loss", "nats/token"), ("law", "scaling law", "")]),
]
LIFECYCLE_PHASES = ("inference_tco2e", "inference_energy_mwh", "experimentation_tco2e", "storage_tco2e")


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
        from kernels.reasons import REASONS

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
    for group, rows in ESTIMATE_GROUPS:
        lines = []
        for key, label, unit in rows:
            if group == "Life cycle" and _unused_phase(out, key):
                continue
            if key in out and out[key] is not None:
                pct = ""
                if key in ("operational_tco2e", "embodied_tco2e") and out.get("total_tco2e"):
                    pct = f"  ({100 * out[key] / out['total_tco2e']:.1f} %)"
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


def cmd_estimate(args, db):
    from .evaluate import evaluate
    from .spec import load_estimate

    v = load_estimate(args.spec, db)
    out = evaluate(v, db, file=args.spec, objective=args.objective)
    if args.json:
        print(json.dumps(out, indent=2))
    else:
        print_estimate(out, f"carbon-sweep estimate: {args.spec}")


def cmd_validate(args, db):
    from .validate import validation_rows

    rows = validation_rows(db)
    if args.json:
        print(json.dumps(rows, indent=2))
        return
    w = max(len(r["case"]) for r in rows)
    print(f"{'case':<{w}}  {'quantity':<20} {'predicted':>12} {'published':>12} {'error':>8}  unit")
    for r in rows:
        print(f"{r['case']:<{w}}  {r['quantity']:<20} {r['predicted']:>12.4g} {r['published']:>12.4g} "
              f"{r['error_pct']:>+7.2f}%  {r['unit']}")


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
        print(json.dumps([{k: (None if isinstance(v, float) and math.isnan(v) else v) for k, v in r.items()}
                          for r in rows], indent=2))
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
        print(json.dumps([{k: (None if isinstance(v, float) and math.isnan(v) else v) for k, v in r.items()}
                          for r in rows], indent=2))
        return
    w = max(len(r["id"]) for r in rows)  # your own ids may be longer than the packaged ones
    print(f"{'id':<{w}} {'kg CO2e/kWh':>11} {'year':>5} {'PUE':>5} {'WUE L/kWh':>9}  name")
    for r in sorted(rows, key=lambda r: r["carbon_intensity_kg_per_kwh"]):
        f = lambda x: "-" if isinstance(x, float) and math.isnan(x) else f"{x:g}"  # noqa: E731
        print(f"{r['id']:<{w}} {r['carbon_intensity_kg_per_kwh']:>11.3f} {f(r['year']):>5} {f(r['pue']):>5} "
              f"{f(r['wue_l_per_kwh']):>9}  {r['name']}")


def cmd_layout(args, db):
    from .layouts import layout_command

    layout_command(args, db)


def cmd_run(args, db):
    from .engine import run_command

    run_command(args, db)


def cmd_optimize(args, db):
    from .search import optimize_command

    optimize_command(args, db)


def cmd_plot(args, db):
    from .plots import plot_command

    plot_command(args, db)


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
    e.set_defaults(func=cmd_estimate)

    v = sub.add_parser("validate", help="predictions beside published figures",
                       description="Predictions beside the published reference runs (LLMCarbon, From FLOPs to "
                                   "Footprints, Megatron-LM throughput) with the signed error of each.")
    v.add_argument("--json", action="store_true", help="print a JSON list of rows")
    v.set_defaults(func=cmd_validate)

    lay = sub.add_parser("layout", help="best parallelism layouts for a run",
                         description="Every valid layout (tp, pp, dp, ep, micro-batch, recompute, interleave) "
                                     "for the spec's model and cluster, best first by the objective.")
    lay.add_argument("spec", help="TOML spec file")
    lay.add_argument("--objective", choices=tuple(OBJECTIVE_OUTPUT), default="co2e",
                     help="rank by total tCO2e, training days or facility energy (default co2e)")
    lay.add_argument("--top", type=int, default=10, help="how many layouts to show (default 10)")
    lay.add_argument("--json", action="store_true", help="print one JSON object")
    lay.set_defaults(func=cmd_layout)

    r = sub.add_parser("run", help="sweep a study's grid",
                       description="Evaluate a study's [grid] in chunks; write the grid, Pareto fronts, top-k, "
                                   "figures and a report to the output folder.")
    r.add_argument("study", help="study TOML file")
    r.add_argument("--out", metavar="DIR", help="output folder (default results/<study name>)")
    r.add_argument("--resume", action="store_true", help="continue an interrupted run in --out")
    r.add_argument("--chunk-size", type=int, metavar="N", help="points per chunk (default: by memory budget; at least 2 are taken)")
    r.add_argument("--scheduler", metavar="ADDRESS", help="dask.distributed scheduler address")
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
    folder = os.environ.get("CARBON_SWEEP_CACHE") or os.path.join(os.path.expanduser("~"), ".cache", "carbon-sweep", "jax")
    if folder.lower() == "off":
        return
    try:
        os.makedirs(folder, exist_ok=True)
    except OSError:
        return
    import jax

    jax.config.update("jax_compilation_cache_dir", folder)
    jax.config.update("jax_persistent_cache_min_compile_time_secs", 0.5)


def main(argv=None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    _compilation_cache()
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
