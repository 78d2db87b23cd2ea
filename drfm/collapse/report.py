"""The layer-by-layer :class:`CollapseReport` (rows of model, layer, stage, metric, value; table, JSON, plots) and the
functions that fill it from stage features (:func:`stage_report`) or a fitted model (:func:`collapse_report`)."""
from __future__ import annotations

import json
import math
from dataclasses import dataclass, field

import numpy as np

from .metrics import (LAYER_METRICS, METRICS, MIN_NET_LOG10, _FROM_SPECTRUM, _layer_metric, class_gram,
                      feature_spectrum)

__all__ = ["STAGES", "CollapseReport", "check_metrics", "collapse_report", "fit_rows_report", "stage_report"]


#: stage order in tables: Deep RFM / MLP layer stages, the final predictor, and the weight-level rows (NFA)
STAGES = ("input", "linear", "agop", "nonlinear", "final", "weights")


@dataclass
class CollapseReport:
    """Rows of (model, layer, stage, metric, value, n_samples, ...) with renderers.

    Reports from different models (Deep RFM, trained MLPs) concatenate with ``+`` and plot together.
    """

    rows: list[dict] = field(default_factory=list)
    meta: dict = field(default_factory=dict)

    def add(self, *, model, layer, stage, metric, value, n_samples, **extra):
        self.rows.append({"model": model, "layer": int(layer), "stage": stage, "metric": metric,
                          "value": float(value), "n_samples": int(n_samples), **extra})

    def __add__(self, other: "CollapseReport") -> "CollapseReport":
        meta = {**self.meta, **other.meta}
        for key in ("spectra", "grams"):  # per model: both models' spectra / Gram matrices are kept
            if key in self.meta and key in other.meta:
                meta[key] = {**self.meta[key], **other.meta[key]}
        return CollapseReport(self.rows + other.rows, meta)

    def values(self, metric, *, model=None, stage=None):
        return [r for r in self.rows if r["metric"] == metric and (model is None or r["model"] == model)
                and (stage is None or r["stage"] == stage)]

    def linear_share(self, metric: str = "nc1", *, model=None) -> list[dict]:
        """Per layer: the log10 reduction of ``metric`` in the linear stage (input -> linear) and in the nonlinear
        stage (linear -> nonlinear), and the linear stage's share of the total reduction (None when the layer does
        not reduce the metric by more than ``MIN_NET_LOG10`` decades overall: a share of a tiny net change is
        meaningless). Layers with a missing, zero or infinite stage value are left out."""
        out = []
        models = sorted({r["model"] for r in self.rows}) if model is None else [model]
        for mdl in models:
            by = {(r["layer"], r["stage"]): r["value"] for r in self.values(metric, model=mdl) if "epoch" not in r}
            for layer in sorted({k[0] for k in by}):
                a, b, c = (by.get((layer, s)) for s in ("input", "linear", "nonlinear"))
                if None in (a, b, c) or min(a, b, c) <= 0 or not all(map(math.isfinite, (a, b, c))):
                    continue  # a stage missing, zero or infinite (a dead layer): no log change to share
                lin, nonlin = math.log10(a / b), math.log10(b / c)
                total = lin + nonlin
                out.append({"model": mdl, "layer": layer, "metric": metric, "linear_log10_reduction": lin,
                            "nonlinear_log10_reduction": nonlin,
                            "linear_share": lin / total if total > MIN_NET_LOG10 else None})
        return out

    def collapse_rate(self, metric: str = "nc1", *, stage: str = "input", model=None, layers=None,
                      level: float = 0.95) -> list[dict]:
        """The rate of collapse with depth: per model, the least-squares fit of ``log10(metric) = a + b * layer``
        over the layers' values at ``stage`` (``layers``: a (first, last) range, default all), i.e. the metric
        multiplied by ``rate = 10**b`` per layer (geometric decay when < 1, as the theory of Deep RFM predicts for
        NC1), with the ``level`` confidence interval of the rate (Student t on the slope), the fit's R^2 and the
        number of layers. Layers whose value is missing, zero or infinite are left out; a model with fewer than 3
        usable layers gets no interval (NaN)."""
        from scipy import stats as st

        check_metrics(metric)
        if not (isinstance(level, (int, float)) and 0 < level < 1):
            raise ValueError(f"level must be a confidence level in (0, 1), got {level!r}")
        if layers is not None and (len(layers) != 2 or layers[0] > layers[1]):
            raise ValueError(f"layers must be a (first, last) range with first <= last, got {layers!r}")
        out = []
        models = sorted({r["model"] for r in self.rows}) if model is None else [model]
        for mdl in models:
            pts = sorted((r["layer"], r["value"]) for r in self.values(metric, model=mdl, stage=stage)
                         if "epoch" not in r and r["value"] > 0 and math.isfinite(r["value"])
                         and (layers is None or layers[0] <= r["layer"] <= layers[1]))
            if len(pts) < 2:
                continue
            x = np.array([p[0] for p in pts], dtype=np.float64)
            yv = np.log10([p[1] for p in pts])
            b, a = np.polyfit(x, yv, 1)
            resid = yv - (a + b * x)
            ss_tot = float(((yv - yv.mean()) ** 2).sum())
            r2 = 1.0 - float((resid ** 2).sum()) / ss_tot if ss_tot > 0 else 1.0
            lo = hi = math.nan
            if len(pts) >= 3:
                se = math.sqrt(float((resid ** 2).sum()) / (len(pts) - 2) / float(((x - x.mean()) ** 2).sum()))
                half = float(st.t.ppf(0.5 + level / 2, len(pts) - 2)) * se
                lo, hi = 10 ** (b - half), 10 ** (b + half)
            out.append({"model": mdl, "metric": metric, "stage": stage, "rate": 10 ** b, "rate_low": lo,
                        "rate_high": hi, "level": level, "r2": r2, "n_layers": len(pts),
                        "first_layer": int(x[0]), "last_layer": int(x[-1]), "intercept": 10 ** a})
        return out

    def to_dict(self) -> dict:
        return {"rows": self.rows, "linear_share": self.linear_share(), "meta": self.meta}

    @classmethod
    def from_json(cls, path) -> "CollapseReport":
        """A report written by :meth:`to_json` (null values read back as NaN)."""
        with open(path) as fh:
            d = json.load(fh)
        rows = [{**r, "value": math.nan if r["value"] is None else r["value"]} for r in d["rows"]]
        return cls(rows, d.get("meta", {}))

    def to_json(self, path=None, **kw) -> str:
        """Standard JSON (non-finite values, e.g. NC1 of a dead layer, are written as null)."""
        text = json.dumps(_finite_or_none(self.to_dict()), allow_nan=False, **kw)
        if path is not None:
            from ..data.files import write_text

            write_text(path, text, what="report file")
        return text

    def to_frame(self):
        """A pandas DataFrame of the rows (pandas is an optional dependency)."""
        try:
            import pandas as pd
        except ImportError as exc:  # pragma: no cover - depends on the environment
            raise ImportError("CollapseReport.to_frame needs pandas: pip install pandas") from exc
        return pd.DataFrame(self.rows)

    def to_markdown(self, metrics=None) -> str:
        """A table with one row per (model, layer) and one column per (metric, stage)."""
        order = [*METRICS, *LAYER_METRICS]
        metrics = metrics or sorted({r["metric"] for r in self.rows}, key=lambda m: (order.index(m)
                                    if m in order else 99, m))
        stages = [s for s in STAGES if any(r["stage"] == s for r in self.rows)]
        cols = [(m, s) for m in metrics for s in stages if any(r["metric"] == m and r["stage"] == s for r in self.rows)]
        index = {}
        for r in self.rows:
            if "epoch" in r:
                continue
            index.setdefault((r["model"], r["layer"]), {})[(r["metric"], r["stage"])] = r["value"]
        head = "| model | layer | " + " | ".join(f"{m} ({s})" for m, s in cols) + " |"
        sep = "|---|---|" + "---|" * len(cols)
        lines = [head, sep]
        for (mdl, layer), vals in sorted(index.items()):
            cells = [f"{vals[c]:.4g}" if c in vals else "" for c in cols]
            lines.append(f"| {mdl} | {layer} | " + " | ".join(cells) + " |")
        return "\n".join(lines)

    def summary(self, metric: str = "nc1") -> str:
        """One paragraph: how much ``metric`` fell across depth and which stage carried the reduction."""
        parts = []
        for mdl in sorted({r["model"] for r in self.rows}):
            # (the AGOP-projected stage is a side view of a layer's input, not a step on the model's path)
            rows = [r for r in self.values(metric, model=mdl) if "epoch" not in r and r["stage"] != "agop"]
            if not rows:
                continue
            first = min(rows, key=lambda r: (r["layer"], STAGES.index(r["stage"])))
            last = max(rows, key=lambda r: (r["layer"], STAGES.index(r["stage"])))
            shares = self.linear_share(metric, model=mdl)
            lin = sum(s["linear_log10_reduction"] for s in shares)
            non = sum(s["nonlinear_log10_reduction"] for s in shares)
            total = lin + non
            if total <= MIN_NET_LOG10:
                verdict = f"there was no net collapse ({metric} did not fall)"
            elif lin > 0 and non <= 0:
                verdict = "all of the net collapse happened in the linear stages (the nonlinear stages undid part of it)"
            elif lin <= 0:
                verdict = "all of the net collapse happened in the nonlinear stages (the linear stages undid part of it)"
            else:
                verdict = f"the linear stages carried {100 * lin / total:.0f}% of the net collapse"
            left_out = sorted({r["layer"] for r in rows} - {s["layer"] for s in shares})
            staged = {(r["layer"], r["stage"]) for r in rows}
            # a layer without all three stages (a network's readout: one linear map, no nonlinearity) is not a fault;
            # one whose stages hold zero or infinite values is (e.g. a dead layer)
            partial = [k for k in left_out if not all((k, st) in staged for st in ("input", "linear", "nonlinear"))]
            degenerate = [k for k in left_out if k not in partial]
            if partial:
                verdict += (f"; layer(s) {', '.join(map(str, partial))} not split into stages (no nonlinear stage, "
                            "as a readout layer) and left out of the sums")
            if degenerate:
                verdict += (f"; layer(s) {', '.join(map(str, degenerate))} left out of the sums: a stage's value is "
                            "zero or infinite (e.g. a dead layer)")
            rate = [f for f in self.collapse_rate(metric, stage="input", model=mdl) if f["n_layers"] >= 3]
            per_layer = "" if not rate else (
                f" At the layer inputs {metric} changed by a factor {rate[0]['rate']:.3g} per layer (95% interval "
                f"{rate[0]['rate_low']:.3g}-{rate[0]['rate_high']:.3g}, a log-linear fit over {rate[0]['n_layers']} "
                f"layers, R^2 {rate[0]['r2']:.2f}).")
            parts.append(
                f"{mdl}: {metric} went from {first['value']:.3g} (layer {first['layer']} {first['stage']}) to "
                f"{last['value']:.3g} (layer {last['layer']} {last['stage']}). Summed over layers, the linear stages "
                f"(the learned linear maps) changed log10 {metric} by {-lin:+.2f} and the nonlinear stages by "
                f"{-non:+.2f}: {verdict}.{per_layer}"
            )
        return " ".join(parts)

    def plot(self, path, metrics=None, *, x: str = "layer", stages=None, log: bool | None = None):
        """Each metric against depth, one line per (model, stage); or with ``x='epoch'`` against training epochs, one
        line per (model, layer, stage). ``stages`` restricts the stages drawn; log scale unless the metric can be
        negative or is a correlation (``nfa_*``). Saved to ``path``."""
        try:
            import matplotlib

            matplotlib.use("Agg")
            import matplotlib.pyplot as plt
        except ImportError as exc:  # pragma: no cover - depends on the environment
            raise ImportError("CollapseReport.plot needs matplotlib: pip install 'drfm[plot]'") from exc
        if x not in ("layer", "epoch"):
            raise ValueError(f"x must be 'layer' or 'epoch', got {x!r}")
        rows = [r for r in self.rows if x in r and (x == "epoch" or "epoch" not in r)
                and (stages is None or r["stage"] in stages)]
        if not rows:
            raise ValueError(f"the report has no rows to plot against {x!r}"
                             + (" (per-epoch rows come from TorchMLPClassifier(measure_every=...))" if x == "epoch" else ""))
        # panels in the order asked for; by default in the order the metrics were measured
        metrics = list(metrics) if metrics else list(dict.fromkeys(r["metric"] for r in rows))
        fig = self._figure(plt, rows, metrics, x, log)
        from ..data.files import save_figure

        save_figure(fig, path)
        return path

    def plot_spectra(self, path, *, stage: str | None = None, top: int | None = None):
        """The kernel picture per layer: the eigenvalues of each layer's centred feature covariance (divided by the
        largest; log scales), one panel per model and stage (every stage measured, or only ``stage``), one line per
        layer (colour: depth), and the minimal-feature rank K - 1 marked. Needs a report made with ``spectra=``
        (``collapse_report``, ``drfm collapse --spectra``). Saved to ``path``."""
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt

        spectra = self.meta.get("spectra")
        if not spectra:
            raise ValueError("the report holds no spectra: make it with collapse_report(..., spectra=K)")
        measured = [s for s in STAGES if any(s in spectra[m] for m in spectra)]
        if stage is not None and stage not in measured:
            raise ValueError(f"no spectra at stage {stage!r}; stages: {measured}")
        stages = measured if stage is None else [stage]
        models = [m for m in spectra if any(s in spectra[m] for s in stages)]
        fig, axes = plt.subplots(len(models), len(stages), figsize=(4.2 * len(stages), 3.4 * len(models)),
                                 squeeze=False)
        K = self.meta.get("n_classes")
        cmap = plt.get_cmap("viridis")
        for row, model in zip(axes, models):
            for ax, st in zip(row, stages):
                layers = spectra[model].get(st, {})
                for i, (layer, eig) in enumerate(sorted(layers.items(), key=lambda kv: int(kv[0]))):
                    lam = np.asarray(eig, dtype=np.float64)[:top]
                    lam = lam[lam > 0]
                    if len(lam):
                        ax.plot(np.arange(1, len(lam) + 1), lam / lam[0], lw=1.2,
                                color=cmap(i / max(len(layers) - 1, 1)), label=f"layer {layer}")
                if K:
                    ax.axvline(K - 1, color="grey", ls=":", lw=1.2, label=f"K - 1 = {K - 1} (minimal-feature rank)")
                ax.set_yscale("log")
                ax.set_xscale("log")
                ax.set_xlabel("eigenvalue index")
                ax.set_ylabel("eigenvalue / largest (log scale)")
                ax.set_title(f"{model}: {st} features" if layers else f"{model}: {st} (not measured)", fontsize=9)
                ax.grid(alpha=0.3)
                if layers:
                    ax.legend(fontsize=6, ncol=2)
        fig.tight_layout()
        from ..data.files import save_figure

        save_figure(fig, path)
        return path

    def plot_grams(self, path, *, stage: str = "input", layers=None, model: str | None = None):
        """The seed paper's Gram-matrix figure: per layer, the cosine Gram matrix of the features (centred, rows
        sorted by class; colour from -1 to 1), one panel per layer (every kept layer, or ``layers``) of one model
        (the first, or ``model``) at ``stage``. Needs a report made with ``grams=`` (``collapse_report``, ``drfm
        collapse --grams``). Saved to ``path``."""
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt

        grams = self.meta.get("grams")
        if not grams:
            raise ValueError("the report holds no Gram matrices: make it with collapse_report(..., grams=k)")
        model = model or next(iter(grams))
        if model not in grams:
            raise ValueError(f"no Gram matrices of model {model!r}; models: {list(grams)}")
        if stage not in grams[model]:
            raise ValueError(f"no Gram matrices at stage {stage!r}; stages: {list(grams[model])}")
        kept = grams[model][stage]
        order = sorted(kept, key=int)
        if layers is not None:
            missing = [x for x in layers if str(x) not in map(str, order)]
            if missing:
                raise ValueError(f"no Gram matrices of layers {missing}; layers: {order}")
            order = [k for k in order if int(k) in {int(x) for x in layers}]
        labels = np.asarray(self.meta.get("gram_labels", []))
        bounds = np.flatnonzero(labels[1:] != labels[:-1]) + 0.5 if len(labels) else []
        ncol = min(len(order), 5)
        nrow = -(-len(order) // ncol)
        fig, axes = plt.subplots(nrow, ncol, figsize=(2.6 * ncol, 2.6 * nrow), squeeze=False)
        for ax in axes.flat[len(order):]:
            ax.set_visible(False)
        for ax, layer in zip(axes.flat, order):
            im = ax.imshow(np.asarray(kept[layer]), vmin=-1, vmax=1, cmap="RdBu_r", interpolation="nearest")
            for b in bounds:
                ax.axhline(b, color="k", lw=0.3)
                ax.axvline(b, color="k", lw=0.3)
            ax.set_title(f"{model} layer {layer} ({stage})", fontsize=8)
            ax.set_xticks([])
            ax.set_yticks([])
        fig.colorbar(im, ax=axes.ravel().tolist(), shrink=0.7, label="cosine of centred features")
        from ..data.files import save_figure

        save_figure(fig, path)
        return path

    @staticmethod
    def _figure(plt, rows, metrics, x, log):
        """One panel per metric (y label: the metric and its scale) and one legend for all panels, below them."""
        from matplotlib.ticker import MaxNLocator

        fig, axes = plt.subplots(1, len(metrics), figsize=(4.2 * len(metrics), 3.4), squeeze=False)
        handles = {}
        style = _line_styles(rows, x, plt)
        for ax, metric in zip(axes[0], metrics):
            groups = {}
            for r in rows:
                if r["metric"] == metric:
                    key = (r["model"], r["stage"]) if x == "layer" else (r["model"], r["layer"], r["stage"])
                    groups.setdefault(key, []).append((r[x], r["value"]))
            # correlations (nfa_*) read best on a linear axis; collapse metrics span decades
            use_log = log if log is not None else (not metric.startswith("nfa")
                                                   and all(v > 0 for pts in groups.values() for _, v in pts))
            for key, pts in sorted(groups.items(), key=lambda kv: tuple(map(str, kv[0]))):
                pts.sort()
                label = " ".join(str(k) if i != 1 or x == "layer" else f"L{k}" for i, k in enumerate(key))
                (line,) = ax.plot([p[0] for p in pts], [max(p[1], 1e-300) if use_log else p[1] for p in pts],
                                  ms=4, label=label, **style(key))
                handles.setdefault(label, line)
            if use_log:
                ax.set_yscale("log")
            ax.set_xlabel(x)
            ax.xaxis.set_major_locator(MaxNLocator(integer=True))  # layers and epochs are whole numbers
            ax.set_ylabel(metric + (" (log scale)" if use_log else ""))
            ax.set_title(metric)
            ax.grid(alpha=0.3)
        ncol = max(1, min(len(handles), 4 * len(metrics)))
        fig.tight_layout()
        fig.legend(list(handles.values()), list(handles), loc="upper center", bbox_to_anchor=(0.5, 0.0), ncol=ncol,
                   fontsize=7, frameon=False)
        return fig


#: a model's line style and marker (models told apart by style; stages by colour, the same in every figure)
_MODEL_STYLES = (("-", "o"), ("--", "s"), (":", "^"), ("-.", "D"), ((0, (5, 1, 1, 1)), "v"))
_STAGE_COLOURS = {"input": "tab:blue", "linear": "tab:orange", "agop": "tab:brown", "nonlinear": "tab:green",
                  "final": "tab:purple",
                  "weights": "tab:red"}


def _line_styles(rows, x, plt):
    """``style(key) -> plot kwargs`` for the report's lines: against depth (key model, stage) a stage's colour and a
    model's line style and marker; against epochs (key model, layer, stage) a layer's colour, a model's line style
    and a stage's marker."""
    models = sorted({r["model"] for r in rows})
    by_model = {m: _MODEL_STYLES[i % len(_MODEL_STYLES)] for i, m in enumerate(models)}
    if x == "layer":
        return lambda key: {"color": _STAGE_COLOURS.get(key[1], "tab:gray"), "ls": by_model[key[0]][0],
                            "marker": by_model[key[0]][1]}
    layers = sorted({r["layer"] for r in rows})
    cmap = plt.get_cmap("viridis")
    markers = {st: mk for st, mk in zip(STAGES, "o^xsDv")}
    return lambda key: {"color": cmap(layers.index(key[1]) / max(len(layers) - 1, 1)), "ls": by_model[key[0]][0],
                        "marker": markers.get(key[2], "o")}


def _finite_or_none(obj):
    if isinstance(obj, float):
        return obj if math.isfinite(obj) else None
    if isinstance(obj, dict):
        return {k: _finite_or_none(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_finite_or_none(v) for v in obj]
    return obj


def check_metrics(metrics) -> tuple:
    """The metrics as a tuple of names (one name may be given as a string); ``ValueError`` naming any metric that is
    not in :data:`METRICS` or :data:`LAYER_METRICS`, ``TypeError`` for anything but names."""
    if isinstance(metrics, str):
        metrics = (metrics,)
    try:
        metrics = tuple(metrics)
    except TypeError:
        raise TypeError(f"metrics must be a metric name or a sequence of names, got {type(metrics).__name__}") from None
    odd = [m for m in metrics if not isinstance(m, str)]
    if odd:
        raise TypeError(f"metrics must be names (str), got {odd[:3]}")
    unknown = [m for m in metrics if m not in METRICS and m not in LAYER_METRICS]
    if unknown:
        raise ValueError(f"unknown metrics {unknown}; available: {', '.join([*METRICS, *LAYER_METRICS])}")
    return metrics


def _check_grams(grams) -> None:
    if grams is not None and (isinstance(grams, bool) or not isinstance(grams, int) or grams < 1):
        raise ValueError(f"grams must be a positive int (rows per class), got {grams!r}")


def stage_report(features, y, *, metrics=("nc1", "nc2"), model_name: str, epoch: int | None = None,
                 report: CollapseReport | None = None, predictions=None, spectra: int | None = None,
                 grams: int | None = None) -> CollapseReport:
    """Report rows from per-layer stage features (``{stage: (n, p) array}``, one dict per layer: a list, or a generator
    that yields one layer at a time) and
    labels; rows are appended to ``report`` when given, and carry ``epoch`` when given. ``nc3`` is measured against
    each layer's least-squares readout, ``nc4`` against ``predictions`` (the model's; else that readout's) and
    ``linear_cka`` against the one-hot labels. ``spectra=k`` keeps the top k eigenvalues of every layer and stage's
    feature covariance in ``meta["spectra"][model][stage][layer]`` (:meth:`CollapseReport.plot_spectra`); ``grams=k``
    keeps every layer and stage's class-sorted cosine Gram matrix of k rows per class (:func:`class_gram`, the same
    rows at every layer) in ``meta["grams"]`` (:meth:`CollapseReport.plot_grams`)."""
    metrics = check_metrics(metrics)
    _check_grams(grams)
    y = np.asarray(y)
    new = report is None
    if new:
        report = CollapseReport(meta={"model": model_name, "depth": 0, "n_samples": len(y)})
    extra = {} if epoch is None else {"epoch": int(epoch)}
    for layer, stages in enumerate(features):  # a list, or a generator yielding one layer at a time
        if new:
            report.meta["depth"] = layer + 1
        for stage, feats in stages.items():
            if grams:
                G, rows_labels = class_gram(feats, y, per_class=grams)
                store = report.meta.setdefault("grams", {}).setdefault(model_name, {}).setdefault(stage, {})
                store[layer] = np.round(G, 4).tolist()
                report.meta["gram_labels"] = [str(v) for v in rows_labels]
            spectrum = None  # one eigendecomposition for every spectrum metric of this stage
            if spectra:
                spectrum = feature_spectrum(feats, y)
                store = report.meta.setdefault("spectra", {}).setdefault(model_name, {}).setdefault(stage, {})
                store[layer] = [float(v) for v in spectrum["eigenvalues"][: int(spectra)]]
                report.meta["n_classes"] = spectrum["n_classes"]
            _add_stage(report, feats, y, metrics, predictions, spectrum, model=model_name, layer=layer, stage=stage,
                       **extra)
    return report


def _add_stage(report, feats, y, metrics, predictions, spectrum=None, **key) -> None:
    """Rows of one layer and stage's metrics (``key``: model, layer, stage and any extra fields); ``spectrum``: the
    features' eigendecomposition when already computed (one for every spectrum metric)."""
    for m in metrics:
        if m in _FROM_SPECTRUM:
            spectrum = spectrum or feature_spectrum(feats, y)
            value = _FROM_SPECTRUM[m](spectrum)
        else:
            value = METRICS[m](feats, y) if m in METRICS else _layer_metric(m, feats, y, predictions)
        report.add(metric=m, value=value, n_samples=len(y), **key)


def _check_fitted(model) -> None:
    """sklearn's NotFittedError (a ValueError and an AttributeError) for an unfitted estimator."""
    from sklearn.base import BaseEstimator
    from sklearn.utils.validation import check_is_fitted

    if isinstance(model, BaseEstimator):
        check_is_fitted(model)


def collapse_report(model, X, y, *, metrics=("nc1", "nc2"), model_name: str = "deep_rfm",
                    spectra: int | None = None, grams: int | None = None) -> CollapseReport:
    """Collapse metrics of a fitted model with a ``layer_features(X)`` method (Deep RFM, :class:`TorchMLPClassifier`)
    on (X, y), per layer and stage (input / linear / nonlinear); ``spectra=k`` also keeps each layer's top k feature
    eigenvalues for :meth:`CollapseReport.plot_spectra`, ``grams=k`` each layer's Gram matrix of k rows per class
    for :meth:`CollapseReport.plot_grams`."""
    _check_grams(grams)
    metrics = check_metrics(metrics)  # before the (possibly long) feature pass
    _check_fitted(model)
    predictions = model.predict(X) if "nc4" in metrics and hasattr(model, "predict") else None
    layers = model.iter_layer_features(X) if hasattr(model, "iter_layer_features") else model.layer_features(X)
    return stage_report(layers, y, metrics=metrics, model_name=model_name, predictions=predictions,
                        spectra=spectra, grams=grams)




def fit_rows_report(model, X, y, *, metrics=("nc1", "nc2"), model_name: str = "deep_rfm") -> CollapseReport:
    """A Deep RFM's collapse metrics split by the rows each layer learned its M on: per layer and stage (input /
    linear / nonlinear), the metrics over that layer's fitted rows (its kernel machine's ``iter_rows``, drawn with
    ``layer__iter_sample_size``; every layer draws its own) under the model name ``model_name + '/fitted'``, and over
    the other rows under ``model_name + '/unfitted'`` (each row also carries ``rows``: 'fitted' / 'unfitted' and
    ``n_samples``). Whether a collapse measured on all rows holds on the rows M never saw is what this separates.

    ``X``, ``y`` must be the training rows in the order given to ``fit`` (``iter_rows`` index them). Layers that
    learned M on every row (fewer rows than the sample size) add no rows; a model whose layers all did is refused."""
    metrics = check_metrics(metrics)
    _check_fitted(model)
    layers = getattr(model, "layers_", None)
    if layers is None or not hasattr(model, "iter_layer_features"):
        raise TypeError(f"fit_rows_report needs a fitted Deep RFM (layers_ with each layer's fitted rows), got "
                        f"{type(model).__name__}")
    fitted = [layer.extra.get("iter_rows") for layer in layers]
    if all(rows is None for rows in fitted):
        raise ValueError("every layer learned its M on all training rows: no unfitted rows to compare; fit with "
                         "layer__iter_sample_size below the number of training rows")
    y = np.asarray(y)
    n = len(y)
    if len(X) != n:
        raise ValueError(f"X has {len(X)} rows and y {n}")
    top = max(int(np.max(rows)) for rows in fitted if rows is not None and len(rows))
    if top >= n:
        raise ValueError(f"X has {n} rows, but the layers' fitted rows index up to row {top}: pass the training rows "
                         "in the order given to fit")
    predictions = np.asarray(model.predict(X)) if "nc4" in metrics else None
    report = CollapseReport(meta={"model": model_name, "depth": len(layers), "n_samples": n,
                                  "fit_rows": [None if rows is None else len(rows) for rows in fitted]})
    for layer, (stages, rows) in enumerate(zip(model.iter_layer_features(X), fitted)):
        if rows is None:
            continue
        mask = np.zeros(n, dtype=bool)
        mask[rows] = True
        for part, sel in (("fitted", mask), ("unfitted", ~mask)):
            if not sel.any():
                continue
            for stage, feats in stages.items():
                _add_stage(report, feats[sel], y[sel], metrics, None if predictions is None else predictions[sel],
                           model=f"{model_name}/{part}", layer=layer, stage=stage, rows=part)
    return report
