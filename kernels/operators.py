"""The kernel-operator protocol and its implementations.

Solvers and preconditioners see the kernel matrix ``K = K_M(X, X)`` only through :class:`KernelOperator`:
``shape``, ``dtype``, ``device``, ``matmul(v, out=None)`` (``K @ v``) and ``block(rows, cols=None, out=None)`` (a dense
copy of ``K[rows, cols]``), and its rank bookkeeping with single-process defaults (``n_local``, ``row_offset``,
``allreduce``, ``broadcast``, ``gather``). Two single-process implementations:

* :class:`BlockedKernel`: never materialised; every product recomputes K in square tiles of the upper triangle under
  a byte budget (about n^2/2 kernel evaluations per product);
* :class:`StoredKernel`: K built once and stored; a product is one pass over it.

Both take :class:`Points`: rows already mapped through a factor of M, with their squared norms.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch

from .family import as_kernel
from .laplace import apply_sqrt_m, folded_cols, folded_rows, sq_norms
from .memory import TILE_ELEMENTS, default_memory_budget, square_tile

__all__ = ["KernelOperator", "Points", "BlockedKernel", "StoredKernel"]


class KernelOperator:
    """A symmetric n x n kernel matrix as a linear operator: the base class of every operator the solvers take.

    Subclasses set ``shape``, ``dtype``, ``device`` and implement :meth:`matmul` and :meth:`block`. The rank
    bookkeeping has single-process defaults: the operator holds all n rows (``n_local = n``, ``row_offset = 0``), and
    its reductions are identities. A row-sharded operator (:class:`kernels.distributed.ShardedKernel`) overrides them:
    vectors are then this rank's rows, and the solvers sum their inner products through :meth:`allreduce`.
    """

    shape: tuple[int, int]
    dtype: torch.dtype
    device: torch.device

    def matmul(self, v: torch.Tensor, out: torch.Tensor | None = None) -> torch.Tensor:
        """``K @ v`` for v of shape (n,) or (n, c)."""
        raise NotImplementedError

    def block(self, rows, cols=None, out: torch.Tensor | None = None) -> torch.Tensor:
        """A dense copy of ``K[rows, cols]`` (index tensors or slices; ``cols=None``: all columns)."""
        raise NotImplementedError

    def __matmul__(self, v):
        return self.matmul(v)

    # ---- rank bookkeeping (single-process defaults) -----------------------------------------------------------
    @property
    def n_local(self) -> int:
        """Rows of every vector this process holds."""
        return self.shape[0]

    @property
    def row_offset(self) -> int:
        """The global index of this process's first row."""
        return 0

    def allreduce(self, t: torch.Tensor) -> torch.Tensor:
        """The sum of ``t`` over the processes holding the operator's rows (here: ``t`` itself)."""
        return t

    def broadcast(self, t: torch.Tensor, src: int = 0) -> torch.Tensor:
        """``t`` as process ``src`` holds it (here: ``t`` itself)."""
        return t

    def gather(self, v: torch.Tensor) -> torch.Tensor:
        """All rows of an n-vector from this process's rows (here: ``v`` itself)."""
        return v


@dataclass(frozen=True)
class Points:
    """Rows ``z = x R`` (already mapped through a factor R of M) and their squared norms ``z_sq``."""

    z: torch.Tensor
    z_sq: torch.Tensor

    @classmethod
    def of(cls, x: torch.Tensor, sqrt_m: torch.Tensor | None = None) -> "Points":
        z = apply_sqrt_m(x, sqrt_m)
        return cls(z, sq_norms(z))

    @classmethod
    def shifted(cls, x: torch.Tensor, sqrt_m: torch.Tensor | None, shift: torch.Tensor) -> "Points":
        """Rows ``(x - shift) R`` formed in float64 and rounded once to ``x``'s dtype (for float32 models).

        Distances are unchanged by the common shift; forming the rows in float64 means that an input row maps to
        the same bits whether it arrives alone or in a batch (a float32 GEMM's summation order depends on the batch
        size), and a query equal to a centre lands exactly on it.
        """
        w = x.double() - shift.double()
        z = apply_sqrt_m(w, None if sqrt_m is None else sqrt_m.double()).to(x.dtype)
        return cls(z, sq_norms(z))

    @staticmethod
    def workspace_bytes(n: int, d: int, itemsize: int) -> int:
        """The transformed rows and their norms."""
        return n * (d + 1) * itemsize

    def __len__(self) -> int:
        return self.z.shape[0]


def _as_points(x, sqrt_m) -> Points:
    return x if isinstance(x, Points) else Points.of(x, sqrt_m)


def kernel_block(z, z_sq, kernel, rows, cols=None, out=None) -> torch.Tensor:
    """The dense block ``K[rows, cols]`` of the kernel on transformed rows ``z`` (norms ``z_sq``); ``rows`` / ``cols``
    are index tensors or slices, ``cols=None`` all rows."""
    zc = z if cols is None else z[cols]
    zc_sq = z_sq if cols is None else z_sq[cols]
    return kernel.matrix(z[rows], zc, x_sq=z_sq[rows], z_sq=zc_sq, out=out)


class BlockedKernel(KernelOperator):
    """``K = K_M(X, X)`` as a linear operator, never materialised.

    Products ``K @ V`` run over square tiles of the upper triangle; each off-diagonal tile is used twice
    (``K_ij V_j`` and ``K_ij^T V_i``), so one product costs about n^2/2 kernel evaluations. The tile size comes from
    the byte budget (:func:`kernels.memory.square_tile`). Diagonal entries are exactly ``k(x, x) = 1``.

    Parameters
    ----------
    x : (n, d) tensor of points, or :class:`Points` (already transformed).
    bandwidth : Laplace bandwidth L (or pass ``kernel``).
    sqrt_m : optional factor R of M (``M = R R^T``), applied once here to a tensor ``x``.
    memory_budget : bytes for the tiles and per-product temporaries.
    kernel : a :class:`~kernels.family.Kernel` of the family (default: the Laplace kernel with ``bandwidth``).
    """

    def __init__(self, x, *, bandwidth=None, sqrt_m=None, memory_budget=None, kernel=None):
        pts = _as_points(x, sqrt_m)
        self.z, self.z_sq = pts.z, pts.z_sq
        self.kernel = as_kernel(kernel, bandwidth)
        self.bandwidth = self.kernel.bandwidth
        self.n = self.z.shape[0]
        self.shape = (self.n, self.n)
        self.dtype, self.device = self.z.dtype, self.z.device
        budget = default_memory_budget(self.device) if memory_budget is None else int(memory_budget)
        self.tile = square_tile(self.n, itemsize=self.z.element_size(), budget=budget)
        self.n_products = 0

    def block(self, rows, cols=None, out=None) -> torch.Tensor:
        """Dense kernel block ``K[rows, cols]`` (index tensors or slices; ``cols=None`` means all points)."""
        return kernel_block(self.z, self.z_sq, self.kernel, rows, cols, out)

    def matmul(self, v: torch.Tensor, out: torch.Tensor | None = None) -> torch.Tensor:
        """``K @ v`` for v of shape (n,) or (n, c)."""
        squeeze = v.dim() == 1
        v2 = v.unsqueeze(1) if squeeze else v
        out = torch.zeros_like(v2) if out is None else out.zero_()
        b, n = self.tile, self.n
        buf = torch.empty(b * b, dtype=self.dtype, device=self.device)
        for i in range(0, n, b):
            zi, zi_sq = self.z[i : i + b], self.z_sq[i : i + b]
            for j in range(i, n, b):
                zj = self.z[j : j + b]
                t = buf[: zi.shape[0] * zj.shape[0]].view(zi.shape[0], zj.shape[0])
                self.kernel.matrix(zi, zj, x_sq=zi_sq, z_sq=self.z_sq[j : j + b], out=t)
                if i == j:
                    t.diagonal().fill_(1.0)
                    out[i : i + b].addmm_(t, v2[j : j + b])
                else:
                    out[i : i + b].addmm_(t, v2[j : j + b])
                    out[j : j + b].addmm_(t.T, v2[i : i + b])
        self.n_products += 1
        return out.squeeze(1) if squeeze else out

    __matmul__ = matmul


class StoredKernel(KernelOperator):
    """``K = K_M(X, X)`` built once and stored: the same interface as :class:`BlockedKernel` for when the n x n
    matrix fits the memory budget.

    A product ``K @ V`` is then one GEMM over stored values (memory-bound: about 0.03 s at n = 12800 on a 2-core
    CPU) instead of n^2/2 fresh square roots and exponentials (about 0.3 s), so an iterative solve of 50-100
    iterations costs less than a Cholesky factorisation (n^3/3 flops) once n is a few thousand.

    Parameters
    ----------
    x, bandwidth, sqrt_m, kernel : as :class:`BlockedKernel`.
    out : an optional (n, n) buffer to build K in (reused across RFM iterations).
    built : ``out`` already holds K of these points with this kernel (e.g. the previous solve of a ridge path: K
        does not depend on the ridge): it is used as it is, not rebuilt.
    """

    def __init__(self, x, *, bandwidth=None, sqrt_m=None, out=None, kernel=None, built=False):
        pts = _as_points(x, sqrt_m)
        self.z, self.z_sq = pts.z, pts.z_sq
        self.kernel = as_kernel(kernel, bandwidth)
        self.bandwidth = self.kernel.bandwidth
        n = self.n = self.z.shape[0]
        self.shape = (n, n)
        self.dtype, self.device = self.z.dtype, self.z.device
        self.n_products = 0
        if built and out is None:
            raise ValueError("built=True needs the matrix in out")
        if out is None:
            out = torch.empty((n, n), dtype=self.dtype, device=self.device)
        elif out.shape != (n, n) or out.dtype != self.dtype or out.device != self.device:
            raise ValueError(
                f"out must be a ({n}, {n}) {self.dtype} tensor on {self.device}, got {tuple(out.shape)} "
                f"{out.dtype} on {out.device}"
            )
        if not built:
            # row blocks keep the distance temporaries small; the squared norms ride in the GEMM as two more columns
            # (kernels.laplace.sq_distances' ``folded``): 20% less time per build than adding them in passes over
            # each block (n = 11 520, 2-core CPU: 0.22 s against 0.28 s at depth 4, 0.32 s against 0.40 s at 100)
            rows = max(1, TILE_ELEMENTS // max(n, 1))
            cols = folded_cols(self.z, self.z_sq) if self.kernel.radial else None
            row_buf = None if cols is None else torch.empty((min(rows, n), cols.shape[1]), dtype=self.dtype,
                                                            device=self.device)
            for i in range(0, n, rows):
                zi, zi_sq = self.z[i : i + rows], self.z_sq[i : i + rows]
                folded = None if cols is None else (folded_rows(zi, zi_sq, out=row_buf), cols)
                self.kernel.matrix(zi, self.z, x_sq=zi_sq, z_sq=self.z_sq, out=out[i : i + rows], folded=folded)
            del cols, row_buf
            out.diagonal().fill_(1.0)
        self.K = out

    @staticmethod
    def workspace_bytes(n: int, c: int, *, itemsize: int, d: int = 0) -> int:
        """The n x n matrix and the larger of one product's padded right-hand side and result (see
        :func:`_stored_matmul`) and, while it is built from d-column rows, their augmented copy (d + 2 columns)."""
        cp = -(-c // 16) * 16
        return n * n * itemsize + max(2 * n * cp, n * (d + 2) if d else 0) * itemsize

    def block(self, rows, cols=None, out=None) -> torch.Tensor:
        """A copy of ``K[rows, cols]``: only the requested block is copied (never a whole row band of K)."""
        if cols is None:
            kb = self.K[rows]
        elif isinstance(rows, slice):
            kb = self.K[rows][:, cols]
        elif isinstance(cols, slice):
            kb = self.K[:, cols][rows]
        else:
            kb = self.K[rows.unsqueeze(1), cols.unsqueeze(0)]
        if out is None:
            shares = kb.untyped_storage().data_ptr() == self.K.untyped_storage().data_ptr()
            return kb.clone() if shares else kb  # never hand out a view that could write into K
        return out.copy_(kb)

    def matmul(self, v: torch.Tensor, out: torch.Tensor | None = None) -> torch.Tensor:
        """``K @ v`` for v of shape (n,) or (n, c)."""
        self.n_products += 1
        squeeze = v.dim() == 1
        v2 = v.unsqueeze(1) if squeeze else v
        res = _stored_matmul(self.K, v2)
        if out is not None:
            (out.unsqueeze(1) if out.dim() == 1 else out).copy_(res)
            return out
        return res.squeeze(1) if squeeze else res

    __matmul__ = matmul


#: up to this many right-hand columns a CPU product with the stored matrix is one BLAS ``symv`` per column (one thread)
SYMV_COLUMNS = 4
#: from 2 up to this many, on several threads, it is the transposed product ``(v^T K)^T``
TRANSPOSED_COLUMNS = 17
_SYMV = {torch.float32: "ssymv", torch.float64: "dsymv"}


def _symv_columns(K: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
    """``K @ v`` from K's upper triangle only (BLAS ``symv``, one column of v at a time): half the memory traffic of
    a general product, which is what bounds it. K must be symmetric up to round-off -- a stored kernel matrix is (its
    two triangles come from different GEMM positions and differ in the last bit; this reads one of them, so the
    operator CG sees is exactly symmetric)."""
    from scipy.linalg import blas

    symv = getattr(blas, _SYMV[K.dtype])
    a = K.numpy().T  # K's buffer as a Fortran-ordered array: no copy; its 'lower' triangle is K's upper one
    vn = v.numpy()
    out = torch.empty(v.shape, dtype=v.dtype)
    for k in range(v.shape[1]):
        out[:, k] = torch.from_numpy(symv(1.0, a, vn[:, k], lower=1))
    return out


def _stored_matmul(K: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
    """``K @ v`` for a large stored, symmetric K (a kernel matrix: symmetric up to round-off) and a narrow (n, c) v, in
    the layout CPU BLAS streams K fastest with.

    When torch runs on one thread and c <= :data:`SYMV_COLUMNS` (float32 / float64): :func:`_symv_columns`, one
    BLAS ``symv`` per column over K's upper triangle -- measured (n = 11 520, float32, 2-core CPU, one thread): 19.0 ms
    per column against 33.2 ms for c = 1 and 79-80 ms for c = 2-3 with the products below (on two threads 9.9 ms
    against 16.9 ms, but scipy's OpenBLAS then keeps a worker thread spinning after each call, and torch's own
    2-thread work between the products -- CG's preconditioner, the kernel tiles -- ran several times slower: a whole
    fit took 29.4 s instead of 13.2 s; so on several threads the general product stays).

    Measured with MKL on a 2-core CPU (n = 16000, float32): a plain ``K @ v`` took 0.18-0.37 s for 2 <= c <= 16
    against 0.05 s for c = 1 (it should be memory-bound: one pass over K), a column-major ``v`` 0.05-0.06 s for
    c <= 4, and 512-row blocks of K with c padded to a multiple of 16 0.11 s for 5 <= c <= 16. On a GPU the plain
    product is used.
    """
    n, c = v.shape
    if K.device.type != "cpu":
        return K @ v
    if (c <= SYMV_COLUMNS and torch.get_num_threads() == 1 and K.dtype in _SYMV and K.is_contiguous()
            and v.dtype == K.dtype and not (K.requires_grad or v.requires_grad)):
        return _symv_columns(K, v)
    if 2 <= c <= TRANSPOSED_COLUMNS and torch.get_num_threads() > 1:
        # K is symmetric: K v = (v^T K)^T, a GEMM with c rows that streams K once (2 threads, n = 11 520: 27-35 ms
        # for c = 2-16 against 39-41 ms below; on one thread it is slower: 51-100 ms against 22-66 ms)
        return (v.T.contiguous() @ K).T.contiguous()
    if c <= 4:
        return K @ v.T.contiguous().T
    cp = -(-c // 16) * 16
    vp = torch.zeros((n, cp), dtype=v.dtype, device=v.device)
    vp[:, :c] = v
    res = torch.empty((K.shape[0], cp), dtype=v.dtype, device=v.device)
    for i in range(0, K.shape[0], 512):
        torch.mm(K[i : i + 512], vp, out=res[i : i + 512])
    return res[:, :c]
