"""Which layout produced a contradicted row's number? (README, "Modern throughput").

Some rows of hardware_db/throughput_runs_modern.toml record a summary table whose layout differs from
the recipe preset at the same commit; their notes say so ("DIFFERS from table: ep preset 64 vs table 8;
..."). A row keeps the table's layout (the set's convention) unless its notes say "LAYOUT CORRECTED":
the next release's table published the preset's value with nearly the same throughput. This script
predicts each such row with the packaged constants three ways, with the table's layout, the preset's
and the row's own (the table's, or the corrected one), and prints the errors. Nothing is fitted and
nothing is written.

    .venv/bin/python tools/contradicted_layouts.py
"""
from __future__ import annotations

import copy
import re
import tomllib
from pathlib import Path

import numpy as np

import hardware_db
from sweep.calibrate import load_runs, packaged_predictions

# the notes' names of the preset's settings, as layout keys of the runs file
KEYS = {"gpus": "devices", "mbs": "microbatch", "gbs": "global_batch", "tp": "tp", "pp": "pp", "cp": "cp",
        "vp": "vp", "ep": "ep", "etp": "etp", "fsdp": "fsdp"}
DIFF = re.compile(r"(\w+) preset (\S+?) vs table (\S+?)[;.]")


def differences(run: dict) -> list | None:
    """The (key, preset, table) values the row's notes record as differing (or None)."""
    notes = run.get("notes", "")
    if "DIFFERS from table:" not in notes:
        return None
    return DIFF.findall(notes.split("DIFFERS from table:")[1].split("Table values recorded")[0])


def layout_with(run: dict, diffs: list, which: int) -> dict:
    """The row's layout with the preset's (which = 1) or the table's (which = 2) value of each difference."""
    lay = dict(run["layout"])
    for d in diffs:
        key, value = d[0], d[which]
        if key == "fsdp":
            lay["fsdp"] = value == "True"
        else:
            lay[KEYS[key]] = 1 if value == "None" else int(value)
    lay["dp"] = lay["devices"] // (lay["tp"] * lay["pp"] * lay.get("cp", 1))
    if which == 2 and "PRESET SETTINGS ATTRIBUTED" in run.get("notes", ""):
        # the table's layout is not the preset's: the settings the corrected row took from its
        # preset (recompute, all-to-all overlap) are unknown again; the dispatcher, set per system, stays
        lay["recompute"] = "unknown"
        lay.pop("moe_a2a_overlap", None)
    return lay


def main() -> None:
    db = hardware_db.load()
    with open(Path(hardware_db.__file__).parent / "throughput_runs_modern.toml", "rb") as f:
        doc = tomllib.load(f)
    rows, diffs = [], {}
    notes = {run["id"]: run.get("notes", "") for run in doc["run"]}
    for run in doc["run"]:
        found = differences(run)
        if found is None:
            continue
        rows.append(run)
        for name, which in (("#preset", 1), ("#table", 2)):
            alt = copy.deepcopy(run)
            alt["id"], alt["layout"] = run["id"] + name, layout_with(run, found, which)
            rows.append(alt)
        diffs[run["id"]] = found
    runs, skipped = load_runs({"run": rows}, db, "throughput_runs_modern.toml")
    pred = {p["id"]: p for p in packaged_predictions(db, runs)}
    table, preset, own = [], [], []
    print(f"{'run':40s} {'kind':5s} {'published':>10s} {'table':>8s} {'preset':>8s} {'row':>8s}  preset differs in")
    for rid, d in diffs.items():
        if rid not in pred:
            continue
        a, b, r = pred[rid + "#table"], pred[rid + "#preset"], pred[rid]
        table.append(abs(a["error_pct"]))
        preset.append(abs(b["error_pct"]))
        own.append(abs(r["error_pct"]))
        what = ", ".join(f"{k} {p} (table {t})" for k, p, t in d)
        mark = "*" if "LAYOUT CORRECTED" in notes[rid] else " "
        print(f"{rid:40s} {a['kind']:5s} {a['published']:10.0f} {a['error_pct']:+7.1f}% {b['error_pct']:+7.1f}% "
              f"{r['error_pct']:+7.1f}%{mark} {what}")
    closer = sum(p < t for p, t in zip(preset, table))
    print(f"\n{len(table)} rows: mean |error| {np.mean(table):.1f} % with the table's layouts, "
          f"{np.mean(preset):.1f} % with the presets', {np.mean(own):.1f} % with the rows' own (* = corrected by "
          f"the next release's table); the preset is closer on {closer}, the table on {len(table) - closer}")
    for s in skipped:
        print(f"skipped {s['id']}: {s['reason']}")


if __name__ == "__main__":
    main()
