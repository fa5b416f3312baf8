"""Derive hardware_db/carbon_profiles.nc (a typical year of hourly grid carbon intensity per zone)
from Electricity Maps' hourly CSVs (Data Portal, ODbL 1.0), as stated in hardware_db/carbon_profiles.toml.

Derivation (open, reproducible): for each zone, the "Carbon Intensity gCO₂eq/kWh (direct)" column of
the 2021 and the 2022 hourly file (both 8,760 UTC hours, no gaps); the typical year is the mean of
the two years at the same hour of the year (UTC, 1 January 00:00 = hour 0), divided by 1000 to
kg CO2e/kWh and rounded to 0.1 g. The files were read from the AIRI-Institute/eco4cast repository
(commit 6bd35ce, folder electricitymaps_datasets/), which redistributes the Data Portal's CSVs.

    python tools/derive_carbon_profiles.py RAW_FOLDER [OUT.nc]
"""

import sys
from pathlib import Path

import numpy as np
import pandas as pd
import xarray as xr

ZONES = ("BE", "BR-CS", "CA-ON", "CA-QC", "CH", "DE", "ES", "FI", "FR", "GB", "IT-NO", "NL", "PL")
YEARS = (2021, 2022)
COLUMN = "Carbon Intensity gCO₂eq/kWh (direct)"


def year_of(folder: Path, zone: str, year: int) -> np.ndarray:
    df = pd.read_csv(folder / f"{zone}_{year}_hourly.csv")
    t = pd.to_datetime(df["Datetime (UTC)"])
    hour = ((t - pd.Timestamp(year, 1, 1)) / pd.Timedelta(hours=1)).astype(int).to_numpy()
    if sorted(hour) != list(range(8760)) or df[COLUMN].isna().any():
        raise SystemExit(f"{zone} {year}: not 8,760 complete hours")
    out = np.empty(8760)
    out[hour] = df[COLUMN].to_numpy(float)
    return out


def main(raw: str, out: str = "hardware_db/carbon_profiles.nc") -> None:
    folder = Path(raw)
    ci = np.stack([np.mean([year_of(folder, z, y) for y in YEARS], axis=0) for z in ZONES])
    ci = np.round(ci, 1) / 1000.0
    ds = xr.Dataset(
        {"carbon_intensity_kg_per_kwh": (("zone", "hour"), ci.astype(np.float32),
                                         {"units": "kg CO2e/kWh", "long_name": "grid carbon intensity, direct, "
                                          "typical year (mean of 2021 and 2022 at each UTC hour of the year)"})},
        coords={"zone": list(ZONES), "hour": np.arange(8760, dtype=np.int16)},
        attrs={"source": "Electricity Maps Data Portal hourly CSVs 2021 and 2022 (app.electricitymaps.com/datasets), "
                         "via github.com/AIRI-Institute/eco4cast commit 6bd35ce electricitymaps_datasets/",
               "licence": "Open Data Commons Open Database License (ODbL) 1.0, as the Electricity Maps Data Portal "
                          "publishes it; this derived database is shared under the same licence",
               "derivation": __doc__.split("\n\n")[1].replace("\n", " ")},
    )
    enc = {"carbon_intensity_kg_per_kwh": {"zlib": True, "complevel": 9, "shuffle": True}}
    ds.to_netcdf(out, engine="h5netcdf", encoding=enc)


if __name__ == "__main__":
    main(*sys.argv[1:])
