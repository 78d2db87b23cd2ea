"""Memory: what is available, the working budget, and THE planner.

Every component that allocates states its own ``workspace_bytes(...)`` beside the code that allocates (the stored
kernel matrix, the Nystrom preconditioner, CG's vectors, the Cholesky factor, the AGOP's accumulators, the PSD matrix
functions' eigendecomposition); a :class:`MemoryPlan` adds those up under a byte budget and says, item by item, what
does not fit. Tiles of blocked products are sized here too, from the bytes left after what a phase holds:

* :func:`plan_blocks`: a (row block, column block) tile for an ``n_rows x n_cols`` streamed computation (rectangular
  kernel products, the AGOP's sample x centre tiles);
* :func:`square_tile`: the square tiles of the symmetric blocked kernel operator.
"""
from __future__ import annotations

import math
import os
from dataclasses import dataclass, field

import torch

__all__ = [
    "TILE_ELEMENTS",
    "MIN_WORK_BYTES",
    "BlockPlan",
    "MemoryPlan",
    "available_memory",
    "default_memory_budget",
    "format_bytes",
    "plan_blocks",
    "square_tile",
]

#: preferred number of elements in one kernel tile (64 MiB in float32): big enough for efficient GEMMs, small enough
#: that tile buffers are reused instead of re-faulted, measured faster than larger tiles on CPU
TILE_ELEMENTS = 2**24

#: the smallest working area a blocked product can run in: three 256 x 256 tiles of 8-byte values
MIN_WORK_BYTES = 3 * 256 * 256 * 8


def available_memory(device: torch.device | str = "cpu") -> int:
    """Bytes of memory currently available on ``device`` (free GPU memory, or MemAvailable on the host)."""
    device = torch.device(device)
    if device.type == "cuda":
        free, _total = torch.cuda.mem_get_info(device)
        return int(free)
    try:
        with open("/proc/meminfo") as fh:
            for line in fh:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    try:
        return int(os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE"))
    except (ValueError, OSError, AttributeError):  # pragma: no cover - exotic platforms
        return 4 * 1024**3


def default_memory_budget(device: torch.device | str = "cpu", fraction: float = 0.6) -> int:
    """Default working budget: a fraction of the memory available on ``device`` right now."""
    return int(fraction * available_memory(device))


def format_bytes(n: float) -> str:
    """``1536`` -> ``'1.5 KiB'``."""
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if abs(n) < 1024 or unit == "TiB":
            return f"{n:.1f} {unit}" if unit != "B" else f"{int(n)} B"
        n /= 1024
    return f"{n:.1f} TiB"  # pragma: no cover


@dataclass
class MemoryPlan:
    """A ledger of what a computation holds at its peak, item by item, against a byte budget.

    ``add(name, nbytes)`` records an item (the components' ``workspace_bytes`` functions give the numbers);
    :attr:`total` is their sum, :meth:`left` what remains for streamed tiles, and :meth:`check` raises a
    ``ValueError`` naming the budget, the shortfall and the largest items when the total does not fit.
    """

    budget: int
    items: dict[str, int] = field(default_factory=dict)

    def add(self, name: str, nbytes: int) -> "MemoryPlan":
        self.items[name] = self.items.get(name, 0) + int(nbytes)
        return self

    @property
    def total(self) -> int:
        return sum(self.items.values())

    def fits(self, extra: int = 0) -> bool:
        return self.total + extra <= self.budget

    def left(self, floor: int = MIN_WORK_BYTES) -> int:
        """Bytes left for streamed work (tiles), at least ``floor``."""
        return max(self.budget - self.total, floor)

    def describe(self, top: int = 4) -> str:
        big = sorted(self.items.items(), key=lambda kv: -kv[1])[:top]
        return ", ".join(f"{name} {format_bytes(b)}" for name, b in big)

    def check(self, owner: str, *, extra: int = MIN_WORK_BYTES, hint: str = "") -> "MemoryPlan":
        """Raise a ``ValueError`` when the items (plus ``extra`` bytes of working tiles) exceed the budget."""
        if not self.fits(extra):
            raise ValueError(
                f"{owner} needs at least {format_bytes(self.total + extra)} but memory_budget is "
                f"{format_bytes(self.budget)} (largest items: {self.describe()}).{' ' + hint if hint else ''} "
                "Pass a larger memory_budget."
            )
        return self


@dataclass(frozen=True)
class BlockPlan:
    """Tile sizes for a blocked ``n_rows x n_cols`` computation and the bytes the plan accounts for."""

    row_block: int
    col_block: int
    bytes: int


def plan_blocks(
    n_rows: int,
    n_cols: int,
    *,
    itemsize: int,
    budget: int,
    tile_copies: int = 1,
    per_row_bytes: int = 0,
    per_col_bytes: int = 0,
    fixed_bytes: int = 0,
    max_row_block: int | None = None,
) -> BlockPlan:
    """Largest tile with ``fixed + rb*cb*itemsize*tile_copies + rb*per_row + cb*per_col <= budget``.

    Whole columns are preferred (one pass over the columns per row block); columns are split only when even a small
    row block of full width does not fit. Raises ``ValueError`` naming the shortfall when nothing fits.
    """
    if n_rows <= 0 or n_cols <= 0:
        return BlockPlan(max(n_rows, 1), max(n_cols, 1), fixed_bytes)
    avail = budget - fixed_bytes
    tile_item = itemsize * tile_copies
    cap = n_rows if max_row_block is None else max(1, min(n_rows, max_row_block))
    # full columns
    per_row_full = n_cols * tile_item + per_row_bytes
    rb = (avail - n_cols * per_col_bytes) // per_row_full if per_row_full > 0 else cap
    min_rows = min(cap, 64)
    if rb >= min_rows:
        rb = int(min(rb, cap))
        return BlockPlan(rb, n_cols, fixed_bytes + rb * per_row_full + n_cols * per_col_bytes)
    # split columns: square-ish tiles of min_rows rows
    rb = min_rows
    cb = (avail - rb * per_row_bytes) // (rb * tile_item + per_col_bytes)
    if cb < 1:
        need = fixed_bytes + rb * (tile_item + per_row_bytes) + per_col_bytes
        raise ValueError(
            f"memory_budget of {budget} bytes is too small for this computation: it needs at least "
            f"{need} bytes ({fixed_bytes} for the inputs alone)."
        )
    cb = int(min(cb, n_cols))
    return BlockPlan(rb, cb, fixed_bytes + rb * cb * tile_item + rb * per_row_bytes + cb * per_col_bytes)


def square_tile(n: int, *, itemsize: int, budget: int) -> int:
    """Side of the square tiles of a symmetric blocked product: ``b*b*itemsize`` within a third of the budget (the
    tile, its distance temporaries and the output rows) and within :data:`TILE_ELEMENTS`."""
    b = int(math.isqrt(max(1, min(budget // (3 * itemsize), TILE_ELEMENTS))))
    return max(1, min(n, b))
