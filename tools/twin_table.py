"""Shared by the twin checks (tools/drop_and_pad_twins.py, tools/dispatcher_twins.py): predict pairs of
runs-file rows, a row of the modern set (or of the held-out file) and its twin from another table, with the
packaged constants, and print them side by side with the published and predicted ratios."""

from __future__ import annotations

import copy
import tomllib
from pathlib import Path

import hardware_db
from sweep.calibrate import load_runs, packaged_predictions

ROOT = Path(__file__).resolve().parents[1]
RUNS_FILES = ("throughput_runs_modern.toml", "throughput_runs_heldout.toml")  # where a pair's row may be


def twin_rows(doc: dict, twins) -> list[dict]:
    """[row, twin, row, twin, ...] as runs-file rows: for each (row id, twin id, the twin's published
    tokens/s per GPU, the twin's layout changes), the row of ``doc`` and its copy so changed."""
    by_id = {r["id"]: r for r in doc["run"]}
    rows = []
    for run_id, twin_id, published, changes in twins:
        row = copy.deepcopy(by_id[run_id])
        twin = copy.deepcopy(row)
        twin["id"] = twin_id
        twin["published_tokens_per_s_per_device"] = published
        for measured in ("published_tflops_per_device", "published_step_time_s"):
            twin.pop(measured, None)
        twin["layout"].update(changes)
        rows += [row, twin]
    return rows


def predict_pairs(argv: list[str], twins, name: str) -> list[tuple[dict, dict]]:
    """(row, twin) predictions of ``twins`` (as for ``twin_rows``) from the modern or held-out runs file;
    ``argv`` may name a database folder."""
    db = hardware_db.load(argv[0]) if argv else hardware_db.load()
    doc = {"run": [row for f in RUNS_FILES for row in tomllib.loads((ROOT / "hardware_db" / f).read_text())["run"]]}
    runs, _ = load_runs({"run": twin_rows(doc, twins)}, db, name)
    pred = packaged_predictions(db, runs)
    return list(zip(pred[::2], pred[1::2]))


def print_pairs(pairs: list[tuple[dict, dict]], row_title: str, twin_title: str, ratio_title: str,
                twin_over_row: bool) -> None:  # titles: the row's table, the twin's table, the ratio
    """One line per pair: the row's id, the twin's and the row's published / predicted tokens/s per GPU,
    and the ratio of the two (twin / row, or row / twin), published and predicted."""
    width = max([34] + [len(row["id"]) for row, _ in pairs])
    print(f"{'run':{width}s} {twin_title + ': pub / pred':>32s} {row_title + ': pub / pred':>30s}"
          f" {ratio_title:>18s} {'pred':>5s}")
    for row, twin in pairs:
        num, den = (twin, row) if twin_over_row else (row, twin)
        print(f"{row['id']:{width}s} {twin['published']:9,.0f} / {twin['predicted']:7,.0f}"
              f" ({twin['error_pct']:+5.1f} %)"
              f" {row['published']:9,.0f} / {row['predicted']:7,.0f} ({row['error_pct']:+5.1f} %)"
              f" {num['published'] / den['published']:18.3f} {num['predicted'] / den['predicted']:5.2f}")


def report(argv: list[str], twins, name: str, row_title: str, twin_title: str, ratio_title: str,
           twin_over_row: bool) -> int:
    """A twin check's whole run: predict the pairs and print them (exit status 0)."""
    print_pairs(predict_pairs(argv, twins, name), row_title, twin_title, ratio_title, twin_over_row)
    return 0
