"""Collectives of a process group, and row-sharded kernel operators (gloo between CPU processes, NCCL between GPUs).

This is the only module that knows about ranks. Two implementations of one small interface carry them:

* :class:`LocalComm`: one process holding every row -- every collective is an identity, nothing is communicated;
* :class:`Comm`: the ranks of a ``torch.distributed`` process group, each holding a contiguous range of the rows in
  rank order (any split; a rank may hold none).

Code written against the interface (the RFM loop, :func:`distributed_agop`, the m-centre solve) runs unchanged on one
process or many. Rank p holds rows ``X_p`` and the matching rows of every n-vector (coefficients, residuals). What is
communicated, and when:

* once per :class:`ShardedKernel` (per exact RFM solve): an ``all_gather`` of the transformed points ``Z = X R``
  (n x r, r the compact rank of M) and their squared norms, so that every rank can form its row band ``K(Z_p, Z)``;
* per product ``K @ V``: an ``all_gather`` of the right-hand side V (n x c); the product returns the local rows
  ``K(Z_p, Z) V`` (n_p x n kernel evaluations per rank: the n^2 work of one product split P ways);
* per CG step: ``all_reduce`` of the c column inner products (twice) and, with the Nystrom preconditioner, of the
  q x c projection ``U_p^T r_p``; the preconditioner's q x q Gram matrix is all-reduced once and its small eigen-system
  solved on rank 0 and broadcast, and its centres are drawn on rank 0 and broadcast (identical on every rank);
* per m-centre CG step (:mod:`kernels.solvers.centres`): one ``all_reduce`` of the m x c block
  ``sum_p K_p^T (K_p v)``;
* the AGOP: each rank sums the gradient outer products of its own sample rows against all centres; one
  ``all_reduce`` of the d x d (or factor-space) sum, and of the gradient sum with centering.

:class:`Comm` counts the bytes each rank receives through its collectives (``bytes_communicated``) and the time
spent in them (``seconds_communicating``, waiting for slower ranks included), and turns a
collective that fails or times out (a rank that died, raised, or is paused) into one :class:`RankFailureError` naming
the ranks that stopped responding, within the group's timeout.
"""
from __future__ import annotations

import os
import socket
import time
from datetime import timedelta

import numpy as np
import torch

from .agop import agop_from_moments, agop_moments
from .blocked import kernel_matmul
from .family import as_kernel
from .operators import KernelOperator, Points, kernel_block

__all__ = ["Comm", "LocalComm", "RankFailureError", "ShardedKernel", "DEFAULT_TIMEOUT", "distributed_agop"]

#: the collective timeout of a distributed fit (a rank that died or hangs makes the others fail after this long
#: instead of waiting for torch's default of 30 minutes); estimators take it as ``distributed_timeout``
DEFAULT_TIMEOUT = timedelta(minutes=10)


#: seconds a rank whose collective failed waits for the peer that caused it to be seen gone (it may still be exiting)
FAILURE_GRACE_S = 3.0


class RankFailureError(RuntimeError):
    """A collective of a distributed fit failed or timed out: another rank died, raised, or stopped responding."""


class LocalComm:
    """The collectives of a single process holding every row: identities (nothing is communicated)."""

    rank, world_size, bytes_communicated, seconds_communicating = 0, 1, 0, 0.0

    def allreduce(self, t: torch.Tensor) -> torch.Tensor:
        return t

    def broadcast(self, t: torch.Tensor, src: int = 0) -> torch.Tensor:
        return t

    def sizes(self, n_local: int, device=None) -> list[int]:
        return [int(n_local)]

    def all_gather_rows(self, t: torch.Tensor, sizes: list[int] | None = None) -> torch.Tensor:
        return t

    def gather_objects(self, obj) -> list:
        return [obj]

    def take_rows(self, t: torch.Tensor, offset: int, idx: torch.Tensor) -> torch.Tensor:
        return t[idx.to(t.device)]

    def take_objects(self, a: np.ndarray, offset: int, idx) -> np.ndarray:
        return np.asarray(a)[np.asarray(idx)]

    def min_int(self, v: int) -> int:
        return int(v)


def _process_state(pid: int) -> str:
    """What a process on this host is doing: 'exited', 'paused' (stopped), or 'running'."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            state = f.read().rsplit(")", 1)[1].split()[0]
    except (OSError, IndexError):
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            return "exited"
        except OSError:
            return "running"
        return "running"
    return {"Z": "exited", "X": "exited", "T": "paused", "t": "paused"}.get(state, "running")


#: the groups made for a timeout, per (parent group's ranks, timeout): every rank makes the same ones in the same
#: order (the fits of one program), so a group is made once and reused instead of one per fit
_TIMEOUT_GROUPS: dict = {}


def _group_with_timeout(dist, group, timeout: timedelta):
    ranks = tuple(dist.get_process_group_ranks(group)) if group is not None else None
    key = (id(dist.group.WORLD), ranks, timeout.total_seconds())
    cached = _TIMEOUT_GROUPS.get(key)
    if cached is not None:
        try:
            dist.get_rank(cached)  # (a group destroyed with its process group is made again)
            return cached
        except (RuntimeError, ValueError):
            pass
    _TIMEOUT_GROUPS[key] = dist.new_group(ranks=None if ranks is None else list(ranks), timeout=timeout)
    return _TIMEOUT_GROUPS[key]


class Comm:
    """The collectives of one ``torch.distributed`` process group, with a count of the bytes they move on this rank
    (received from other ranks: an all-gather counts the other ranks' parts, a ring all-reduce 2 (P-1)/P of the
    tensor; 0 at P = 1).

    Parameters
    ----------
    group : a ``torch.distributed`` process group (None: the default group, which must be initialised).
    timeout : when given (a ``timedelta`` or seconds), a new group over the same ranks whose collectives fail after
        this long (a fit's own group: torch's default group waits 30 minutes for a dead rank). Every rank must create
        it at the same point.
    owner : who is communicating, for messages.
    """

    def __init__(self, group=None, *, timeout=None, owner: str = "drfm"):
        import torch.distributed as dist

        if not dist.is_available() or not dist.is_initialized():
            raise ValueError("torch.distributed is not initialised: call torch.distributed.init_process_group "
                             "(e.g. under torchrun) before using the distributed path")
        self.dist, self.owner = dist, owner
        self.bytes_communicated = 0
        self.seconds_communicating = 0.0  # wall time inside collectives (waiting for slower ranks included)
        if timeout is not None:
            self.timeout = timeout if isinstance(timeout, timedelta) else timedelta(seconds=float(timeout))
            group = _group_with_timeout(dist, group, self.timeout)
        else:
            self.timeout = None
        self.group = group
        self.rank = dist.get_rank(group)
        self.world_size = dist.get_world_size(group)
        # NCCL moves CUDA tensors only: small CPU tensors (counts, generator states, statistics) travel through the
        # rank's GPU and come back
        nccl = dist.get_backend(group) == "nccl"
        self.device = torch.device("cuda", torch.cuda.current_device()) if nccl else torch.device("cpu")
        # who is who: a failed collective names the ranks on this host that exited or are paused
        self.peers = self.gather_objects((socket.gethostname(), os.getpid()))

    # ---- failure handling ------------------------------------------------------------------------------------
    def _failed(self, what: str, exc: BaseException):
        host = socket.gethostname()
        peers = getattr(self, "peers", None) or []
        here = [(r, pid) for r, (h, pid) in enumerate(peers) if r != self.rank and h == host]
        unknown = [f"rank {r} (host {h})" for r, (h, _) in enumerate(peers) if r != self.rank and h != host]
        found, deadline = [], time.monotonic() + FAILURE_GRACE_S
        while True:  # a rank that raised may still be shutting down: give it a moment to be seen gone
            found = []
            for r, pid in here:
                state = _process_state(pid)
                if state != "running":
                    found.append(f"rank {r} (pid {pid}) has {state}" if state == "exited" else
                                 f"rank {r} (pid {pid}) is {state}")
            if found or not here or time.monotonic() > deadline:
                break
            time.sleep(0.1)
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        timeout = f" within the group's timeout ({self.timeout.total_seconds():g} s)" if self.timeout else ""
        if found:
            who = "; ".join(found)
        elif unknown:
            who = "no rank on this host has stopped; one of " + ", ".join(unknown) + " may have"
        else:
            who = ("every other rank's process is still running: one of them raised an error, or did not reach this "
                   f"collective{timeout}")
        raise RankFailureError(f"{self.owner} (distributed, rank {self.rank} of {self.world_size}): the collective "
                               f"'{what}' failed: {who}. (torch.distributed: {first})") from None

    def _run(self, what: str, fn, *args, **kwargs):
        t0 = time.perf_counter()
        try:
            return fn(*args, group=self.group, **kwargs)
        except RuntimeError as exc:  # gloo / NCCL errors, DistBackendError, timeouts
            self._failed(what, exc)
        finally:
            self.seconds_communicating += time.perf_counter() - t0

    def _count(self, t: torch.Tensor, factor: float = 1.0):
        self.bytes_communicated += int(t.numel() * t.element_size() * factor)

    # ---- collectives -----------------------------------------------------------------------------------------
    def _movable(self, t: torch.Tensor) -> torch.Tensor:
        """A copy of ``t`` the backend can move (on the rank's GPU under NCCL when ``t`` is not on a GPU)."""
        if self.device.type == "cuda" and t.device.type != "cuda":
            return t.to(self.device)
        return t.clone()

    def allreduce(self, t: torch.Tensor) -> torch.Tensor:
        """The sum over ranks of ``t`` (a new tensor on ``t``'s device; ``t`` is left as it is)."""
        out = self._movable(t)
        self._run("all_reduce", self.dist.all_reduce, out)
        out = out.to(t.device)
        # a ring all-reduce sends and receives about 2 (P-1)/P of the tensor on every rank
        self._count(out, 2.0 * (self.world_size - 1) / self.world_size)
        return out

    def broadcast(self, t: torch.Tensor, src: int = 0) -> torch.Tensor:
        """``t`` as rank ``src`` holds it (every rank must pass a tensor of the same shape and dtype)."""
        out = self._movable(t).contiguous()
        self._run("broadcast", self.dist.broadcast, out, src=src)
        out = out.to(t.device)
        self._count(out, 1.0 if self.world_size > 1 else 0.0)  # received (or sent) once
        return out

    def gather_objects(self, obj) -> list:
        """Every rank's picklable ``obj``, in rank order."""
        everyone = [None] * self.world_size
        self._run("all_gather_object", self.dist.all_gather_object, everyone, obj)
        return everyone

    def _gather_ints(self, values: list[int]) -> list[list[int]]:
        mine = torch.tensor(values, dtype=torch.long, device=self.device)
        got = [torch.zeros_like(mine) for _ in range(self.world_size)]
        self._run("all_gather", self.dist.all_gather, got, mine)
        self._count(mine, self.world_size - 1)  # received from every other rank
        return [g.tolist() for g in got]

    def sizes(self, n_local: int, device=None) -> list[int]:
        """Every rank's row count, in rank order (``device`` is not needed: the counts travel on the group's own
        device; kept so that :class:`LocalComm` and :class:`Comm` take the same arguments)."""
        return [g[0] for g in self._gather_ints([int(n_local)])]

    def min_int(self, v: int) -> int:
        """The smallest of every rank's ``v``."""
        return min(g[0] for g in self._gather_ints([int(v)]))

    def all_gather_rows(self, t: torch.Tensor, sizes: list[int] | None = None) -> torch.Tensor:
        """The row-wise concatenation, in rank order, of every rank's ``t`` (n_p, ...); shards may differ in size
        (padded to the largest for the collective)."""
        sizes = self.sizes(t.shape[0], t.device) if sizes is None else sizes
        big = max(sizes)
        where = t.device if self.device.type != "cuda" or t.device.type == "cuda" else self.device
        pad = torch.zeros((big, *t.shape[1:]), dtype=t.dtype, device=where)
        pad[: t.shape[0]] = t
        parts = [torch.empty_like(pad) for _ in range(self.world_size)]
        self._run("all_gather", self.dist.all_gather, parts, pad)
        self._count(pad, self.world_size - 1)  # received from every other rank
        return torch.cat([p[:s] for p, s in zip(parts, sizes)], 0).to(t.device)

    def take_rows(self, t: torch.Tensor, offset: int, idx: torch.Tensor) -> torch.Tensor:
        """The rows ``idx`` (global indices) of a row-sharded tensor whose local rows ``t`` start at global row
        ``offset``, on every rank: each rank fills in the rows it holds, one all-reduce adds them up (exact: every
        entry is one rank's value plus zeros)."""
        idx = idx.to(t.device)
        mine = (idx >= offset) & (idx < offset + t.shape[0])
        out = torch.zeros((idx.shape[0], *t.shape[1:]), dtype=t.dtype, device=t.device)
        out[mine] = t[idx[mine] - offset]
        return self.allreduce(out)

    def take_objects(self, a: np.ndarray, offset: int, idx) -> np.ndarray:
        """:meth:`take_rows` for a numpy array of any dtype (labels): one all-gather of the selected entries."""
        a, idx = np.asarray(a), np.asarray(idx)
        mine = np.nonzero((idx >= offset) & (idx < offset + len(a)))[0]
        parts = self.gather_objects((mine, a[idx[mine] - offset]))
        out = np.empty((len(idx), *a.shape[1:]), dtype=np.result_type(*[v.dtype for _, v in parts]))
        for pos, vals in parts:
            out[pos] = vals
        return out


class ShardedKernel(KernelOperator):
    """``K = K_M(X, X)`` for rows sharded over the ranks of ``comm``: products take and return this rank's rows.

    Parameters
    ----------
    x : this rank's rows (n_p, d) as a tensor, or :class:`Points` already transformed.
    comm : :class:`Comm`.
    bandwidth / kernel : the kernel (see :mod:`kernels.family`).
    sqrt_m : optional factor R of M applied to a tensor ``x``.
    memory_budget : bytes for the kernel tiles of a product.
    """

    def __init__(self, x, comm: Comm, *, bandwidth=None, kernel=None, sqrt_m=None, memory_budget=None):
        local = x if isinstance(x, Points) else Points.of(x, sqrt_m)
        self.comm, self.kernel = comm, as_kernel(kernel, bandwidth)
        self.bandwidth = self.kernel.bandwidth
        self.local = local
        self.shard_sizes = comm.sizes(len(local), local.z.device)
        self._n_local = len(local)
        self._row_offset = sum(self.shard_sizes[: comm.rank])
        self.n = sum(self.shard_sizes)
        # every rank holds all transformed points (n x r): gathered once
        self.all = Points(comm.all_gather_rows(local.z, self.shard_sizes),
                          comm.all_gather_rows(local.z_sq, self.shard_sizes))
        self.shape = (self.n, self.n)
        self.dtype, self.device = local.z.dtype, local.z.device
        self.memory_budget = memory_budget
        self.n_products = 0

    @property
    def n_local(self) -> int:
        return self._n_local

    @property
    def row_offset(self) -> int:
        return self._row_offset

    def allreduce(self, t):
        return self.comm.allreduce(t)

    def broadcast(self, t, src: int = 0):
        return self.comm.broadcast(t, src)

    def gather(self, v: torch.Tensor) -> torch.Tensor:
        """All ranks' rows of an n-vector (n, ...) from this rank's rows."""
        return self.comm.all_gather_rows(v, self.shard_sizes)

    def matmul(self, v: torch.Tensor, out: torch.Tensor | None = None) -> torch.Tensor:
        """This rank's rows of ``K @ V`` from this rank's rows of V: (n_p,) or (n_p, c)."""
        squeeze = v.dim() == 1
        v2 = v.unsqueeze(1) if squeeze else v
        full = self.gather(v2)
        if self.n_local == 0:
            res = torch.zeros((0, v2.shape[1]), dtype=v2.dtype, device=v2.device)
        else:
            # (a row's distance to its own copy in the gathered points is recomputed directly: exactly 0, k = 1)
            res = kernel_matmul(self.local, self.all, full, kernel=self.kernel, memory_budget=self.memory_budget)
        self.n_products += 1
        if out is not None:
            (out.unsqueeze(1) if out.dim() == 1 else out).copy_(res)
            return out
        return res.squeeze(1) if squeeze else res

    __matmul__ = matmul

    def block(self, rows, cols=None, out=None) -> torch.Tensor:
        """``K[rows, cols]`` for global row / column indices (every rank holds all points)."""
        return kernel_block(self.all.z, self.all.z_sq, self.kernel, rows, cols, out)


def distributed_agop(samples, centres, alpha, comm, *, kernel=None, bandwidth=None, sqrt_m=None, diag: bool = False,
                     centering: bool = False, memory_budget=None) -> torch.Tensor:
    """The AGOP over every rank's sample rows (``samples``: this rank's, possibly none) of the predictor on
    ``centres`` (all of them, identical on every rank) with coefficients ``alpha`` (all of them): each rank's sums
    (:func:`kernels.agop.agop_moments`), one all-reduce, the AGOP of the union (:func:`kernels.agop.agop_from_moments`;
    with ``centering``, the gradient sums too). With :class:`LocalComm` this is :func:`kernels.agop.laplace_agop`.
    With a (d, r) matrix factor the ranks sum in its r coordinates (r^2 values instead of d^2) and map back once."""
    kern = as_kernel(kernel, bandwidth)
    n_local = samples.shape[0]
    acc, gsum = agop_moments(samples, centres, alpha, kernel=kern, sqrt_m=sqrt_m, diag=diag, centering=centering,
                             memory_budget=memory_budget)
    total = n_local
    if comm.world_size > 1:
        c = alpha.shape[1] if alpha.dim() == 2 else 1
        if centering and gsum is None:  # a rank without samples
            gsum = torch.zeros((c, acc.shape[0]), dtype=torch.float64, device=acc.device)
        flat = [acc.reshape(-1), torch.tensor([float(n_local)], dtype=torch.float64, device=acc.device)]
        if centering:
            flat.append(gsum.reshape(-1))
        summed = comm.allreduce(torch.cat(flat))
        k = acc.numel()
        acc = summed[:k].view_as(acc).clone()
        total = int(round(float(summed[k])))
        if centering:
            gsum = summed[k + 1:].view_as(gsum).clone()
    if total == 0:
        raise ValueError("no rank holds any AGOP sample rows")
    return agop_from_moments(acc, gsum, total, sqrt_m=sqrt_m, diag=diag)
