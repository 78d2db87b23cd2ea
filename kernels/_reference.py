"""Slow, obviously-correct dense references. Used only by tests; never by library code."""
from __future__ import annotations

import numpy as np
import torch


def laplace_kernel_numpy(x: np.ndarray, z: np.ndarray, *, bandwidth: float, m: np.ndarray | None = None) -> np.ndarray:
    """``exp(-||x_i - z_j||_M / L)`` from explicit differences, float64 numpy, no GEMM trick."""
    x = np.asarray(x, dtype=np.float64)
    z = np.asarray(z, dtype=np.float64)
    diff = x[:, None, :] - z[None, :, :]
    if m is None:
        q = np.sum(diff * diff, axis=-1)
    else:
        q = np.einsum("ijk,kl,ijl->ij", diff, np.asarray(m, dtype=np.float64), diff)
    return np.exp(-np.sqrt(np.maximum(q, 0.0)) / bandwidth)


def predictor_autograd(centres: torch.Tensor, alpha: torch.Tensor, *, bandwidth: float, m: torch.Tensor):
    """``f(x) = sum_i alpha_i k_M(x, x_i)`` written with explicit differences, differentiable by autograd.

    A centre at zero distance contributes a constant 1 (its gradient term is dropped, as in the closed form).
    """

    def f(x: torch.Tensor) -> torch.Tensor:  # x: (d,) -> (c,)
        diff = x.unsqueeze(0) - centres
        q = torch.einsum("nd,de,ne->n", diff, m, diff)
        pos = q > 0
        dist = torch.sqrt(torch.where(pos, q, torch.ones_like(q)))
        k = torch.where(pos, torch.exp(-dist / bandwidth), torch.ones_like(q))
        return k @ alpha

    return f


def agop_autograd(samples, centres, alpha, *, bandwidth, m, centering=False, diag=False) -> torch.Tensor:
    """AGOP from per-sample Jacobians computed by autograd (loop over samples)."""
    if alpha.dim() == 1:
        alpha = alpha.unsqueeze(1)
    f = predictor_autograd(centres, alpha, bandwidth=bandwidth, m=m)
    jacs = torch.stack([torch.autograd.functional.jacobian(f, x) for x in samples])  # (s, c, d)
    if centering:
        jacs = jacs - jacs.mean(0, keepdim=True)
    j2 = jacs.reshape(-1, jacs.shape[-1])
    agop = j2.T @ j2 / samples.shape[0]
    return torch.diagonal(agop).clone() if diag else agop


def _transform(x, r):
    if r is None:
        return x
    return x * r if r.dim() == 1 else x @ r


def family_kernel_numpy(x, z, *, name: str, bandwidth: float, exponent: float = 1.0, r=None) -> np.ndarray:
    """Any kernel of :mod:`kernels.family` from explicit differences of the transformed rows, float64 numpy."""
    r = None if r is None else np.asarray(r, dtype=np.float64)
    tx = np.asarray(x, dtype=np.float64)
    tz = np.asarray(z, dtype=np.float64)
    if r is not None:
        tx, tz = (tx * r, tz * r) if r.ndim == 1 else (tx @ r, tz @ r)
    diff = tx[:, None, :] - tz[None, :, :]
    if name == "product_laplace":
        return np.exp(-np.abs(diff).sum(-1) / bandwidth)
    dist = np.sqrt(np.sum(diff * diff, axis=-1))
    if name == "gaussian":
        return np.exp(-dist**2 / (2 * bandwidth**2))
    p = exponent if name == "laplace_exp" else 1.0
    return np.exp(-dist**p / bandwidth)


def family_agop_autograd(samples, centres, alpha, *, name, bandwidth, exponent=1.0, r=None, centering=False,
                         diag=False) -> torch.Tensor:
    """AGOP of ``f(x) = sum_i alpha_i k(x, x_i)`` for any kernel of the family, by autograd through explicit
    differences (a centre at zero distance contributes a constant, as in the closed form)."""
    if alpha.dim() == 1:
        alpha = alpha.unsqueeze(1)
    tc = _transform(centres, r)

    def f(x):
        diff = _transform(x.unsqueeze(0), r) - tc
        if name == "product_laplace":
            return torch.exp(-diff.abs().sum(1) / bandwidth) @ alpha  # d|t|/dt at 0 is 0 in torch: the term drops
        q = (diff * diff).sum(1)
        pos = q > 0
        qs = torch.where(pos, q, torch.ones_like(q))
        if name == "gaussian":
            k = torch.exp(-qs / (2 * bandwidth**2))
        else:
            p = exponent if name == "laplace_exp" else 1.0
            k = torch.exp(-qs ** (p / 2) / bandwidth)
        return torch.where(pos, k, torch.ones_like(q)) @ alpha

    jacs = torch.stack([torch.autograd.functional.jacobian(f, x) for x in samples])
    if centering:
        jacs = jacs - jacs.mean(0, keepdim=True)
    j2 = jacs.reshape(-1, jacs.shape[-1])
    agop = j2.T @ j2 / samples.shape[0]
    return torch.diagonal(agop).clone() if diag else agop
