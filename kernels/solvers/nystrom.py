"""Nystrom eigen-system and the Nystrom preconditioner shared by the iterative solvers.

From ``s`` random centres S:

* :class:`NystromEigensystem`: the top eigenpairs of ``K_SS / s`` (float64): ``lambda_i``, orthonormal ``e_i``
  (EigenPro 2 uses these directly);
* :class:`NystromPreconditioner`: for preconditioned CG, the rank-q Nystrom approximation
  ``K_hat = K_nS E_q Lambda_q^{-1} E_q^T K_Sn / s`` (with ``Lambda`` the eigenvalues of K_SS = s * lambda) in
  orthonormal eigen-form ``K_hat = U diag(mu) U^T`` (``U`` is n x q, float64), and the preconditioner of Frangella,
  Tropp & Udell (2023), applied as a plain callable ``P(r) = P^{-1} r`` (like scipy's ``M``)::

      P^{-1} = (mu_q + reg) U (diag(mu) + reg)^{-1} U^T + (I - U U^T)

  It is symmetric positive definite for any ``reg >= 0`` with ``mu_q > 0`` -- when U is orthonormal. A U computed
  in float32 (as it is, then held in float64) is orthonormal only to ~1e-6 at n = 50 000, while the smallest
  eigenvalue of ``P^{-1}``, ``(mu_q + reg) / (mu_1 + reg)``, can be smaller still (4e-7 on the last features of a
  ReLU Deep RFM, where preconditioned CG then diverged to NaN). So U's actual Gram matrix ``G = U^T U`` is measured in float64 and the preconditioner applied with the
  orthonormal ``Q = U G^{-1/2}``: ``P^{-1} = I + U G^{-1/2} S G^{-1/2} U^T`` with ``S = diag((mu_q + reg) / (mu +
  reg) - 1)``, whose eigenvalues lie in ``[(mu_q + reg) / (mu_1 + reg), 1]`` to float64 round-off.
"""
from __future__ import annotations

import torch

from ..linalg import eigh_workspace_bytes, psd_power
from ..memory import default_memory_budget
from ..operators import KernelOperator

__all__ = ["NystromEigensystem", "NystromPreconditioner", "default_n_centres", "DEFAULT_RANK"]

#: eigenpairs kept for the CG preconditioner when the memory budget allows it
DEFAULT_RANK = 500

#: elements of the row chunk of ``C W`` computed at a time while the basis is built
_BUILD_ELEMENTS = 4 * 2**20


def default_n_centres(n: int, device: torch.device | str | None = None) -> int:
    """Centres for the Nystrom eigensystem: 1000 up to 25k points, 2000 up to 200k, 4000 beyond (CPU eigh cost);
    on CUDA 4000 up to 200k points and 8000 beyond."""
    if device is not None and torch.device(device).type == "cuda":
        return min(n, 4000 if n <= 200_000 else 8000)
    return min(n, 1000 if n <= 25_000 else 2000 if n <= 200_000 else 4000)


class NystromEigensystem:
    """Top eigen-system of the kernel on ``s`` random centres.

    Parameters
    ----------
    op : KernelOperator for the n training points.
    n_centres : s (default :func:`default_n_centres` for n and the operator's device).
    generator : torch.Generator for the choice of centres.

    Attributes
    ----------
    centres : (s,) long tensor of indices into the training points.
    eigvals : (k,) float64, eigenvalues of ``K_SS / s`` in descending order (``k <= s``, positive ones only).
    eigvecs : (s, k) float64, the orthonormal eigenvectors.
    n_centres : s.
    """

    def __init__(self, op: KernelOperator, *, n_centres=None, generator=None):
        n = op.shape[0]
        s = default_n_centres(n, op.device) if n_centres is None else int(min(n_centres, n))
        perm = torch.randperm(n, generator=generator)
        # (row-sharded: rank 0's draw, identical on every rank; single process: the draw itself)
        self.centres = op.broadcast(perm[:s].sort().values.to(op.device))
        k_ss = op.block(self.centres, self.centres).double()
        k_ss.diagonal().fill_(1.0)
        w, v = torch.linalg.eigh(k_ss / s)
        w, v = w.flip(0), v.flip(1)
        keep = w > max(float(w[0]), 1e-300) * 1e-10
        self.eigvals, self.eigvecs = w[keep], v[:, keep]
        self.n_centres = s

    @staticmethod
    def workspace_bytes(s: int) -> int:
        """The s x s float64 kernel block, its scaled copy, the eigenvectors and LAPACK's workspace."""
        return 6 * s * s * 8


class NystromPreconditioner:
    """The Nystrom preconditioner for ``K + reg I`` as a callable: ``P(r) = P^{-1} r`` for r of shape (n, c).

    Parameters
    ----------
    op : KernelOperator for K.
    reg : the ridge of the system it preconditions.
    eigensystem : a :class:`NystromEigensystem` of ``op`` (built here from ``n_centres`` / ``generator`` when None).
    rank : q, eigenpairs kept (default ``min(s - 1, DEFAULT_RANK)``).
    memory_budget : bytes for the row blocks of ``K_nS`` while the basis is built.

    Attributes
    ----------
    U : (n, q') float64 basis; mu : (q',) float64 eigenvalues of the Nystrom approximation of K.
    """

    def __init__(self, op: KernelOperator, *, reg: float, eigensystem: NystromEigensystem | None = None,
                 n_centres=None, rank=None, generator=None, memory_budget=None):
        eig = eigensystem if eigensystem is not None else NystromEigensystem(op, n_centres=n_centres,
                                                                             generator=generator)
        self.eigensystem = eig
        self.reg = float(reg)
        q = min(int(eig.eigvals.numel()), DEFAULT_RANK if rank is None else int(rank))
        # a row-sharded operator (kernels.distributed): this rank's rows of the basis; Gram matrix and projections
        # summed over the ranks, the small eigen-system taken from rank 0
        n, s = op.n_local, eig.n_centres
        offset, self._reduce = op.row_offset, op.allreduce
        itemsize = torch.empty((), dtype=op.dtype).element_size()
        budget = default_memory_budget(op.device) if memory_budget is None else int(memory_budget)
        lam = eig.eigvals[:q] * s  # eigenvalues of K_SS
        # C = K_nS E_q Lambda_q^{-1/2}: K_hat = C C^T; orthonormalise through the q x q Gram matrix C^T C. C and the
        # basis U = C W are computed in the working precision (float32 GEMMs: half the time of float64 ones), U is
        # then held in float64: it is applied to CG's float64 vectors at every step, and a float64 U is read once
        # per application where a narrower one was promoted chunk by chunk (11.8 -> 5.5 ms per application at
        # n = 10 240, q = 500, one thread)
        proj = (eig.eigvecs[:, :q] / lam.sqrt()).to(op.dtype)
        C = torch.empty((n, q), dtype=op.dtype, device=op.device)
        rows = max(1, min(n, budget // (4 * s * itemsize)))
        tile = torch.empty(rows * s, dtype=op.dtype, device=op.device)
        for i in range(0, n, rows):
            j = min(i + rows, n)
            kb = op.block(slice(offset + i, offset + j), eig.centres, out=tile[: (j - i) * s].view(j - i, s))
            torch.mm(kb, proj, out=C[i:j])
        del tile
        gram = (C.T @ C).double() if op.dtype != torch.float64 else C.T @ C
        gram = self._reduce(gram)
        sig2, V = torch.linalg.eigh(gram)
        sig2, V = op.broadcast(sig2), op.broadcast(V)
        sig2, V = sig2.flip(0), V.flip(1)
        ok = sig2 > float(sig2[0]) * 1e-8
        sig2, V = sig2[ok], V[:, ok]
        W = (V / sig2.sqrt()).to(op.dtype)
        # U = C W in row chunks (W may have fewer columns than C: keep the leading ones), written over C in float64
        # or into a float64 buffer
        r = W.shape[1]
        U = C if op.dtype == torch.float64 else torch.empty((n, r), dtype=torch.float64, device=op.device)
        chunk = max(1, min(n, _BUILD_ELEMENTS // max(1, q)))
        for i in range(0, n, chunk):
            U[i : i + chunk, :r] = C[i : i + chunk] @ W
        del C
        self.U = U if U.shape[1] == r else U[:, :r].contiguous()
        self.mu = sig2  # eigenvalues of K_hat
        # the q x q core G^{-1/2} S G^{-1/2} makes P^{-1} SPD whatever U's rounding (module text)
        inv_sqrt = op.broadcast(psd_power(self._reduce(self.U.T @ self.U), -0.5))
        scale = (sig2[-1] + self.reg) / (sig2 + self.reg) - 1.0
        self.core = inv_sqrt @ (scale.unsqueeze(1) * inv_sqrt)

    @staticmethod
    def workspace_bytes(n: int, *, n_centres: int, rank: int, itemsize: int) -> int:
        """The n x q basis (float64 whatever the working precision) and, below float64, the working-precision ``C``
        it is computed from (``itemsize`` bytes per value), the eigen-system it is built from, the chunk of ``C W``
        and the q x q float64 core it keeps. (The row blocks of ``K_nS`` come out of the ``memory_budget`` passed in;
        the core's temporaries -- G^{-1/2} by :func:`~kernels.linalg.psd_power` -- come after the eigensystem's s x s
        workspace is released: only what exceeds that is counted.)"""
        build = min(n * rank, _BUILD_ELEMENTS) * itemsize
        core = rank * rank * 8 + max(0, eigh_workspace_bytes(rank) - NystromEigensystem.workspace_bytes(n_centres))
        source = n * rank * itemsize if itemsize < 8 else 0
        return n * rank * 8 + source + NystromEigensystem.workspace_bytes(n_centres) + build + core

    def __call__(self, r: torch.Tensor) -> torch.Tensor:
        """``P^{-1} r`` for r of shape (n, c), in float64 (the basis' precision), returned in r's precision."""
        r64 = r.to(torch.float64)
        out = r64 + self.U @ (self.core @ self._reduce(self.U.T @ r64))
        return out if out.dtype == r.dtype else out.to(r.dtype)
