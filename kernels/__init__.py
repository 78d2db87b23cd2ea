"""drfm's numerical core: Laplace kernels, blocked products, closed-form AGOP, solvers.

Depends on torch only (never on scikit-learn or drfm). Tensors in, tensors out.
Note: an unrelated PyPI distribution is also called ``kernels``; this package ships inside the ``drfm`` distribution.
"""
from .agop import laplace_agop, laplace_gradients
from .blocked import BlockPlan, available_memory, default_memory_budget, kernel_matmul, plan_blocks
from .laplace import apply_sqrt_m, laplace_kernel, sq_distances, sq_norms
from .blocked import DenseKernelOperator, KernelOperator
from .solvers import NystromEigensystem, SolveResult, solve_cg, solve_direct, solve_eigenpro

__all__ = [
    "BlockPlan",
    "DenseKernelOperator",
    "KernelOperator",
    "NystromEigensystem",
    "SolveResult",
    "apply_sqrt_m",
    "available_memory",
    "default_memory_budget",
    "kernel_matmul",
    "laplace_agop",
    "laplace_gradients",
    "laplace_kernel",
    "plan_blocks",
    "solve_cg",
    "solve_direct",
    "solve_eigenpro",
    "sq_distances",
    "sq_norms",
]
