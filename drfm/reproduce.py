"""``drfm reproduce``: the seed paper's experiment, resumable per seed, aggregated over seeds.

Per seed: a Deep RFM (``depth`` layers, cosine random features with sigma 0.05 by default, on ``n_train`` training
digits) and the paper's MLP (:meth:`TorchMLPClassifier.paper`: ``mlp_depth`` = 5 hidden layers of 512 units,
``epochs`` epochs, snapshots every ``measure_every``)
on the same data (:func:`drfm.studies.compare`), written to ``OUT/seed-S.json`` (the report rows and meta) as soon as
the seed finishes. A run that is stopped continues with the seeds whose files are missing. The summary
(``OUT/summary.json``): per model, layer and stage, the mean and standard deviation over seeds of every metric, test
accuracy (mean +- std); figures: NC1 and NC2 against depth for both models (log scale, error bars over seeds) and the
MLP's metrics against epochs.
"""
from __future__ import annotations

import json
import logging
from pathlib import Path

import numpy as np

from .collapse import CollapseReport

__all__ = ["reproduce", "summarise"]

logger = logging.getLogger("drfm")


def _seed_file(out: Path, seed: int) -> Path:
    return out / f"seed-{seed}.json"


def reproduce(dataset: str, out, *, seeds=(0, 1, 2), depth: int = 20, mlp_depth: int = 5,
              n_train: int | None = 50000, epochs: int = 250, measure_every: int = 25, feature_map: str = "cosine",
              sigma: float = 0.05, metrics=("nc1", "nc2"), data_home=None, device="auto", verbose=False) -> dict:
    """Run (or continue) the study into the folder ``out``; returns :func:`summarise`'s result."""
    from .datasets import load
    from .studies import compare

    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    for seed in seeds:
        path = _seed_file(out, seed)
        if path.exists():
            logger.info("reproduce: seed %d already done (%s)", seed, path)
            continue
        data = load(dataset, n_train=n_train, random_state=seed, data_home=data_home)
        report = compare(data.X_train, data.y_train, data.X_test, data.y_test, depth=depth, metrics=metrics,
                         measure_every=measure_every, random_state=seed, verbose=verbose,
                         mlp_params={"depth": mlp_depth, "epochs": epochs, "device": device,
                                     "readout_init": "pytorch", "reset_adam": True, "standardize": True},
                         deep_params={"feature_map": feature_map, "sigma": sigma, "device": device})
        tmp = path.with_suffix(".tmp")
        report.to_json(tmp)
        tmp.replace(path)  # a seed counts as done only once its file is complete
    return summarise(out, plot=True)


def summarise(out, *, plot: bool = True) -> dict:
    """Mean and standard deviation over the seed files in ``out`` (see the module text); writes summary.json and,
    with ``plot``, depth.png and epochs.png."""
    out = Path(out)
    files = sorted(out.glob("seed-*.json"))
    if not files:
        raise ValueError(f"no seed results in {out}")
    reports = [CollapseReport.from_json(f) for f in files]
    groups: dict = {}
    for rep in reports:
        for r in rep.rows:
            key = (r["model"], r.get("epoch"), r["layer"], r["stage"], r["metric"])
            groups.setdefault(key, []).append(r["value"])
    rows = [{"model": m, "epoch": e, "layer": layer, "stage": s, "metric": k, "mean": _stat(np.nanmean, v),
             "std": _stat(np.nanstd, v), "n_seeds": int(np.sum(np.isfinite(v)))}
            for (m, e, layer, s, k), v in groups.items()]
    acc = {model: [rep.meta[model]["test_accuracy"] for rep in reports] for model in ("deep_rfm", "mlp")}
    summary = {"seeds": [f.stem for f in files], "n_seeds": len(files),
               "test_accuracy": {m: {"mean": float(np.mean(v)), "std": float(np.std(v))} for m, v in acc.items()},
               "rows": rows}
    with open(out / "summary.json", "w") as fh:
        json.dump(summary, fh, indent=1)
    if plot:
        _plot(rows, out)
    return summary


def _stat(fn, values):
    v = np.asarray(values, dtype=np.float64)
    return float(fn(v)) if np.isfinite(v).any() else None


def _plot(rows, out: Path):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 2, figsize=(9, 3.6))
    for ax, metric in zip(axes, ("nc1", "nc2")):
        for model, stage in (("deep_rfm", "input"), ("deep_rfm", "linear"), ("mlp", "input"), ("mlp", "linear")):
            pts = sorted((r["layer"], r["mean"], r["std"]) for r in rows if r["epoch"] is None and r["model"] == model
                         and r["stage"] == stage and r["metric"] == metric and r["mean"] is not None)
            if pts:
                L, m, s = map(np.array, zip(*pts))
                ax.errorbar(L, np.maximum(m, 1e-300), yerr=s, marker="o", ms=3, capsize=2, label=f"{model} {stage}")
        ax.set_yscale("log")
        ax.set_xlabel("layer")
        ax.set_ylabel(f"{metric} (log scale; mean +- std over seeds)")
        ax.legend(fontsize=7)
        ax.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(out / "depth.png", dpi=120, bbox_inches="tight")
    plt.close(fig)
    per_epoch = [r for r in rows if r["epoch"] is not None and r["model"] == "mlp"]
    if per_epoch:
        metrics = list(dict.fromkeys(r["metric"] for r in per_epoch))
        fig, axes = plt.subplots(1, len(metrics), figsize=(4 * len(metrics), 3.4), squeeze=False)
        for ax, metric in zip(axes[0], metrics):
            for layer in sorted({r["layer"] for r in per_epoch if r["metric"] == metric}):
                pts = sorted((r["epoch"], r["mean"]) for r in per_epoch
                             if r["metric"] == metric and r["mean"] is not None and r["layer"] == layer
                             and r["stage"] in ("nonlinear", "weights", "final"))
                if pts:
                    ax.plot(*zip(*pts), marker="o", ms=2, label=f"layer {layer}")
            ax.set_xlabel("epoch")
            ax.set_ylabel(metric)
            ax.grid(alpha=0.3)
            ax.legend(fontsize=6)
        fig.tight_layout()
        fig.savefig(out / "epochs.png", dpi=120, bbox_inches="tight")
        plt.close(fig)
