"""The command line: estimate, validate, layout, lists; every bad input is one clear message, exit 2."""

import json
import re
import subprocess
import sys
from pathlib import Path

import pytest

from sweep.cli import main

ROOT = Path(__file__).resolve().parent.parent

GOOD = """\
[model]
layers = 32
d_model = 4096
heads = 32
vocab = 32000
seq_len = 4096
ffn = "swiglu"
d_ff = 11008

[training]
tokens = 1e12
global_batch = 512

[cluster]
hardware = "a100-sxm4-80gb"
devices = 512
mfu = 0.45

[site]
region = "fr"
"""


def write(tmp_path, text, name="run.toml"):
    p = tmp_path / name
    p.write_text(text)
    return p


def user_db(tmp_path, **tables):
    """A --db folder holding the given tables ({name: CSV text}, written as <name>.csv)."""
    db = tmp_path / "db"
    db.mkdir()
    for name, text in tables.items():
        (db / f"{name}.csv").write_text(text)
    return db


def cli(capsys, *args):
    code = main([str(a) for a in args])
    out, err = capsys.readouterr()
    return code, out, err


def test_estimate_json_has_the_contract_keys(tmp_path, capsys):
    code, out, _ = cli(capsys, "estimate", write(tmp_path, GOOD), "--json")
    assert code == 0
    doc = json.loads(out)
    for key in ("params", "active_params", "train_flops", "mfu", "devices", "train_days", "device_hours",
                "energy_mwh", "operational_tco2e", "embodied_tco2e", "total_tco2e", "gpus_consumed",
                "material_kg", "water_m3", "tp", "pp", "dp", "ep", "microbatch", "recompute", "loss"):
        assert key in doc, key
    assert doc["mfu"] == 0.45
    assert doc["total_tco2e"] == pytest.approx(doc["operational_tco2e"] + doc["embodied_tco2e"])


def test_estimate_names_the_whole_layout_it_chose_as_layout_ranks_it_first(tmp_path, capsys):
    path = write(tmp_path, GOOD.replace("mfu = 0.45\n", ""))
    _, est, _ = cli(capsys, "estimate", path, "--json")
    _, lay, _ = cli(capsys, "layout", path, "--json", "--top", "1")
    est, best = json.loads(est), json.loads(lay)["layouts"][0]
    for key in ("tp", "pp", "dp", "ep", "microbatch", "recompute", "interleave", "sequence_parallel",
                "shard_optimizer"):
        assert est[key] == best[key], key
    _, table, _ = cli(capsys, "estimate", path)
    assert re.search(r"optimizer sharded \(ZeRO-1\) +(yes|no)\n", table)


def test_estimate_table_shows_units(tmp_path, capsys):
    code, out, _ = cli(capsys, "estimate", write(tmp_path, GOOD))
    assert code == 0
    assert "t CO2e" in out and "MWh" in out and "days" in out


def test_estimate_table_shows_the_life_cycle_the_spec_asks_for(tmp_path, capsys):
    served = write(tmp_path, GOOD + "\n[lifecycle]\nserved_tokens_per_day = 1e10\nserving_days = 100\n", "served.toml")
    _, doc, _ = cli(capsys, "estimate", served, "--json")
    doc = json.loads(doc)
    code, out, _ = cli(capsys, "estimate", served)
    assert code == 0 and "Life cycle" in out
    def shown(label):  # the number printed beside a label
        return float(re.search(rf"^    {label} +([0-9.,e+-]+) ", out, re.M).group(1).replace(",", ""))

    assert shown("serving") == pytest.approx(doc["inference_tco2e"], rel=1e-3)
    assert shown("life cycle, in all") == pytest.approx(doc["lifecycle_tco2e"], rel=1e-3)
    assert shown("serving equals training at") == pytest.approx(doc["breakeven_served_tokens"], rel=1e-3)
    assert "earlier experiments" not in out and "storage" not in out  # phases the spec does not have
    code, out, _ = cli(capsys, "estimate", write(tmp_path, GOOD))
    assert "serving equals training at" in out and "serving " not in out.replace("serving equals", "")


GPT3_ON_8 = """\
[model]
layers = 96
d_model = 12288
heads = 96
vocab = 50257
seq_len = 2048

[training]
tokens = 3e11
global_batch = 1536

[cluster]
hardware = "a100-sxm4-80gb"
devices = 8

[site]
region = "us"
"""


def test_a_model_no_layout_fits_says_so_first_and_keeps_what_the_design_fixes(tmp_path, capsys):
    path = write(tmp_path, GPT3_ON_8)
    _, doc, _ = cli(capsys, "estimate", path, "--json")
    doc = json.loads(doc)
    assert doc["reason"] == 10 and doc["total_tco2e"] is None and doc["tp"] is None  # out_of_memory
    # GPT-3: 175 B parameters, 6·N·D + attention ≈ 3.2e23 FLOP for 300 B tokens (Brown et al. 2020: 3.14e23)
    assert doc["params"] == pytest.approx(175e9, rel=0.01)
    assert doc["train_flops"] == pytest.approx(3.2e23, rel=0.03) and doc["loss"] is not None
    code, out, _ = cli(capsys, "estimate", path)
    assert code == 0
    body = [ln.strip() for ln in out.splitlines()[1:] if ln.strip()]
    assert body[0].startswith("INFEASIBLE: out_of_memory: no parallelism layout")
    assert "Materials" not in out and "Life cycle" not in out  # nothing known there: no empty headings


def test_a_missing_figure_is_named_and_supplying_it_makes_the_run_known(tmp_path, capsys):
    import csv
    import tomllib

    from sweep.engine import run

    # TPU v4's ICI bandwidth is not published: every layout that fits lacks a figure (missing_data,
    # as the sweep says too), not out_of_memory as estimate used to say
    text = (GOOD.replace("mfu = 0.45\n", "").replace("a100-sxm4-80gb", "tpu-v4")
            .replace("devices = 512", "devices = 256"))
    path = write(tmp_path, text)
    _, doc, _ = cli(capsys, "estimate", path, "--json")
    doc = json.loads(doc)
    assert doc["reason"] == 14 and doc["missing_figures"] == ["accelerators.csv intra_node_bw_gbs",
                                                              "accelerators.csv inter_node_bw_gbs"]
    swept = tomllib.loads(text)
    swept["grid"] = {"devices": [swept["cluster"].pop("devices")]}
    assert run(swept, write=False).dataset["reason"].values.ravel().tolist() == [14]
    _, out, _ = cli(capsys, "estimate", path)
    assert "UNKNOWN: missing_data" in out and "intra_node_bw_gbs" in out
    # the user supplies them (test figures, not TPU v4's) in their own row: the run becomes known
    with open(ROOT / "hardware_db" / "accelerators.csv", newline="") as fh:
        row = next(r for r in csv.DictReader(fh) if r["id"] == "tpu-v4")
    row.update(intra_node_bw_gbs="50", inter_node_bw_gbs="50", source="test figures")
    db = user_db(tmp_path)
    with open(db / "accelerators.csv", "w", newline="") as fh:
        w = csv.DictWriter(fh, fieldnames=list(row))
        w.writeheader()
        w.writerow(row)
    _, doc, err = cli(capsys, "--db", db, "estimate", path, "--json")
    doc = json.loads(doc)
    assert doc["reason"] == 0 and doc["total_tco2e"] > 0 and doc["missing_figures"] == [], err


def test_explicit_site_values_win_over_the_region(tmp_path, capsys):
    text = GOOD.replace('region = "fr"', 'region = "fr"\ncarbon_intensity = 0.5\npue = 1.3')
    code, out, _ = cli(capsys, "estimate", write(tmp_path, text), "--json")
    assert code == 0
    doc = json.loads(out)
    assert doc["carbon_intensity_kg_per_kwh"] == 0.5 and doc["pue"] == 1.3
    assert doc["operational_tco2e"] == pytest.approx(doc["energy_mwh"] * 0.5)


def test_params_only_model_uses_six_n_flops(tmp_path, capsys):
    text = """
[model]
params = 7e9
[training]
tokens = 1e12
[cluster]
hardware = "h100-sxm5-80gb"
devices = 64
mfu = 0.4
[site]
carbon_intensity = 0.4
pue = 1.2
"""
    code, out, _ = cli(capsys, "estimate", write(tmp_path, text), "--json")
    assert code == 0
    assert json.loads(out)["train_flops"] == 6 * 7e9 * 1e12


def test_layout_in_the_spec_is_used(tmp_path, capsys):
    text = GOOD.replace("mfu = 0.45", "tp = 2\npp = 2\nmicrobatch = 1\nrecompute = \"full\"")
    code, out, _ = cli(capsys, "estimate", write(tmp_path, text), "--json")
    assert code == 0
    doc = json.loads(out)
    assert (doc["tp"], doc["pp"], doc["dp"], doc["recompute"]) == (2, 2, 128, "full")
    assert 0 < doc["mfu"] < 1


def test_layout_command_json(tmp_path, capsys):
    text = GOOD.replace("mfu = 0.45\n", "")
    code, out, _ = cli(capsys, "layout", write(tmp_path, text), "--json", "--top", "3")
    assert code == 0
    doc = json.loads(out)
    assert doc["evaluated"] > 0 and isinstance(doc["infeasible"], dict)
    assert 1 <= len(doc["layouts"]) <= 3
    for key in ("tp", "pp", "dp", "ep", "microbatch", "recompute", "interleave", "mfu", "step_time_s",
                "train_days", "memory_gb", "total_tco2e"):
        assert key in doc["layouts"][0]
    co2 = [r["total_tco2e"] for r in doc["layouts"]]
    assert co2 == sorted(co2)


def test_layout_table_shows_every_choice_that_tells_layouts_apart(tmp_path, capsys):
    # two layouts differing only in sequence parallelism or ZeRO-1 printed as the same row
    code, out, _ = cli(capsys, "layout", write(tmp_path, GOOD.replace("mfu = 0.45\n", "")), "--top", "40")
    assert code == 0
    rows = [ln.split() for ln in out.splitlines() if ln.split() and ln.split()[0].isdigit()]
    assert len(rows) == 40 and "sp" in out and "zero" in out
    layout_columns = [tuple(r[1:13]) for r in rows]  # tp pp cp dp ep etp mb recompute il sp zero (and MFU)
    assert len(set(c[:11] for c in layout_columns)) == len(rows)


def test_hardware_and_regions_lists(capsys):
    code, out, _ = cli(capsys, "hardware", "list", "--json")
    ids = {r["id"] for r in json.loads(out)}
    assert {"v100-sxm2-32gb", "a100-sxm4-40gb", "a100-sxm4-80gb", "h100-sxm5-80gb", "h800-sxm5-80gb",
            "h200-sxm-141gb", "b200-sxm-180gb", "mi250x", "mi300x", "tpu-v3", "tpu-v4", "tpu-v5e",
            "tpu-v5p", "gaudi2", "gaudi3"} <= ids
    code, out, _ = cli(capsys, "regions", "list", "--json")
    assert code == 0
    regions = json.loads(out)
    assert len(regions) >= 30 and all("id" in r for r in regions)


# -- bad input -------------------------------------------------------------------------------

BAD = [
    ("unknown key (typo)", ("layers = 32", "layres = 32"), "[model] layres", "layers"),
    ("missing required key", ("tokens = 1e12\n", ""), "[training] tokens", "required"),
    ("wrong type", ("layers = 32", 'layers = "32"'), "[model] layers", "number"),
    ("non-positive count", ("devices = 512", "devices = 0"), "[cluster] devices", "greater than 0"),
    ("negative count", ("layers = 32", "layers = -4"), "[model] layers", "greater than 0"),
    ("NaN", ("mfu = 0.45", "mfu = nan"), "[cluster] mfu", "finite"),
    ("infinite", ("tokens = 1e12", "tokens = inf"), "[training] tokens", "finite"),
    ("top_k > experts", ('ffn = "swiglu"', 'ffn = "swiglu"\nexperts = 4\ntop_k = 8'), "[model] top_k",
     "cannot exceed experts"),
    ("heads not dividing d_model", ("heads = 32", "heads = 30"), "[model] heads", "must divide d_model"),
    ("unknown hardware", ('hardware = "a100-sxm4-80gb"', 'hardware = "a100-80gb"'), "[cluster] hardware",
     "did you mean"),
    ("unknown region", ('region = "fr"', 'region = "france"'), "[site] region", "unknown region"),
    ("unknown section", ("[site]", "[sight]"), "[sight]", "unknown section"),
    ("key in the wrong section", ("devices = 512", "devices = 512\nlayers = 2"), "[cluster] layers",
     "belongs in [model]"),
    ("bad choice", ('ffn = "swiglu"', 'ffn = "relu"'), "[model] ffn", "allowed"),
    ("mfu above 1", ("mfu = 0.45", "mfu = 1.5"), "[cluster] mfu", "at most 1"),
    ("precision the device lacks", ("[cluster]", '[cluster]\n'), None, None),
]


@pytest.mark.parametrize("case,edit,where,words", [b for b in BAD if b[2]], ids=[b[0] for b in BAD if b[2]])
def test_bad_input_gets_one_clear_message_and_exit_2(tmp_path, capsys, case, edit, where, words):
    path = write(tmp_path, GOOD.replace(*edit, 1))
    code, out, err = cli(capsys, "estimate", path)
    assert code == 2
    assert out == ""
    assert str(path) in err and where in err and words in err, err
    assert "Traceback" not in err
    assert err.count("\n") == 1


def test_precision_the_hardware_lacks_is_an_error(tmp_path, capsys):
    text = GOOD.replace("[training]", '[training]\nprecision = "fp8"')
    code, _, err = cli(capsys, "estimate", write(tmp_path, text))
    assert code == 2 and "[training] precision" in err and "bf16" in err


def test_sixteen_bit_formats_fall_back_to_each_other(tmp_path, capsys):
    # V100 publishes fp16 only (125 TFLOP/s): a bf16 run on it uses the fp16 peak
    text = GOOD.replace('hardware = "a100-sxm4-80gb"', 'hardware = "v100-sxm2-32gb"')
    code, out, _ = cli(capsys, "estimate", write(tmp_path, text), "--json")
    assert code == 0
    doc = json.loads(out)
    assert doc["train_days"] * 86400 * 512 * 125e12 * 0.45 == pytest.approx(doc["train_flops"], rel=1e-9)


def test_unreadable_and_invalid_files(tmp_path, capsys):
    code, _, err = cli(capsys, "estimate", tmp_path / "nope.toml")
    assert code == 2 and "file not found" in err
    code, _, err = cli(capsys, "estimate", write(tmp_path, "[model\nlayers = 1"))
    assert code == 2 and "not valid TOML" in err
    code, _, err = cli(capsys, "estimate", tmp_path)
    assert code == 2 and "folder" in err


def test_bad_input_through_the_real_command_has_no_traceback(tmp_path):
    path = write(tmp_path, GOOD.replace("devices = 512", "devices = -1"))
    proc = subprocess.run([sys.executable, "-m", "sweep.cli", "estimate", str(path)], capture_output=True,
                          text=True, cwd=ROOT)
    assert proc.returncode == 2
    assert "Traceback" not in proc.stderr and "[cluster] devices" in proc.stderr


def test_bad_study_writes_nothing(tmp_path, capsys):
    study = GOOD + "\n[grid]\nlifespan_years = []\n"
    out_dir = tmp_path / "out"
    code, _, err = cli(capsys, "run", write(tmp_path, study), "--out", out_dir)
    assert code == 2 and "[grid] lifespan_years" in err
    assert not out_dir.exists()


STUDY = GOOD.replace("layers = 32\n", "") + '[grid]\nlayers = [16, 32]\n'


def test_run_into_a_file_is_one_clear_message_and_leaves_the_file(tmp_path, capsys):
    target = write(tmp_path, "my notes", "results")
    code, _, err = cli(capsys, "run", write(tmp_path, STUDY), "--out", target, "--quiet", "--no-plot")
    assert code == 2 and "--out" in err and "is a file, not a folder" in err and "Traceback" not in err
    assert target.read_text() == "my notes"


def test_unreachable_scheduler_is_one_clear_message_and_writes_nothing(tmp_path, capsys):
    import dask
    import distributed  # noqa: F401  (its config first: set() would drop the whole section on exit)

    with dask.config.set({"distributed.comm.timeouts.connect": "1s"}):  # (dask's default waits 30 s)
        code, _, err = cli(capsys, "run", write(tmp_path, STUDY), "--out", tmp_path / "out",
                           "--scheduler", "tcp://127.0.0.1:1", "--quiet", "--no-plot")
    assert code == 2 and "--scheduler tcp://127.0.0.1:1: no dask scheduler answered" in err
    assert not (tmp_path / "out").exists()


def test_user_database_folder_adds_a_device(tmp_path, capsys):
    db = user_db(tmp_path, accelerators=(
        "id,name,peak_bf16_tflops,hbm_gb,hbm_bw_gbs,tdp_w,devices_per_node,source\n"
        "my-npu,My NPU,500,96,3000,550,8,my datasheet 2026\n"))
    text = GOOD.replace('hardware = "a100-sxm4-80gb"', 'hardware = "my-npu"')
    code, out, err = cli(capsys, "--db", db, "estimate", write(tmp_path, text), "--json")
    assert code == 0, err
    doc = json.loads(out)
    assert doc["hardware"] == "my-npu"
    assert doc["total_tco2e"] is None  # no die area or footprint published for it: embodied unknown
    assert doc["reason"] == 14  # missing_data
    assert doc["operational_tco2e"] > 0


def test_lists_keep_their_columns_for_ids_longer_than_the_packaged_ones(tmp_path, capsys):
    db = user_db(tmp_path, accelerators=(
        "id,name,peak_bf16_tflops,hbm_gb,hbm_bw_gbs,tdp_w,devices_per_node,source\n"
        "our-inhouse-accelerator-v2-96gb,Ours,500,96,3000,550,8,our datasheet 2026\n"), regions=(
        "id,name,kind,carbon_intensity_kg_per_kwh,year,source\n"
        "our-datacentre-in-the-north-of-somewhere,Ours,datacenter,0.02,2025,our meter 2025\n"))
    for what, header in (("hardware", "bf16 TFLOP/s"), ("regions", "kg CO2e/kWh")):
        code, out, err = cli(capsys, "--db", db, what, "list")
        assert code == 0, err
        lines = out.splitlines()
        end = lines[0].index(header) + len(header)  # the first value column, right-aligned under it
        ids = [ln.split()[0] for ln in lines[1:]]
        assert any(i.startswith("our-") for i in ids)
        for ln in lines[1:]:
            assert ln[end - 1] != " " and ln[end] == " ", ln  # every row's value ends where its header does


def test_user_database_schema_errors_name_file_row_and_column(tmp_path, capsys):
    db = user_db(tmp_path, regions="id,name,carbon_intensity_kg_per_kwh,source\nmars,Mars,lots,me\n")
    code, _, err = cli(capsys, "--db", db, "regions", "list")
    assert code == 2
    assert "regions.csv" in err and "'mars'" in err and "carbon_intensity_kg_per_kwh" in err


def test_help_teaches(capsys):
    with pytest.raises(SystemExit) as e:
        main(["--help"])
    out = capsys.readouterr().out
    assert e.value.code == 0
    for word in ("estimate", "validate", "layout", "run", "optimize", "plot", "examples"):
        assert word in out


def test_every_command_and_option_has_help():
    import argparse

    from sweep.cli import build_parser

    def commands(parser, path=()):
        for action in parser._actions:
            if isinstance(action, argparse._SubParsersAction):
                helps = {a.dest: a.help for a in action._choices_actions}
                for name, sub in action.choices.items():
                    assert helps.get(name), path + (name,)
                    yield path + (name,), sub
                    yield from commands(sub, path + (name,))

    for path, sub in commands(build_parser()):
        for action in sub._actions:
            if isinstance(action, (argparse._HelpAction, argparse._SubParsersAction)):
                continue
            assert action.help, (" ".join(path), action.dest)


def test_validate_help_names_every_held_out_file(capsys):
    # the help lists the files validate reports as held out, from the one list it reads
    from sweep.validate_layout import HELDOUT_SETS

    with pytest.raises(SystemExit):
        main(["validate", "--help"])
    out = capsys.readouterr().out
    for file, _, _ in HELDOUT_SETS:
        assert file in out


def test_material_classes_scale_with_gpus_consumed(tmp_path, capsys):
    text = GOOD.replace('hardware = "a100-sxm4-80gb"', 'hardware = "a100-sxm4-40gb"')
    code, out, _ = cli(capsys, "estimate", write(tmp_path, text), "--json")
    assert code == 0
    doc = json.loads(out)
    # composition: 1.491 kg measured per A100 40GB (3,750 kg / 2,515 GPUs); heatsink 1.25 kg
    assert doc["material_kg"] == pytest.approx(doc["gpus_consumed"] * 1.491)
    heatsink = next(m for m in doc["materials"] if m["name"] == "heatsink")
    assert heatsink["mass_kg"] == pytest.approx(doc["gpus_consumed"] * 1.25)


def test_user_element_table_is_used(tmp_path, capsys):
    db = tmp_path / "db"
    (db / "compositions").mkdir(parents=True)
    (db / "compositions" / "a100-sxm4-40gb.toml").write_text(
        '[device]\nid = "a100-sxm4-40gb"\ntotal_measured_kg = 1.0\nelements_csv = "a100.csv"\nsource = "mine"\n')
    (db / "compositions" / "a100.csv").write_text("element,mass_g,classes\ncopper,400,metal\ngold,0.5,precious\n")
    text = GOOD.replace('hardware = "a100-sxm4-80gb"', 'hardware = "a100-sxm4-40gb"')
    code, out, err = cli(capsys, "--db", db, "estimate", write(tmp_path, text), "--json")
    assert code == 0, err
    doc = json.loads(out)
    gold = next(m for m in doc["materials"] if m["name"] == "gold")
    assert gold["mass_kg"] == pytest.approx(doc["gpus_consumed"] * 0.0005)
    assert doc["material_kg"] == pytest.approx(doc["gpus_consumed"] * 1.0)
