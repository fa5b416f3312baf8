"""Embodied (manufacturing) carbon of devices and hosts, amortised over the time a run uses them.

Chip carbon (LLMCarbon §6; ACT, Gupta et al. ISCA 2022, eq. 2-3):
    logic_kgco2e  = area_cm2 · cpa_kgco2e_per_cm2 / yield
    memory_kgco2e = capacity_gb · kgco2e_per_gb
A device is its dies, its HBM and (where the method counts it) packaging and board; a host is its
CPUs, DRAM, SSD and the rest of the server. A run that uses hardware for ``hours`` of a
``lifespan_years`` life is charged (LLMCarbon §6, with 365-day years):
    embodied_tco2e = kgco2e · hours / (lifespan_years · 8760) / 1000
"""

HOURS_PER_YEAR = 8760.0  # 365-day year, as LLMCarbon (1825 days = 5 years) and Falk et al. 2025
SECONDS_PER_YEAR = HOURS_PER_YEAR * 3600.0  # 31,536,000 s, exact in float32 and float64


def logic_kgco2e(area_cm2, cpa_kgco2e_per_cm2, yield_=1.0):
    """Manufacturing carbon of logic dies: area · CPA / yield (kg CO2e)."""
    return area_cm2 * cpa_kgco2e_per_cm2 / yield_


def memory_kgco2e(capacity_gb, kgco2e_per_gb):
    """Manufacturing carbon of memory or storage: capacity · carbon per GB (kg CO2e)."""
    return capacity_gb * kgco2e_per_gb


def amortised_tco2e(kgco2e, hours, lifespan_years):
    """Share charged to a run: kgco2e · hours / (lifespan_years · 8760) / 1000 (t CO2e)."""
    return kgco2e * hours / (lifespan_years * HOURS_PER_YEAR) / 1000.0


def run_embodied_tco2e(kgco2e, seconds, lifespan_years):
    """``amortised_tco2e`` of a training run of ``seconds``, evaluated as
    kgco2e · (seconds / (lifespan_years · 31,536,000 s)) / 1000 (t CO2e).

    The same equation in another order, for the chain's training figures, whose per-point, grid and
    sampled paths must round alike: XLA reassociates products whose operands are broadcasts, so
    (devices · kg) · hours rounded differently in the sampled and the per-point fusions (one ulp);
    here no product of products forms. (The last division is no shield against fused multiply-adds:
    XLA on CPU compiles a division by a constant or a broadcast scalar as a product by its
    reciprocal. The paths agree because they fuse the sums that read it alike, as the engine's tests
    check bit for bit.) The run's time enters in seconds, divided once: from hours (seconds /
    3600, then / (lifespan · 8760)) XLA folds the two divisions into one where the lifespan is a
    constant and not where it is an array, so the estimate and its zero-width samples differed by
    one ulp. The divisor lifespan · 31,536,000 is exact for any whole or half year. (The serving
    terms keep ``amortised_tco2e``'s order, which rounds alike there and this one does not.)"""
    return kgco2e * (seconds / (lifespan_years * SECONDS_PER_YEAR)) / 1000.0
