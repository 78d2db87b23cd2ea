"""The fitted kernel machine ``f(x) = sum_j alpha_j k_M(x, c_j)``: its centres (training rows, or the m-centre
model's centres), coefficients, kernel and metric factor -- one object used by the loop's validation scoring, by
the estimators' ``predict`` and by their ``agop``."""
from __future__ import annotations

from dataclasses import dataclass

import torch

from kernels import Points, kernel_matmul, laplace_agop
from kernels.family import Kernel
from kernels.laplace import rounding_shift

__all__ = ["KernelMachine"]


@dataclass
class KernelMachine:
    """A kernel machine on transformed centres.

    centres : :class:`~kernels.operators.Points`, the centres mapped through ``factor``.
    alpha : (m, c) coefficients.
    kernel : the kernel (family, bandwidth).
    factor : the compact factor of M the rows are mapped through (None: M = I).
    x : the untransformed centres (for the AGOP, whose formula maps them itself); optional.
    shift, factor64 : with float32 models, queries and centres are formed as ``(x - shift) R`` in float64 and rounded
        once (:meth:`~kernels.operators.Points.shifted`), so a row maps to the same bits alone or in a batch.
    """

    centres: Points
    alpha: torch.Tensor
    kernel: Kernel
    factor: torch.Tensor | None = None
    x: torch.Tensor | None = None
    shift: torch.Tensor | None = None
    factor64: torch.Tensor | None = None

    @classmethod
    def fitted(cls, x: torch.Tensor, alpha: torch.Tensor, kernel: Kernel, factor: torch.Tensor | None):
        """The machine of a fitted estimator on its untransformed rows ``x`` (float32: formed around their rounding
        shift, :func:`kernels.laplace.rounding_shift`)."""
        shift = rounding_shift(x)
        f64 = None if shift is None or factor is None else factor.to(torch.float64)
        centres = Points.of(x, factor) if shift is None else Points.shifted(x, f64, shift)
        return cls(centres, alpha, kernel, factor, x, shift, f64)

    def outputs(self, X: torch.Tensor, *, memory_budget: int | None = None,
                accumulate: torch.dtype | None = None) -> torch.Tensor:
        """``f(X)`` for untransformed rows X (n, d): (n, c)."""
        q = X if self.shift is None else Points.shifted(X, self.factor64, self.shift)
        return kernel_matmul(q, self.centres, self.alpha, kernel=self.kernel, sqrt_m=self.factor,
                             memory_budget=memory_budget, accumulate=accumulate)

    def agop(self, samples: torch.Tensor, *, diag: bool, centering: bool, memory_budget: int | None = None):
        """The raw AGOP of ``f`` over ``samples`` (:func:`kernels.laplace_agop`); needs the untransformed ``x``."""
        if self.x is None:
            raise ValueError("this kernel machine was built without its untransformed centres (x): no AGOP")
        return laplace_agop(samples, self.x, self.alpha, kernel=self.kernel, sqrt_m=self.factor, diag=diag,
                            centering=centering, memory_budget=memory_budget)
