"""Every shipped study file is valid for the command `make studies` runs it with (no full runs here)."""

import json
from pathlib import Path

import pytest

import hardware_db
from sweep.cli import main
from sweep.search import parse_search
from sweep.study import load_study

STUDIES = sorted((Path(__file__).resolve().parent.parent / "studies").glob("*.toml"))


def command_for(path: Path) -> str:
    """The Makefile's rule: [search] → optimize, [grid] or [study] → run, [serving] → serve, else estimate."""
    lines = {line.strip() for line in path.read_text().splitlines()}
    if "[search]" in lines:
        return "optimize"
    if "[grid]" in lines or "[study]" in lines:
        return "run"
    if "[serving]" in lines:
        return "serve"
    return "estimate"


def test_there_are_studies_of_every_kind():
    assert {command_for(p) for p in STUDIES} == {"optimize", "run", "estimate", "serve"}


@pytest.mark.parametrize("path", STUDIES, ids=[p.stem for p in STUDIES])
def test_study_file_loads_for_its_command(path, capsys):
    db = hardware_db.load()
    command = command_for(path)
    if command == "serve":
        assert main(["serve", str(path), "--json"]) == 0
        assert json.loads(capsys.readouterr().out)["best"]["gco2e_per_request"] > 0
        return
    if command == "estimate":
        assert main(["estimate", str(path), "--json"]) == 0
        out = json.loads(capsys.readouterr().out)
        assert out["total_tco2e"] > 0
        return
    study = load_study(str(path), db)
    assert study.name
    if study.options["kind"] != "validation":
        assert study.n_points > 0
    if command == "optimize":
        assert parse_search(study).trials > 0
