"""The benchmark runner: suites, one process per case, and the result format (JSON lines).

A suite is a Python file (``benchmarks/SUITE.py``) defining ``cases(*, quick, sizes, device) -> list[dict]`` and
``run_case(case) -> dict``. :func:`run_suite` runs every case in a fresh process (``python -m drfm.studies.bench SUITE_FILE
CASE_JSON``, so peak memory is measured per case); that process prints one line ``MARKER + JSON``: the case, its
result, wall seconds, peak RSS, versions and the time. :func:`compare_results` matches two result files' runs on
:data:`RESULT_KEYS` and gives new / old for each measured field.
"""
from __future__ import annotations

import importlib.util
import json
import os
import platform
import resource
import subprocess
import sys
import time
from pathlib import Path

__all__ = ["BenchError", "MARKER", "RATIO_FIELDS", "RESULT_KEYS", "compare_results", "environment", "find_suite_dir",
           "load_suite", "read_results", "run_suite", "select_cases"]

MARKER = "DRFM-BENCH-RESULT "
RESULT_KEYS = ("suite", "kind", "model", "dataset", "n", "d", "device", "depth", "variant", "world_size")
RATIO_FIELDS = ("fit_seconds", "predict_seconds", "kernel_seconds", "peak_rss_bytes", "score", "ratio")


class BenchError(ValueError):
    """A benchmark argument or results file that cannot be used (one-line message)."""


def environment() -> dict:
    """Versions and hardware of this process, recorded with every result."""
    import numpy
    import sklearn
    import torch

    import drfm

    return {
        "drfm": drfm.__version__,
        "torch": torch.__version__,
        "numpy": numpy.__version__,
        "sklearn": sklearn.__version__,
        "python": platform.python_version(),
        "machine": platform.machine(),
        "cpu_count": os.cpu_count(),
        "torch_threads": torch.get_num_threads(),
        "cuda": torch.cuda.get_device_name(0) if torch.cuda.is_available() else None,
    }


def find_suite_dir(arg: str | None = None) -> Path:
    """The directory holding the suites: ``arg``, ``$DRFM_BENCHMARKS``, the checkout's ``benchmarks/``, or
    ``./benchmarks``."""
    candidates = [Path(arg)] if arg else []
    if os.environ.get("DRFM_BENCHMARKS"):
        candidates.append(Path(os.environ["DRFM_BENCHMARKS"]))
    candidates += [Path(__file__).resolve().parents[1] / "benchmarks", Path.cwd() / "benchmarks"]
    for c in candidates:
        if c.is_dir() and suite_names(c):
            return c
    raise BenchError(
        "benchmark suites not found: they ship with the source tree (benchmarks/); run from a checkout "
        "or pass --suite-dir"
    )


def suite_names(directory: Path) -> list[str]:
    return sorted(p.stem for p in Path(directory).glob("*.py") if not p.stem.startswith("_"))


def load_suite(path: Path):
    """Import a suite file as a module."""
    spec = importlib.util.spec_from_file_location(f"_drfm_suite_{Path(path).stem}", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def select_cases(suite_file: Path, *, quick=False, sizes=None, device="auto", only=None) -> list[dict]:
    """The suite's cases; with ``only``, those whose kind/model/dataset/variant contain every given text."""
    todo = load_suite(suite_file).cases(quick=quick, sizes=sizes, device=device)
    if only:
        fields = ("kind", "model", "dataset", "variant")
        todo = [c for c in todo if all(t.lower() in " ".join(str(c.get(k, "")) for k in fields)
                                       .lower() for t in only)]
        if not todo:
            raise BenchError(f"no case of suite {Path(suite_file).stem!r} matches --only {' '.join(only)}")
    return todo


def _run_one(suite_file: Path, case: dict, timeout: float) -> dict:
    t0 = time.perf_counter()
    try:
        proc = subprocess.run([sys.executable, "-m", "drfm.studies.bench", str(suite_file), json.dumps(case)],
                              capture_output=True, text=True, timeout=timeout)
    except subprocess.TimeoutExpired:
        # a case over the limit is a result too: recorded, and the run goes on with the next case
        return {**case, "error": f"timed out after {timeout:g} s (--timeout)", "returncode": None}
    lines = [ln for ln in proc.stdout.splitlines() if ln.startswith(MARKER)]
    if proc.returncode < 0:  # killed by a signal: its last output line says nothing about why
        import signal

        name = signal.Signals(-proc.returncode).name if -proc.returncode in signal.valid_signals() else "?"
        why = " (the out-of-memory killer sends SIGKILL)" if name == "SIGKILL" else ""
        return {**case, "error": f"killed by {name} after {time.perf_counter() - t0:.0f} s{why}",
                "returncode": proc.returncode}
    if proc.returncode != 0 or not lines:
        tail = (proc.stderr or proc.stdout).strip().splitlines()[-1:] or ["no output"]
        return {**case, "error": tail[0], "returncode": proc.returncode}
    return json.loads(lines[-1][len(MARKER):])


def run_suite(suite_file: Path, cases: list[dict], out_path: Path, *, timeout: float = 3600,
              progress=None) -> list[dict]:
    """Run each case in its own process, appending one JSON line per case to ``out_path``; ``progress`` (an
    iterable wrapper such as tqdm) is applied to the cases."""
    out_path.parent.mkdir(parents=True, exist_ok=True)
    from ..data.files import write_text

    results = []
    for case in (progress(cases) if progress else cases):
        rec = _run_one(suite_file, case, timeout)
        results.append(rec)
        # the whole file again after each case, renamed into place: finished cases survive an interrupted run
        write_text(out_path, "".join(json.dumps(r) + "\n" for r in results), what="results file")
    return results


def read_results(path: str) -> list[dict]:
    """The records of a results file (JSON lines written by :func:`run_suite`)."""
    p = Path(path)
    if not p.is_file():
        raise BenchError(f"results file {path!r} does not exist")
    out = []
    try:
        text = p.read_text()
    except UnicodeDecodeError:
        raise BenchError(f"results file {path!r} is not JSON lines text (expected the output of `drfm bench`)") from None
    for i, line in enumerate(text.splitlines(), 1):
        if not line.strip():
            continue
        try:
            rec = json.loads(line)
        except json.JSONDecodeError:
            raise BenchError(f"results file {path!r} line {i} is not JSON (expected the JSON lines of `drfm bench`)"
                             ) from None
        if not isinstance(rec, dict):
            raise BenchError(f"results file {path!r} line {i} is not a JSON object")
        out.append(rec)
    return out


def compare_results(old: list[dict], new: list[dict]) -> list[dict]:
    """Match runs by (suite, kind, model, dataset, n, d, device, depth) and give new / old for each measured field."""
    def key(r):
        return tuple(r.get(k) for k in RESULT_KEYS)

    before = {key(r): r for r in old if "error" not in r}
    rows = []
    for r in new:
        o = before.get(key(r))
        if o is None or "error" in r:
            continue
        ratios = {f: r[f] / o[f] for f in RATIO_FIELDS
                  if isinstance(r.get(f), (int, float)) and isinstance(o.get(f), (int, float)) and o[f] != 0}
        rows.append({**{k: r.get(k) for k in RESULT_KEYS if r.get(k) is not None}, "ratios": ratios,
                     "old": {f: o.get(f) for f in ratios}, "new": {f: r.get(f) for f in ratios}})
    return rows


def harness_main(argv: list[str]) -> int:
    """``python -m drfm.studies.bench SUITE_FILE CASE_JSON``: run one case in this (fresh) process, print its record."""
    suite_file, case_json = argv[1], argv[2]
    module = load_suite(Path(suite_file))
    case = json.loads(case_json)
    t0 = time.perf_counter()
    result = module.run_case(case)
    record = {
        **case,
        **result,
        "wall_seconds": time.perf_counter() - t0,
        "peak_rss_bytes": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024,
        "env": environment(),
        "timestamp": time.strftime("%Y-%m-%dT%H:%M:%S"),
    }
    print(MARKER + json.dumps(record), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(harness_main(sys.argv))
