"""Dollar cost (kernels.footprint.cost_usd), the price table, and USD per tCO2e avoided (sweep.cost)."""

import pytest

import hardware_db
from sweep.cost import usd_per_tco2e_avoided
from sweep.estimate import evaluate
from sweep.spec import SpecError

H100_BF16 = 989.5e12


def run_30_days(**kw):
    """8 H100s at MFU 0.5 for exactly 30 days = 720 h, 5,760 device-hours."""
    return {"params": 7e9, "tokens": 1e11, "flops": 30 * 86400 * 8 * H100_BF16 * 0.5, "hardware": "h100-sxm5-80gb",
            "devices": 8, "mfu": 0.5, "region": "de", **kw}


def test_cloud_cost_is_device_hours_times_the_offers_price():
    # prices.csv aws-p5-on-demand: $98.32 per p5.48xlarge-hour / 8 H100 = $12.29 per device-hour;
    # 5,760 device-hours x 12.29 = $70,790.40
    out = evaluate(run_30_days(offer="aws-p5-on-demand"))
    assert out["device_hours"] == pytest.approx(5760.0)
    assert out["cost_usd"] == pytest.approx(70790.40, rel=1e-12)


def test_a_given_price_overrides_the_offer():
    out = evaluate(run_30_days(offer="aws-p5-on-demand", price_usd_per_device_hour=2.0))
    assert out["cost_usd"] == pytest.approx(5760 * 2.0)


def test_tco_is_amortised_capex_plus_energy():
    # capex $30,000 per device over 5 years: 8 x 30,000 x 720 h / (5 x 8,760 h) = $3,945.21;
    # energy: the facility energy (MWh, PUE included) x 1000 x $0.10/kWh
    out = evaluate(run_30_days(capex_usd_per_device=30000.0, energy_usd_per_kwh=0.10, lifespan_years=5.0))
    capex = 8 * 30000 * 720 / (5 * 8760)
    assert capex == pytest.approx(3945.205479, rel=1e-9)
    assert out["cost_usd"] == pytest.approx(capex + out["energy_mwh"] * 1000 * 0.10, rel=1e-12)


def test_cost_is_unknown_without_a_price():
    assert evaluate(run_30_days())["cost_usd"] is None


def test_an_offer_for_other_hardware_is_a_spec_error():
    with pytest.raises(SpecError, match=r"\[cluster\] offer: 'aws-p4d-capacity-block' is an offer of a100-sxm4-40gb"):
        evaluate(run_30_days(offer="aws-p4d-capacity-block"))
    with pytest.raises(SpecError, match="unknown offer 'aws-p5-on-demnd'; did you mean 'aws-p5-on-demand'"):
        evaluate(run_30_days(offer="aws-p5-on-demnd"))


def test_usd_per_tco2e_avoided():
    # A: $100,000 and 50 t; B: $130,000 and 20 t -> 30,000 USD / 30 t = 1,000 USD per t avoided
    assert usd_per_tco2e_avoided(100_000, 50.0, 130_000, 20.0) == pytest.approx(1000.0)
    assert usd_per_tco2e_avoided(100_000, 50.0, 90_000, 20.0) == pytest.approx(-10_000 / 30)
    assert usd_per_tco2e_avoided(100_000, 50.0, 130_000, 50.0) is None
    assert usd_per_tco2e_avoided(None, 50.0, 130_000, 20.0) is None


def test_compare_cli_prints_the_cost_of_a_tonne_avoided(tmp_path, capsys):
    from sweep.cli import main

    body = ('[model]\nparams = 7e9\n[training]\ntokens = 1e11\nflops = {f}\n[cluster]\nhardware = "h100-sxm5-80gb"\n'
            'devices = 8\nmfu = 0.5\noffer = "{o}"\n[site]\nregion = "{r}"\n')
    flops = 30 * 86400 * 8 * H100_BF16 * 0.5
    (tmp_path / "a.toml").write_text(body.format(f=flops, o="aws-p5-capacity-block", r="de"))
    (tmp_path / "b.toml").write_text(body.format(f=flops, o="aws-p5-on-demand", r="fr"))
    assert main(["compare", str(tmp_path / "a.toml"), str(tmp_path / "b.toml"), "--json"]) == 0
    import json

    res = json.loads(capsys.readouterr().out)
    a, b = res["a"], res["b"]
    assert a["cost_usd"] == pytest.approx(5760 * 39.33 / 8) and b["cost_usd"] == pytest.approx(5760 * 98.32 / 8)
    assert res["usd_per_tco2e_avoided"] == pytest.approx((b["cost_usd"] - a["cost_usd"])
                                                         / (a["total_tco2e"] - b["total_tco2e"]))


def test_prices_table_rows_cite_a_source_and_a_date():
    rows = hardware_db.load().tables["prices.csv"]
    assert rows
    for r in rows.values():
        assert r["source"] and r["date"][:2] == "20" and r["usd_per_instance_hour"] > 0


def test_prices_table_schema_is_checked(tmp_path):
    (tmp_path / "prices.csv").write_text("id,provider,offer,instance,hardware,devices_per_instance,"
                                         "usd_per_instance_hour,region,date,source,notes\n"
                                         "x,P,od,i,h100-sxm5-80gb,8,lots,,2025-01,s,\n")
    with pytest.raises(hardware_db.DatabaseError,
                       match="prices.csv: row 'x', column 'usd_per_instance_hour': 'lots' is not a number"):
        hardware_db.load(tmp_path)
