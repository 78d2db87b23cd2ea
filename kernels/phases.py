"""Where a fit's time goes: wall time per phase, and the work the kernel phase did, measured only when asked.

A :class:`PhaseClock` used as a context manager records every :func:`phase` entered inside it (in this thread);
without one, :func:`phase` costs one global read and a no-op context. Phases nest and the clock keeps *exclusive*
times: the kernel tiles built inside a solve count as ``kernel``, the rest of the solve as ``solve``; whatever no
phase covers is ``other``. The kernel phase also counts its work (``gemm_flops``: the distance GEMMs' 2 n m d,
``exp_values``: kernel values exponentiated), from which ``drfm bench rfm`` computes its floors. On CUDA the clock
synchronises the device at phase boundaries (it serialises the queue; the totals then are device times).
"""
from __future__ import annotations

import time

import torch

__all__ = ["PhaseClock", "phase"]

_clock: "PhaseClock | None" = None


class _Off:
    """The context :func:`phase` returns when no clock records."""

    def __enter__(self):
        return None

    def __exit__(self, *exc):
        return False


_OFF = _Off()


class _Phase:
    def __init__(self, clock: "PhaseClock", name: str, work: dict):
        self.clock, self.name, self.work = clock, name, work

    def __enter__(self):
        clock = self.clock
        clock._sync()
        clock._stack.append(0.0)  # time spent in phases nested in this one
        self.t0 = time.perf_counter()
        return None

    def __exit__(self, *exc):
        clock = self.clock
        clock._sync()
        elapsed = time.perf_counter() - self.t0
        nested = clock._stack.pop()
        if clock._stack:
            clock._stack[-1] += elapsed
        clock.seconds[self.name] = clock.seconds.get(self.name, 0.0) + elapsed - nested
        clock.calls[self.name] = clock.calls.get(self.name, 0) + 1
        for key, value in self.work.items():
            slot = clock.work.setdefault(self.name, {})
            slot[key] = slot.get(key, 0) + value
        return False


def phase(name: str, **work):
    """A context that adds its exclusive wall time (and ``work``: counts to sum, e.g. ``gemm_flops``) to the
    recording :class:`PhaseClock`, if any."""
    clock = _clock
    if clock is None:
        return _OFF
    return _Phase(clock, name, work)


class PhaseClock:
    """Records the phases run inside ``with PhaseClock() as clock:``.

    Attributes (after the block): ``seconds`` {phase: exclusive seconds}, ``calls`` {phase: count}, ``work``
    {phase: {counter: total}}, ``wall`` (the block's seconds) and ``other`` (wall minus every phase). ``device``:
    a CUDA device to synchronise at phase boundaries (None: none)."""

    def __init__(self, device=None):
        dev = None if device is None else torch.device(device)
        self._cuda = dev is not None and dev.type == "cuda"
        self.seconds: dict[str, float] = {}
        self.calls: dict[str, int] = {}
        self.work: dict[str, dict] = {}
        self._stack: list[float] = []
        self.wall = 0.0

    def _sync(self):
        if self._cuda:
            torch.cuda.synchronize()

    def __enter__(self):
        global _clock
        if _clock is not None:
            raise RuntimeError("a PhaseClock is already recording")
        _clock = self
        self._t0 = time.perf_counter()
        return self

    def __exit__(self, *exc):
        global _clock
        self._sync()
        self.wall = time.perf_counter() - self._t0
        _clock = None
        return False

    @property
    def other(self) -> float:
        return self.wall - sum(self.seconds.values())

    def to_dict(self) -> dict:
        return {"wall": self.wall, "seconds": dict(self.seconds), "other": self.other, "calls": dict(self.calls),
                "work": {k: dict(v) for k, v in self.work.items()}}
