"""Nystrom eigen-preconditioner shared by the iterative solvers.

From ``s`` random centres S:

* the top eigenpairs of ``K_SS / s`` (float64): ``lambda_i``, orthonormal ``e_i`` (EigenPro 2 uses these directly);
* for preconditioned CG, the rank-q Nystrom approximation ``K_hat = K_nS E_q Lambda_q^{-1} E_q^T K_Sn / s``
  (with ``Lambda`` the eigenvalues of K_SS = s * lambda) in orthonormal eigen-form ``K_hat = U diag(mu) U^T``
  (``U`` is n x q), and the preconditioner of Frangella, Tropp & Udell (2023)::

      P^{-1} = (mu_q + reg) U (diag(mu) + reg)^{-1} U^T + (I - U U^T)

  It is symmetric positive definite for any ``reg >= 0`` with ``mu_q > 0``.
"""
from __future__ import annotations

import torch

from ..blocked import KernelOperator

__all__ = ["NystromEigensystem", "default_n_centres"]


def default_n_centres(n: int, device: torch.device | None = None) -> int:
    """Centres for the Nystrom eigensystem: 1000 up to 25k points, 2000 up to 200k, 4000 beyond (CPU eigh cost)."""
    if device is not None and torch.device(device).type == "cuda":
        return min(n, 4000 if n <= 200_000 else 8000)
    return min(n, 1000 if n <= 25_000 else 2000 if n <= 200_000 else 4000)


class NystromEigensystem:
    """Top eigen-system of the kernel on random centres, and the Nystrom preconditioner built on it.

    Parameters
    ----------
    op : KernelOperator for the n training points.
    n_centres : s, the number of random centres (default :func:`default_n_centres`).
    rank : q, eigenpairs kept for the CG preconditioner (default ``min(s - 1, 500)``).
    generator : torch.Generator for the choice of centres.
    build_extension : also build the n x q orthonormal basis U for preconditioned CG (EigenPro does not need it).

    Attributes
    ----------
    centres : (s,) long tensor of indices into the training points.
    eigvals : (k,) float64, eigenvalues of ``K_SS / s`` in descending order (``k <= s``, positive ones only).
    eigvecs : (s, k) float64, the orthonormal eigenvectors.
    U, mu : (n, q) basis in the working dtype and (q,) float64 eigenvalues of the Nystrom approximation of K.
    """

    def __init__(self, op: KernelOperator, *, n_centres=None, rank=None, generator=None, build_extension=True):
        n = op.n
        s = default_n_centres(n, op.device) if n_centres is None else int(min(n_centres, n))
        perm = torch.randperm(n, generator=generator)
        self.centres = perm[:s].sort().values.to(op.device)
        self.op = op
        k_ss = op.block(self.centres, self.centres).double()
        k_ss.diagonal().fill_(1.0)
        w, v = torch.linalg.eigh(k_ss / s)
        w, v = w.flip(0), v.flip(1)
        keep = w > max(float(w[0]), 1e-300) * 1e-10
        self.eigvals, self.eigvecs = w[keep], v[:, keep]
        self.n_centres = s
        self.U = self.mu = None
        if build_extension:
            q = min(int(self.eigvals.numel()), 500 if rank is None else int(rank))
            self._build_extension(q)

    def _build_extension(self, q: int):
        op, s = self.op, self.n_centres
        lam = self.eigvals[:q] * s  # eigenvalues of K_SS
        # C = K_nS E_q Lambda_q^{-1/2}: K_hat = C C^T; orthonormalise through the q x q Gram matrix C^T C
        proj = (self.eigvecs[:, :q] / lam.sqrt()).to(op.dtype)
        C = torch.empty((op.n, q), dtype=op.dtype, device=op.device)
        rows = max(1, min(op.n, op.memory_budget // (4 * s * op.itemsize)))
        tile = torch.empty(rows * s, dtype=op.dtype, device=op.device)
        for i in range(0, op.n, rows):
            j = min(i + rows, op.n)
            kb = op.block(slice(i, j), self.centres, out=tile[: (j - i) * s].view(j - i, s))
            torch.mm(kb, proj, out=C[i:j])
        del tile
        gram = (C.T @ C).double() if op.dtype != torch.float64 else C.T @ C
        sig2, V = torch.linalg.eigh(gram)
        sig2, V = sig2.flip(0), V.flip(1)
        ok = sig2 > float(sig2[0]) * 1e-8
        sig2, V = sig2[ok], V[:, ok]
        W = (V / sig2.sqrt()).to(op.dtype)
        # U = C W, in row chunks (W may have fewer columns than C: keep the leading ones)
        r = W.shape[1]
        chunk = max(1, min(op.n, (4 * 2**20) // max(1, q)))
        for i in range(0, op.n, chunk):
            C[i : i + chunk, :r] = C[i : i + chunk] @ W
        self.U = C[:, :r] if r == q else C[:, :r].contiguous()
        self.mu = sig2  # eigenvalues of K_hat

    def apply_cg_preconditioner(self, r: torch.Tensor, reg: float) -> torch.Tensor:
        """``P^{-1} r`` for r of shape (n, c), in r's precision (U is promoted in row chunks when r is wider)."""
        mu = self.mu
        scale = ((mu[-1] + reg) / (mu + reg) - 1.0).to(r.dtype)
        if self.U.dtype == r.dtype:
            return r + self.U @ ((self.U.T @ r) * scale.unsqueeze(1))
        chunk = max(1, (4 * 2**20) // max(1, self.U.shape[1]))  # promoted rows: at most 32 MB at a time
        coef = torch.zeros((self.U.shape[1], r.shape[1]), dtype=r.dtype, device=r.device)
        for i in range(0, r.shape[0], chunk):
            coef += self.U[i : i + chunk].to(r.dtype).T @ r[i : i + chunk]
        coef *= scale.unsqueeze(1)
        out = r.clone()
        for i in range(0, r.shape[0], chunk):
            out[i : i + chunk] += self.U[i : i + chunk].to(r.dtype) @ coef
        return out

    def top_eigenvalue_of_k(self) -> float:
        """Estimate of the top eigenvalue of K (n * lambda_1 of K_SS / s)."""
        return float(self.eigvals[0]) * self.op.n

    def memory_bytes(self) -> int:
        q = 0 if self.U is None else self.U.shape[1]
        return self.op.n * q * self.op.itemsize + self.n_centres**2 * 8 * 2
