"""The current accelerators' rows: present, cited, and derived figures that follow from their sources."""

import math
from pathlib import Path

import pytest

import hardware_db

NEW = ("gb200-nvl72", "b300-sxm-288gb", "gb300-nvl72", "mi325x", "mi355x", "tpu-v5p", "tpu-v6e", "gaudi3")


@pytest.mark.parametrize("hw", NEW)
def test_row_exists_with_a_source(hw):
    row = hardware_db.load().accelerator(hw)
    assert row["source"] and row["notes"]


def test_gb300_per_gpu_figures_are_the_rack_figures_over_72():
    # GB300 NVL72 as advertised: 360 PF FP8, 20 TB HBM at 576 TB/s, NVLink switches 130 TB/s, 72 GPUs
    row = hardware_db.load().accelerator("gb300-nvl72")
    assert row["peak_fp8_tflops"] == pytest.approx(360_000 / 72)
    assert row["hbm_gb"] == pytest.approx(20_000 / 72, abs=0.05)
    assert row["hbm_bw_gbs"] == pytest.approx(576_000 / 72)
    assert row["intra_node_bw_gbs"] == pytest.approx(130_000 / 72 / 2, rel=0.01)


def test_mi355x_fp8_is_cus_times_rate_times_clock():
    # 8 XCDs x 32 CUs x 8,192 FLOPs/clock x 2.4 GHz = 5,033 TFLOPS
    assert hardware_db.load().accelerator("mi355x")["peak_fp8_tflops"] == round(8 * 32 * 8192 * 2.4e9 / 1e12)


def test_unpublished_figures_are_empty():
    db = hardware_db.load()
    assert math.isnan(db.accelerator("tpu-v6e")["tdp_w"])
    assert math.isnan(db.accelerator("mi355x")["peak_bf16_tflops"])
    assert math.isnan(db.accelerator("b300-sxm-288gb")["inter_node_bw_gbs"])


def test_usable_memory_is_nvml_mib_where_published_else_the_datasheet_gb():
    # H100 80GB: NVML reports 81,559 MiB = 81,559 x 2^20 = 85,520,809,984 bytes, 6.9 % over "80 GB" read as
    # 10^9 bytes; B200 has no published NVML figure, so its datasheet 180 GB (10^9 bytes) stands
    db = hardware_db.load()
    assert db.accelerator_si("h100-sxm5-80gb")["hbm_bytes"] == 85_520_809_984
    assert db.accelerator_si("b200-sxm-180gb")["hbm_bytes"] == 180e9
    assert math.isnan(db.accelerator("b200-sxm-180gb")["hbm_usable_mib"])


def test_a_user_accelerators_file_without_the_usable_memory_column_still_loads(tmp_path):
    import csv

    src = list(csv.reader(l for l in open(Path(hardware_db.__file__).parent / "accelerators.csv")
                          if not l.startswith("#")))
    j = src[0].index("hbm_usable_mib")
    row = next(r for r in src if r[0] == "h100-sxm5-80gb")
    with open(tmp_path / "accelerators.csv", "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(src[0][:j] + src[0][j + 1:])
        w.writerow(["my-h100"] + row[1:j] + row[j + 1:])
    db = hardware_db.load(tmp_path)
    assert db.accelerator_si("my-h100")["hbm_bytes"] == 80e9
