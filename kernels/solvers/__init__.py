"""Solvers for kernel ridge regression ``(K + reg I) x = Y``.

- :func:`solve_direct`: Cholesky (needs the n x n matrix).
- :func:`solve_cg`: conjugate gradients with a preconditioner callable (e.g. :class:`NystromPreconditioner`).
- :func:`solve_eigenpro`: EigenPro 2 preconditioned SGD on a :class:`NystromEigensystem`.
- :func:`solve_centres`: the m-centre (Nystrom) restriction ``(K_nm^T K_nm + reg K_mm) beta = K_nm^T Y`` by CG with
  Falkon's preconditioner (:class:`CentreSystem`).
- :mod:`.ridge`: a whole grid of ridge values from one factorisation (exact leave-one-out, the m-centre
  generalised eigenproblem) or one solve per value (:func:`walk_path`), each scored; :func:`solve_centres_path`.
- :func:`plan_solve`: which of them a system gets, why, and what it holds in memory.

The iterative solvers share scipy's shape: ``solve(A, B, *, reg, x0, rtol, atol, max_iter, M, callback)``.
"""
from ._result import ConvergenceWarning, SolveResult
from .centres import CentreSystem, default_centre_count, solve_centres, solve_centres_path
from .cg import solve_cg
from .direct import solve_direct
from .eigenpro import eigenpro_schedule, solve_eigenpro
from .nystrom import NystromEigensystem, NystromPreconditioner, default_n_centres
from .plan import SolvePlan, plan_solve
from .ridge import RIDGE_GRID, RidgePath, centres_path, loo_path, walk_path

__all__ = [
    "CentreSystem",
    "RIDGE_GRID",
    "RidgePath",
    "centres_path",
    "loo_path",
    "walk_path",
    "solve_centres_path",
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
