"""Dollar cost between designs: what a tonne of CO2e avoided costs when design B replaces design A.

    usd_per_tco2e_avoided = (cost_usd_B − cost_usd_A) / (total_tco2e_A − total_tco2e_B)

Positive: B emits less and costs more (the price of each tonne avoided); negative: B emits less and
costs less (no trade-off); undefined (None) when the totals are equal or a figure is unknown.
``carbon-sweep compare A.toml B.toml`` prints it; each design's cost_usd comes from
``kernels.footprint.cost_usd`` (a cloud offer's price per device-hour, else the TCO).
"""

from __future__ import annotations

import math


def usd_per_tco2e_avoided(cost_a, tco2e_a, cost_b, tco2e_b):
    """(cost_B − cost_A) / (tCO2e_A − tCO2e_B); None when undefined."""
    vals = (cost_a, tco2e_a, cost_b, tco2e_b)
    if any(v is None or not math.isfinite(v) for v in vals) or tco2e_a == tco2e_b:
        return None
    return (cost_b - cost_a) / (tco2e_a - tco2e_b)


def compare(a: dict, b: dict) -> dict:
    """Two estimates' outputs side by side, with the differences and the cost of a tonne avoided."""
    keys = ("total_tco2e", "operational_tco2e", "embodied_tco2e", "cost_usd", "train_days", "energy_mwh")
    out = {"a": {k: a.get(k) for k in keys}, "b": {k: b.get(k) for k in keys}}
    out["tco2e_avoided"] = (None if a.get("total_tco2e") is None or b.get("total_tco2e") is None
                            else a["total_tco2e"] - b["total_tco2e"])
    out["extra_cost_usd"] = (None if a.get("cost_usd") is None or b.get("cost_usd") is None
                             else b["cost_usd"] - a["cost_usd"])
    out["usd_per_tco2e_avoided"] = usd_per_tco2e_avoided(a.get("cost_usd"), a.get("total_tco2e"),
                                                         b.get("cost_usd"), b.get("total_tco2e"))
    return out
