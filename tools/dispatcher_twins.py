"""Check the layout model's dispatcher terms (host sync, network copies) on runs in neither runs file:
Megatron-Bridge's 26.04 table ran GPT-OSS 120B on 64 GB200 and 64 B200 with the flex dispatcher and
HybridEP (the presets GPT_OSS_120B_PRETRAIN_CONFIG_GB200_BF16_V2 and ..._B200_BF16_V2 set
moe_flex_dispatcher_backend = "hybridep" @ 74695a06d); the 26.04.01 presets (@ 17a381f95, the same at
21d102f5e) drop that one line and so run Megatron-core's alltoall dispatcher, with every other setting and
the published layout unchanged. The 26.04.01 rows are in hardware_db/throughput_runs_modern.toml.

Each 26.04 twin takes its 26.04.01 row with ``moe_dispatcher = "flex (hybridep)"``, which the loader reads
as ``ep_dedup = true`` and ``moe_host_sync = false``. The H100 row, whose preset did not change, is the
control: it measures what the container patch alone moved. Published 26.04 tokens/s per GPU:
NVIDIA-NeMo/Megatron-Bridge docs/performance-summary.md @ 74695a06d, "26.04 NeMo Container" (Apache-2.0).
Prints, per pair, both runs published / predicted with the packaged constants and the alltoall/HybridEP
ratios. Usage: python tools/dispatcher_twins.py [DB_FOLDER]
"""

from __future__ import annotations

import copy
import sys
import tomllib
from pathlib import Path

import hardware_db
from sweep.calibrate import load_runs, packaged_predictions

ROOT = Path(__file__).resolve().parents[1]
# (26.04.01 row of the modern set, 26.04 tokens/s per GPU, the 26.04 preset's dispatcher or None: unchanged)
TWINS = (("mb260401-gptoss-120b-gb200-bf16", 15938.0, "flex (hybridep): 26.04 preset @ 74695a06d"),
         ("mb260401-gptoss-120b-b200-bf16", 13045.0, "flex (hybridep): 26.04 preset @ 74695a06d"),
         ("mb260401-gptoss-120b-h100-bf16", 5810.0, None))


def twin_rows(doc: dict) -> list[dict]:
    """[26.04.01 row, its 26.04 twin] for each pair, as runs-file rows."""
    by_id = {r["id"]: r for r in doc["run"]}
    rows = []
    for run_id, published, dispatcher in TWINS:
        late = copy.deepcopy(by_id[run_id])
        early = copy.deepcopy(late)
        early["id"] = run_id.replace("mb260401", "mb2604")
        early["published_tokens_per_s_per_device"] = published
        early.pop("published_tflops_per_device", None)
        if dispatcher is not None:
            early["layout"]["moe_dispatcher"] = dispatcher
        rows += [late, early]
    return rows


def main(argv: list[str]) -> int:
    db = hardware_db.load(argv[0]) if argv else hardware_db.load()
    doc = tomllib.loads((ROOT / "hardware_db" / "throughput_runs_modern.toml").read_text())
    runs, _ = load_runs({"run": twin_rows(doc)}, db, "dispatcher_twins")
    pred = packaged_predictions(db, runs)
    print(f"{'26.04.01 run (alltoall)':34s} {'26.04 twin: pub / pred':>30s} {'26.04.01: pub / pred':>30s}"
          f" {'26.04.01/26.04 pub':>18s} {'pred':>5s}")
    for late, early in zip(pred[::2], pred[1::2]):
        print(f"{late['id']:34s} {early['published']:8,.0f} / {early['predicted']:7,.0f}"
              f" ({early['error_pct']:+5.1f} %) {late['published']:9,.0f} / {late['predicted']:7,.0f}"
              f" ({late['error_pct']:+5.1f} %)"
              f" {late['published'] / early['published']:18.3f} {late['predicted'] / early['predicted']:5.2f}")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
