"""carbon-sweep kernels: the physics, as pure JAX functions that broadcast over arrays.

Conventions (one name for one thing, shared with spec keys, data columns and xarray variables):
- inputs and outputs are arrays that broadcast against each other; a scalar estimate and a
  billion-point grid call the same function;
- units are in the names (``energy_kwh``, ``power_w``, ``total_tco2e``); counts are plain names
  (``layers``, ``devices``); SI base units inside kernels unless a name says otherwise;
- no files, no printing, no xarray: jax, numpy and the standard library only.

Importing the kernels changes no JAX setting: the caller chooses the precision (``sweep`` enables
float64, so that integer-valued results such as parameter and GPU counts are exact); float32 inputs
stay float32 except where a kernel says it promotes.
"""
