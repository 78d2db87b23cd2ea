"""Neural-collapse instruments, in three layers that import one way (metrics <- stream, metrics <- report):

* :mod:`drfm.collapse.metrics`: pure functions of (features, labels[, classifier, predictions]);
* :mod:`drfm.collapse.stream`: :class:`CollapseAccumulator`, the same metrics over batches;
* :mod:`drfm.collapse.report`: :class:`CollapseReport` (table, JSON, plots) and the functions that fill it.

Nothing here imports networks or estimators. ``sparsity_report`` (rows over a model's weight matrices) lives with the
network analysis (:func:`drfm.networks.analysis.sparsity_report`) and is reachable here by name.
"""
from .metrics import *  # noqa: F401,F403
from .metrics import __all__ as _metrics_all
from .report import STAGES, CollapseReport, check_metrics, collapse_report, fit_rows_report, stage_report
from .stream import STREAM_METRICS, CollapseAccumulator

__all__ = [*_metrics_all, "STAGES", "STREAM_METRICS", "CollapseAccumulator", "CollapseReport", "check_metrics",
           "collapse_report", "fit_rows_report", "sparsity_report", "stage_report"]


def __getattr__(name):
    if name == "sparsity_report":  # (imported on use: the network analysis imports this package)
        from ..networks.analysis import sparsity_report

        return sparsity_report
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
