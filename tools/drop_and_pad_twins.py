"""Check the layout model's host-sync and per-expert terms on runs in neither runs file: Megatron-Bridge's
25.09 table ran three layouts with token dropping (drop-and-pad: the alltoall dispatcher then needs no
host synchronisation) that the 25.11 table runs dropless (hardware_db/throughput_runs_modern.toml).

Each 25.09 twin takes its 25.11 row's settings with ``moe_host_sync = false`` (and, for the H100 pair,
the 25.09 table's VP 24 and micro-batch 2). Published 25.09 tokens/s per GPU: NVIDIA-NeMo/Megatron-Bridge
docs/performance-summary.md @ 5776a6d90b4dd8692902ab2eb581369484e19283, "25.09 NeMo Container"
(Apache-2.0). Prints, per pair, both runs published / predicted with the packaged constants and the
drop/dropless ratios. Usage: python tools/drop_and_pad_twins.py [DB_FOLDER]
"""

from __future__ import annotations

import copy
import sys
import tomllib
from pathlib import Path

import hardware_db
from sweep.calibrate import load_runs, packaged_predictions

ROOT = Path(__file__).resolve().parents[1]
# (25.11 row of the modern set, 25.09 drop-and-pad tokens/s per GPU, the 25.09 layout where it differs)
TWINS = (("mb2511-qwen3-30b-b200-fp8-mx", 18066.0, {}),
         ("mb2511-qwen3-235b-b200-fp8-mx", 4104.0, {}),
         ("mb2511-qwen3-30b-h100-fp8-cs", 10494.0, {"vp": 24, "microbatch": 2}))


def twin_rows(doc: dict) -> list[dict]:
    """[dropless 25.11 row, its drop-and-pad 25.09 twin] for each pair, as runs-file rows."""
    by_id = {r["id"]: r for r in doc["run"]}
    rows = []
    for run_id, published, layout in TWINS:
        dropless = copy.deepcopy(by_id[run_id])
        drop = copy.deepcopy(dropless)
        drop["id"] = run_id + "-2509-drop-and-pad"
        drop["published_tokens_per_s_per_device"] = published
        drop["layout"].update(layout)
        drop["layout"]["moe_host_sync"] = False
        rows += [dropless, drop]
    return rows


def main(argv: list[str]) -> int:
    db = hardware_db.load(argv[0]) if argv else hardware_db.load()
    doc = tomllib.loads((ROOT / "hardware_db" / "throughput_runs_modern.toml").read_text())
    runs, _ = load_runs({"run": twin_rows(doc)}, db, "drop_and_pad_twins")
    pred = packaged_predictions(db, runs)
    print(f"{'25.11 run':34s} {'25.09 drop-and-pad: pub / pred':>32s} {'25.11 dropless: pub / pred':>30s}"
          f" {'ratio pub':>9s} {'pred':>5s}")
    for dropless, drop in zip(pred[::2], pred[1::2]):
        print(f"{dropless['id']:34s} {drop['published']:9,.0f} / {drop['predicted']:7,.0f}"
              f" ({drop['error_pct']:+5.1f} %) {dropless['published']:8,.0f} / {dropless['predicted']:6,.0f}"
              f" ({dropless['error_pct']:+5.1f} %)"
              f" {drop['published'] / dropless['published']:9.2f} {drop['predicted'] / dropless['predicted']:5.2f}")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
