"""Solvers for kernel ridge regression ``(K + reg I) x = Y``.

- :func:`solve_direct`: Cholesky (needs the n x n matrix).
- :func:`solve_cg`: conjugate gradients with a preconditioner callable (e.g. :class:`NystromPreconditioner`).
- :func:`solve_eigenpro`: EigenPro 2 preconditioned SGD on a :class:`NystromEigensystem`.
- :func:`solve_centres`: the m-centre (Nystrom) restriction ``(K_nm^T K_nm + reg K_mm) beta = K_nm^T Y`` by CG with
  Falkon's preconditioner (:class:`CentreSystem`).
- :func:`plan_solve`: which of them a system gets, why, and what it holds in memory.

The iterative solvers share scipy's shape: ``solve(A, B, *, reg, x0, rtol, atol, max_iter, M, callback)``.
"""
from ._result import ConvergenceWarning, SolveResult
from .centres import CentreSystem, default_centre_count, solve_centres
from .cg import solve_cg
from .direct import solve_direct
from .eigenpro import eigenpro_schedule, solve_eigenpro
from .nystrom import NystromEigensystem, NystromPreconditioner, default_n_centres
from .plan import SolvePlan, plan_solve

__all__ = [
    "CentreSystem",
    "ConvergenceWarning",
    "NystromEigensystem",
    "NystromPreconditioner",
    "SolvePlan",
    "SolveResult",
    "default_centre_count",
    "default_n_centres",
    "eigenpro_schedule",
    "plan_solve",
    "solve_centres",
    "solve_cg",
    "solve_direct",
    "solve_eigenpro",
]
