"""Solvers for kernel ridge regression ``(K + reg I) x = Y``.

- :func:`solve_direct`: Cholesky (small n; needs the n x n matrix).
- :func:`solve_cg`: conjugate gradients with a Nystrom preconditioner (accurate; large n; never holds K).
- :func:`solve_eigenpro`: EigenPro 2 preconditioned SGD (very large n, early-stopped fits).
"""
from ._result import ConvergenceWarning, SolveResult
from .cg import solve_cg
from .direct import solve_direct
from .eigenpro import eigenpro_schedule, solve_eigenpro
from .nystrom import NystromEigensystem, default_n_centres

__all__ = [
    "ConvergenceWarning",
    "NystromEigensystem",
    "SolveResult",
    "default_n_centres",
    "eigenpro_schedule",
    "solve_cg",
    "solve_direct",
    "solve_eigenpro",
]
