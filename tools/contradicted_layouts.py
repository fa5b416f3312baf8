"""Which layout produced a contradicted row's number? (README, "Modern throughput").

Some rows of hardware_db/throughput_runs_modern.toml record a summary table whose layout differs from
the recipe preset at the same commit; their notes say so ("DIFFERS from table: ep preset 64 vs table 8;
..."). The row keeps the table's layout (the set's convention). This script predicts each such row
twice with the packaged constants, once with the table's layout and once with the preset's, and
prints both errors, so the README can say which of the two the published number fits. Nothing is
fitted and nothing is written.

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


def preset_layout(run: dict) -> tuple[dict, list] | None:
    """The row's layout with the preset's values where its notes record a difference (or None)."""
    notes = run.get("notes", "")
    if "DIFFERS from table:" not in notes:
        return None
    diffs = DIFF.findall(notes.split("DIFFERS from table:")[1].split("Table values recorded")[0])
    lay = dict(run["layout"])
    for key, preset, _table in diffs:
        if key == "fsdp":
            lay["fsdp"] = preset == "True"
        else:
            lay[KEYS[key]] = 1 if preset == "None" else int(preset)
    lay["dp"] = lay["devices"] // (lay["tp"] * lay["pp"] * lay.get("cp", 1))
    return lay, diffs


def main() -> None:
    db = hardware_db.load()
    with open(Path(hardware_db.__file__).parent / "throughput_runs_modern.toml", "rb") as f:
        doc = tomllib.load(f)
    rows, diffs = [], {}
    for run in doc["run"]:
        found = preset_layout(run)
        if found is None:
            continue
        alt = copy.deepcopy(run)
        alt["id"], alt["layout"] = run["id"] + "#preset", found[0]
        rows += [run, alt]
        diffs[run["id"]] = found[1]
    runs, skipped = load_runs({"run": rows}, db, "throughput_runs_modern.toml")
    pred = {p["id"]: p for p in packaged_predictions(db, runs)}
    table, preset = [], []
    print(f"{'run':40s} {'kind':5s} {'published':>10s} {'table':>8s} {'preset':>8s}  preset differs in")
    for rid, d in diffs.items():
        if rid not in pred:
            continue
        a, b = pred[rid], pred[rid + "#preset"]
        table.append(abs(a["error_pct"]))
        preset.append(abs(b["error_pct"]))
        what = ", ".join(f"{k} {p} (table {t})" for k, p, t in d)
        print(f"{rid:40s} {a['kind']:5s} {a['published']:10.0f} {a['error_pct']:+7.1f}% {b['error_pct']:+7.1f}%  {what}")
    closer = sum(p < t for p, t in zip(preset, table))
    print(f"\n{len(table)} rows: mean |error| {np.mean(table):.1f} % with the table's layouts, "
          f"{np.mean(preset):.1f} % with the presets'; the preset is closer on {closer}, the table on "
          f"{len(table) - closer}")
    for s in skipped:
        print(f"skipped {s['id']}: {s['reason']}")


if __name__ == "__main__":
    main()
