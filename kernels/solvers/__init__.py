"""Solvers for kernel ridge regression ``(K + reg I) x = Y``."""
from ._result import SolveResult
from .direct import solve_direct

__all__ = ["SolveResult", "solve_direct"]
