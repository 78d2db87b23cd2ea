"""File I/O for the command line and for users: arrays and tables in and out (.npy / .csv), task inference, and the
training data of ``drfm fit`` (a named dataset, feature / target files, or one table)."""
from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

__all__ = ["DataFileError", "TrainingData", "check_output_path", "infer_task", "model_inputs", "read_array",
           "training_data", "write_array"]


class DataFileError(ValueError):
    """A data file or data argument that cannot be used; the message is one line naming the file or argument."""


def read_array(path: str, what: str, *, numeric: bool = True, mmap: bool = False, header: bool | None = None):
    """A 2-D (or 1-D) array from a .npy or .csv/.txt file; ``DataFileError`` with one line for every problem.

    CSV: comma separated, UTF-8 (a byte-order mark is dropped), quoted fields and CRLF line ends allowed, blank lines
    skipped. ``header``: True / False says whether the first row holds column names; None decides by one rule that
    never takes data for names -- the first row is a header when none of its fields is a number and the next row has
    a number in some column (so a first data row with one bad field is reported, not dropped; a file of text only
    has no header unless ``header=True``). A field that is not a number is reported with its line and column
    (``numeric=False`` keeps text columns as text). ``mmap=True``: a .npy file is memory-mapped (only the rows
    indexed later are read; their values are checked by the caller). Returns (array, column names or None).
    """
    p = Path(path)
    if not p.is_file():
        raise DataFileError(f"{what} file {path!r} {'is a directory' if p.is_dir() else 'does not exist'}")
    suffix = p.suffix.lower()
    if suffix == ".npy":
        try:
            arr = np.load(p, allow_pickle=False, mmap_mode="r" if mmap else None)
        except Exception as exc:  # noqa: BLE001 - any read failure is a bad file
            raise DataFileError(f"{what} file {path!r} is not a readable .npy array ({type(exc).__name__})") from None
        names = None
    elif suffix in (".csv", ".txt"):
        arr, names = _read_csv(p, what, numeric=numeric, header=header)
    else:
        raise DataFileError(f"{what} file {path!r} must be .npy or .csv, got {suffix or 'no extension'!r}")
    if not isinstance(arr, np.memmap) and arr.dtype.kind in "biuf" and arr.size and \
            not np.all(np.isfinite(arr.astype(np.float64))):
        raise DataFileError(f"{what} file {path!r} contains NaN or infinite values")
    if arr.ndim not in (1, 2) or arr.size == 0:
        raise DataFileError(f"{what} file {path!r} must hold a non-empty 1-D or 2-D array, got shape {arr.shape}")
    return arr, names


def _read_csv(p: Path, what: str, *, numeric: bool, header: bool | None):
    import csv

    path = str(p)
    try:
        with open(p, newline="", encoding="utf-8-sig") as fh:
            reader = csv.reader(fh)
            rows, lines = [], []
            for r in reader:
                if r and any(v.strip() for v in r):
                    rows.append(r)
                    lines.append(reader.line_num)
    except (UnicodeDecodeError, csv.Error) as exc:
        raise DataFileError(f"{what} file {path!r} is not a readable UTF-8 CSV file ({type(exc).__name__}: "
                            f"{exc})") from None
    if not rows:
        raise DataFileError(f"{what} file {path!r} is empty")
    names = None
    if header is None:
        header = _has_header(rows)
    if header:
        names, rows, lines = [v.strip() for v in rows[0]], rows[1:], lines[1:]
        if not rows:
            raise DataFileError(f"{what} file {path!r} has a header row ({', '.join(names)}) but no data rows")
    width = len(names) if names is not None else len(rows[0])
    for r, line in zip(rows, lines):
        if len(r) != width:
            first = "the header" if names is not None else f"line {lines[0]}"
            raise DataFileError(f"{what} file {path!r}: line {line} has {len(r)} fields, {first} has {width}")
    try:
        return np.array(rows, dtype=np.float64), names
    except ValueError:
        pass
    if not numeric:
        return np.array([[v.strip() for v in r] for r in rows]), names
    if names is None and len(rows) == 1 and not any(_is_number(v) for v in rows[0]):
        raise DataFileError(f"{what} file {path!r} holds one row of names ({', '.join(v.strip() for v in rows[0])})"
                            " and no data rows")
    bad = first_bad_field(rows, lines, names)
    hint = "" if header or lines[0] != 1 else " (if the first line holds column names, pass --header)"
    raise DataFileError(f"{what} file {path!r}: {bad}{hint}")


def feature_table(X, what: str, names=None) -> tuple[np.ndarray, list[int]]:
    """Feature columns read as text: numeric columns as float64; a column holding text (any field that is not a
    number) is categorical and kept as text. Returns (X: float64, or object with the text columns as str, the
    categorical columns' indices). An empty field is a ``DataFileError`` naming its row and column (missing values
    are not supported)."""
    X = np.asarray(X)
    if X.dtype.kind not in "US":
        return X, []
    X = np.char.strip(X.astype(str))
    empty = np.argwhere(X == "")
    if len(empty):
        i, j = (int(v) for v in empty[0])
        col = f"column {j + 1}" + (f" ({names[j]!r})" if names else "")
        raise DataFileError(f"{what}: data row {i + 1}, {col}: is empty (missing values are not supported; fill "
                            "them, e.g. with a category of their own)")
    text = [j for j in range(X.shape[1]) if not all(_is_number(v) for v in X[:, j])]
    if not text:
        return X.astype(np.float64), []
    out = np.empty(X.shape, dtype=object)
    for j in range(X.shape[1]):
        out[:, j] = X[:, j] if j in text else X[:, j].astype(np.float64)
    return out, text


def first_bad_field(rows, lines=None, names=None) -> str:
    """'line L, column C (name): ...' for the first field of ``rows`` (text) that is not a number; ``lines`` are the
    rows' line numbers in the file (None: 'data row i')."""
    for i, r in enumerate(rows):
        line = f"data row {i + 1}" if lines is None else f"line {lines[i]}"
        for j in range(len(r)):
            if not _is_number(r[j]):
                col = f"column {j + 1}" + (f" ({names[j]!r})" if names else "")
                v = r[j].strip()
                why = "is empty (missing values are not supported)" if not v else f"{v[:40]!r} is not a number"
                return f"{line}, {col}: {why}"
    return "a field is not a number"


def _is_number(v) -> bool:
    try:
        float(v)
        return True
    except ValueError:
        return False


def _has_header(rows) -> bool:
    """The first row is a header when none of its fields is a number and the next row has a number (a text-only
    file -- e.g. text labels -- has no header by this rule; pass ``header=True`` for one)."""
    if len(rows) < 2:
        return False
    return not any(_is_number(v) for v in rows[0]) and any(_is_number(v) for v in rows[1])


def model_inputs(X: np.ndarray, names: list[str] | None, header: dict, what: str) -> tuple[np.ndarray, str | None]:
    """Rows as the model was trained on them: columns matched by name when both the input file and the model
    recorded names, and a named dataset's input scaling applied. Returns (X, what was done, or None)."""
    expected = header.get("feature_names")
    if expected and names:
        missing = [f for f in expected if f not in names]
        if missing:
            raise DataFileError(f"{what} lacks the column(s) {', '.join(missing)} the model was trained on "
                                f"(it has {', '.join(names)})")
        X = X[:, [names.index(f) for f in expected]]
    scale = header.get("input_scale")
    if scale:
        return np.asarray(X, dtype=np.float64) / float(scale), (
            f"inputs divided by {float(scale):g} (the preprocessing of the dataset the model was trained on)")
    return X, None


def check_output_path(path: str | None, what: str, suffixes: tuple[str, ...] | None = None) -> None:
    """Before any work: ``path`` can be written (not a directory, its folder exists, a known suffix)."""
    if path is None:
        return
    p = Path(path)
    if p.is_dir():
        raise DataFileError(f"{what} {path!r} is a directory; give a file name")
    if not p.parent.is_dir():
        raise DataFileError(f"{what} {path!r}: the folder {str(p.parent)!r} does not exist")
    if not os.access(p.parent, os.W_OK | os.X_OK):
        raise DataFileError(f"{what} {path!r}: the folder {str(p.parent)!r} is not writable")
    if suffixes and p.suffix.lower() not in suffixes:
        raise DataFileError(f"{what} {path!r} must be {' or '.join(suffixes)}")


def write_array(arr, path: str | None) -> str | None:
    """Predictions to .npy / .csv, or None (the caller prints them)."""
    if path is None:
        return None
    from .files import atomic_write

    p = Path(path)
    suffix = p.suffix.lower()
    if suffix not in (".npy", ".csv", ".txt"):
        raise DataFileError(f"output file {path!r} must be .npy or .csv")
    with atomic_write(p, "wb" if suffix == ".npy" else "w", what="output file") as fh:
        if suffix == ".npy":
            np.save(fh, arr)
        else:
            np.savetxt(fh, arr.reshape(len(arr), -1), delimiter=",",
                       fmt="%s" if arr.dtype.kind in "OUS" else "%.10g")
    return str(p)


def infer_task(y) -> str:
    """'classification' for text / boolean targets or 1-D integer targets with few distinct values (at most
    ``max(2, min(50, n // 5))``), else 'regression'."""
    if y.dtype.kind in "OUSb":
        return "classification"
    if y.ndim == 1 and np.all(np.equal(np.mod(y, 1), 0)) and len(np.unique(y)) <= max(2, min(50, len(y) // 5)):
        return "classification"
    return "regression"


@dataclass
class TrainingData:
    """Training (and optional held-out) data for ``drfm fit``; ``source`` names where it came from."""

    X: np.ndarray
    y: np.ndarray
    X_test: np.ndarray | None
    y_test: np.ndarray | None
    task: str
    source: str
    feature_names: list[str] | None = None  # from a CSV header
    input_scale: float | None = None  # a named dataset's raw features were divided by this
    sharded: bool = False  # X / y hold only this rank's training rows (drfm fit under torchrun)
    categorical: list = field(default_factory=list)  # feature columns holding text (kept as str in an object X)


def training_data(*, dataset=None, X=None, y=None, data=None, target=None, task=None, test_size=0.2, n_train=None,
                  seed=0, data_home=None, shard: tuple[int, int] | None = None,
                  header: bool | None = None) -> TrainingData:
    """Exactly one source: a named ``dataset`` (its own split), feature and target files ``X`` / ``y``, or one table
    ``data`` with a ``target`` column (name or index; default the last); files are split with ``test_size``.

    ``shard=(rank, world_size)`` (``drfm fit`` under torchrun): the training rows are this rank's contiguous range of
    the (shuffled) training split, the same split on every rank; a .npy ``X`` file is memory-mapped so that a rank
    reads only its rows (and the test rows). ``TrainingData.sharded`` is then True."""
    from .datasets import load

    sources = sum(v is not None for v in (dataset, X, data))
    if sources != 1:
        raise DataFileError("give exactly one data source: --dataset NAME, --X FILE --y FILE, or --data FILE")
    if dataset:
        ds = load(dataset, n_train=n_train, random_state=seed, data_home=data_home)
        return TrainingData(ds.X_train, ds.y_train, ds.X_test, ds.y_test, task or ds.task, dataset,
                            input_scale=ds.meta.get("input_scale"))
    X_path, y_path = X, y
    if X_path:
        if not y_path:
            raise DataFileError("--X needs --y (the targets file)")
        csv_in = Path(X_path).suffix.lower() in (".csv", ".txt")
        X, names = read_array(X_path, "--X", mmap=shard is not None, header=header, numeric=not csv_in)
        X, categorical = feature_table(X, f"--X file {X_path!r}", names)
        y, _ = read_array(y_path, "--y", numeric=False, header=header)
        source = X_path
    else:
        table, names = read_array(data, "--data", numeric=False, header=header)
        if table.ndim != 2 or table.shape[1] < 2:
            raise DataFileError(f"--data file {data!r} needs at least two columns (features and a target)")
        col = target
        if col is None:
            idx = table.shape[1] - 1
        elif names and col in names:
            idx = names.index(col)
        else:
            try:
                idx = int(col)
            except ValueError:
                raise DataFileError(f"--target {col!r} is neither a column name of {data!r} nor an index") from None
            ncols = table.shape[1]
            if not -ncols <= idx < ncols:
                raise DataFileError(f"--target {col!r} is out of range: {data!r} has {ncols} columns (indices 0 to "
                                    f"{ncols - 1}, or -1 for the last)")
            idx %= ncols
        y = table[:, idx]
        X = np.delete(table, idx, axis=1)
        names = None if names is None else [v for j, v in enumerate(names) if j != idx]
        X, categorical = feature_table(X, f"--data file {data!r}", names)
        source = data
    if X.ndim == 1:
        X = X[:, None]
    y = y.reshape(-1) if y.ndim == 2 and y.shape[1] == 1 else y
    if len(X) != len(y):
        raise DataFileError(f"features have {len(X)} rows but targets have {len(y)}")
    if y.dtype.kind in "US":
        try:
            y = y.astype(np.float64)
        except ValueError:
            pass
    text_file = Path(y_path if X_path else data).suffix.lower() in (".csv", ".txt")
    if text_file and y.dtype.kind == "f" and y.size and np.all(np.mod(y, 1) == 0) and np.all(np.abs(y) < 2**53):
        y = y.astype(np.int64)  # labels written as integers in a text file stay integers (classes, headers, outputs)
    task = task or infer_task(y)
    if task == "regression" and y.dtype.kind in "OUS":
        raise DataFileError("targets are text labels; regression needs numbers (use --task classification)")
    if not 0 <= test_size < 1:
        raise DataFileError(f"--test-size must be in [0, 1), got {test_size}")
    # the split as row indices (the same permutation as splitting the arrays themselves), then the rows
    te = None
    tr = np.arange(len(y))
    if test_size > 0:
        from sklearn.model_selection import train_test_split

        strat = y if task == "classification" and min(np.unique(y, return_counts=True)[1]) >= 2 else None
        tr, te = train_test_split(tr, test_size=test_size, random_state=seed, stratify=strat)
    if shard is not None:
        rank, world = shard
        tr = tr[rank * len(tr) // world : (rank + 1) * len(tr) // world]

    def rows(idx):
        if not isinstance(X, np.memmap):
            return X[idx]
        part = np.asarray(X[np.sort(idx)], dtype=np.float64)[np.argsort(np.argsort(idx))]  # only these rows read
        if part.size and not np.all(np.isfinite(part)):
            raise DataFileError(f"--X file {source!r} contains NaN or infinite values")
        return part

    return TrainingData(rows(tr), y[tr], None if te is None else rows(te), None if te is None else y[te], task,
                        source, names, sharded=shard is not None, categorical=categorical)


