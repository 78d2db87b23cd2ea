"""Studies: experiments built from the estimators and the instruments -- a Deep RFM collapse study, the demo, and
a trained MLP beside a Deep RFM of the same depth (:func:`compare`, :func:`comparison_table`)."""
from __future__ import annotations

import copy
import time

import numpy as np

from .._backend import make_generator
from .._params import plain_params
from ..collapse import CollapseReport, collapse_report, linear_cka
from ..networks.analysis import sparsity_report
from ..mlp import TorchMLPClassifier
from ..networks.analysis import mlp_collapse_report, nfa_report

__all__ = ["FEATURE_LEARNING_TARGETS", "collapse_study", "compare", "comparison_table", "demo", "effective_rank",
           "feature_learning_study", "plot_feature_learning"]


def effective_rank(eigvals) -> float:
    """Participation ratio ``(sum w)^2 / sum w^2`` of non-negative eigenvalues (0 for all zeros)."""
    w = np.asarray(eigvals, dtype=np.float64)
    return float(w.sum() ** 2 / (w**2).sum()) if w.any() else 0.0


def collapse_study(dataset, *, depth, feature_map="cosine", width=None, sigma=0.05, bandwidth=2.0, device="auto",
                   seed=0, verbose=False, n_train=None, metrics=("nc1", "nc2"), data_home=None,
                   spectra: int | None = None, grams: int | None = None) -> CollapseReport:
    """Fit a Deep RFM on a named dataset and report its collapse metrics per layer and stage (test accuracy and fit
    time in ``meta``)."""
    from ..collapse import check_metrics
    from ..data.datasets import load
    from ..deep import DeepRFMClassifier
    from ..rfm import RFMRegressor

    metrics = check_metrics(metrics)  # before the data are read and the model is fitted
    data = load(dataset, n_train=n_train, random_state=seed, data_home=data_home)
    if data.task != "classification":
        raise ValueError(f"dataset {dataset!r} is a regression set; collapse needs class labels")
    # reg=1e-3: the studies' fixed ridge (drfm's default before reg='auto'; the recorded runs used it)
    model = DeepRFMClassifier(depth, layer=RFMRegressor(bandwidth, iters=1, reg=1e-3), feature_map=feature_map,
                              width=width,
                              sigma=sigma, device=device, random_state=seed, verbose=verbose)
    t0 = time.perf_counter()
    model.fit(data.X_train, data.y_train)
    fit_s = time.perf_counter() - t0
    acc = model.score(data.X_test, data.y_test)
    report = collapse_report(model, data.X_train, data.y_train, metrics=metrics, spectra=spectra, grams=grams)
    from .bench import environment

    report.meta.update({"dataset": dataset, "feature_map": feature_map, "test_accuracy": float(acc),
                        "fit_seconds": fit_s, "n_train": len(data.y_train), "n_test": len(data.y_test),
                        # what it takes to reproduce the report: every parameter of the study and the versions
                        "parameters": {"depth": depth, "feature_map": feature_map, "width": width, "sigma": sigma,
                                       "bandwidth": bandwidth,
                                       "seed": seed, "n_train": n_train, "metrics": list(metrics),
                                       "device": str(device), "dataset": dataset},
                        "versions": environment()})
    return report


def demo(*, iters=5, depth=8, device="auto", seed=0, verbose=False) -> dict:
    """An RFM classifier on scikit-learn's digits (accuracy, fit time, the learned AGOP's spectrum) and a Deep RFM
    collapse study on the same data."""
    from ..data.datasets import load
    from ..rfm import RFMClassifier

    data = load("digits", random_state=seed)
    model = RFMClassifier(iters=iters, device=device, random_state=seed, verbose=verbose)
    t0 = time.perf_counter()
    model.fit(data.X_train, data.y_train)
    fit_s = time.perf_counter() - t0
    acc = model.score(data.X_test, data.y_test)
    eig = np.linalg.eigvalsh(model.M_)[::-1]
    report = collapse_study("digits", depth=depth, feature_map="relu", device=device, seed=seed, verbose=verbose)
    return {
        "dataset": "digits",
        "n_train": len(data.y_train),
        "n_test": len(data.y_test),
        "test_accuracy": float(acc),
        "fit_seconds": fit_s,
        "device": model.device_,
        "iters": iters,
        "train_accuracy_per_iter": [h["train_score"] for h in model.history_],
        "top_agop_eigenvalues": [float(v) for v in eig[:8]],
        "agop_effective_rank": effective_rank(eig),
        "deep_rfm": {**report.meta, "table": report.to_markdown(), "summary": report.summary(),
                     "report": report.to_dict()},
    }


def compare(X_train, y_train, X_test, y_test, *, depth: int = 5, mlp_params: dict | None = None,
            deep_params: dict | None = None, metrics=("nc1", "nc2"), measure_every: int | None = None,
            random_state=0, verbose=False) -> CollapseReport:
    """Train an MLP with ``depth`` hidden layers and a Deep RFM of depth ``depth`` on the same data; one report with
    both models' per-layer, per-stage collapse rows, the MLP's NFA rows (trained and at initialisation), the MLP's
    per-epoch rows (``measure_every``), and test accuracy / seconds in ``meta``."""
    from ..collapse import check_metrics
    from ..deep import DeepRFMClassifier

    metrics = check_metrics(metrics)  # before either model is trained
    # mlp_params may set the MLP's own depth (the seed paper compares Deep RFM depth 20 with a 5-layer MLP)
    mlp = TorchMLPClassifier(**{"depth": depth, "random_state": random_state, "verbose": verbose,
                                "measure_every": measure_every, **(mlp_params or {})})
    deep = DeepRFMClassifier(depth, **{"random_state": random_state, "verbose": verbose, **(deep_params or {})})
    t0 = time.perf_counter()
    deep.fit(X_train, y_train)
    deep_s = time.perf_counter() - t0
    t0 = time.perf_counter()
    mlp.fit(X_train, y_train)
    mlp_s = time.perf_counter() - t0
    report = collapse_report(deep, X_train, y_train, metrics=metrics, model_name="deep_rfm")
    report = report + mlp_collapse_report(mlp, X_train, y_train, metrics=metrics)
    gen = make_generator(random_state)
    report = report + nfa_report(mlp, X_train, sample_size=mlp.agop_sample_size, generator=gen)
    init_net = copy.deepcopy(mlp.network_)
    init_net.load_state_dict(mlp.initial_state_)
    init_rows = nfa_report(init_net, mlp.network_view(X_train)[1], sample_size=mlp.agop_sample_size,
                           generator=gen)
    for r in init_rows.rows:
        r["model"] = "mlp_init"
    report = report + init_rows + mlp.dynamics_
    # sparsity of each layer's feature matrix (M_l; W^T W), and CKA between the two models' layers, stage by stage
    report = sparsity_report(deep, model_name="deep_rfm", report=report)
    report = sparsity_report(mlp, model_name="mlp", report=report)
    # one layer of each model in memory at a time (zip stops at the shallower one)
    for layer, (deep_l, mlp_l) in enumerate(zip(deep.iter_layer_features(X_train), mlp.iter_layer_features(X_train))):
        for stage in ("input", "linear", "nonlinear"):
            if stage in deep_l and stage in mlp_l:
                report.add(model="deep_rfm_vs_mlp", layer=layer, stage=stage, metric="cka",
                           value=linear_cka(deep_l[stage], mlp_l[stage]), n_samples=len(y_train))
    report.meta = {
        "depth": depth, "n_train": len(y_train), "n_test": len(y_test),
        "deep_rfm": {"test_accuracy": float(deep.score(X_test, y_test)), "fit_seconds": deep_s,
                     "params": plain_params(deep, drop=("verbose",))},
        "mlp": {"test_accuracy": float(mlp.score(X_test, y_test)), "fit_seconds": mlp_s,
                "train_accuracy": mlp.history_[-1]["train_accuracy"] if mlp.history_ else None,
                "final_train_loss": mlp.history_[-1]["train_loss"] if mlp.history_ else None,
                "params": plain_params(mlp, drop=("verbose",)), "at_chance": bool(mlp.at_chance_)},
        "warnings": [] if not mlp.at_chance_ else [
            f"the MLP ended at chance level (train accuracy {mlp.history_[-1]['train_accuracy']:.3f}): its collapse "
            "metrics and NFA correlations describe a network that did not learn"],
    }
    return report


def comparison_table(report: CollapseReport, metric: str = "nc1") -> str:
    """Markdown: per layer, ``metric`` at each stage for Deep RFM and the MLP, the change of log10 ``metric`` in each
    model's linear and nonlinear stage (negative = collapse), and the MLP's NFA correlation corr(W^T W, AGOP^{1/2})
    (trained; with the initial weights subtracted; at initialisation)."""
    def by(model, stage, layer, m=metric):
        for r in report.rows:
            if (r["model"], r["stage"], r["layer"], r["metric"]) == (model, stage, layer, m) and "epoch" not in r:
                return r["value"]
        return None

    shares = {(s["model"], s["layer"]): s for s in report.linear_share(metric)}
    layers = sorted({r["layer"] for r in report.rows if r["model"] in ("deep_rfm", "mlp") and "epoch" not in r})
    fmt = lambda v: "" if v is None else f"{v:.3g}"  # noqa: E731
    head = ("| layer | RFM input | RFM linear | RFM nonlinear | RFM Δlog10 lin / nonlin | MLP input | MLP linear (SVᵀh) | "
            "MLP nonlinear | MLP Δlog10 lin / nonlin | NFA corr(WᵀW, AGOP^½) | NFA (W−W₀) | NFA at init |")
    lines = [head, "|---" * 12 + "|"]
    for layer in layers:
        cells = [str(layer)]
        for model in ("deep_rfm", "mlp"):
            cells += [fmt(by(model, s, layer)) for s in ("input", "linear", "nonlinear")]
            sh = shares.get((model, layer))
            cells.append("" if sh is None else
                         f"{-sh['linear_log10_reduction']:+.2f} / {-sh['nonlinear_log10_reduction']:+.2f}")
        cells += [fmt(by("mlp", "weights", layer, "nfa_sqrt")), fmt(by("mlp", "weights", layer, "nfa_sqrt_delta")),
                  fmt(by("mlp_init", "weights", layer, "nfa_sqrt"))]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


# ---- when feature learning hurts ---------------------------------------------------------------------------------
#: the targets of :func:`feature_learning_study`
FEATURE_LEARNING_TARGETS = ("smooth", "low_rank")


def _sphere_points(n, d, rng):
    x = rng.standard_normal((n, d))
    return x / np.linalg.norm(x, axis=1, keepdims=True)


def _study_target(name, d, rng, width=512, lengthscale=1.0):
    """A target on the unit sphere in R^d: 'smooth', a Gaussian random function (random Fourier features of a
    Gaussian process with an RBF kernel of the given lengthscale: it varies along every direction alike), or
    'low_rank', ``d x_0 x_1`` (two directions)."""
    if name == "low_rank":
        return lambda X: d * X[:, 0] * X[:, 1]
    W = rng.standard_normal((d, width)) / lengthscale
    b = rng.uniform(0, 2 * np.pi, width)
    a = rng.standard_normal(width) * np.sqrt(2.0 / width)
    return lambda X: np.cos(X @ W + b) @ a


def feature_learning_study(*, sizes=(250, 500, 1000, 2000, 4000), d: int = 20, iters: int = 5, n_test: int = 2000,
                           seeds=(0,), targets=FEATURE_LEARNING_TARGETS, bandwidth="auto", device="auto",
                           verbose=False) -> list[dict]:
    """RFM (``iters`` AGOP steps, every iterate kept: no early stopping) against the same kernel without feature
    learning (``iters=0``) on points of the unit sphere in R^d, for a target smooth in every direction and a low-rank
    target; per (target, n, seed, model): the test error relative to the target's variance
    (``mean (f - y)^2 / var y``), and for RFM the effective rank of the learned M."""
    from ..collapse import feature_matrix_sparsity
    from ..rfm import RFMRegressor

    for t in targets:
        if t not in FEATURE_LEARNING_TARGETS:
            raise ValueError(f"target must be one of {FEATURE_LEARNING_TARGETS}, got {t!r}")
    rows = []
    for seed in seeds:
        rng = np.random.default_rng(seed)
        for target in targets:
            f = _study_target(target, d, np.random.default_rng([seed, 1]))
            X_all = _sphere_points(max(sizes) + n_test, d, rng)
            y_all = f(X_all)
            Xte, yte = X_all[-n_test:], y_all[-n_test:]
            for n in sizes:
                for model_iters in (0, iters):
                    model = RFMRegressor(bandwidth, iters=model_iters, early_stopping=False, device=device,
                                         random_state=seed, verbose=verbose, reg=1e-3)
                    t0 = time.perf_counter()
                    model.fit(X_all[:n], y_all[:n])
                    rel = float(np.mean((model.predict(Xte) - yte) ** 2) / np.var(yte))
                    rows.append({"target": target, "n": n, "seed": seed, "iters": model_iters,
                                 "model": "rfm" if model_iters else "kernel (iters=0)", "test_rel_mse": rel,
                                 "m_effective_rank": feature_matrix_sparsity(model.M_)["effective_rank"],
                                 "fit_seconds": time.perf_counter() - t0, "d": d})
    return rows


def plot_feature_learning(rows, path):
    """Test error (relative MSE, log scale) against n, one panel per target, RFM vs the same kernel without feature
    learning (mean over seeds, error bars: min-max). Saved to ``path``."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.ticker import NullLocator

    targets = list(dict.fromkeys(r["target"] for r in rows))
    fig, axes = plt.subplots(1, len(targets), figsize=(4.6 * len(targets), 3.6), squeeze=False)
    for ax, target in zip(axes[0], targets):
        for model in dict.fromkeys(r["model"] for r in rows):
            pts = {}
            for r in rows:
                if r["target"] == target and r["model"] == model:
                    pts.setdefault(r["n"], []).append(r["test_rel_mse"])
            ns = sorted(pts)
            mean = np.array([np.mean(pts[n]) for n in ns])
            lo = mean - np.array([np.min(pts[n]) for n in ns])
            hi = np.array([np.max(pts[n]) for n in ns]) - mean
            ax.errorbar(ns, mean, yerr=[lo, hi], marker="o", ms=4, capsize=3, label=model)
        ax.set_xscale("log")
        ax.set_yscale("log")
        sizes = sorted({r["n"] for r in rows})
        ax.set_xticks(sizes, [str(n) for n in sizes])
        ax.xaxis.set_minor_locator(NullLocator())
        ax.set_xlabel("training points n")
        ax.set_ylabel("test MSE / var(y) (log scale)")
        ax.set_title({"smooth": "smooth in every direction", "low_rank": "low-rank (x0 x1)"}.get(target, target))
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
    fig.tight_layout()
    from ..data.files import save_figure

    save_figure(fig, path)
    return path
