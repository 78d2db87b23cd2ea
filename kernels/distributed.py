"""Row-sharded kernel operators on ``torch.distributed`` (gloo between CPU processes, NCCL between GPUs).

Rank p holds rows ``X_p`` (about n / P of them, any split, a rank may hold none) and the matching rows of every
n-vector (coefficients, residuals). What is communicated, and when:

* once per operator (per RFM solve): an ``all_gather`` of the transformed points ``Z = X R`` (n x r, r the compact
  rank of M) and their squared norms, so that every rank can form its row band ``K(Z_p, Z)``;
* per product ``K @ V``: an ``all_gather`` of the right-hand side V (n x c); the product returns the local rows
  ``K(Z_p, Z) V`` (n_p x n kernel evaluations per rank: the n^2 work of one product split P ways);
* per CG step: ``all_reduce`` of the c column inner products (twice) and, with the Nystrom preconditioner, of the
  q x c projection ``U_p^T r_p``; the preconditioner's q x q Gram matrix is all-reduced once and its small eigen-system
  solved on rank 0 and broadcast, and its centres are drawn on rank 0 and broadcast (identical on every rank);
* the AGOP: each rank sums the gradient outer products of its own sample rows against all centres; one
  ``all_reduce`` of the d x d (or factor-space) sum.

:class:`Comm` wraps the collectives and counts the bytes each rank sends and receives through them
(``bytes_communicated``). The operator satisfies :class:`~kernels.operators.KernelOperator` with global shape (n, n)
and, in addition, ``n_local``, ``row_offset``, ``allreduce`` and ``broadcast``, which
:func:`~kernels.solvers.solve_cg` and the Nystrom classes use when present.
"""
from __future__ import annotations

from datetime import timedelta

import torch

from .blocked import kernel_matmul
from .family import as_kernel
from .operators import Points, kernel_block

__all__ = ["Comm", "ShardedKernel", "DEFAULT_TIMEOUT", "distributed_agop"]

#: the collective timeout drfm asks for when it initialises a process group itself (a rank that died or hangs makes
#: the others fail after this long instead of waiting forever)
DEFAULT_TIMEOUT = timedelta(minutes=10)


class Comm:
    """The collectives of one process group, with a count of the bytes they move on this rank (received from other
    ranks: an all-gather counts the other ranks' parts, a ring all-reduce 2 (P-1)/P of the tensor; 0 at P = 1).

    Parameters
    ----------
    group : a ``torch.distributed`` process group (None: the default group, which must be initialised).
    """

    def __init__(self, group=None):
        import torch.distributed as dist

        if not dist.is_available() or not dist.is_initialized():
            raise ValueError("torch.distributed is not initialised: call torch.distributed.init_process_group "
                             "(e.g. under torchrun) before using the distributed path")
        self.dist, self.group = dist, group
        self.rank = dist.get_rank(group)
        self.world_size = dist.get_world_size(group)
        self.bytes_communicated = 0

    def _count(self, t: torch.Tensor, factor: float = 1.0):
        self.bytes_communicated += int(t.numel() * t.element_size() * factor)

    def allreduce(self, t: torch.Tensor) -> torch.Tensor:
        """The sum over ranks of ``t`` (a new tensor; ``t`` is left as it is)."""
        out = t.clone()
        self.dist.all_reduce(out, group=self.group)
        # a ring all-reduce sends and receives about 2 (P-1)/P of the tensor on every rank
        self._count(out, 2.0 * (self.world_size - 1) / self.world_size)
        return out

    def broadcast(self, t: torch.Tensor, src: int = 0) -> torch.Tensor:
        """``t`` as rank ``src`` holds it (every rank must pass a tensor of the same shape and dtype)."""
        out = t.clone().contiguous()
        self.dist.broadcast(out, src=src, group=self.group)
        self._count(out, 1.0 if self.world_size > 1 else 0.0)  # received (or sent) once
        return out

    def sizes(self, n_local: int, device) -> list[int]:
        """Every rank's row count, in rank order."""
        mine = torch.tensor([n_local], dtype=torch.long, device=device)
        got = [torch.zeros_like(mine) for _ in range(self.world_size)]
        self.dist.all_gather(got, mine, group=self.group)
        self._count(mine, self.world_size - 1)  # received from every other rank
        return [int(g) for g in got]

    def all_gather_rows(self, t: torch.Tensor, sizes: list[int] | None = None) -> torch.Tensor:
        """The row-wise concatenation, in rank order, of every rank's ``t`` (n_p, ...); shards may differ in size
        (padded to the largest for the collective)."""
        sizes = self.sizes(t.shape[0], t.device) if sizes is None else sizes
        big = max(sizes)
        pad = torch.zeros((big, *t.shape[1:]), dtype=t.dtype, device=t.device)
        pad[: t.shape[0]] = t
        parts = [torch.empty_like(pad) for _ in range(self.world_size)]
        self.dist.all_gather(parts, pad, group=self.group)
        self._count(pad, self.world_size - 1)  # received from every other rank
        return torch.cat([p[:s] for p, s in zip(parts, sizes)], 0)


class ShardedKernel:
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
        self.n_local = len(local)
        self.row_offset = sum(self.shard_sizes[: comm.rank])
        self.n = sum(self.shard_sizes)
        # every rank holds all transformed points (n x r): gathered once
        self.all = Points(comm.all_gather_rows(local.z, self.shard_sizes),
                          comm.all_gather_rows(local.z_sq, self.shard_sizes))
        self.shape = (self.n, self.n)
        self.dtype, self.device = local.z.dtype, local.z.device
        self.memory_budget = memory_budget
        self.n_products = 0

    def set_kernel(self, kernel) -> None:
        """Use another kernel on the same gathered points (e.g. once the bandwidth is measured on them)."""
        self.kernel = as_kernel(kernel)
        self.bandwidth = self.kernel.bandwidth

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


def distributed_agop(samples, centres, alpha, comm: Comm, *, kernel=None, bandwidth=None, sqrt_m=None,
                     diag: bool = False, memory_budget=None) -> torch.Tensor:
    """The AGOP over every rank's sample rows (``samples``: this rank's, possibly none) of the predictor on
    ``centres`` (all of them, identical on every rank, e.g. :attr:`ShardedKernel.all`) with coefficients ``alpha``
    (all rows): each rank's sum of gradient outer products, one all-reduce, divided by the total sample count.
    (``centering`` needs the global mean gradient first and is not offered here.)"""
    from .agop import laplace_agop

    n_local = samples.shape[0]
    total = int(comm.allreduce(torch.tensor([float(n_local)], dtype=torch.float64, device=samples.device)).item())
    if total == 0:
        raise ValueError("no rank holds any AGOP sample rows")
    # with a (d, r) matrix factor the ranks sum the r x r AGOP of the factor coordinates (a learned M is often of
    # low rank) and map it back once: r^2 values communicated instead of d^2
    factor = sqrt_m is not None and sqrt_m.dim() == 2 and not diag
    d = sqrt_m.shape[1] if factor else samples.shape[1]
    if n_local:
        part = laplace_agop(samples, centres, alpha, kernel=as_kernel(kernel, bandwidth), sqrt_m=sqrt_m, diag=diag,
                            memory_budget=memory_budget, factor_coordinates=factor) * n_local
    else:
        part = torch.zeros((d,) if diag else (d, d), dtype=torch.float64, device=samples.device)
    agop = comm.allreduce(part) / total
    if factor:
        f = sqrt_m.double()
        return f @ agop @ f.T
    return agop
