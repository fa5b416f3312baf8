"""The reductions protocol: a new reduction is one class, registered; the engine is not touched."""

from dataclasses import dataclass

import numpy as np
import pandas as pd

from sweep import reductions as red
from sweep.engine import run
from sweep.results import load_result

STUDY = {
    "model": {"heads": 8, "vocab": 32000, "seq_len": 2048, "d_model": 512},
    "training": {"tokens": 2e10},
    "cluster": {"devices": 64, "mfu": 0.4, "hardware": "a100-sxm4-80gb"},
    "grid": {"layers": [8, 12, 16], "region": ["us", "fr", "se"], "lifespan_years": [2, 4, 6]},
    "study": {"name": "per_design_min", "pareto": [["loss", "total_tco2e"]], "top": {"by": "total_tco2e", "n": 5}},
}


@dataclass(frozen=True)
class DesignMinimum(red.Reduction):
    """The least total_tco2e of each number of layers over every other dimension (feasible points):
    a per-design minimum, as a table of its own. The whole reduction is this class."""
    values: tuple = ()
    position: int = 0
    shape: tuple = ()
    name: str = "design_min"

    @classmethod
    def for_study(cls, study, outputs):
        if "layers" not in study.dims:
            return []
        return [cls(tuple(int(v) for v in study.dims["layers"]), list(study.dims).index("layers"), study.shape)]

    @property
    def reads(self):
        return frozenset({"total_tco2e"})

    def host_reduce(self, c):
        n = len(c.out["reason"])
        which = np.unravel_index(c.start + np.arange(n), self.shape)[self.position]
        v = np.where(c.out["reason"] == 0, c.out["total_tco2e"], np.inf)
        least = np.full(len(self.values), np.inf)
        np.minimum.at(least, which, v)
        return {"least": least}

    def start(self):
        return np.full(len(self.values), np.inf)

    def merge(self, state, part):
        return np.minimum(state, part["least"])

    def publish(self, state, rows, out):
        out.tables[self.name] = pd.DataFrame({"layers": self.values, "min_total_tco2e": state})


def test_a_registered_reduction_class_is_all_a_new_reduction_needs(tmp_path):
    red.register(DesignMinimum)
    try:
        res = run(STUDY, write=False, chunk_size=4)  # many chunks: partial results merged
        run(STUDY, tmp_path / "r", quiet=True)
    finally:
        red.unregister(DesignMinimum)
    full = run(STUDY, write=False).dataset
    expect = full["total_tco2e"].where(full["reason"] == 0).min(dim=["region", "lifespan_years"]).values
    got = res.tables["design_min"]
    assert list(got["layers"]) == [8, 12, 16]
    np.testing.assert_array_equal(got["min_total_tco2e"].values, expect)
    # written beside the other tables; the built-in reductions are unchanged by it
    on_disk = pd.read_csv(tmp_path / "r" / "design_min.csv")
    np.testing.assert_array_equal(on_disk["min_total_tco2e"].values, expect)
    assert "design_min.csv" in load_result(tmp_path / "r").summary["files"]
    plain = run(STUDY, write=False, chunk_size=4)
    assert plain.tables == {}
    pd.testing.assert_frame_equal(plain.pareto["pareto_loss__total_tco2e"], res.pareto["pareto_loss__total_tco2e"])
    pd.testing.assert_frame_equal(plain.top, res.top)


def test_the_builtin_reductions_are_the_protocol():
    from sweep.study import load_study

    study = load_study(STUDY)
    found = red.for_study(study, ("loss", "total_tco2e", "reason"))
    assert [type(r) for r in found] == [red.Statistics, red.ParetoFront, red.TopK]
    assert all(isinstance(r, red.Reduction) for r in found)
    assert len({hash(r) for r in found}) == 3  # hashable: the compiled chunk function is cached by them
