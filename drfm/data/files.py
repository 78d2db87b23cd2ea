"""Writing files so that nothing is lost: every file drfm writes (models, predictions, reports, figures, study parts,
benchmark results) goes through :func:`atomic_write`.

The content goes to a temporary file in the target's folder (``.NAME.XXXX.part``), is flushed and fsynced, and only
then renamed over the target (``os.replace``: atomic on POSIX and Windows within one file system). A failure at any
point -- a full disk, a file-size limit, an interrupt, an exception while producing the content -- removes the
temporary file and leaves a previous file at the target byte-identical. The failure is raised as
:class:`FileWriteError` (an ``OSError``) whose message is one line naming the file and saying the old one is intact.
"""
from __future__ import annotations

import contextlib
import os
import tempfile
from pathlib import Path

__all__ = ["FileWriteError", "atomic_write", "save_figure", "write_bytes", "write_text"]


class FileWriteError(OSError):
    """A file could not be written; the message is one line, and a previous file at the path is unchanged."""


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def _final_mode(path: Path) -> int:
    """The permissions the written file gets: those of the file it replaces, else what ``open`` would give."""
    try:
        return path.stat().st_mode & 0o7777
    except OSError:
        return 0o666 & ~_umask()


@contextlib.contextmanager
def atomic_write(path, mode: str = "wb", *, what: str = "file"):
    """``with atomic_write(path) as fh: ...`` -- ``fh`` is a file object on a temporary file beside ``path``; when the
    block ends without an exception it is fsynced and renamed to ``path``.

    Parameters
    ----------
    path : the target file (its folder must exist).
    mode : ``'wb'`` (default) or ``'w'`` (text, UTF-8, ``\\n`` line ends).
    what : how messages name the file (e.g. ``'--save'``, ``'output file'``).

    Raises
    ------
    FileWriteError
        When the folder cannot take the file or the writing fails; a previous file at ``path`` is left as it was.
    """
    if mode not in ("wb", "w"):
        raise ValueError(f"mode must be 'wb' or 'w', got {mode!r}")
    path = Path(path)
    try:
        fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".part")
    except OSError as exc:
        raise FileWriteError(exc.errno, f"cannot write {what} {str(path)!r}: {exc.strerror or exc}") from None
    try:
        with os.fdopen(fd, mode, **({} if "b" in mode else {"encoding": "utf-8", "newline": "\n"})) as fh:
            yield fh
            fh.flush()
            os.fsync(fh.fileno())
        os.chmod(tmp, _final_mode(path))
        os.replace(tmp, path)
    except BaseException as exc:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        if isinstance(exc, OSError) and not isinstance(exc, FileWriteError):
            kept = " (the previous file is unchanged)" if path.exists() else ""
            raise FileWriteError(exc.errno, f"could not write {what} {str(path)!r}: "
                                            f"{exc.strerror or exc}{kept}") from None
        raise
    with contextlib.suppress(OSError):  # the rename itself reaches the disk with the folder's entry
        dir_fd = os.open(path.parent, os.O_RDONLY)
        try:
            os.fsync(dir_fd)
        finally:
            os.close(dir_fd)


def write_bytes(path, data: bytes, *, what: str = "file") -> Path:
    """``data`` to ``path`` through :func:`atomic_write`."""
    with atomic_write(path, "wb", what=what) as fh:
        fh.write(data)
    return Path(path)


def write_text(path, text: str, *, what: str = "file") -> Path:
    """``text`` (UTF-8) to ``path`` through :func:`atomic_write`."""
    with atomic_write(path, "w", what=what) as fh:
        fh.write(text)
    return Path(path)


def save_figure(fig, path, *, what: str = "figure", dpi: int = 120, bbox_inches="tight") -> Path:
    """A matplotlib figure to ``path`` (format from the suffix, default png) through :func:`atomic_write`; the
    figure is closed afterwards, whether the write succeeded or not."""
    import matplotlib.pyplot as plt

    path = Path(path)
    fmt = path.suffix[1:].lower() or "png"
    try:
        with atomic_write(path, "wb", what=what) as fh:
            fig.savefig(fh, format=fmt, dpi=dpi, bbox_inches=bbox_inches)
    finally:
        plt.close(fig)
    return path

