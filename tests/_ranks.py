"""Starting the ranks of a distributed test: one Python process per rank on localhost (gloo), each with a deadline,
so that no test can hang."""
import socket
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def start(module: str, world: int, mode: str, tmp_path) -> tuple[list, list]:
    """Start ``python -m module WORLD RANK PORT MODE OUT`` for every rank; returns (processes, output paths)."""
    port = free_port()
    procs, outs = [], []
    for rank in range(world):
        out = tmp_path / f"rank{rank}.pt"
        outs.append(out)
        procs.append(subprocess.Popen([sys.executable, "-m", module, str(world), str(rank), str(port), mode, str(out)],
                                      cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True))
    return procs, outs


def finish(procs, deadline: float) -> list[tuple[int, str]]:
    """(return code, stderr) of every rank; fails the test (killing every rank) past the deadline."""
    results = []
    for p in procs:
        try:
            _, err = p.communicate(timeout=deadline)
        except subprocess.TimeoutExpired:
            for q in procs:
                q.kill()
            pytest.fail(f"a rank did not finish within {deadline} s")
        results.append((p.returncode, err))
    return results


def launch(module: str, world: int, mode: str, tmp_path, deadline: float = 120):
    procs, outs = start(module, world, mode, tmp_path)
    return finish(procs, deadline), outs
