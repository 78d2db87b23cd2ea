"""Kernel ridge regression restricted to m centres, solved by preconditioned conjugate gradients.

The model is ``f(x) = sum_j beta_j k(x, c_j)`` over m centres C (m << n rows of the training set). Its coefficients
minimise ``||K_nm beta - Y||^2 + reg beta^T K_mm beta``, i.e. solve

    (K_nm^T K_nm + reg K_mm) beta = K_nm^T Y,

the m-centre restriction of ``(K + reg I) alpha = Y`` (with m = n and C = X both give the same predictor; Falkon,
Rudi, Carratino & Rosasco 2017, writes reg as lambda n). Each CG step is one pass over the n x m kernel block (two
products with it), recomputed in row blocks under the byte budget or stored when it fits: O(n m r) multiply-adds for
the distances (r the width of the transformed rows) plus n m exponentials.

Preconditioner (the construction of Falkon). With uniformly drawn centres ``K_nm^T K_nm ~ (n/m) K_mm^2``, so with the
upper Cholesky factors ``T^T T = K_mm + jitter I`` and ``A^T A = (n/m) T T^T + reg I`` the system matrix is close to
``T^T A^T A T``. CG runs on ``u = A T beta``:

    W u = A^{-T} T^{-T} K_nm^T K_nm T^{-1} A^{-1} u + reg A^{-T} A^{-1} u = A^{-T} T^{-T} K_nm^T Y,

which is well conditioned. (Replacing ``K_mm`` by ``T^T T`` in the ridge term regularises with
``reg (K_mm + jitter I)``; the jitter, ``m * eps`` of float64 times the growth needed for the Cholesky to succeed, is
reported in ``details``.) ``K_mm``, the m x m factors and every CG vector are float64; the n x m kernel block stays in
the working dtype.

Stopping on held-out rows. Given ``held_out`` (the error of coefficients on rows outside the solve), the CG also stops
once HELD_OUT_PATIENCE consecutive steps have not lowered the lowest held-out error by more than RIDGE_RTOL of it (the
tolerance under which the ridge choices count errors as equal, :mod:`kernels.solvers.ridge`), and returns the last
iterate when its error equals the lowest up to that tolerance (the more converged of equals), else the lowest's. Its
predictions then differ from the converged solution's by less than the held-out rows can tell apart, at a fraction of
the steps: measured on the low-rank task (400 000 rows, 3000 centres, a learned metric; test R^2 per step) the error
reached 1.001x the converged one at step 19, where the residual tolerance 1e-4 took 31 steps and 1e-6 64 -- every
one of them a pass over the n x m kernel block.
"""
from __future__ import annotations

from typing import Callable

import torch

from ..family import as_kernel
from ..laplace import folded_cols, folded_rows
from ..distributed import LocalComm
from ..memory import default_memory_budget, plan_blocks
from ..operators import KernelOperator, Points
from ._result import SolveResult, as_columns
from .cg import solve_cg
from .ridge import RIDGE_RTOL

__all__ = ["CentreSystem", "path_workspace_bytes", "solve_centres", "solve_centres_path", "default_centre_count",
           "workspace_bytes"]

#: the jitter starts at JITTER_START * m * eps and grows 10x per failed Cholesky, up to JITTER_MAX (relative to
#: k(x, x) = 1)
JITTER_START, JITTER_MAX = 1.0, 1e-2


#: rows of a kernel tile times m, at most: the tile stays in the last-level cache through the elementwise passes
#: (measured at n = 200 000, m = 5000, r = 2 on a 2-core CPU: 1.50 s per CG step with 256-row tiles against 2.59 s
#: with 3355-row (16M-element) tiles). With the products read from cache-sized float64 pieces (below), 2^21 (262
#: rows at m = 8000) beat 2^20 (131 rows): 1.56 against 1.80 ns per value of a CG product, one thread, r = 4
CACHE_TILE_ELEMENTS = 2**21

#: float64 elements of the piece of a tile the products ``K^T (K v)`` read at a time (1 MiB: the core's own cache):
#: the copy from the working dtype and both products then run from that cache instead of the last-level one
#: (measured, 131 x 8000 float32 tiles, r = 4, one thread: 0.46 against 1.02 ns per value for the copy and the two
#: products; 2 threads 0.46 against 0.52)
PRODUCT_PIECE_ELEMENTS = 2**17


def default_centre_count(n: int) -> int:
    """Centres of the m-centre model by default: ``10 sqrt(n)`` clipped to [2000, 8000] (and at most n): 2000 up to
    n = 40 000, 4472 at n = 200 000, 8000 from n = 640 000. Falkon's theory asks for m of order sqrt(n) log n for the
    exact solve's statistical accuracy; the cap keeps a CG step within seconds on a CPU (README: the measured gap)."""
    return min(n, max(2000, min(8000, int(10 * n**0.5))))


def tile_rows_cap(m: int) -> int:
    """The most rows a kernel tile over ``m`` centres gets (CACHE_TILE_ELEMENTS, at least 64 rows)."""
    return max(64, CACHE_TILE_ELEMENTS // max(m, 1))


def workspace_bytes(n: int, m: int, c: int, *, itemsize: int, store: bool = False, d: int = 0) -> int:
    """What an m-centre solve holds: the two m x m float64 factors (and a transient one while they are formed), CG's
    float64 vectors over m, the n x m kernel block when it is stored, and with ``d`` (the transformed rows' columns)
    the norm-folded distance GEMM's operands (FOLD_NORMS: the centres' m x (d + 2) side, a row block's)."""
    held = 3 * m * m * 8 + m * 8 * c * 8 + n * c * 8
    if d:
        held += (m + min(max(n, 1), tile_rows_cap(m))) * (d + 2) * itemsize
    return held + (n * m * itemsize if store else 0)


def path_workspace_bytes(m: int) -> int:
    """What :func:`solve_centres_path` holds beyond :func:`workspace_bytes` at its peak (the eigendecomposition of
    ``T^{-T} K_nm^T K_nm T^{-1}``: the matrix, its eigenvectors and LAPACK's ~2 m^2 workspace; float64)."""
    return 4 * m * m * 8


def _cholesky_upper(S: torch.Tensor, eps: float) -> tuple[torch.Tensor, float]:
    """Upper Cholesky of ``S + jitter I`` with the smallest jitter (from m * eps, x10 per failure) that succeeds."""
    m = S.shape[0]
    jitter = JITTER_START * m * eps
    while True:
        T, info = torch.linalg.cholesky_ex(S + jitter * torch.eye(m, dtype=S.dtype, device=S.device), upper=True)
        if int(info) == 0:
            return T, jitter
        if jitter >= JITTER_MAX:
            raise ValueError(
                f"the m-centre solve could not factorise its {m} x {m} centre kernel matrix even with jitter "
                f"{jitter:g}: the centres' kernel matrix is numerically singular in this precision (try "
                "dtype='float64', a larger bandwidth, or fewer centres)."
            )
        jitter *= 10.0


#: the m-centre CG with held-out rows stops after this many steps in a row that did not lower the lowest held-out
#: error by more than RIDGE_RTOL (module text)
HELD_OUT_PATIENCE = 3


class _HeldOutStop:
    """CG's callback scoring each step's coefficients on held-out rows, and the iterate it returns (module text)."""

    def __init__(self, system: "CentreSystem", held_out, patience: int):
        self.system, self.held_out, self.patience = system, held_out, int(patience)
        self.errors: list[float] = []
        self.lowest, self.lowest_u, self.lowest_k = float("inf"), None, 0
        self.last_u, self.since, self.stopped = None, 0, False

    def __call__(self, k: int, u: torch.Tensor) -> bool:
        u = u.clone()  # (CG's iterate, (m, c): it moves on in place)
        err = float(self.held_out([self.system.to_beta(u)])[0])
        self.errors.append(err)
        improved = err < self.lowest * (1.0 - RIDGE_RTOL)  # (the first finite error always is)
        if err < self.lowest:
            self.lowest, self.lowest_u, self.lowest_k = err, u, k
        self.since = 0 if improved else self.since + 1
        self.last_u = u
        self.stopped = self.since >= self.patience
        return self.stopped

    def choice(self) -> tuple[torch.Tensor, int]:
        """The returned iterate and its step: the last when its error equals the lowest up to RIDGE_RTOL."""
        last = self.errors[-1]
        if self.lowest_u is None or last <= self.lowest * (1.0 + RIDGE_RTOL):
            return self.last_u, len(self.errors)
        return self.lowest_u, self.lowest_k


#: the tiles' distances by one GEMM with the norms folded in ([z, |z|^2, 1] [-2 c, 1, |c|^2]^T) instead of a GEMM and
#: a pass adding the rows' norms
FOLD_NORMS = True


class CentreSystem:
    """The kernel block ``K_nm`` as products (recomputed in row blocks, or stored) and the Falkon preconditioner.

    Parameters
    ----------
    points : :class:`Points` (n rows, transformed by a factor of M).
    centres : :class:`Points` (m rows, transformed by the same factor).
    bandwidth : Laplace bandwidth L (or pass ``kernel``).
    reg : ridge >= 0 of the m-centre problem.
    store : keep the n x m block (one product pass per use instead of recomputing the kernel).
    memory_budget : bytes for the streamed row blocks (the held items are the caller's to plan).
    comm : None (single process), or the collectives of a process group whose ranks each hold some of the rows
        (:class:`kernels.distributed.Comm`): ``points`` and Y are this rank's rows, ``centres`` the same on every rank;
        the m x c sums ``K_nm^T (K_nm v)`` and ``K_nm^T Y`` are all-reduced (one m x c all-reduce per CG step), and the
        preconditioner uses the global n. Everything over m (factors, CG vectors, coefficients) is replicated.
    preconditioner : form Falkon's factor ``A`` (False: only ``T``, for :func:`solve_centres_path`, which runs no CG).
    """

    def __init__(self, points: Points, centres: Points, *, bandwidth: float | None = None, reg: float,
                 store: bool = False, memory_budget: int | None = None, kernel=None, comm=None,
                 preconditioner: bool = True):
        self.points, self.centres = points, centres
        self.kernel = as_kernel(kernel, bandwidth)
        self.bandwidth, self.reg = self.kernel.bandwidth, float(reg)
        self.comm = LocalComm() if comm is None else comm
        self.n_local, self.m = len(points), len(centres)
        self.n = int(sum(self.comm.sizes(self.n_local, points.z.device)))
        self.dtype, self.device = points.z.dtype, points.z.device
        budget = default_memory_budget(self.device) if memory_budget is None else int(memory_budget)
        itemsize = points.z.element_size()
        # a row block's kernel tile in the working dtype, and its float64 copy for the products
        self.wide = self.dtype != torch.float64
        tile_item = itemsize + (8 if self.wide else 0)
        self.row_block = plan_blocks(max(self.n_local, 1), self.m, itemsize=tile_item, budget=budget, per_row_bytes=8 * 8,
                                     max_row_block=tile_rows_cap(self.m)).row_block
        # the centres' side of the norm-folded distance GEMM, kept across tiles and steps (radial kernels: saves the
        # pass that adds the rows' norms to every tile, see FOLD_NORMS)
        self.folded = self._rows_buf = None
        if FOLD_NORMS and self.kernel.radial:
            self.folded = folded_cols(centres.z, centres.z_sq)
            self._rows_buf = torch.empty((min(self.row_block, max(self.n_local, 1)), centres.z.shape[1] + 2),
                                         dtype=self.dtype, device=self.device)
        self.K = None
        if store:
            K = torch.empty((self.n_local, self.m), dtype=self.dtype, device=self.device)
            for i, tile in self._tiles():
                K[i : i + tile.shape[0]] = tile
            self.K = K
        self.n_products = 0
        # T^T T = K_mm + jitter I;  A^T A = (n/m) T T^T + reg I   (float64, m x m). K_mm is formed in float64 from
        # the (rounded) centres whatever the working dtype: its float32 round-off (~1e-7) would need a jitter of that
        # order, above the small eigenvalues a learned metric produces, and the preconditioner would then miss them
        zc = centres.z.double()
        kmm = self.kernel.matrix(zc, zc)
        self.T, self.jitter = _cholesky_upper(kmm, torch.finfo(torch.float64).eps)
        del kmm
        self.A = None
        if preconditioner:
            S = self.T @ self.T.T
            S.mul_(self.n / self.m).diagonal().add_(self.reg)
            self.A, _ = _cholesky_upper(S, torch.finfo(torch.float64).eps)
            del S

    def _kernel(self, z, z_sq, out=None):
        if self.folded is None:
            return self.kernel.matrix(z, self.centres.z, x_sq=z_sq, z_sq=self.centres.z_sq, out=out)
        rows = folded_rows(z, z_sq, out=self._rows_buf)
        return self.kernel.matrix(z, self.centres.z, x_sq=z_sq, z_sq=self.centres.z_sq, out=out,
                                  folded=(rows, self.folded))

    def _tiles(self):
        """(row offset, K[rows, :]) over row blocks of the n points (a view of the stored block when stored)."""
        b, n = self.row_block, self.n_local
        if self.K is not None:
            for i in range(0, n, b):
                yield i, self.K[i : i + b]
            return
        buf = torch.empty(min(b, n) * self.m, dtype=self.dtype, device=self.device)
        for i in range(0, n, b):
            z, z_sq = self.points.z[i : i + b], self.points.z_sq[i : i + b]
            yield i, self._kernel(z, z_sq, out=buf[: z.shape[0] * self.m].view(z.shape[0], self.m))

    def _wide_tiles(self):
        """(row offset, K[rows, :] in float64): the products run in float64 on the working-dtype tiles. In float32
        they lost the small directions a learned metric brings (measured: test R^2 0.87 instead of 0.992 at n = 6000,
        m = 2000; neither splitting v into two float32 parts helped, so the float32 sums were the cause)."""
        if not self.wide:
            yield from self._tiles()
            return
        buf = torch.empty(min(self.row_block, self.n_local) * self.m, dtype=torch.float64, device=self.device)
        for i, tile in self._tiles():
            yield i, buf[: tile.numel()].view(tile.shape).copy_(tile)

    def _wide_pieces(self):
        """(row offset, K[rows, :] in float64) in pieces of about PRODUCT_PIECE_ELEMENTS (the products' reads stay in
        the core's cache); float64 tiles whole, as they are."""
        if not self.wide:
            yield from self._tiles()
            return
        piece = max(1, PRODUCT_PIECE_ELEMENTS // max(self.m, 1))
        buf = torch.empty(min(piece, max(self.n_local, 1)) * self.m, dtype=torch.float64, device=self.device)
        for i, tile in self._tiles():
            for s in range(0, tile.shape[0], piece):
                part = tile[s : s + piece]
                yield i + s, buf[: part.numel()].view(part.shape).copy_(part)

    def normal_product(self, v: torch.Tensor) -> torch.Tensor:
        """``K_nm^T K_nm v`` for float64 v (m, c), summed over row blocks in float64 (and over the ranks)."""
        out = torch.zeros_like(v, dtype=torch.float64)
        for _, tile in self._wide_pieces():
            out.addmm_(tile.T, tile @ v)
        self.n_products += 1
        return self.comm.allreduce(out)

    def normal_matrix(self) -> torch.Tensor:
        """``K_nm^T K_nm`` (float64, m x m), summed over row blocks in float64 (and over the ranks)."""
        out = torch.zeros((self.m, self.m), dtype=torch.float64, device=self.device)
        for _, tile in self._wide_tiles():
            out.addmm_(tile.T, tile)
        self.n_products += 1
        return self.comm.allreduce(out)

    def rhs(self, Y: torch.Tensor) -> torch.Tensor:
        """``K_nm^T Y`` (float64, m x c)."""
        out = torch.zeros((self.m, Y.shape[1]), dtype=torch.float64, device=self.device)
        Yw = Y.double()
        for i, tile in self._wide_pieces():
            out.addmm_(tile.T, Yw[i : i + tile.shape[0]])
        return self.comm.allreduce(out)

    # beta = T^{-1} A^{-1} u   and its inverse  u = A T beta
    def to_beta(self, u: torch.Tensor) -> torch.Tensor:
        w = torch.linalg.solve_triangular(self.A, u, upper=True)
        return torch.linalg.solve_triangular(self.T, w, upper=True)

    def to_u(self, beta: torch.Tensor) -> torch.Tensor:
        return self.A @ (self.T @ beta)

    def _left(self, w: torch.Tensor) -> torch.Tensor:
        """``A^{-T} T^{-T} w``."""
        w = torch.linalg.solve_triangular(self.T.T, w, upper=False)
        return torch.linalg.solve_triangular(self.A.T, w, upper=False)

    def matmul(self, u: torch.Tensor, out=None) -> torch.Tensor:
        """The preconditioned system's product ``W u`` (float64, m x c)."""
        u2 = u.unsqueeze(1) if u.dim() == 1 else u
        a_inv_u = torch.linalg.solve_triangular(self.A, u2, upper=True)
        beta = torch.linalg.solve_triangular(self.T, a_inv_u, upper=True)
        w = self._left(self.normal_product(beta))
        w.add_(torch.linalg.solve_triangular(self.A.T, a_inv_u, upper=False), alpha=self.reg)
        if out is not None:
            out.copy_(w.view_as(out))
            return out
        return w.view_as(u) if u.dim() == 1 else w


class _Operator(KernelOperator):
    """:class:`CentreSystem`'s ``W`` in the shape :func:`solve_cg` expects (float64, m x m, symmetric; replicated on
    every rank of a sharded system, so CG's inner products need no reduction)."""

    def __init__(self, system: CentreSystem):
        self.system = system
        self.shape = (system.m, system.m)
        self.dtype = torch.float64
        self.device = system.device

    def matmul(self, v, out=None):
        return self.system.matmul(v, out=out)


def solve_centres(
    points: Points,
    centres: Points,
    Y: torch.Tensor,
    *,
    bandwidth: float | None = None,
    reg: float,
    x0: torch.Tensor | None = None,
    rtol: float = 1e-6,
    atol: float = 0.0,
    max_iter: int | None = None,
    callback: Callable[[int, torch.Tensor, float], bool | None] | None = None,
    store: bool = False,
    memory_budget: int | None = None,
    kernel=None,
    comm=None,
    held_out: Callable[[list[torch.Tensor]], list[float]] | None = None,
    patience: int = HELD_OUT_PATIENCE,
) -> SolveResult:
    """Solve the m-centre kernel ridge problem ``(K_nm^T K_nm + reg K_mm) beta = K_nm^T Y`` (see the module).

    Parameters
    ----------
    points : :class:`Points`, the n training rows (transformed).
    centres : :class:`Points`, the m centres (transformed by the same factor; e.g. a random subset of the rows).
    Y : (n,) or (n, c) targets.
    bandwidth, reg : the kernel's bandwidth and the ridge (``reg K_mm``: the same scale as ``reg I`` of the exact
        system, which it equals when m = n).
    x0 : optional warm start, coefficients over the same centres (m,) / (m, c).
    rtol, atol : CG's stopping rule on the preconditioned residual (relative to the preconditioned right-hand side).
    max_iter : CG iteration cap (default 100: the preconditioned system converges in tens of steps).
    callback : ``callback(k, u, rel_residual)`` after each CG step; True stops.
    store : keep the n x m kernel block between products.
    memory_budget : bytes for the streamed kernel row blocks.
    kernel : a :class:`~kernels.family.Kernel` of the family (default: the Laplace kernel with ``bandwidth``).
    comm : None, or the collectives of a process group over whose ranks the rows are sharded (``points`` and ``Y``
        this rank's rows; ``centres`` and ``x0`` the same on every rank): see :class:`CentreSystem`. The result is
        the same on every rank.
    held_out : optional ``held_out([beta]) -> [error]``, the error of coefficients (m, c) on rows outside the solve
        (the same on every rank): CG also stops once ``patience`` steps in a row have not lowered the lowest error by
        more than RIDGE_RTOL (module text).
    patience : see ``held_out``.

    Returns
    -------
    SolveResult with ``x`` = beta (m, c) in Y's dtype, ``method`` 'nystrom', ``details``: centres, jitter, stored,
    kernel products; with ``held_out`` also ``held_out_errors`` (per step), ``stopped_by`` ('held-out' when that rule
    ended it) and ``returned_step``.
    """
    if patience < 1:
        raise ValueError(f"patience must be a positive number of CG steps, got {patience}")
    if len(points) != Y.shape[0]:
        raise ValueError(f"Y has {Y.shape[0]} rows for {len(points)} points")
    if len(centres) < 1:
        raise ValueError("the m-centre solve needs at least one centre")
    B, X0, squeeze = as_columns(Y, x0)
    system = CentreSystem(points, centres, bandwidth=bandwidth, reg=reg, store=store, memory_budget=memory_budget,
                          kernel=kernel, comm=comm)
    b = system._left(system.rhs(B))
    u0 = None if x0 is None else system.to_u(X0.double())
    stop = None if held_out is None else _HeldOutStop(system, held_out, patience)

    def with_stop(k, u, rel_residual):
        user = callback is not None and bool(callback(k, u, rel_residual))
        return stop(k, u) or user

    res = solve_cg(_Operator(system), b, reg=0.0, x0=u0, rtol=rtol, atol=atol,
                   max_iter=100 if max_iter is None else max_iter,
                   callback=callback if stop is None else with_stop)
    u, returned = res.x, None
    if stop is not None and stop.stopped:
        u, returned = stop.choice()
    # the ranks' factors and CG iterates agree to round-off: rank 0's coefficients everywhere
    beta = system.comm.broadcast(system.to_beta(u).to(Y.dtype))
    details = {"n_centres": system.m, "jitter": system.jitter, "stored": system.K is not None,
               "kernel_products": system.n_products}
    if stop is not None:
        details.update(held_out_errors=stop.errors, stopped_by="held-out" if stop.stopped else "cg",
                       returned_step=res.n_iter if returned is None else returned)
    final = res.final_residual if returned is None else res.residual_norms[returned]
    return SolveResult(beta.squeeze(1) if squeeze else beta, res.n_iter, res.converged, res.residual_norms,
                       float(reg), "nystrom", final_residual=final,
                       returned_iterations=res.returned_iterations if returned is None else [returned] * B.shape[1],
                       details=details)


def solve_centres_path(
    points: Points,
    centres: Points,
    Y: torch.Tensor,
    *,
    regs,
    bandwidth: float | None = None,
    held_out: Callable[[list[torch.Tensor]], list[float]] | None = None,
    store: bool = False,
    memory_budget: int | None = None,
    kernel=None,
    comm=None,
) -> SolveResult:
    """The m-centre problem for a grid of ridge values at once (:func:`kernels.solvers.ridge.centres_path`): one pass
    over the n x m kernel block forms ``K_nm^T K_nm`` and ``K_nm^T Y`` (float64, all-reduced over the ranks), the
    generalised eigenproblem against ``K_mm`` gives every value's solution, GCV (or ``held_out``'s error) picks one.

    An O(n m^2) pass instead of CG's O(n m r) per step: worth it while m is small against r times the CG steps.
    Returns a SolveResult with ``x`` = beta (m, c) in Y's dtype, ``reg_used`` the chosen ridge and the scored path in
    ``details['ridge_path']`` (a :class:`~kernels.solvers.ridge.RidgePath`)."""
    from .ridge import ridge_grid, centres_path

    if len(points) != Y.shape[0]:
        raise ValueError(f"Y has {Y.shape[0]} rows for {len(points)} points")
    if len(centres) < 1:
        raise ValueError("the m-centre solve needs at least one centre")
    grid = ridge_grid(regs)
    B, _, squeeze = as_columns(Y, None)
    system = CentreSystem(points, centres, bandwidth=bandwidth, reg=float(grid[0]), store=store,
                          memory_budget=memory_budget, kernel=kernel, comm=comm, preconditioner=False)
    b = system.rhs(B)
    y_sq = float(system.comm.allreduce(B.double().square().sum().reshape(1))[0])
    path, beta = centres_path(system.normal_matrix(), system.T, b, y_sq, system.n, grid, held_out=held_out)
    beta = system.comm.broadcast(beta.to(Y.dtype))
    details = {"n_centres": system.m, "jitter": system.jitter, "stored": system.K is not None,
               "kernel_products": system.n_products, "ridge_path": path}
    return SolveResult(beta.squeeze(1) if squeeze else beta, 1, True, [], path.reg, "nystrom", details=details)
