"""`carbon-sweep validate` against the published reference runs (shared/reference)."""

import json

import pytest

import hardware_db
from sweep.cli import main
from sweep.validate import validation_rows


@pytest.fixture(scope="module")
def rows():
    return validation_rows(hardware_db.load())


def pick(rows, quantity, contains):
    return [r for r in rows if r["quantity"] == quantity and contains in r["case"]]


def test_llmcarbon_mode_reproduces_llmcarbon_within_half_a_percent(rows):
    got = pick(rows, "operational_tco2e", "LLMCarbon mode")
    assert len(got) == 5
    for r in got:
        assert abs(r["error_pct"]) <= 0.5, r


def test_own_mode_is_within_5_percent_of_the_actual_footprint(rows):
    got = pick(rows, "operational_tco2e", "carbon-sweep mode")
    assert len(got) == 5
    for r in got:
        assert abs(r["error_pct"]) <= 5.0, r


def test_gpt3_own_mode_by_hand(rows):
    # 96 layers, h 12288, tied, biases: N = 96·(12h² + 13h) + 50257·h + h = 174,591,… ; per token
    # 6·N + 12·96·2048·12288; × 300e9 tokens / (125e12 · 0.197) device-seconds × 330 W × 1.1 PUE × 0.429
    h = 12288
    n = 96 * (12 * h * h + 13 * h) + 50257 * h + h
    flops = (6 * n + 12 * 96 * 2048 * h) * 300e9
    t = flops / (125e12 * 0.197) * 330 * 1.1 / 3.6e9 * 0.429  # J → MWh → t
    (r,) = pick(rows, "operational_tco2e", "GPT-3 175B (carbon-sweep")
    assert r["predicted"] == pytest.approx(t, rel=1e-9)


def test_xlm_embodied_within_5_percent_of_066_t(rows):
    # 512 V100 × 8.15 cm² × 1.2 = 5,007.4 kg; 64 servers × (1.47 + 102.4 + 576 + 148.2) kg;
    # × 20.4 / 1825 days = 0.648 t
    (r,) = pick(rows, "embodied_tco2e", "XLM")
    hand = (512 * 8.15 * 1.2 + 64 * (1.47 + 256 * 0.4 + 32000 * 0.018 + 148.2)) * 20.4 / 1825 / 1000
    assert r["predicted"] == pytest.approx(hand, rel=1e-9)
    assert abs(r["error_pct"]) <= 5.0


def test_flops_to_footprints_counts_are_exact(rows):
    got = [r for r in rows if r["quantity"] == "gpus_consumed"]
    assert len(got) == 7
    for r in got:
        assert r["predicted"] == r["published"], r


def test_validate_json_rows_have_the_contract_keys(capsys):
    assert main(["validate", "--json"]) == 0
    doc = json.loads(capsys.readouterr().out)
    assert isinstance(doc, list) and doc
    for r in doc:
        assert set(r) >= {"case", "quantity", "unit", "predicted", "published", "error_pct", "source"}
