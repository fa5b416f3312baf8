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
