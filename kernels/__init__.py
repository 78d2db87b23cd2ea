"""drfm's numerical core: Laplace kernels, memory planning, kernel operators, closed-form AGOP, solvers.

Depends on torch only (never on scikit-learn or drfm). Tensors in, tensors out; no progress bars (long loops take
callbacks).

- :mod:`kernels.laplace`: the kernel and distances (one GEMM), ``apply_sqrt_m``;
- :mod:`kernels.memory`: available memory, budgets, the planner (:class:`MemoryPlan`, :func:`plan_blocks`);
- :mod:`kernels.operators`: the :class:`KernelOperator` protocol, :class:`Points`, :class:`BlockedKernel`,
  :class:`StoredKernel`;
- :mod:`kernels.blocked`: rectangular blocked products :func:`kernel_matmul`;
- :mod:`kernels.agop`: gradients, :func:`laplace_agop`, :func:`feature_matrix_update`;
- :mod:`kernels.linalg`: PSD matrix functions (:func:`psd_power`, :func:`compact_factor`);
- :mod:`kernels.features`: random feature maps;
- :mod:`kernels.solvers`: direct, CG, EigenPro, the Nystrom preconditioner, :func:`plan_solve`.

Note: an unrelated PyPI distribution is also called ``kernels``; this package ships inside the ``drfm`` distribution.
"""
from .agop import feature_matrix_update, laplace_agop, laplace_gradients
from .blocked import kernel_matmul
from .laplace import apply_sqrt_m, laplace_kernel, sq_distances, sq_norms
from .linalg import compact_factor, psd_power
from .memory import BlockPlan, MemoryPlan, available_memory, default_memory_budget, format_bytes, plan_blocks
from .operators import BlockedKernel, KernelOperator, Points, StoredKernel
from .solvers import (NystromEigensystem, NystromPreconditioner, SolvePlan, SolveResult, plan_solve, solve_centres,
                      solve_cg, solve_direct, solve_eigenpro)

__all__ = [
    "BlockPlan",
    "BlockedKernel",
    "KernelOperator",
    "MemoryPlan",
    "NystromEigensystem",
    "NystromPreconditioner",
    "Points",
    "SolvePlan",
    "SolveResult",
    "StoredKernel",
    "apply_sqrt_m",
    "available_memory",
    "compact_factor",
    "default_memory_budget",
    "feature_matrix_update",
    "format_bytes",
    "kernel_matmul",
    "laplace_agop",
    "laplace_gradients",
    "laplace_kernel",
    "plan_blocks",
    "plan_solve",
    "psd_power",
    "solve_cg",
    "solve_direct",
    "solve_eigenpro",
    "solve_centres",
    "sq_distances",
    "sq_norms",
]
