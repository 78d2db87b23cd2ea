"""Which solver a kernel ridge system ``(K + reg I) alpha = Y`` gets, why, and what it holds in memory.

:func:`plan_solve` turns (n, d, c, dtype, device, budget, the requested solver, reg) into a :class:`SolvePlan`: the
solver, the reason in words, whether the n x n matrix is stored, the Nystrom centres and rank, and a
:class:`~kernels.memory.MemoryPlan` of what the solve holds (from the components' ``workspace_bytes``); blocked
kernel products and the AGOP stream their tiles through what is left (:meth:`SolvePlan.work_budget`).

With ``requested="auto"``:

| n (rows of the solve) | solver | why |
|---|---|---|
| <= AUTO_DIRECT_MAX_N, n x n matrix fits | direct (Cholesky) | n^3/3 flops is seconds at most |
| larger, n x n matrix fits, ``reg < AUTO_CG_MIN_REG`` | direct | CG slows down as reg -> 0 |
| larger, matrix + CG's memory fit | CG on the stored matrix | one GEMM per CG step |
| matrix does not fit | the m-centre model (``"nystrom"``) | an exact solve would recompute n^2 kernel entries per CG step |

``requested="nystrom"`` (or "auto" beyond the stored matrix) restricts the model to m centres
(:mod:`kernels.solvers.centres`, an approximation of the exact solve); ``requested="cg"`` keeps the exact system on
blocked products.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from enum import Enum

import torch

from ..memory import MIN_WORK_BYTES, MemoryPlan, format_bytes
from ..operators import Points, StoredKernel
from ._result import iterative_vectors_bytes
from .direct import workspace_bytes as direct_workspace_bytes
from .centres import default_centre_count
from .centres import workspace_bytes as centres_workspace_bytes
from .nystrom import DEFAULT_RANK, NystromPreconditioner, default_n_centres

__all__ = ["AUTO_CG_MIN_REG", "AUTO_DIRECT_MAX_N", "SOLVERS", "Solver", "SolvePlan", "plan_solve"]

SOLVERS = ("auto", "direct", "cg", "eigenpro", "nystrom")


class Solver(str, Enum):
    """The solver a plan chose (the value is the name users pass as ``solver=`` and history records).

    A ``str``: comparing with the name works, and it prints as the name."""

    DIRECT = "direct"
    CG = "cg"
    EIGENPRO = "eigenpro"
    NYSTROM = "nystrom"

    __str__ = str.__str__
    __format__ = str.__format__

    @property
    def centres(self) -> bool:
        """The m-centre model (an approximation restricted to its centres), not the exact n x n system."""
        return self is Solver.NYSTROM

    @property
    def iterative_exact(self) -> bool:
        """An iterative solver of the exact system (CG, EigenPro): runs on a kernel operator, warm-started."""
        return self in (Solver.CG, Solver.EIGENPRO)

#: with solver="auto", the direct solver is used up to this many training points (when its n x n matrix fits the
#: budget). Above it, conjugate gradients on the stored kernel matrix (Nystrom-preconditioned, warm-started across RFM
#: iterations) is faster: measured on a 2-core CPU, RFM fits took the same time at n = 6000 and half the time at
#: n = 12800 (lowrank: 45 s direct vs 20 s; classif10 n = 16000: 109 s vs 59 s), at equal test scores.
AUTO_DIRECT_MAX_N = 8000

#: with solver="auto", ridges below this (relative to k(x, x) = 1) keep the direct solver whenever the matrix fits:
#: CG needs many more iterations as reg -> 0 (n = 12800 lowrank: reg 1e-4 still 37 s vs 45 s direct, reg = 0 94 s)
AUTO_CG_MIN_REG = 1e-4

#: the smallest Nystrom system the planner shrinks to under a tight budget (centres, rank)
_MIN_CENTRES, _MIN_RANK = 64, 16


@dataclass(frozen=True)
class SolvePlan:
    """A planned solve: ``solver`` ('direct', 'cg', 'eigenpro', 'nystrom'), the ``reason`` in words, whether the
    kernel matrix is ``store``d (n x n; for 'nystrom' the n x m block), the Nystrom ``n_centres`` / ``rank`` of the
    iterative solvers (for 'nystrom': the model's centres), and ``memory``: what the solve holds at its peak."""

    solver: Solver
    reason: str
    store: bool
    n_centres: int
    rank: int
    memory: MemoryPlan

    def __post_init__(self):
        object.__setattr__(self, "solver", Solver(self.solver))

    @property
    def holds_matrix(self) -> bool:
        """Whether an n x n buffer is held (direct: factorised in place; stored CG / EigenPro)."""
        return self.solver is Solver.DIRECT or (self.store and not self.solver.centres)

    def work_budget(self) -> int:
        """Bytes left for streamed work (kernel tiles, AGOP blocks) beside what the solve holds."""
        return self.memory.left()


def _solve_items(solver, n, d, c, itemsize, s=0, q=0, store=False) -> dict[str, int]:
    """What a solve of n rows holds, item by item (from the components' ``workspace_bytes``)."""
    items = {"transformed rows": Points.workspace_bytes(n, d, itemsize)}
    if solver == "nystrom":
        items["transformed centres"] = Points.workspace_bytes(s, d, itemsize)
        items["m-centre system (factors, vectors" + (", stored n x m block)" if store else ")")] = \
            centres_workspace_bytes(n, s, c, itemsize=itemsize, store=store, d=d)
        return items
    if solver == "direct":
        items["kernel matrix (Cholesky in place) and solution"] = direct_workspace_bytes(n, c, itemsize=itemsize)
        return items
    items["iterative solver vectors"] = iterative_vectors_bytes(n, c)
    items["Nystrom preconditioner"] = NystromPreconditioner.workspace_bytes(n, n_centres=s, rank=q, itemsize=itemsize)
    if store:
        items["stored kernel matrix"] = StoredKernel.workspace_bytes(n, c, itemsize=itemsize, d=d)
    return items


def _ledger(budget, reserved, items) -> MemoryPlan:
    plan = MemoryPlan(budget)
    for name, nbytes in {**(reserved or {}), **items}.items():
        plan.add(name, nbytes)
    return plan


def _default_nystrom(n, device):
    s = default_n_centres(n, device)
    return s, min(s, DEFAULT_RANK)


def plan_solve(n: int, d: int, c: int, *, dtype: torch.dtype, device: torch.device | str, budget: int,
               requested: str = "auto", reg: float = 1e-3, owner: str = "the solve",
               reserved: dict[str, int] | None = None, n_centres: int | None = None,
               n_local: int | None = None) -> SolvePlan:
    """Choose the solver for an n-row system with d (transformed) features and c right-hand sides; say why.

    ``reserved``: what the caller holds beside the solve (named byte counts: its data, the AGOP, ...); it is part of
    the plan, and the Nystrom system is shrunk (halving centres and rank) until everything plus a minimal tile fits.
    Raises a ``ValueError`` that says what fits when nothing does (the direct solver: the largest n; otherwise the
    number of samples the iterative solver could take). ``n_centres``: the m-centre model's centres (default
    :func:`~kernels.solvers.centres.default_centre_count`). ``n_local``: with the rows sharded over several
    processes, the most rows one process holds: the m-centre model is planned for them (each process holds its
    rows of K_nm); the solver is still chosen for the global n, and the exact solvers hold all n points (gathered).
    """
    if requested not in SOLVERS:
        raise ValueError(f"requested must be one of {SOLVERS}, got {requested!r}")
    itemsize = torch.empty((), dtype=dtype).element_size()
    fixed = sum((reserved or {}).values())
    direct = _ledger(budget, reserved, _solve_items("direct", n, d, c, itemsize))
    if requested == "direct":
        if not direct.fits(MIN_WORK_BYTES):
            per = (d + 1 + 2 * c) * itemsize
            room = max(budget - fixed - MIN_WORK_BYTES, 0)
            n_max = int((-per + math.sqrt(per**2 + 4 * itemsize * room)) / (2 * itemsize))
            raise ValueError(
                f"{owner} with solver='direct' needs {format_bytes(direct.total)} for the {n} x {n} kernel matrix "
                f"and the rest of the fit, but memory_budget is {format_bytes(budget)}; under this budget the direct "
                f"solver fits at most {n_max} training samples. Use solver='cg' or 'eigenpro' (or 'auto'), or a "
                "larger memory_budget."
            )
        return SolvePlan("direct", "forced by solver='direct'", False, 0, 0, direct)
    if requested == "auto" and direct.fits(MIN_WORK_BYTES):
        size = format_bytes(n * n * itemsize)
        if n <= AUTO_DIRECT_MAX_N:
            return SolvePlan("direct", f"n={n} <= {AUTO_DIRECT_MAX_N} and the n x n matrix ({size}) fits the budget",
                             False, 0, 0, direct)
        if reg < AUTO_CG_MIN_REG:
            return SolvePlan("direct", f"the n x n matrix ({size}) fits the budget and reg={reg:g} < "
                                       f"{AUTO_CG_MIN_REG:g} (CG converges slowly as reg -> 0)", False, 0, 0, direct)
    if requested == "nystrom":
        return _plan_centres(n, d, c, itemsize, budget, reserved, owner, n_centres, "forced by solver='nystrom'",
                             n_local)
    s, q = _default_nystrom(n, device)
    iterative = _ledger(budget, reserved, _solve_items("cg", n, d, c, itemsize, s, q))
    while not iterative.fits(MIN_WORK_BYTES) and s > _MIN_CENTRES:
        s, q = max(_MIN_CENTRES, s // 2), max(min(_MIN_RANK, s - 1), q // 2)
        iterative = _ledger(budget, reserved, _solve_items("cg", n, d, c, itemsize, s, q))
    if not iterative.fits(MIN_WORK_BYTES):
        # rows, the float64 Nystrom basis (and, below float64, the copy it is computed from), CG vectors
        per_n = (d + 1) * itemsize + q * (8 + (itemsize if itemsize < 8 else 0)) + 8 * c * 8
        room = budget - fixed - MIN_WORK_BYTES - NystromPreconditioner.workspace_bytes(0, n_centres=s, rank=q,
                                                                                       itemsize=itemsize)
        raise ValueError(
            f"{owner} cannot fit {n} training samples under memory_budget={format_bytes(budget)}: even the "
            f"iterative solver needs {format_bytes(iterative.total)} (data, solver vectors, Nystrom basis; largest "
            f"items: {iterative.describe(3)}); about {max(0, int(room // per_n))} samples would fit. Pass a larger "
            "memory_budget."
        )
    if requested in ("cg", "eigenpro"):
        solver, reason = requested, f"forced by solver={requested!r}"
    else:
        fits = direct.fits(MIN_WORK_BYTES)
        why = f"n={n} > {AUTO_DIRECT_MAX_N}" if fits else "the n x n matrix does not fit the budget"
        solver, reason = "cg", f"{why}: Nystrom-preconditioned CG, warm-started across iterations"
    stored = _ledger(budget, reserved, _solve_items(solver, n, d, c, itemsize, s, q, store=True))
    store = stored.fits(MIN_WORK_BYTES)
    if requested == "auto" and not store:
        size = format_bytes(n * n * itemsize)
        try:
            return _plan_centres(n, d, c, itemsize, budget, reserved, owner, n_centres,
                                 f"the {n} x {n} kernel matrix ({size}) does not fit the budget, and an exact solve "
                                 f"would recompute all n^2 kernel entries at every CG step: the m-centre model",
                                 n_local)
        except ValueError:  # its m x m factors do not fit either: the exact solve on blocked products
            reason += "; the m-centre model's factors do not fit the budget either"
    if store:
        iterative = stored
        reason += "; the n x n kernel matrix fits the budget and is stored (one GEMM per product)"
    else:
        reason += "; kernel products recomputed in blocks (the n x n matrix does not fit the budget)"
    if (s, q) != _default_nystrom(n, device):
        reason += f"; Nystrom system reduced to {s} centres, rank {q} to fit the budget"
    return SolvePlan(solver, reason, store, s, q, iterative)


def _plan_centres(n, d, c, itemsize, budget, reserved, owner, n_centres, reason, n_local=None) -> SolvePlan:
    """The m-centre model's plan: its centres, whether the (local) n x m block is stored, what it holds."""
    m = min(n, default_centre_count(n) if n_centres is None else int(n_centres))
    rows = n if n_local is None else int(n_local)  # the rows this process holds
    held = _ledger(budget, reserved, _solve_items("nystrom", rows, d, c, itemsize, m))
    if not held.fits(MIN_WORK_BYTES):
        raise ValueError(
            f"{owner} cannot fit the m-centre model with {m} centres for {n} training samples under "
            f"memory_budget={format_bytes(budget)}: it needs {format_bytes(held.total)} (largest items: "
            f"{held.describe(3)}). Pass fewer n_centres or a larger memory_budget."
        )
    reason = f"{reason} ({m} centres{' = n: exact' if m == n else ', an approximation of the exact solve'})"
    stored = _ledger(budget, reserved, _solve_items("nystrom", rows, d, c, itemsize, m, store=True))
    if stored.fits(MIN_WORK_BYTES):
        return SolvePlan("nystrom", reason + "; the n x m kernel block fits the budget and is stored", True, m, 0,
                         stored)
    return SolvePlan("nystrom", reason + "; the n x m kernel block is recomputed in row blocks at every CG step",
                     False, m, 0, held)
