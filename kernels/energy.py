"""Power, energy, operational carbon and water of a run.

Power (LLMCarbon §5, generalised): a device draws its idle power plus a fraction ``power_util`` of
the range up to TDP; a host (one per ``devices_per_node`` devices) draws ``power_util`` of its rated
CPUs, DRAM, network and the rest (the default 0.76 is a whole node's measured share of its rating
during training, Newkirk et al. 2025, so it applies to devices and host alike). Alternatively a
measured average power per device, host share included, replaces both (LLMCarbon's validation
mode, ``avg_power_w``).
    device_power_w = idle_w + (tdp_w − idle_w)·power_util
    it_power_w     = devices·device_power_w + nodes·host_power_w·power_util,
                     nodes = ceil(devices / devices_per_node)
    energy_kwh     = it_power_w · hours · pue / 1000
    operational_tco2e = energy_kwh · carbon_intensity_kg_per_kwh / 1000
    water_m3       = it_energy_kwh · wue_l_per_kwh / 1000   (on-site WUE applies to IT energy; The Green Grid WUE)
"""

import jax.numpy as jnp

SECONDS_PER_HOUR = 3600.0


def device_power_w(idle_w, tdp_w, power_util):
    """Average device power: idle_w + (tdp_w − idle_w)·power_util (W)."""
    return idle_w + (tdp_w - idle_w) * power_util


def host_power_w(cpus, cpu_tdp_w, dram_w, network_w, other_w):
    """Power of one host excluding accelerators: CPUs at TDP + DRAM + network + other (W)."""
    return cpus * cpu_tdp_w + dram_w + network_w + other_w


def node_count(devices, devices_per_node):
    """Servers needed to hold the devices: ceil(devices / devices_per_node)."""
    return jnp.ceil(devices / devices_per_node)


def energy_kwh(power_w, hours, pue=1.0):
    """Facility energy: power_w · hours · pue / 1000 (kWh)."""
    return power_w * hours * pue / 1000.0


def operational_tco2e(energy_kwh, carbon_intensity_kg_per_kwh):
    """Operational emissions: energy_kwh · carbon_intensity / 1000 (t CO2e)."""
    return energy_kwh * carbon_intensity_kg_per_kwh / 1000.0


def water_m3(it_energy_kwh, wue_l_per_kwh):
    """On-site water: it_energy_kwh · wue_l_per_kwh / 1000 (m³); NaN where the WUE is unknown."""
    return it_energy_kwh * wue_l_per_kwh / 1000.0
