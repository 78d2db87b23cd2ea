import subprocess
import sys
from pathlib import Path

import kernels

ROOT = Path(__file__).resolve().parents[2]


def test_kernels_is_this_projects_package():
    # an unrelated PyPI distribution is also called `kernels`; make sure we import ours
    assert Path(kernels.__file__).resolve().is_relative_to(ROOT / "kernels")


def test_kernels_does_not_import_sklearn_or_drfm():
    code = (
        "import sys, kernels, kernels.solvers, kernels._reference;"
        "bad = [m for m in sys.modules if m.split('.')[0] in ('sklearn', 'drfm')];"
        "print(','.join(bad)); sys.exit(1 if bad else 0)"
    )
    res = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT)
    assert res.returncode == 0, f"kernels imported: {res.stdout} {res.stderr}"


def test_kernels_sources_do_not_mention_sklearn_or_drfm_imports():
    # torch only; and no progress bars in the numerical core (long loops take callbacks; drfm draws the bars). torch
    # itself imports tqdm, so this is checked on the sources, not on sys.modules
    for path in (ROOT / "kernels").rglob("*.py"):
        text = path.read_text()
        assert "import sklearn" not in text and "from sklearn" not in text, path
        assert "import drfm" not in text and "from drfm" not in text, path
        assert "tqdm" not in text, path
