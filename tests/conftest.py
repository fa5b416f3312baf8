import os
import sys
from pathlib import Path

import jax

jax.config.update("jax_enable_x64", True)
ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))
os.environ.pop("CARBON_SWEEP_DB", None)

from hypothesis import settings  # noqa: E402

# JIT compilation makes a first example slow; timing deadlines would only add flakiness on CI.
settings.register_profile("carbon-sweep", deadline=None)
settings.load_profile("carbon-sweep")


import pytest  # noqa: E402

# Every compiled XLA executable keeps a few memory mappings of its code (4 for a small function, more
# for a large one) while JAX's caches hold it, and the whole suite compiles thousands. Past Linux's
# vm.max_map_count (65,530 by default) XLA can no longer map code: the compile fails, and the C++
# exception that reports it crashes the unwinder (a segmentation fault inside a later, unrelated
# compile). Measured on this suite: 65,516 mappings at the crash. So the caches are dropped whenever
# half the limit is in use; a dropped function is compiled again when next called.
_MAPS = Path(f"/proc/{os.getpid()}/maps")
try:
    _MAP_LIMIT = int(Path("/proc/sys/vm/max_map_count").read_text())
except (OSError, ValueError):  # not Linux: no such limit to watch
    _MAP_LIMIT = None


def mappings_in_use() -> int:
    with open(_MAPS, "rb") as f:
        return sum(1 for _ in f)


@pytest.fixture(autouse=True)
def _drop_compiled_code_before_the_mapping_limit():
    yield
    if _MAP_LIMIT and mappings_in_use() > _MAP_LIMIT // 2:
        jax.clear_caches()
