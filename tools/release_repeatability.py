"""How much does the same published layout move from one framework release to the next? (README,
"Modern throughput": the floor a layout model can reach on the summary tables.)

Reads NVIDIA-NeMo/Megatron-Bridge's performance summaries (docs/performance-summary.md and
docs/performance-summary-archive.md, Apache-2.0; not shipped here), groups the pre-training rows by
system, model and published layout (GPUs, precision, GBS, MBS, sequence length, FSDP, TP, PP, CP, VP,
EP; FP8-MX is MXFP8, FP8-CS is FP8, "n/a" is 1), keeps the layouts published by two or more of the
chosen releases, and prints each one's max/min tokens/s per GPU and their median and 90th percentile.
The recipe settings the tables omit (dispatcher, CUDA graphs, overlap) may differ between releases:
the spread is what a layout-only model cannot see, not measurement noise alone.

    python tools/release_repeatability.py SUMMARY.md ARCHIVE.md [RELEASE ...]

Default releases: those the modern set is drawn from, 25.11 26.02 26.02.01 26.04 26.04.01.
"""
from __future__ import annotations

import re
import statistics
import sys
from collections import defaultdict
from pathlib import Path

LAYOUT = ("#-GPUs", "Precision", "GBS", "MBS", "Sequence Length", "FSDP", "TP", "PP", "CP", "VP", "EP")
DEFAULT = ("25.11", "26.02", "26.02.01", "26.04", "26.04.01")


def cell(key: str, value: str) -> str:
    """One layout cell in a form that compares equal across the tables' spellings."""
    if key == "Precision":
        return value.split(" (")[0].replace("FP8-MX", "MXFP8").replace("FP8-CS", "FP8")
    if key in ("VP", "EP", "CP") and value in ("n/a", ""):
        return "1"
    if key == "FSDP" and value == "":
        return "0"
    return value


def rows(text: str, release: str | None = None):
    """(release, system, model, layout, tokens/s per GPU) of every pre-training row of a summary."""
    model = system = header = None
    training = True
    for line in text.splitlines():
        if m := re.match(r"^## (\S+) NeMo Container", line):
            release, training = m.group(1), True
        elif line.startswith("### "):
            training = "Pre-Training" in line
        elif m := re.match(r"^#### (Model|System): (.*)", line):
            model, system = (m.group(2).strip(), None) if m.group(1) == "Model" else (None, m.group(2).strip())
        elif training and line.startswith("|") and not line.startswith("|--"):
            cells = [c.strip() for c in line.strip().strip("|").split("|")]
            if cells[0] in ("System", "Model"):
                header = cells
                continue
            if header is None or len(cells) != len(header):
                continue
            d = dict(zip(header, cells))
            value = re.match(r"^(\d+)", d.get("Tokens / sec / GPU", ""))
            name = d.get("Model", model)
            if value and name:
                name = re.sub(r"\s*\(w/o? MTP\)", "", name).strip()
                yield release, d.get("System", system), name, tuple(cell(k, d.get(k, "")) for k in LAYOUT), int(
                    value.group(1))


def main(argv: list[str]) -> None:
    if len(argv) < 2:
        raise SystemExit(__doc__)
    summary, archive, *chosen = argv
    chosen = set(chosen or DEFAULT)
    latest = re.search(r"^## (\S+) NeMo Container", Path(summary).read_text(), re.M)
    groups = defaultdict(dict)
    for path in (summary, archive):
        for release, system, model, layout, tps in rows(Path(path).read_text(), latest and latest.group(1)):
            if release in chosen:
                groups[(system, model, layout)][release] = tps
    spread = sorted(((max(v.values()) / min(v.values()), k, v) for k, v in groups.items() if len(v) > 1),
                    key=lambda t: -t[0])
    for ratio, (system, model, layout), values in spread:
        shown = ", ".join(f"{r} {t:,}" for r, t in sorted(values.items()))
        print(f"{ratio:5.2f}  {system:10s} {model:24s} {layout[1]:6s} {'x'.join(layout[6:11])}  {shown}")
    ratios = [r for r, _, _ in spread]
    p90 = sorted(ratios)[int(0.9 * len(ratios))]
    print(f"\n{len(ratios)} layouts published by two or more of {', '.join(sorted(chosen))}: max/min tokens/s per "
          f"GPU median {statistics.median(ratios):.3f}, 90th percentile {p90:.3f}, largest {ratios[0]:.2f}")


if __name__ == "__main__":
    main(sys.argv[1:])
