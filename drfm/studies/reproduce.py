"""``drfm reproduce``: the seed paper's experiment, resumable per seed and part, aggregated over seeds.

Per seed, on the same ``n_train`` training digits, these parts, each written to ``OUT/seed-S/PART.json`` as soon as
it finishes (a stopped run loses at most the part it was in), run part by part over the seeds in this order (every
seed's ``compare`` first, so the paper's comparison has all its seeds before the rest starts; then the quick
baseline):

- ``compare``: a Deep RFM (``depth`` layers, random features ``feature_maps[0]``, cosine with sigma 0.05 by default)
  and the paper's MLP (:meth:`TorchMLPClassifier.paper`: ``mlp_depth`` = 5 hidden layers of 512 units, ``epochs``
  epochs, snapshots every ``measure_every``), :func:`drfm.studies.compare`;
- ``laplace_krr``: plain Laplace kernel ridge (no feature learning, bandwidth 'auto') on the raw digits, the baseline
  for Deep RFM's test accuracy;
- ``deep_rfm_<map>`` for every further feature map (default ``relu``: the ReLU random-feature map that the paper's
  code uses without ``-use_rff``, there of width 512, here of the input's width 784; the paper's job scripts pass
  ``-use_rff``, i.e. the cosine map of ``compare``): the same Deep RFM with that map, its collapse rows and test
  accuracy.

Every layer's kernel machine learns its M on ``layer_sample_size`` random rows (``iter_sample_size`` of the layer
template; the AGOP averages over ``agop_sample_size`` rows); the features, the collapse metrics and the final machine
use all ``n_train`` rows. When every part of a seed is done they are merged into ``OUT/seed-S.json``. The summary
(``OUT/summary.json``; seeds with only some parts done count for the models those parts hold): per model, layer and
stage the mean and sample standard deviation (ddof 1, as the paper plots) over seeds of every metric, and test accuracy
(mean +- std) per model; report.md the same as tables; figures: NC1 and NC2 against depth for every model (log scale,
error bars over seeds) and the MLP's metrics against epochs (among them the paper's training panels, normalised as its
code does: ``within_total_paper`` / ``between_total_paper``). Each also on the paper's NC1 scale (textbook / K):
summary-paper.json, report-paper.md, depth-paper.png, epochs-paper.png.
"""
from __future__ import annotations

import json
import logging
import resource
import time
from pathlib import Path

import numpy as np

from ..collapse import CollapseReport
from ..data.files import save_figure, write_text

__all__ = ["reproduce", "subset_study", "summarise"]

logger = logging.getLogger("drfm")


#: what the MLP's snapshots measure beside the study's metrics (the paper's training panels)
PANEL_METRICS = ("within_share", "between_share", "within_total_paper", "between_total_paper")
#: summary scales: NC1 as drfm's metrics give it (tr S_W / tr S_B, S_W over the N samples), or the seed paper's (its
#: code divides S_W by K N: the textbook value / K)
SCALES = ("textbook", "paper")


def _seed_file(out: Path, seed: int) -> Path:
    return out / f"seed-{seed}.json"


def _peak_rss_gib() -> float:
    """The process's peak resident set so far (Linux reports KiB)."""
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20


#: the file in a study folder that records the settings its results were made with
SETTINGS_FILE = "settings.json"


def _agree_settings(out: Path, settings: dict, name: str = SETTINGS_FILE) -> None:
    """A resumed study continues only with the settings it was started with (the number of seeds may grow):
    ``ValueError`` naming every differing setting when ``out`` records others; the settings are recorded when the
    folder has none (a new study, or one started before the record existed)."""
    path = out / name
    if path.is_file():
        try:
            recorded = json.loads(path.read_text())
        except (OSError, ValueError) as exc:
            raise ValueError(f"the study folder {str(out)!r} has an unreadable {name} ({exc}); remove it "
                             "only if every result in the folder was made with the settings you are giving") from None
        settings = json.loads(json.dumps(settings))  # tuples as lists, as they were recorded
        differ = [f"{k} {recorded.get(k)!r} there, {v!r} now" for k, v in settings.items() if recorded.get(k) != v]
        if differ:
            raise ValueError(f"the study folder {str(out)!r} holds results made with other settings ("
                             + "; ".join(differ) + "): resume with the same settings, or give a new --out folder")
        return
    write_text(path, json.dumps(settings, indent=1), what="study settings")


def reproduce(dataset: str, out, *, seeds=(0, 1, 2), depth: int = 20, mlp_depth: int = 5,
              n_train: int | None = 50000, epochs: int = 250, measure_every: int = 25,
              feature_maps=("cosine", "relu"), sigma: float = 0.05, layer_sample_size: int | None = 20000,
              agop_sample_size: int = 20000, baseline: bool = True, mlp_backbone: str | None = None,
              metrics=("nc1", "nc2"), data_home=None, device="auto", verbose=False) -> dict:
    """Run (or continue) the study into the folder ``out``; returns :func:`summarise`'s result. ``mlp_backbone``
    ('resnet18' / 'vgg11'): the MLP gets that convolutional feature extractor in front (image sets only)."""
    from ..data.datasets import IMAGE_SHAPES, load

    mlp_extra = {}
    if mlp_backbone is not None:  # checked before hours of work: the set's image shape, torchvision importable
        from ..networks.backbones import _torchvision_models

        if dataset not in IMAGE_SHAPES:
            raise ValueError(f"mlp_backbone needs an image set ({', '.join(IMAGE_SHAPES)}), got {dataset!r}")
        _torchvision_models("TorchMLPClassifier", mlp_backbone)
        mlp_extra = {"backbone": mlp_backbone, "image_shape": IMAGE_SHAPES[dataset]}

    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    _agree_settings(out, {"dataset": dataset, "depth": depth, "mlp_depth": mlp_depth, "n_train": n_train,
                          "epochs": epochs, "measure_every": measure_every, "feature_maps": list(feature_maps),
                          "sigma": sigma, "layer_sample_size": layer_sample_size,
                          "agop_sample_size": agop_sample_size, "baseline": baseline, "mlp_backbone": mlp_backbone,
                          "metrics": list(metrics)})
    layer = _layer_template(layer_sample_size, agop_sample_size)
    parts = {"compare": None, **({"laplace_krr": None} if baseline else {}),
             **{f"deep_rfm_{fm}": fm for fm in feature_maps[1:]}}
    todo = [seed for seed in seeds if not _seed_file(out, seed).exists()]
    # part by part over the seeds: the paper's comparison gets all its seeds before the extra variants start
    for part, fm in parts.items():
        for seed in todo:
            folder = out / f"seed-{seed}"
            folder.mkdir(exist_ok=True)
            path = folder / f"{part}.json"
            if path.exists():
                continue
            data = load(dataset, n_train=n_train, random_state=seed, data_home=data_home)
            t0 = time.perf_counter()
            report = _run_part(part, fm, data, seed=seed, depth=depth, mlp_depth=mlp_depth, epochs=epochs,
                               measure_every=measure_every, feature_map=feature_maps[0], sigma=sigma, layer=layer,
                               metrics=metrics, device=device, verbose=verbose, mlp_extra=mlp_extra)
            report.meta.setdefault("resources", {})[part] = {"seconds": time.perf_counter() - t0,
                                                             "peak_rss_gib_so_far": _peak_rss_gib()}
            report.meta["n_classes"] = int(np.unique(data.y_train).size)  # (the paper's NC1 scale divides by it)
            report.to_json(path)  # atomic (drfm.data.files): a part is done once its file is complete
            logger.info("reproduce: seed %d part %s done in %.0f s", seed, part, time.perf_counter() - t0)
    for seed in todo:  # a seed whose parts are all done becomes one file
        _merge_parts(out / f"seed-{seed}", list(parts), seed).to_json(_seed_file(out, seed))
    summarise(out, plot=True, scale="paper")  # (the paper's scale beside drfm's: *-paper.json / .md / .png)
    return summarise(out, plot=True)


def _layer_template(layer_sample_size, agop_sample_size):
    """The study's Deep RFM layer: bandwidth 2, one AGOP step, M learned on ``layer_sample_size`` rows (None: all), and
    reg=1e-3, the study's fixed ridge (drfm's default before reg='auto'; the recorded runs used it)."""
    from ..rfm import RFMRegressor

    return RFMRegressor(bandwidth=2.0, iters=1, iter_sample_size=layer_sample_size, agop_sample_size=agop_sample_size,
                        reg=1e-3)


def _size_name(size) -> str:
    return "all" if size is None else str(int(size))


def subset_study(dataset: str, out, *, sizes=(20000, None), seed: int = 0, depth: int = 20,
                 n_train: int | None = 50000, feature_map: str = "cosine", sigma: float = 0.05,
                 agop_sample_size: int = 20000, metrics=("nc1", "nc2"), data_home=None, device="auto",
                 verbose=False) -> dict:
    """Does learning each layer's M on a subset of the rows explain the collapse measured on all of them? One seed's
    Deep RFM (the study's: ``depth`` layers, ``feature_map``, bandwidth 2, one AGOP step, ridge 1e-3) fitted once per
    layer sample size in ``sizes`` (None: every row), each into ``OUT/subset-SIZE.json`` (resumable per size): the
    collapse rows on all training rows (model ``deep_rfm_SIZE``) and, where the layers fitted a subset, the same split
    into each layer's fitted and unfitted rows (:func:`drfm.collapse.fit_rows_report`: ``deep_rfm_SIZE/fitted``,
    ``/unfitted``), test accuracy, fit time and peak RSS. ``OUT/subset.md`` / ``subset.json``: per size and layer, the
    linear stage's metrics on all / fitted / unfitted rows side by side."""
    from ..collapse import collapse_report, fit_rows_report
    from ..data.datasets import load
    from ..deep import DeepRFMClassifier

    sizes = tuple(None if s in (None, 0) else int(s) for s in sizes)
    if not sizes or any(s is not None and s < 1 for s in sizes):
        raise ValueError(f"sizes must be positive row counts or None (every row), got {sizes!r}")
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    _agree_settings(out, {"dataset": dataset, "seed": seed, "depth": depth, "n_train": n_train,
                          "feature_map": feature_map, "sigma": sigma, "agop_sample_size": agop_sample_size,
                          "metrics": list(metrics)}, name="settings-subset.json")
    for size in sizes:
        path = out / f"subset-{_size_name(size)}.json"
        if path.exists():
            continue
        data = load(dataset, n_train=n_train, random_state=seed, data_home=data_home)
        name = f"deep_rfm_{_size_name(size)}"
        layer = _layer_template(size, agop_sample_size)
        t0 = time.perf_counter()
        model = DeepRFMClassifier(depth, feature_map=feature_map, sigma=sigma, layer=layer, device=device,
                                  random_state=seed, verbose=verbose).fit(data.X_train, data.y_train)
        fit_s = time.perf_counter() - t0
        report = collapse_report(model, data.X_train, data.y_train, metrics=metrics, model_name=name)
        if any(lay.extra.get("iter_rows") is not None for lay in model.layers_):
            report = report + fit_rows_report(model, data.X_train, data.y_train, metrics=metrics, model_name=name)
        report.meta = {name: {"test_accuracy": float(model.score(data.X_test, data.y_test)), "fit_seconds": fit_s,
                              "layer_sample_size": size, "n_train": len(data.y_train), "seed": seed,
                              "seconds": time.perf_counter() - t0, "peak_rss_gib_so_far": _peak_rss_gib()}}
        report.to_json(path)
        logger.info("subset study: layer sample size %s done in %.0f s", _size_name(size), time.perf_counter() - t0)
    return summarise_subsets(out)


def summarise_subsets(out) -> dict:
    """subset.json and subset.md from the ``subset-*.json`` files in ``out`` (see :func:`subset_study`)."""
    out = Path(out)
    files = sorted(out.glob("subset-*.json"), key=lambda f: (f.stem == "subset-all", f.stem))
    if not files:
        raise ValueError(f"no subset results in {out}")
    runs, table = {}, []
    for f in files:
        rep = CollapseReport.from_json(f)
        name = next(k for k, v in rep.meta.items() if isinstance(v, dict) and "test_accuracy" in v)
        runs[name] = rep.meta[name]
        by = {}
        for r in rep.rows:
            if r["stage"] == "linear" and "epoch" not in r:
                part = r.get("rows", "all")
                by.setdefault(r["layer"], {}).setdefault(r["metric"], {})[part] = r["value"]
        for layer in sorted(by):
            table.append({"model": name, "layer": layer, **{f"{m}_{part}": v for m, parts in by[layer].items()
                                                            for part, v in parts.items()}})
    summary = {"runs": runs, "linear_stage": table}
    write_text(out / "subset.json", json.dumps(summary, indent=1), what="subset study summary")
    metrics = list(dict.fromkeys(k.rsplit("_", 1)[0] for row in table for k in row if k not in ("model", "layer")))
    lines = ["# Each layer's M learned on a subset of the rows: the linear stage (X_l M_l^{1/2}) on all / fitted / "
             "unfitted rows", "", "| model | test accuracy | fit s |", "| --- | --- | --- |"]
    lines += [f"| {m} | {v['test_accuracy']:.4f} | {v['fit_seconds']:.0f} |" for m, v in runs.items()]
    head = [f"{m} {part}" for m in metrics for part in ("all", "fitted", "unfitted")]
    lines += ["", "| model | layer | " + " | ".join(head) + " |", "|" + " --- |" * (2 + len(head))]
    for row in table:
        cells = [row.get(f"{m}_{part}") for m in metrics for part in ("all", "fitted", "unfitted")]
        lines.append(f"| {row['model']} | {row['layer']} | "
                     + " | ".join("" if c is None else f"{c:.3g}" for c in cells) + " |")
    write_text(out / "subset.md", "\n".join(lines) + "\n", what="subset study report")
    return summary


def _merge_parts(folder: Path, parts, seed: int) -> CollapseReport:
    """One report from a seed's part files (those present): rows concatenated, meta merged, resources per part."""
    merged = CollapseReport(meta={})
    resources = {}
    for part in parts:
        path = folder / f"{part}.json"
        if path.exists():
            rep = CollapseReport.from_json(path)
            resources.update(rep.meta.pop("resources", {}))
            merged = merged + rep
    merged.meta["resources"] = resources
    merged.meta["seed"] = seed
    return merged


def _run_part(part, fm, data, *, seed, depth, mlp_depth, epochs, measure_every, feature_map, sigma, layer, metrics,
              device, verbose, mlp_extra=None) -> CollapseReport:
    from ..collapse import collapse_report
    from ..networks.analysis import sparsity_report
    from ..deep import DeepRFMClassifier
    from ..rfm import RFMClassifier
    from .._params import plain_params
    from .experiments import compare

    if part == "compare":
        return compare(data.X_train, data.y_train, data.X_test, data.y_test, depth=depth, metrics=metrics,
                       measure_every=measure_every, random_state=seed, verbose=verbose,
                       mlp_params={"depth": mlp_depth, "epochs": epochs, "device": device,
                                   "readout_init": "pytorch", "reset_adam": True, "standardize": True,
                                   # the training panels: the shares of the within / between-class variance
                                   "measure_metrics": tuple(dict.fromkeys((*metrics, *PANEL_METRICS))),
                                   **(mlp_extra or {})},
                       deep_params={"feature_map": feature_map, "sigma": sigma, "device": device, "layer": layer})
    t0 = time.perf_counter()
    if part == "laplace_krr":
        model = RFMClassifier(bandwidth="auto", iters=0, device=device, random_state=seed, verbose=verbose)
        model.fit(data.X_train, data.y_train)
        report = CollapseReport(meta={})
    else:
        model = DeepRFMClassifier(depth, feature_map=fm, sigma=sigma, layer=layer, device=device, random_state=seed,
                                  verbose=verbose).fit(data.X_train, data.y_train)
        report = collapse_report(model, data.X_train, data.y_train, metrics=metrics, model_name=part)
        report = sparsity_report(model, model_name=part, report=report)
    fit_s = time.perf_counter() - t0
    report.meta = {part: {"test_accuracy": float(model.score(data.X_test, data.y_test)), "fit_seconds": fit_s,
                          "params": plain_params(model, drop=("verbose",))}}
    return report


def summarise(out, *, plot: bool = True, scale: str = "textbook", n_classes: int | None = None) -> dict:
    """Mean and sample standard deviation (ddof 1, as the paper's plots; None from one seed) over the seed files in
    ``out`` (see the module text); writes summary.json, report.md (the tables) and, with ``plot``, depth.png and
    epochs.png. ``scale='paper'``: NC1 on the seed paper's scale (divided by the number of classes: recorded by the
    study, or ``n_classes`` for results that predate the record), in every table and figure, under suffixed names
    (summary-paper.json, report-paper.md, depth-paper.png, epochs-paper.png) beside the textbook ones."""
    if scale not in SCALES:
        raise ValueError(f"scale must be one of {SCALES}, got {scale!r}")
    out = Path(out)
    done = {f.stem: CollapseReport.from_json(f) for f in out.glob("seed-*.json")}
    for folder in out.glob("seed-*"):  # seeds still running: the parts they have finished
        if folder.is_dir() and folder.name not in done and any(folder.glob("*.json")):
            done[folder.name] = _merge_parts(folder, sorted(p.stem for p in folder.glob("*.json")),
                                             int(folder.name.split("-")[1]))
    if not done:
        raise ValueError(f"no seed results in {out}")
    names = sorted(done, key=lambda k: int(k.split("-")[1]))
    reports = [done[k] for k in names]
    divisor = 1.0
    if scale == "paper":
        recorded = {rep.meta.get("n_classes") for rep in reports} - {None}
        if n_classes is None and len(recorded) != 1:
            raise ValueError(f"scale='paper' needs the number of classes: the results in {str(out)!r} do not record "
                             "it; pass n_classes (10 for MNIST and Fashion-MNIST)")
        divisor = float(n_classes if n_classes is not None else recorded.pop())
    groups: dict = {}
    for rep in reports:
        for r in rep.rows:
            key = (r["model"], r.get("epoch"), r["layer"], r["stage"], r["metric"])
            value = r["value"] / divisor if r["metric"] == "nc1" and r["value"] is not None else r["value"]
            groups.setdefault(key, []).append(value)
    rows = [{"model": m, "epoch": e, "layer": layer, "stage": s, "metric": k, "mean": _stat(np.nanmean, v),
             "std": _sample_std(v), "n_seeds": int(np.sum(np.isfinite(np.asarray(v, dtype=np.float64))))}
            for (m, e, layer, s, k), v in groups.items()]
    models = dict.fromkeys(m for rep in reports for m, v in rep.meta.items()
                           if isinstance(v, dict) and "test_accuracy" in v)
    acc = {m: [rep.meta[m]["test_accuracy"] for rep in reports if m in rep.meta] for m in models}
    summary = {"seeds": names, "n_seeds": len(names), "scale": scale, "std": "sample (ddof 1) over seeds",
               "test_accuracy": {m: {"mean": float(np.mean(v)), "std": _sample_std(v), "n_seeds": len(v)}
                                 for m, v in acc.items()},
               "resources": {k: rep.meta.get("resources", {}) for k, rep in zip(names, reports)},
               "rows": rows}
    suffix = "" if scale == "textbook" else "-" + scale
    write_text(out / f"summary{suffix}.json", json.dumps(summary, indent=1), what="study summary")
    write_text(out / f"report{suffix}.md", _markdown(summary), what="study report")
    if plot:
        _plot(rows, out, suffix=suffix, scale=scale)
    return summary


def _sample_std(values):
    """The sample standard deviation (ddof 1) of the finite values; None from fewer than two."""
    v = np.asarray(values, dtype=np.float64)
    v = v[np.isfinite(v)]
    return float(np.std(v, ddof=1)) if v.size >= 2 else None


def _fmt(row) -> str:
    if row is None or row["mean"] is None:
        return ""
    return f"{row['mean']:.3g}" + ("" if row["std"] is None else f" +- {row['std']:.2g}")


def _markdown(summary: dict) -> str:
    """The summary as tables: test accuracy and time per model; per model, NC1 and NC2 per layer and stage (the
    converged networks: rows without an epoch), mean +- std over seeds; the MLP's NFA correlations."""
    scale = summary.get("scale", "textbook")
    lines = [f"# drfm reproduce: {summary['n_seeds']} seed(s) ({', '.join(summary['seeds'])})", "",
             f"NC1 on the {scale} scale" + (" (the seed paper's: S_W divided by K N, the textbook value / K)"
                                            if scale == "paper" else " (tr S_W / tr S_B, S_W over the N samples)")
             + "; +- is the sample standard deviation over seeds (ddof 1).", "",
             "| model | test accuracy (mean +- std) | seeds |", "|---|---|---|"]
    for m, a in summary["test_accuracy"].items():
        std = "" if a["std"] is None else f" +- {a['std']:.4f}"
        lines.append(f"| {m} | {a['mean']:.4f}{std} | {a['n_seeds']} |")
    parts = {}
    for res in summary["resources"].values():
        for part, r in res.items():
            parts.setdefault(part, []).append(r)
    if parts:
        lines += ["", "| part | seconds per seed (mean) | peak RSS (GiB, max) |", "|---|---|---|"]
        for part, rs in parts.items():
            lines.append(f"| {part} | {np.mean([r['seconds'] for r in rs]):.0f} | "
                         f"{max(r['peak_rss_gib_so_far'] for r in rs):.1f} |")
    final = {(r["model"], r["layer"], r["stage"], r["metric"]): r for r in summary["rows"] if r["epoch"] is None}
    models = dict.fromkeys(k[0] for k in final)
    for model in models:
        stages = [s for s in ("input", "linear", "nonlinear") if any(k[0] == model and k[2] == s for k in final)]
        layers = sorted({k[1] for k in final if k[0] == model and k[2] in stages})
        for metric in ("nc1", "nc2"):
            if not layers or not any(k[0] == model and k[3] == metric for k in final):
                continue
            lines += ["", f"## {model}: {metric}", "", "| layer | " + " | ".join(stages) + " |",
                      "|---|" + "---|" * len(stages)]
            lines += [f"| {layer} | " + " | ".join(_fmt(final.get((model, layer, s, metric))) for s in stages) + " |"
                      for layer in layers]
    nfa = [r for r in summary["rows"] if r["epoch"] is None and r["metric"].startswith("nfa")]
    if nfa:
        lines += ["", "## Neural Feature Ansatz (MLP: trained, and at initialisation)", "",
                  "| model | layer | metric | mean +- std |", "|---|---|---|---|"]
        lines += [f"| {r['model']} | {r['layer']} | {r['metric']} | {_fmt(r)} |"
                  for r in sorted(nfa, key=lambda r: (r["model"], r["metric"], r["layer"]))]
    return "\n".join(lines) + "\n"


def _stat(fn, values):
    v = np.asarray(values, dtype=np.float64)
    return float(fn(v)) if np.isfinite(v).any() else None


def _plot(rows, out: Path, *, suffix: str = "", scale: str = "textbook"):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 2, figsize=(9, 3.6))
    for ax, metric in zip(axes, ("nc1", "nc2")):
        models = dict.fromkeys(r["model"] for r in rows if r["model"] in ("deep_rfm", "mlp")
                               or r["model"].startswith("deep_rfm_") and r["model"] != "deep_rfm_vs_mlp")
        for model, stage in ((m, st) for m in models for st in ("input", "linear")):
            pts = sorted((r["layer"], r["mean"], r["std"]) for r in rows if r["epoch"] is None and r["model"] == model
                         and r["stage"] == stage and r["metric"] == metric and r["mean"] is not None)
            if pts:
                L, m, s = (np.array(v, dtype=np.float64) for v in zip(*pts))
                s = None if np.isnan(s).all() else np.nan_to_num(s)  # (std None: one seed)
                ax.errorbar(L, np.maximum(m, 1e-300), yerr=s, marker="o", ms=3, capsize=2, label=f"{model} {stage}")
        ax.set_yscale("log")
        ax.set_xlabel("layer")
        on = f", {scale} scale" if metric == "nc1" else ""
        ax.set_ylabel(f"{metric} (log{on}; mean +- sample std over seeds)")
        if ax.get_legend_handles_labels()[0]:
            ax.legend(fontsize=7)
        ax.grid(alpha=0.3)
    fig.tight_layout()
    save_figure(fig, out / f"depth{suffix}.png")
    per_epoch = [r for r in rows if r["epoch"] is not None and r["model"] == "mlp"]
    if per_epoch:
        metrics = list(dict.fromkeys(r["metric"] for r in per_epoch))
        ncol = min(4, len(metrics))
        nrow = -(-len(metrics) // ncol)
        fig, axes = plt.subplots(nrow, ncol, figsize=(4 * ncol, 3.4 * nrow), squeeze=False)
        for ax in axes.flat[len(metrics):]:
            ax.set_visible(False)
        for ax, metric in zip(axes.flat, metrics):
            for layer in sorted({r["layer"] for r in per_epoch if r["metric"] == metric}):
                pts = sorted((r["epoch"], r["mean"]) for r in per_epoch
                             if r["metric"] == metric and r["mean"] is not None and r["layer"] == layer
                             and r["stage"] in ("nonlinear", "weights", "final"))
                if pts:
                    ax.plot(*zip(*pts), marker="o", ms=2, label=f"layer {layer}")
            ax.set_xlabel("epoch")
            # collapse metrics and the loss span decades (log scale); correlations and shares do not
            positive = all(r["mean"] > 0 for r in per_epoch if r["metric"] == metric and r["mean"] is not None)
            log = positive and (metric.startswith("nc") or metric == "train_loss")
            if log:
                ax.set_yscale("log")
            ax.set_ylabel(metric + (" (log scale)" if log else ""))
            ax.grid(alpha=0.3)
            ax.legend(fontsize=6)
        fig.tight_layout()
        save_figure(fig, out / f"epochs{suffix}.png")
