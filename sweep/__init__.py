"""carbon-sweep's engine: specs, estimates, layouts, grids, reductions, search, figures, the CLI.

Python API (the CLI calls the same functions):
    sweep.estimate(path_or_values) -> dict of outputs with units in the names
    sweep.run(spec_or_path, ...) -> SweepResult with .dataset, .pareto, .top
"""

import kernels  # noqa: F401  (enables float64 before anything builds arrays)


def estimate(spec, db=None):
    """Footprint of one run from a spec path or a {key: value} dict."""
    from .evaluate import evaluate
    from .spec import load_estimate

    if isinstance(spec, dict):
        return evaluate(spec, db)
    return evaluate(load_estimate(spec, db), db, file=spec)


def run(spec, **kwargs):
    """Sweep a study (path or dict); see sweep.engine.run."""
    from .engine import run as _run

    return _run(spec, **kwargs)
