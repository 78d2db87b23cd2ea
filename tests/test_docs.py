"""Every Python block of the README and of docs/ runs on its own, in a fresh interpreter (a snippet may not lean on
names from the one before it). A block preceded by ``<!-- doc-test: slow -->`` runs under ``-m slow``."""
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
PAGES = [ROOT / "README.md"] + sorted((ROOT / "docs").glob("*.md"))
_BLOCK = re.compile(r"(<!-- doc-test: (?P<mark>[a-z]+) -->\n)?```python\n(?P<code>.*?)\n```", re.S)


def _blocks():
    for page in PAGES:
        text = page.read_text()
        for k, m in enumerate(_BLOCK.finditer(text)):
            line = text[: m.start("code")].count("\n") + 1
            marks = [pytest.mark.slow] if m.group("mark") == "slow" else []
            yield pytest.param(m.group("code"), id=f"{page.relative_to(ROOT)}:{line}", marks=marks)


def test_the_pages_have_python_blocks():
    # the extraction itself can fail: the README and the RFM page hold code the pattern must find
    ids = [p.id for p in _blocks()]
    assert any(i.startswith("README.md:") for i in ids) and any(i.startswith("docs/rfm.md:") for i in ids), ids


@pytest.mark.parametrize("code", list(_blocks()))
def test_python_block_runs(code, tmp_path):
    env = {**os.environ, "PYTHONPATH": str(ROOT) + os.pathsep + os.environ.get("PYTHONPATH", ""),
           "MPLBACKEND": "Agg"}
    proc = subprocess.run([sys.executable, "-c", code], cwd=tmp_path, env=env, capture_output=True, text=True,
                          timeout=1200)
    assert proc.returncode == 0, f"{proc.stdout[-2000:]}\n{proc.stderr[-4000:]}"
