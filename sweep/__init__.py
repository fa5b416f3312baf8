"""carbon-sweep's engine: specs, estimates, layouts, grids, reductions, search, figures, the CLI.

Python API (the CLI calls the same functions):
    sweep.estimate(path_or_values) -> dict of outputs with units in the names
    sweep.run(spec_or_path, ...) -> SweepResult with .dataset, .pareto, .top

The sweep sets JAX's precision: float64 is enabled here, before anything builds arrays, so that
integer-valued results (parameter counts, GPU counts) are exact; a study's ``dtype = "float32"``
runs its chain in float32 all the same (``sweep.engine``). The kernels set nothing at import.
"""

import jax

jax.config.update("jax_enable_x64", True)

from .engine import run  # noqa: E402
from .estimate import estimate  # noqa: E402

__all__ = ["estimate", "run"]
