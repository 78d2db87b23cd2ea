"""The ``drfm`` command line: a thin shell over the public API.

    drfm demo                 RFM on scikit-learn's bundled digits (accuracy, time, AGOP spectrum) and a small Deep RFM
                              neural-collapse study (table per layer and stage)
    drfm fit                  fit an RFM / Deep RFM / MLP on a dataset or .npy/.csv files; scores; --save model file
    drfm predict MODEL INPUT  predictions of a saved model on a .npy/.csv file (to a file or stdout)
    drfm collapse             Deep RFM layerwise collapse report on a dataset (table, JSON, plot)
    drfm compare              train an MLP and a Deep RFM of equal depth: per-layer collapse by stage, NFA, accuracy
    drfm datasets             list the datasets available offline
    drfm bench SUITE          run a benchmark suite from benchmarks/ (each case in its own process), JSON lines out
    drfm bench --compare A B  ratios new/old between two results files

Exit codes: 0 success, 2 bad arguments or files (the reason on stderr: one line, and the further lines of a longer
message indented below it; no traceback; set DRFM_DEBUG=1 for the traceback), 1 unexpected failure.
"""
from __future__ import annotations

import argparse
import json
import logging
import os
import sys

from . import bench, collapse, compare, datasets, demo, feature_learning, fit, predict, reproduce
from ._common import UsageError

__all__ = ["main", "UsageError"]

#: the subcommands, in the order ``drfm --help`` lists them (one module each)
SUBCOMMANDS = (demo, collapse, fit, predict, compare, reproduce, feature_learning, datasets, bench)


class _Version(argparse.Action):
    """``--version``: torch is imported only when asked."""

    def __init__(self, option_strings, dest=argparse.SUPPRESS, default=argparse.SUPPRESS, help=None):
        super().__init__(option_strings, dest=dest, default=default, nargs=0, help=help)

    def __call__(self, parser, namespace, values, option_string=None):
        import torch

        from drfm import __version__

        print(f"drfm {__version__} (torch {torch.__version__}, python {sys.version.split()[0]})")
        parser.exit()


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="drfm",
        description="Deep Recursive Feature Machines: AGOP feature learning with Laplace kernel machines.\n"
                    + __doc__.split("\n", 1)[1],
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("--version", action=_Version, help="show drfm's, torch's and python's versions and exit")
    sub = p.add_subparsers(dest="command", metavar="COMMAND")

    def add(name, **kw):
        # the one-line help is also the description `drfm NAME --help` shows
        kw.setdefault("description", kw.get("help"))
        return sub.add_parser(name, **kw)

    for command in SUBCOMMANDS:
        command.register(add)
    return p


def _error_text(exc: BaseException) -> str:
    """The whole message of an error: its first line, and any further lines (folders searched, what to do) indented
    below it so that every line of the report is told apart from a traceback and from the next command's output."""
    lines = [ln.rstrip() for ln in str(exc).strip().splitlines() if ln.strip()]
    if not lines:
        return type(exc).__name__
    return "\n".join([lines[0]] + ["  " + ln if not ln.startswith("  ") else ln for ln in lines[1:]])


#: the library's advice (estimator parameters) as the CLI spells it, and the commands that have that option (None:
#: every command)
_SPELLING = (("n_threads='auto'", "--threads auto", None), ("n_threads=1", "--threads 1", None),
             ("standardize=True", "--standardize", {"fit"}), ("bandwidth='median'", "--param bandwidth=median", {"fit"}))


def cli_spelling(text: str, command: str) -> str:
    """A library message with its parameter advice spelled as options of ``command`` (where it has them)."""
    for api, cli, commands in _SPELLING:
        if commands is None or command in commands:
            text = text.replace(api, cli)
    return text


class _LogLine(logging.Handler):
    """Prints the library's logged warnings as ``drfm CMD: warning: ...``, one line each."""

    def __init__(self, command):
        super().__init__(logging.WARNING)
        self.command = command

    def emit(self, record):
        print(f"drfm {self.command}: warning: {cli_spelling(record.getMessage(), self.command)}", file=sys.stderr)


def _run(args):
    """The subcommand under the command's thread setting (``--threads``): estimators inside keep that count."""
    if args.threads is None:
        return args.func(args)
    from .._threads import _ACTIVE, resolve_threads, thread_limit

    n = resolve_threads(args.threads, f"drfm {args.command}")
    token = _ACTIVE.set(True)
    try:
        with thread_limit(n):
            return args.func(args)
    finally:
        _ACTIVE.reset(token)


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if not getattr(args, "command", None):
        parser.print_help()
        return 2
    import warnings

    if args.verbose is None:  # progress by default where a person watches: stderr is a terminal
        args.verbose = sys.stderr.isatty()
    shown = warnings.showwarning

    def one_line(message, category, filename, lineno, file=None, line=None):
        # a warning is a message to the user: its text, not the library's source line that raised it, with the
        # library's advice spelled as this command's options
        print(f"drfm {args.command}: {category.__name__}: {cli_spelling(str(message), args.command)}",
              file=sys.stderr)

    warnings.showwarning = one_line
    # the library's logged warnings (e.g. contention on the cores) the same way, one line each
    handler = _LogLine(args.command)
    library_log = logging.getLogger("drfm")
    library_log.addHandler(handler)
    try:
        res = _run(args)
    except KeyboardInterrupt:
        if os.environ.get("DRFM_DEBUG"):
            raise
        # files are written whole or not at all (drfm.data.files): an interrupt leaves no half-written output
        print(f"drfm {args.command}: interrupted", file=sys.stderr)
        return 130
    except (UsageError, ValueError, TypeError, FileNotFoundError, ImportError) as exc:
        if os.environ.get("DRFM_DEBUG"):
            raise
        print(f"drfm {args.command}: error: {_error_text(exc)}", file=sys.stderr)
        return 2
    except OSError as exc:  # a file that could not be read or written (a full disk, a permission, a size limit)
        if os.environ.get("DRFM_DEBUG"):
            raise
        print(f"drfm {args.command}: error: {_error_text(exc)}", file=sys.stderr)
        return 1
    finally:
        warnings.showwarning = shown
        library_log.removeHandler(handler)
    if isinstance(res, dict) and res.get("rank", 0) != 0:
        return 0  # under torchrun only rank 0 reports (every rank holds the same model)
    text = json.dumps(res, indent=None if isinstance(res, list) else 2, default=str) if args.json else args.show(res)
    try:
        print(text)
        sys.stdout.flush()
    except BrokenPipeError:
        # the reader went away (``drfm ... | head``): not an error of ours; silence the flush at exit too
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
    return 0


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
