"""House style that no linter here checks: Python lines fit in 120 characters."""
import subprocess
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def test_no_python_line_is_longer_than_120_characters():
    files = subprocess.run(["git", "ls-files", "*.py"], cwd=ROOT, capture_output=True, text=True).stdout.split()
    if not files:  # not a git checkout: read the tree
        files = [str(p.relative_to(ROOT)) for p in ROOT.rglob("*.py") if ".venv" not in p.parts]
    long = [f"{f}:{n}" for f in files
            for n, line in enumerate((ROOT / f).read_text(encoding="utf-8").splitlines(), 1) if len(line) > 120]
    assert not long, long
