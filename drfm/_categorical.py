"""Categorical input columns for the RFM estimators: one-hot blocks that count as one feature in M.

A categorical column with k categories becomes k one-hot columns. Learned freely, M would give each category's column
its own weight (rare categories get almost none) and couple categories of one column to each other at will. Instead the
AGOP is averaged over the permutations of each block's columns before the feature-matrix update
(:func:`tie_groups`): within a block every diagonal entry becomes the block's mean diagonal and every off-diagonal
entry the block's mean off-diagonal; every entry between a block and another column (or block) the mean of that cross
block. An average of congruences ``P A P^T`` of a PSD matrix is PSD, and powers of the result keep the same structure,
so in the learned metric

    ||e_a - e_b||_M^2 = 2 (m_diag - m_off)   for any two different categories a, b of the block,

one learned number per categorical column -- "same or different category", weighted against the numeric features
(cross terms with the other columns cancel on one-hot differences). With ``diag=True`` the block's diagonal entries
share their mean.

Columns are categorical by dtype (``categorical_features='from_dtype'``: a pandas ``category``, ``object``, ``string``
or ``bool`` column) or by an explicit list of column names / indices or a boolean mask. Categories are those seen in
``fit`` (sorted); a category first seen at prediction gets an all-zero block (it is equally far from every known one).
Missing values (NaN / None) are an error naming the column.
"""
from __future__ import annotations

import numpy as np
import torch

__all__ = ["CategoricalEncoding", "fit_encoding", "tie_groups"]


def _is_frame(X) -> bool:
    return hasattr(X, "columns") and hasattr(X, "iloc") and hasattr(X, "dtypes")


def _categorical_dtype(dtype) -> bool:
    import pandas as pd

    return (isinstance(dtype, pd.CategoricalDtype) or pd.api.types.is_object_dtype(dtype)
            or pd.api.types.is_string_dtype(dtype) or pd.api.types.is_bool_dtype(dtype))


def _selected(X, spec, owner) -> list[int]:
    """Positions of the categorical columns asked for by ``categorical_features``."""
    n_cols = X.shape[1] if hasattr(X, "shape") and len(getattr(X, "shape", ())) == 2 else None
    if spec is None:
        return []
    if isinstance(spec, str):  # 'from_dtype' (validated by the parameter constraints)
        return [i for i, dt in enumerate(X.dtypes) if _categorical_dtype(dt)] if _is_frame(X) else []
    items = list(np.asarray(spec).ravel()) if not isinstance(spec, (list, tuple)) else list(spec)
    if items and all(isinstance(v, (bool, np.bool_)) for v in items):
        if n_cols is not None and len(items) != n_cols:
            raise ValueError(f"The 'categorical_features' mask of {owner} has {len(items)} entries for {n_cols} "
                             "columns.")
        return [i for i, v in enumerate(items) if v]
    out = []
    for v in items:
        if isinstance(v, str):
            if not _is_frame(X) or v not in list(X.columns):
                raise ValueError(f"The 'categorical_features' parameter of {owner} names column {v!r}, which the "
                                 "input does not have (names need a pandas DataFrame).")
            out.append(list(X.columns).index(v))
        elif isinstance(v, (int, np.integer)) and not isinstance(v, (bool, np.bool_)):
            if n_cols is not None and not -n_cols <= int(v) < n_cols:
                raise ValueError(f"The 'categorical_features' parameter of {owner} has column index {int(v)} for "
                                 f"{n_cols} columns.")
            out.append(int(v) % n_cols if n_cols else int(v))
        else:
            raise TypeError(f"The 'categorical_features' parameter of {owner} must list column names or indices, "
                            f"or be a boolean mask; got an entry {v!r}.")
    return sorted(set(out))


def _column(X, j):
    return np.asarray(X.iloc[:, j] if _is_frame(X) else np.asarray(X, dtype=object)[:, j], dtype=object)


def _missing(values) -> np.ndarray:
    return np.array([v is None or (isinstance(v, float) and v != v) for v in values], dtype=bool)


class CategoricalEncoding:
    """The fitted encoding: which input columns are categorical and their categories (plain lists, saved with the
    model). ``state`` is ``[[column, [categories...]], ...]``; ``n_columns`` the input width."""

    def __init__(self, state: list, n_columns: int):
        self.state = state
        self.n_columns = n_columns
        self.cats = {int(j): list(c) for j, c in state}

    @property
    def groups(self) -> list[np.ndarray]:
        """Per input column, the encoded columns it became (one for a numeric column, k for k categories)."""
        out, at = [], 0
        for j in range(self.n_columns):
            width = len(self.cats[j]) if j in self.cats else 1
            out.append(np.arange(at, at + width))
            at += width
        return out

    @property
    def tied(self) -> list[np.ndarray]:
        """The one-hot blocks whose AGOP entries are tied (categorical columns with at least two categories)."""
        return [g for j, g in enumerate(self.groups) if j in self.cats and len(g) > 1]

    def transform(self, X, owner: str) -> np.ndarray:
        """The numeric array: numeric columns as they are (converted to float), categorical ones one-hot."""
        if X.shape[1] != self.n_columns:
            raise ValueError(f"X has {X.shape[1]} features, but {owner} is expecting {self.n_columns} features as "
                             "input.")
        blocks = []
        for j in range(self.n_columns):
            col = _column(X, j)
            if j in self.cats:
                miss = _missing(col)
                if miss.any():
                    raise ValueError(f"{owner}: categorical column {self._name(X, j)} has missing values "
                                     f"({int(miss.sum())} rows); fill them with a category of their own.")
                index = {c: i for i, c in enumerate(self.cats[j])}
                block = np.zeros((len(col), len(index)))
                pos = np.array([index.get(v, -1) for v in col], dtype=np.intp)
                rows = np.nonzero(pos >= 0)[0]
                block[rows, pos[rows]] = 1.0
                blocks.append(block)
            else:
                try:
                    blocks.append(np.asarray(col, dtype=np.float64).reshape(-1, 1))
                except (TypeError, ValueError):
                    raise ValueError(f"{owner}: column {self._name(X, j)} holds non-numeric values; mark it "
                                     "categorical (categorical_features) or encode it.") from None
        return np.hstack(blocks) if blocks else np.zeros((X.shape[0], 0))

    @staticmethod
    def _name(X, j) -> str:
        return repr(X.columns[j]) if _is_frame(X) else str(j)


def fit_encoding(X, categorical_features, owner: str) -> CategoricalEncoding | None:
    """The encoding of ``X``'s categorical columns (None when there are none: the input is used as it is)."""
    if not hasattr(X, "shape") or len(X.shape) != 2:
        return None
    cols = _selected(X, categorical_features, owner)
    if not cols:
        return None
    state = []
    for j in cols:
        col = _column(X, j)
        miss = _missing(col)
        if miss.any():
            raise ValueError(f"{owner}: categorical column {CategoricalEncoding._name(X, j)} has missing values "
                             f"({int(miss.sum())} rows); fill them with a category of their own.")
        values = [v.item() if isinstance(v, np.generic) else v for v in col]
        try:
            cats = sorted(set(values))
        except TypeError:  # mixed types: a stable order by text
            cats = sorted(set(values), key=repr)
        state.append([int(j), cats])
    return CategoricalEncoding(state, int(X.shape[1]))


def tie_groups(agop: torch.Tensor, groups: list[np.ndarray]) -> torch.Tensor:
    """The AGOP averaged over the permutations of each group's columns (see the module text); a (d,) diagonal AGOP
    gets each group's mean. Returns a new tensor."""
    a = agop.clone()
    if not groups:
        return a
    idx = [torch.as_tensor(g, dtype=torch.long, device=a.device) for g in groups]
    if a.dim() == 1:
        for g in idx:
            a[g] = a[g].mean()
        return a
    # cross blocks: rows of a group replaced by their mean (then columns, for group x group blocks)
    for g in idx:
        a[g, :] = a[g, :].mean(0, keepdim=True)
        a[:, g] = a[:, g].mean(1, keepdim=True)
    # within blocks: the mean diagonal and the mean off-diagonal of the original block
    for g in idx:
        block = agop[g][:, g]
        k = len(g)
        diag = block.diagonal().mean()
        off = (block.sum() - block.diagonal().sum()) / (k * (k - 1))
        a[g.unsqueeze(1), g.unsqueeze(0)] = off
        a[g, g] = diag
    return a
