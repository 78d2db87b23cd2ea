"""The kernel family: every kernel drfm fits, on rows already mapped through a factor R of M (``z = x R``).

============================  ==========================================  =====================================
``name``                      ``k(x, z)``                                  distance it reads
============================  ==========================================  =====================================
``"laplace"`` (default)       ``exp(-||x - z||_M / L)``                    L2 in the metric (one GEMM)
``"gaussian"``                ``exp(-||x - z||_M^2 / (2 L^2))``            L2 in the metric (one GEMM)
``"laplace_exp"``             ``exp(-||x - z||_M^p / L)``, p in (0, 2]     L2 in the metric (one GEMM)
``"product_laplace"``         ``exp(-sum_i |(x R)_i - (z R)_i| / L)``      L1 of the transformed rows (no GEMM)
============================  ==========================================  =====================================

The three radial kernels are ``exp(-d2^(p/2) / s)`` of the squared distance ``d2 = ||x - z||_M^2`` (p = 1, s = L;
p = 2, s = 2 L^2; p, s = L), so their gradients share one form:

    grad_x k(x, z) = w(x, z) * M (z - x),     w = (p / s) * d2^(p/2 - 1) * k

(:meth:`Kernel.gradient_weights`; for p < 2 it is singular at d2 = 0, where the kernel is not differentiable: those
terms carry the factor ``M (z - x) = 0`` and are dropped by flooring d2, see :mod:`kernels.agop`). The product
Laplace kernel depends on R itself (not only on M = R R^T): its gradient is ``(1/L) k R sign(z R - x R)`` and its
distances cost O(n m d) without a GEMM (``torch.cdist`` with p = 1), several times a radial kernel's.
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import torch

from .laplace import distance_cap, exp_floor, laplace_kernel_transformed, sq_distances
from .phases import phase

__all__ = ["KERNELS", "Kernel", "as_kernel", "l1_distances"]

#: the kernel names, in the order the documentation lists them
KERNELS = ("laplace", "gaussian", "laplace_exp", "product_laplace")

# rows of torch.cdist's own (uncontrolled) result at a time in l1_distances: its temporary stays below this many
# elements whatever the tile
_L1_CHUNK_ELEMENTS = 2**18


def l1_distances(x: torch.Tensor, z: torch.Tensor, *, out: torch.Tensor | None = None) -> torch.Tensor:
    """``sum_i |x_ai - z_bi|`` for rows ``x`` (n, d) and ``z`` (m, d), written into ``out`` (n, m) when given.

    Computed directly (no GEMM formula, so no round-off floor: a row's distance to its own copy is exactly 0), in
    row chunks so that ``torch.cdist``'s temporary stays bounded.
    """
    n, m = x.shape[0], z.shape[0]
    if out is None:
        out = torch.empty((n, m), dtype=x.dtype, device=x.device)
    if n == 0 or m == 0:
        return out
    if x.shape[1] == 0:
        return out.zero_()
    step = max(1, _L1_CHUNK_ELEMENTS // m)
    for a in range(0, n, step):
        out[a : a + step] = torch.cdist(x[a : a + step], z, p=1.0)
    return out


@dataclass(frozen=True)
class Kernel:
    """One member of the kernel family with its bandwidth (and exponent, for ``laplace_exp``).

    Parameters
    ----------
    name : one of :data:`KERNELS`.
    bandwidth : L > 0.
    exponent : p in (0, 2] of ``laplace_exp`` (ignored by the other kernels).
    """

    name: str = "laplace"
    bandwidth: float = 1.0
    exponent: float = 1.0

    def __post_init__(self):
        if self.name not in KERNELS:
            raise ValueError(f"kernel must be one of {', '.join(map(repr, KERNELS))}; got {self.name!r}")
        L = self.bandwidth
        if isinstance(L, bool) or not isinstance(L, (int, float)) or not math.isfinite(L) or L <= 0:
            raise ValueError(f"bandwidth must be a finite number > 0, got {L!r}")
        object.__setattr__(self, "bandwidth", float(L))
        p = self.exponent
        if isinstance(p, bool) or not isinstance(p, (int, float)) or not 0 < p <= 2:
            raise ValueError(f"exponent must be a number in (0, 2], got {p!r}")
        object.__setattr__(self, "exponent", float(p))

    # -- the radial form exp(-d2^(p/2) / s) ----------------------------------------------------------------------
    @property
    def radial(self) -> bool:
        """Whether the kernel is a function of the L2 distance in the metric (all but ``product_laplace``)."""
        return self.name != "product_laplace"

    @property
    def power(self) -> float:
        """p in ``exp(-d^p / s)``: 1 (laplace, product_laplace), 2 (gaussian), the exponent (laplace_exp)."""
        return {"gaussian": 2.0, "laplace_exp": self.exponent}.get(self.name, 1.0)

    @property
    def scale(self) -> float:
        """s in ``exp(-d^p / s)``: 2 L^2 for the Gaussian kernel, L otherwise."""
        return 2.0 * self.bandwidth**2 if self.name == "gaussian" else self.bandwidth

    def with_length(self, length: float) -> "Kernel":
        """The same kernel with the bandwidth whose distance unit is ``length`` (``k = exp(-(d / length)^p)`` for
        laplace, laplace_exp and product_laplace; ``exp(-d^2 / (2 length^2))`` for the Gaussian kernel)."""
        bw = length**self.exponent if self.name == "laplace_exp" else length
        return Kernel(self.name, bw, self.exponent)

    def value(self, distance: float) -> float:
        """``k`` at a distance (L2 in the metric, or L1 of the transformed rows for ``product_laplace``)."""
        return math.exp(-(distance**self.power) / self.scale)

    # -- evaluation ------------------------------------------------------------------------------------------------
    def distances(self, xr: torch.Tensor, zr: torch.Tensor) -> torch.Tensor:
        """The distances this kernel reads between transformed rows: L2, or L1 for ``product_laplace``."""
        return sq_distances(xr, zr).sqrt_() if self.radial else l1_distances(xr, zr)

    def matrix(self, xr, zr, *, x_sq=None, z_sq=None, out=None, folded=None) -> torch.Tensor:
        """The kernel matrix between transformed rows ``xr`` (n, d) and ``zr`` (m, d), optionally into ``out``.

        ``x_sq`` / ``z_sq`` are the rows' squared norms (used by the radial kernels' GEMM distances); ``folded``: the
        rows' and columns' augmented copies for a GEMM that adds the norms itself (:func:`~kernels.laplace.sq_distances`;
        radial kernels, ignored by the product kernel). All elementwise work happens in place on the (n, m) result.
        """
        n, m, d = xr.shape[0], zr.shape[0], xr.shape[1]
        if not self.radial:  # (every exponent >= exp_floor, see kernels.laplace.exp_floor)
            with phase("kernel", l1_ops=n * m * d, exp_values=n * m):
                return l1_distances(xr, zr, out=out).mul_(-1.0 / self.bandwidth).clamp_min_(
                    exp_floor(xr.dtype)).exp_()
        with phase("kernel", gemm_flops=2 * n * m * d, exp_values=n * m):
            return self._radial_matrix(xr, zr, x_sq, z_sq, out, folded)

    def _radial_matrix(self, xr, zr, x_sq, z_sq, out, folded) -> torch.Tensor:
        p = self.power
        if p == 1.0:  # the Laplace kernel (and laplace_exp with p = 1)
            return laplace_kernel_transformed(xr, zr, bandwidth=self.scale, x_sq=x_sq, z_sq=z_sq, out=out,
                                              folded=folded)
        d2 = sq_distances(xr, zr, x_sq=x_sq, z_sq=z_sq, out=out, cap=self.d2_cap(xr.dtype), folded=folded)
        if p != 2.0:
            d2.pow_(0.5 * p)
        return d2.mul_(-1.0 / self.scale).exp_()

    def d2_cap(self, dtype: torch.dtype) -> float | None:
        """The squared distance beyond which a radial kernel's exponent ``-d2^(p/2) / s`` falls below
        :func:`~kernels.laplace.exp_floor` of ``dtype`` (None where that lies beyond the dtype's range): capping d2
        there keeps ``exp`` on its fast path. (``gradient_weights(capped=True)``: the caller capped d2 already.)"""
        return distance_cap(dtype, self.scale, self.power)

    def gradient_weights(self, d2: torch.Tensor, scratch: torch.Tensor, *, capped: bool = False) -> torch.Tensor:
        """For a radial kernel, ``d2^(p/2 - 1) k`` from squared distances ``d2`` (floored away from 0 by the caller),
        in place in ``d2`` (``scratch``, same shape, is work space). Times :attr:`gradient_scale` it is the weight
        ``w`` of the module text (the constant is applied once per gradient block, not per tile entry)."""
        p, s = self.power, self.scale
        cap = None if capped else self.d2_cap(d2.dtype)
        if cap is not None:  # exponents >= exp_floor (kernels.laplace.exp_floor): the weights change by < e^floor
            d2.clamp_max_(cap)
        if p == 1.0:  # the Laplace kernel: k / d
            dist = d2.sqrt_()
            k = torch.mul(dist, -1.0 / s, out=scratch).exp_()
            return dist.reciprocal_().mul_(k)
        if p == 2.0:
            return d2.mul_(-1.0 / s).exp_()
        k = torch.pow(d2, 0.5 * p, out=scratch).mul_(-1.0 / s).exp_()
        return d2.pow_(0.5 * p - 1.0).mul_(k)

    @property
    def gradient_scale(self) -> float:
        """``p / s``: the constant factor of a radial kernel's gradient weights (see :meth:`gradient_weights`)."""
        return self.power / self.scale


def as_kernel(kernel: "Kernel | str | None" = None, bandwidth: float | None = None, exponent: float = 1.0) -> Kernel:
    """The :class:`Kernel` a function was asked for: a Kernel as it is (``bandwidth`` must then be None or equal),
    a name with ``bandwidth``, or None for the Laplace kernel with ``bandwidth``."""
    if isinstance(kernel, Kernel):
        if bandwidth is not None and float(bandwidth) != kernel.bandwidth:
            raise ValueError(f"bandwidth={bandwidth!r} disagrees with the kernel's bandwidth {kernel.bandwidth!r}; "
                             "pass one of them")
        return kernel
    if bandwidth is None:
        raise TypeError("a bandwidth (or a Kernel) is required")
    return Kernel("laplace" if kernel is None else kernel, bandwidth, exponent)
