"""Runs one benchmark case in this (fresh) process and prints one JSON line.

    python benchmarks/_harness.py SUITE_FILE CASE_JSON

`drfm bench` starts one such process per case so that peak memory (ru_maxrss) is measured per case.
The suite file defines ``run_case(case: dict) -> dict``. This file is not imported by drfm.
"""
from __future__ import annotations

import importlib.util
import json
import os
import platform
import resource
import sys
import time

MARKER = "DRFM-BENCH-RESULT "


def environment() -> dict:
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


def main(argv: list[str]) -> int:
    suite_file, case_json = argv[1], argv[2]
    spec = importlib.util.spec_from_file_location("_drfm_bench_suite", suite_file)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
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
    sys.exit(main(sys.argv))
