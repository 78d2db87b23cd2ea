"""CPU threads of the estimators: the ``n_threads`` parameter, applied only while a fit or prediction runs.

Why it matters: torch (and the BLAS under numpy) split each operation over a team of threads that meets at a barrier.
When other processes occupy the cores, a preempted team member makes every barrier wait for a scheduler time slice:
measured on a busy 2-core machine, one MLP epoch took 13 s with torch's default 2 threads against 0.22 s with 1 thread,
and a stored-matrix CG fit 6x longer.

``n_threads``:

* ``'auto'`` (default): the cores left idle by other processes (at least 1), measured when a fit starts from the CPU
  counters since the previous measurement when that was between :data:`MIN_WINDOW_SECONDS` and
  :data:`MAX_WINDOW_SECONDS` ago (free), otherwise over the next :data:`PROBE_SECONDS`; kept for the model's
  predictions (``n_threads_``). On a quiet machine that is every usable core, torch's own default. Measured (issue
  #29, ``drfm bench contention``, low-rank fit n = 10 240, d = 100, 2-core CPU,
  ``benchmarks/results/2026-12-07-contention-cpu2core.jsonl``): alone 23.5 s ('auto') against 23.8 s (torch's 2
  threads); beside one process spinning on a core 44.3 s against 122-151 s; beside two 66 s against 63-77 s.
* ``None``: torch's current setting. When other processes kept the cores busy since the previous measurement
  (:func:`busy_cores`, free: two reads of /proc counters), a warning is logged (logger ``drfm``) naming
  ``n_threads='auto'`` and ``n_threads=1``.
* an int >= 1: exactly that many.

Reproducibility: the thread count changes the summation order of parallel reductions, so a fit with a fixed
``random_state`` is bit-for-bit reproducible on a machine under a fixed count (an int, or ``None`` with a fixed torch
setting); under ``'auto'`` runs that measured different counts agree to the solvers' tolerance, not to the bit
(measured on the fit above: R^2 0.99899246 with 2 threads and 0.99899256 with 1; predictions differ by 7e-5 on average,
outputs of order 1). The environment variable ``DRFM_THREADS`` (an int,
``auto`` or ``none``) replaces the default for every estimator whose ``n_threads`` is ``'auto'``: e.g.
``DRFM_THREADS=2`` for bit-for-bit reproducible runs without code changes (the test suite sets ``none``).

The limit applies to torch's intra-op threads and, through ``threadpoolctl``, to the BLAS / OpenMP pools numpy and
scikit-learn use; both are restored when the call returns.
"""
from __future__ import annotations

import contextvars
import functools
import logging
import os
import time
from contextlib import contextmanager

import torch

__all__ = ["DEFAULT", "PROBE_SECONDS", "busy_cores", "resolve_threads", "thread_limit", "with_threads"]

logger = logging.getLogger("drfm")

#: the estimators' default n_threads
DEFAULT = "auto"

#: how long the idle cores are measured for (n_threads='auto', and the contention check of n_threads=None)
PROBE_SECONDS = 0.1

#: the environment variable that replaces the default 'auto' (an int, 'auto' or 'none')
ENV_VAR = "DRFM_THREADS"

# set while an estimator method runs under its thread count: a nested estimator call (Deep RFM's final machine, a
# study's models) with n_threads=None keeps the count it finds instead of measuring again
_ACTIVE = contextvars.ContextVar("drfm_threads_active", default=False)


def usable_cores() -> int:
    """The cores this process may run on (its CPU affinity; the CPU count where affinity is unknown)."""
    try:
        return len(os.sched_getaffinity(0))
    except (AttributeError, OSError):  # not Linux
        return os.cpu_count() or 1


def _cpu_jiffies(cpus) -> tuple[int, int] | None:
    """(busy, total) jiffies of the given CPUs from /proc/stat (None where it cannot be read)."""
    try:
        with open("/proc/stat") as fh:
            lines = fh.read().splitlines()
    except OSError:
        return None
    busy = total = 0
    names = {f"cpu{c}" for c in cpus}
    for line in lines:
        parts = line.split()
        if parts and parts[0] in names:
            vals = [int(v) for v in parts[1:]]
            idle = vals[3] + (vals[4] if len(vals) > 4 else 0)  # idle + iowait
            total += sum(vals[:8])
            busy += sum(vals[:8]) - idle
    return (busy, total) if total else None


def _own_jiffies() -> int | None:
    try:
        with open("/proc/self/stat") as fh:
            fields = fh.read().rsplit(")", 1)[1].split()
        return int(fields[11]) + int(fields[12])  # utime + stime
    except (OSError, IndexError, ValueError):
        return None


#: the shortest window the recorded CPU counters are compared over (below it the measurement is noise)
MIN_WINDOW_SECONDS = 0.05
#: the longest: a window reaching further back would average in load that has ended (a test's processes, an earlier
#: job) -- 'auto' then measures afresh over PROBE_SECONDS
MAX_WINDOW_SECONDS = 2.0


def _snapshot():
    try:
        cpus = sorted(os.sched_getaffinity(0))
    except (AttributeError, OSError):
        return None
    return time.monotonic(), len(cpus), _cpu_jiffies(cpus), _own_jiffies()


_LAST = _snapshot()  # the counters at import; every measurement compares against the previous one

#: the contention warning of n_threads=None is logged at most once in this many seconds (fits in a loop)
WARN_EVERY_SECONDS = 60.0
_WARNED_AT = -float("inf")


def busy_cores(seconds: float = PROBE_SECONDS, *, wait: bool = True, max_window: float | None = None) -> float | None:
    """How many of this process's cores other processes kept busy: over the time since the previous measurement (or
    drfm's import) when that is at least MIN_WINDOW_SECONDS (and at most ``max_window`` seconds, when given) -- free,
    no waiting --, otherwise (with ``wait``) over the next ``seconds``. None where /proc cannot be read, or without a
    window and without ``wait``."""
    global _LAST

    def complete(snap):  # every counter read
        return snap is not None and snap[2] is not None and snap[3] is not None

    prev, now = _LAST, _snapshot()
    _LAST = now
    if not complete(now):
        return None
    stale = max_window is not None and complete(prev) and now[0] - prev[0] > max_window
    if not complete(prev) or now[0] - prev[0] < MIN_WINDOW_SECONDS or stale:
        if not wait:
            return None
        time.sleep(seconds)
        prev, now = now, _snapshot()
        _LAST = now
        if not complete(now):
            return None
    (_, cores, a, own_a), (_, _, b, own_b) = prev, now
    if b[1] <= a[1]:
        return None
    busy = (b[0] - a[0]) - (own_b - own_a)  # everyone's busy time on our cores but our own
    return max(0.0, busy / (b[1] - a[1]) * cores)


def default_setting():
    """What the default n_threads means here: ``DRFM_THREADS`` when set (an int, 'auto' or 'none'), else 'auto'."""
    raw = os.environ.get(ENV_VAR, "").strip().lower()
    if not raw:
        return DEFAULT
    if raw == "none":
        return None
    if raw == "auto":
        return "auto"
    try:
        n = int(raw)
    except ValueError:
        n = 0
    if n < 1:
        raise ValueError(f"the environment variable {ENV_VAR}={os.environ[ENV_VAR]!r} must be a positive number of "
                         "threads, 'auto' or 'none'")
    return n


def resolve_threads(n_threads, owner: str, *, probe: bool = True, explicit: bool = True) -> int:
    """The thread count of one call: see the module text. ``probe=False`` skips the measurement (predictions);
    ``explicit=False``: ``n_threads`` is the estimator's default, which ``DRFM_THREADS`` replaces."""
    if not explicit:
        n_threads = default_setting()
    current = torch.get_num_threads()
    if n_threads is None:
        if probe and current > 1:
            busy = busy_cores(wait=False)  # free: the counters since the last measurement
            global _WARNED_AT
            if busy is not None and busy >= 0.5 * usable_cores() and time.monotonic() - _WARNED_AT > WARN_EVERY_SECONDS:
                _WARNED_AT = time.monotonic()
                logger.warning(
                    "%s: other processes keep %.1f of this process's %d cores busy; with %d threads every parallel "
                    "step waits on preempted threads (up to 60x slower measured). Pass n_threads='auto' (idle cores) "
                    "or n_threads=1.", owner, busy, usable_cores(), current)
        return current
    if n_threads == "auto":
        cores = usable_cores()
        busy = busy_cores(max_window=MAX_WINDOW_SECONDS) if probe else None
        return max(1, cores - int(round(busy))) if busy is not None else cores
    return int(n_threads)


@contextmanager
def thread_limit(n: int):
    """Run the block with ``n`` torch intra-op threads and BLAS / OpenMP pools limited to ``n``; restored after."""
    old = torch.get_num_threads()
    if n != old:
        torch.set_num_threads(n)
    try:
        from threadpoolctl import threadpool_limits
    except ImportError:  # scikit-learn brings it; without it only torch is limited
        threadpool_limits = None
    try:
        if threadpool_limits is None:
            yield n
        else:
            with threadpool_limits(limits=n):
                yield n
    finally:
        if torch.get_num_threads() != old:
            torch.set_num_threads(old)


def with_threads(method):
    """Decorate an estimator method: run it under the estimator's thread count. ``fit`` resolves ``n_threads`` (and
    records it as ``n_threads_``); other methods use the fitted count, or ``n_threads`` without probing."""
    is_fit = method.__name__.startswith("fit")

    @functools.wraps(method)
    def wrapper(self, *args, **kwargs):
        if is_fit:
            from ._params import validate_params

            validate_params(self)  # n_threads (and every other parameter) checked before it is used
        setting = getattr(self, "n_threads", None)
        explicit = setting != DEFAULT  # the default is what DRFM_THREADS replaces
        if setting in (None, DEFAULT) and _ACTIVE.get():
            n = torch.get_num_threads()  # inside another drfm call (a study's models, Deep RFM's final machine)
        elif is_fit:
            n = resolve_threads(setting, type(self).__name__, explicit=explicit)
        elif setting == DEFAULT and hasattr(self, "n_threads_"):
            n = self.n_threads_
        else:
            n = resolve_threads(setting, type(self).__name__, probe=False, explicit=explicit)
        token = _ACTIVE.set(True)
        try:
            with thread_limit(n):
                out = method(self, *args, **kwargs)
                used = torch.get_num_threads()  # (a distributed fit's ranks agree on the smallest count)
        finally:
            _ACTIVE.reset(token)
        if is_fit:
            self.n_threads_ = used
        return out

    return wrapper
