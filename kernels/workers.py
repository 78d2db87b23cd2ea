"""Lanes: tiled CPU work shared by single-threaded workers, with results that do not depend on who did what.

Why (issue #29): torch runs every operation over a team of OpenMP threads that meets at a barrier when the operation
ends, and a kernel tile is half a dozen such operations. On a shared machine a team member the scheduler preempts
makes the others wait at the next barrier for a time slice: beside one busy process a fit with 2 threads took 5x its
time alone, with 1 thread 1.9x (it then leaves the share of the second core the scheduler would give it unused).
Here each worker runs whole tiles on one thread, and the workers meet once, when the whole product is done: a
preempted worker takes fewer tiles and the others take more.

**Lanes make it deterministic.** The tiles are cut into LANES contiguous runs (lanes) whatever the number of workers;
a worker takes the next lane from a shared counter and computes it alone, in tile order, on one thread; the lanes'
results are combined in lane order. So the result is bit-for-bit the same for 1, 2 or 16 workers and whichever was
preempted (single-threaded torch CPU kernels are deterministic).

On CUDA (one stream; the device does the parallel work) and for one worker the lanes run in order on the calling
thread.
"""
from __future__ import annotations

import contextvars
import threading
from contextlib import contextmanager
from typing import Callable, Sequence, TypeVar

import torch

__all__ = ["LANES", "in_lane", "lane_bounds", "lane_workers", "run_lanes", "set_lane_workers", "workers_for"]

T = TypeVar("T")

#: contiguous runs of tiles the work is cut into, whatever the number of workers: enough that the last lane of a
#: preempted worker is a small share of the work (1/16), few enough that each lane's own accumulator is cheap
LANES = 16

_local = threading.local()
#: the workers CPU lanes use (None: torch's thread count of the calling thread), set for a fit by the estimators
_WORKERS: contextvars.ContextVar[int | None] = contextvars.ContextVar("drfm_lane_workers", default=None)


@contextmanager
def lane_workers(n: int | None):
    """Run the block with ``n`` lane workers (None: torch's thread count). The estimators' ``n_threads='auto'`` uses
    every usable core here even where other processes keep some busy, and only the idle ones for torch's own
    threads: a lane worker the scheduler preempts costs nobody a barrier, so lanes can take the share of a busy core
    the scheduler gives them."""
    if n is not None and int(n) < 1:
        raise ValueError(f"lane workers must be >= 1, got {n!r}")
    token = _WORKERS.set(None if n is None else int(n))
    try:
        yield
    finally:
        _WORKERS.reset(token)


def in_lane() -> bool:
    """Whether the calling thread is computing a lane now."""
    return getattr(_local, "in_lane", False)


def set_lane_workers(n: int) -> None:
    """Set the lane workers for the rest of the enclosing :func:`lane_workers` block (which restores them)."""
    if int(n) < 1:
        raise ValueError(f"lane workers must be >= 1, got {n!r}")
    _WORKERS.set(int(n))


def lane_bounds(n_items: int, lanes: int = LANES) -> list[tuple[int, int]]:
    """``[start, stop)`` of each non-empty lane over ``n_items`` items (as equal as possible, in order)."""
    if n_items < 0:
        raise ValueError(f"n_items must be >= 0, got {n_items}")
    k = max(1, min(int(lanes), n_items))
    cuts = [(n_items * j) // k for j in range(k + 1)]
    return [(a, b) for a, b in zip(cuts[:-1], cuts[1:]) if b > a]


def workers_for(device) -> int:
    """How many workers CPU lanes use now: :func:`lane_workers`' setting, else torch's thread count of the calling
    thread; 1 on other devices, or inside a lane (no nesting)."""
    if torch.device(device).type != "cpu" or in_lane():
        return 1
    n = _WORKERS.get()
    return max(1, torch.get_num_threads() if n is None else n)


def run_lanes(bounds: Sequence[tuple[int, int]], compute: Callable[[int, int, int], T], *,
              workers: int = 1) -> list[T]:
    """``[compute(start, stop, worker) for (start, stop) in bounds]``, each lane on one thread (torch limited to one
    intra-op thread while it runs), ``workers`` threads (the calling one included) taking lanes in order from a
    shared counter. ``worker`` (0 .. workers - 1) names the thread, for per-worker buffers. An exception in a lane is
    raised here after every worker stopped."""
    bounds = list(bounds)
    workers = max(1, min(int(workers), len(bounds)))
    results: list = [None] * len(bounds)
    if workers == 1:
        with _one_thread():
            for j, (a, b) in enumerate(bounds):
                results[j] = compute(a, b, 0)
        return results
    lock = threading.Lock()
    state = {"next": 0, "error": None}

    def work(w: int):
        with _one_thread():
            while True:
                with lock:
                    j = state["next"]
                    if j >= len(bounds) or state["error"] is not None:
                        return
                    state["next"] = j + 1
                try:
                    results[j] = compute(bounds[j][0], bounds[j][1], w)
                except BaseException as exc:  # (re-raised on the calling thread)
                    with lock:
                        if state["error"] is None:
                            state["error"] = exc
                    return

    threads = [threading.Thread(target=work, args=(w,), name=f"drfm-lane-{w}", daemon=True)
               for w in range(1, workers)]
    for t in threads:
        t.start()
    work(0)
    for t in threads:
        t.join()
    if state["error"] is not None:
        raise state["error"]
    return results


class _one_thread:
    """torch at one intra-op thread on this thread while a lane runs (the count is per thread in OpenMP and MKL, but
    torch also keeps it as the default for threads created later: restored on exit)."""

    def __enter__(self):
        self.before = torch.get_num_threads()
        self.nested = getattr(_local, "in_lane", False)
        _local.in_lane = True
        if self.before != 1:
            torch.set_num_threads(1)

    def __exit__(self, *exc):
        _local.in_lane = self.nested
        if self.before != 1:
            torch.set_num_threads(self.before)
        return False
