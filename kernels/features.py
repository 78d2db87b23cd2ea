"""Random feature maps for Deep RFM layers, drawn from an explicit ``torch.Generator``.

* cosine: ``Phi(z) = sqrt(2/D) cos(z W^T + u)``, ``W`` (D x d) iid Cauchy(0, sigma), ``u ~ U[0, 2 pi)^D``
  (random Fourier features of the L1 Laplace kernel ``exp(-sigma ||x - z||_1)``);
* relu: ``Phi(z) = ReLU(z W^T)``, ``W`` (k x d) iid U(-1/sqrt(d), 1/sqrt(d)), no bias.
"""
from __future__ import annotations

import math

import torch

__all__ = ["draw_cosine", "draw_relu", "cosine_features", "relu_features", "apply_feature_map"]


def draw_cosine(d_in: int, width: int, *, sigma: float, generator: torch.Generator, dtype=torch.float64):
    """Weights of a cosine random-feature map: ``W`` (width, d_in) Cauchy(0, sigma), phases ``u`` (width,)."""
    W = torch.empty(width, d_in, dtype=torch.float64).cauchy_(0.0, sigma, generator=generator)
    u = torch.empty(width, dtype=torch.float64).uniform_(0.0, 2.0 * math.pi, generator=generator)
    return W.to(dtype), u.to(dtype)


def draw_relu(d_in: int, width: int, *, generator: torch.Generator, dtype=torch.float64):
    """Weights of a bias-free ReLU random-feature map: ``W`` (width, d_in) iid U(-1/sqrt(d_in), 1/sqrt(d_in))."""
    bound = 1.0 / math.sqrt(d_in)
    W = torch.empty(width, d_in, dtype=torch.float64).uniform_(-bound, bound, generator=generator)
    return W.to(dtype), None


def cosine_features(z: torch.Tensor, W: torch.Tensor, u: torch.Tensor) -> torch.Tensor:
    """``sqrt(2/D) cos(z W^T + u)`` for z (n, d), W (D, d), u (D,) -> (n, D)."""
    out = torch.addmm(u.unsqueeze(0), z, W.T)
    return out.cos_().mul_(math.sqrt(2.0 / W.shape[0]))


def relu_features(z: torch.Tensor, W: torch.Tensor) -> torch.Tensor:
    """``ReLU(z W^T)`` for z (n, d), W (k, d) -> (n, k)."""
    return (z @ W.T).clamp_min_(0.0)


def apply_feature_map(kind: str, z: torch.Tensor, W: torch.Tensor | None, u: torch.Tensor | None) -> torch.Tensor:
    """Apply a feature map by name: 'cosine', 'relu' or 'none' (identity)."""
    if kind == "none":
        return z
    if kind == "cosine":
        return cosine_features(z, W.to(z.dtype), u.to(z.dtype))
    if kind == "relu":
        return relu_features(z, W.to(z.dtype))
    raise ValueError(f"unknown feature map {kind!r}; expected 'cosine', 'relu' or 'none'")
