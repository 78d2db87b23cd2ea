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

Exit codes: 0 success, 2 bad arguments or files (one-line reason on stderr, no traceback; set DRFM_DEBUG=1 for the
traceback), 1 unexpected failure.
"""
from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

import numpy as np

__all__ = ["main"]


class UsageError(Exception):
    """A user error: reported as one line on stderr with exit code 2."""


# ---------------------------------------------------------------------------------------------------------------------
# demo / collapse
def cmd_demo(args) -> dict:
    from .studies import demo

    return demo(iters=args.iters, depth=args.depth, device=args.device, seed=args.seed, verbose=args.verbose)


def show_demo(res: dict) -> str:
    eig = ", ".join(f"{v:.4f}" for v in res["top_agop_eigenvalues"])
    deep = res["deep_rfm"]
    return (
        f"RFM classifier on digits ({res['n_train']} train / {res['n_test']} test, {res['iters']} AGOP iterations, "
        f"device {res['device']})\n"
        f"  test accuracy      {res['test_accuracy']:.4f}\n"
        f"  fit time           {res['fit_seconds']:.2f} s\n"
        f"  top AGOP eigvals   {eig}\n"
        f"  AGOP effective rank {res['agop_effective_rank']:.1f} (of 64 pixels)\n\n"
        f"Deep RFM collapse study on digits (depth {deep['depth']}, {deep['feature_map']} features): test accuracy "
        f"{deep['test_accuracy']:.4f}, fit {deep['fit_seconds']:.2f} s\n{deep['table']}\n\n{deep['summary']}"
    )


def cmd_collapse(args) -> dict:
    from .studies import collapse_study

    report = collapse_study(args.dataset, depth=args.depth, feature_map=args.feature_map, width=args.width,
                            sigma=args.sigma, bandwidth=args.bandwidth, device=args.device, seed=args.seed,
                            verbose=args.verbose, n_train=args.n_train, metrics=tuple(args.metrics),
                            data_home=args.data_home, spectra=64 if args.spectra else None)
    if args.out:
        report.to_json(args.out, indent=1)
    if args.plot:
        report.plot(args.plot)
    if args.spectra:
        report.plot_spectra(args.spectra)
    return {**report.meta, "table": report.to_markdown(), "summary": report.summary(), "report": report.to_dict(),
            "out": args.out, "plot": args.plot, "spectra": args.spectra}


def show_collapse(res: dict) -> str:
    head = (f"Deep RFM on {res['dataset']} (depth {res['depth']}, {res['feature_map']} features, "
            f"{res['n_train']} train): test accuracy {res['test_accuracy']:.4f}, fit {res['fit_seconds']:.1f} s")
    tail = "".join(f"\n{k}: {res[k]}" for k in ("out", "plot", "spectra") if res.get(k))
    return f"{head}\n{res['table']}\n\n{res['summary']}{tail}"


# ---------------------------------------------------------------------------------------------------------------------
# fit / predict
MODELS = {
    # name: (classifier class path, regressor class path or None)
    "rfm": ("drfm.rfm:RFMClassifier", "drfm.rfm:RFMRegressor"),
    "deep-rfm": ("drfm.deep:DeepRFMClassifier", "drfm.deep:DeepRFMRegressor"),
    "mlp": ("drfm.mlp:TorchMLPClassifier", None),
}


def _parse_params(items: list[str]) -> dict:
    import ast

    out = {}
    for item in items or []:
        key, sep, value = item.partition("=")
        if not sep or not key.strip():
            raise UsageError(f"--param expects KEY=VALUE, got {item!r}")
        try:
            out[key.strip()] = ast.literal_eval(value)
        except (ValueError, SyntaxError):
            out[key.strip()] = value  # a plain string such as solver=cg
    return out


def _param_names(model: str) -> list[str]:
    """The parameters ``--param`` accepts for a model family (its classifier's)."""
    return sorted(_model_class(model, "classification")().get_params(deep=False))


def _model_class(name: str, task: str):
    import importlib

    cls_path = MODELS[name][0 if task == "classification" else 1]
    if cls_path is None:
        raise UsageError(f"model {name!r} supports classification only")
    module, cls = cls_path.split(":")
    return getattr(importlib.import_module(module), cls)


def cmd_fit(args) -> dict:
    from ._params import plain_params
    from .io import check_output_path, training_data
    from .persistence import save_model

    check_output_path(args.save, "--save")  # before the data are read and the model is fitted
    rank, world, rank_device = _init_distributed(args.device)
    data = training_data(dataset=args.dataset, X=args.X, y=args.y, data=args.data, target=args.target,
                         task=args.task, test_size=args.test_size, n_train=args.n_train, seed=args.seed,
                         data_home=args.data_home, shard=(rank, world) if world > 1 else None)
    cls = _model_class(args.model, data.task)
    params = _parse_params(args.param)
    valid = set(cls().get_params(deep=True))  # nested parameters too (e.g. a Deep RFM's layer__reg)
    unknown = sorted(set(params) - valid)
    if unknown:
        raise UsageError(f"unknown parameter(s) {', '.join(unknown)} for {cls.__name__}; valid: "
                         f"{', '.join(sorted(valid))}")
    defaults = {"random_state": args.seed, "verbose": args.verbose}
    if "device" in valid:
        defaults["device"] = args.device
    if world > 1:
        if "distributed" not in valid:
            raise UsageError(f"{cls.__name__} does not run distributed; under torchrun use --model rfm or deep-rfm")
        defaults["distributed"] = True
        if rank_device is not None and "device" in valid:
            defaults["device"] = rank_device
    model = cls(**defaults).set_params(**params)
    X_fit, y_fit = data.X, data.y
    if world > 1 and not data.sharded:  # a named dataset: this rank's contiguous range of the training rows
        lo, hi = rank * len(data.y) // world, (rank + 1) * len(data.y) // world
        X_fit, y_fit = data.X[lo:hi], data.y[lo:hi]
    t0 = time.perf_counter()
    model.fit(X_fit, y_fit)
    fit_s = time.perf_counter() - t0
    metric = "accuracy" if data.task == "classification" else "r2"
    train_score, n_train = _train_score(model, X_fit, y_fit, data.task, world)
    res = {"model": cls.__name__, "task": data.task, "data": data.source, "n_train": n_train,
           "n_features": data.X.shape[1], "params": plain_params(model), "fit_seconds": fit_s, "metric": metric,
           "train_score": train_score,
           "n_test": 0 if data.y_test is None else len(data.y_test),
           "test_score": None if data.y_test is None else float(model.score(data.X_test, data.y_test)),
           "saved": None, "world_size": world, "rank": rank}
    if args.save and rank == 0:  # the model is identical on every rank: rank 0 writes it
        save_model(model, args.save, metadata={"task": data.task, "data": data.source, "test_score": res["test_score"],
                                               "feature_names": data.feature_names, "input_scale": data.input_scale})
        res["saved"] = str(args.save)
    return res


def _init_distributed(device) -> tuple[int, int, str | None]:
    """Under ``torchrun`` (WORLD_SIZE > 1 in the environment): initialise the process group -- NCCL with one GPU per
    rank when CUDA is used, gloo otherwise; collective timeout DEFAULT_TIMEOUT. Returns (rank, world size, this rank's
    GPU device or None); (0, 1, None) outside torchrun."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world <= 1:
        return 0, 1, None
    import torch
    import torch.distributed as dist

    from kernels.distributed import DEFAULT_TIMEOUT

    gpu = device in ("auto", "cuda") and torch.cuda.is_available()
    local = int(os.environ.get("LOCAL_RANK", "0"))
    if gpu:
        torch.cuda.set_device(local)
    if not dist.is_initialized():
        dist.init_process_group("nccl" if gpu else "gloo", timeout=DEFAULT_TIMEOUT)
    return dist.get_rank(), dist.get_world_size(), f"cuda:{local}" if gpu else None


def _train_score(model, X, y, task, world) -> tuple[float, int]:
    """The training score over every rank's rows (predictions gathered), and the number of training rows."""
    if world <= 1:
        return float(model.score(X, y)), len(y)
    import torch.distributed as dist

    everyone = [None] * world
    dist.all_gather_object(everyone, (model.predict(X), np.asarray(y)))
    pred = np.concatenate([p for p, _ in everyone])
    truth = np.concatenate([t for _, t in everyone])
    from sklearn.metrics import accuracy_score, r2_score

    score = accuracy_score(truth, pred) if task == "classification" else r2_score(truth, pred)
    return float(score), len(truth)


def show_fit(res: dict) -> str:
    lines = [f"{res['model']} ({res['task']}) on {res['data']}: {res['n_train']} train x {res['n_features']} features",
             f"  fit time     {res['fit_seconds']:.2f} s",
             f"  train {res['metric']:<6} {res['train_score']:.4f}"]
    if res["test_score"] is not None:
        lines.append(f"  test {res['metric']:<7} {res['test_score']:.4f}  ({res['n_test']} held out)")
    if res["saved"]:
        lines.append(f"  saved to     {res['saved']}  (drfm model format 2: loading it runs no code)")
    return "\n".join(lines)


def cmd_predict(args) -> dict:
    import numpy as np

    from .io import check_output_path, model_inputs, read_array, write_array
    from .persistence import ModelFileError, load_model, read_header

    check_output_path(args.output, "output file", (".npy", ".csv", ".txt"))

    try:
        model = load_model(args.model, device=args.device, allow_pickle=args.allow_pickle)
        header = read_header(args.model)
    except (ModelFileError, FileNotFoundError) as exc:
        raise UsageError(str(exc)) from None
    X, names = read_array(args.input, "input")
    if X.ndim == 1:
        X = X[None, :] if X.shape[0] == model.n_features_in_ else X[:, None]
    X, preprocessing = model_inputs(X, names, header, f"input file {args.input!r}")
    if X.shape[1] != model.n_features_in_:
        raise UsageError(f"input file {args.input!r} has {X.shape[1]} columns but the model expects "
                         f"{model.n_features_in_} features")
    t0 = time.perf_counter()
    pred = np.asarray(model.predict(X))
    seconds = time.perf_counter() - t0
    written = write_array(pred, args.output)
    if preprocessing and not written and not args.json:
        print(f"drfm predict: {preprocessing}", file=sys.stderr)  # stdout holds only the predictions
    return {"model": type(model).__name__, "n": len(X), "seconds": seconds, "output": written,
            "preprocessing": preprocessing, "predictions": None if written else pred.tolist()}


def show_predict(res: dict) -> str:
    if res["output"]:
        done = f"; {res['preprocessing']}" if res.get("preprocessing") else ""
        return f"{res['n']} predictions ({res['model']}, {res['seconds']:.2f} s{done}) written to {res['output']}"
    return "\n".join(" ".join(str(v) for v in p) if isinstance(p, list) else str(p) for p in res["predictions"])


# ---------------------------------------------------------------------------------------------------------------------
# compare
def cmd_compare(args) -> dict:
    from .datasets import load
    from .rfm import RFMRegressor
    from .collapse import check_metrics
    from .studies import compare, comparison_table

    check_metrics(args.metrics)  # before the data are read and both models trained
    data = load(args.dataset, n_train=args.n_train, random_state=args.seed, data_home=args.data_home)
    if data.task != "classification":
        raise UsageError(f"dataset {args.dataset!r} is a regression set; compare needs class labels")
    mlp = {"width": args.width, "epochs": args.epochs, "lr": args.lr, "init_gain": args.init_gain,
           "loss": args.loss, "batch_size": args.batch_size, "device": args.device}
    deep = {"feature_map": args.feature_map, "sigma": args.sigma, "layer": RFMRegressor(args.bandwidth, iters=1),
            "device": args.device}
    t0 = time.perf_counter()
    report = compare(data.X_train, data.y_train, data.X_test, data.y_test, depth=args.depth, mlp_params=mlp,
                         deep_params=deep, measure_every=args.measure_every, random_state=args.seed,
                         verbose=args.verbose, metrics=tuple(args.metrics))
    report.meta.update({"dataset": args.dataset, "seconds": time.perf_counter() - t0})
    if args.out:
        report.to_json(args.out, indent=1)
    plots = []
    if args.plot:
        plots.append(report.plot(args.plot, metrics=["nc1", "nfa_sqrt"], stages=["input", "linear", "nonlinear",
                                                                                     "weights"]))
        if any("epoch" in r for r in report.rows):
            stem = Path(args.plot)
            plots.append(report.plot(stem.with_name(stem.stem + "-epochs" + stem.suffix), metrics=["nc1", "nfa_sqrt"],
                                     x="epoch", stages=["nonlinear", "weights"]))
    return {**report.meta, "table": comparison_table(report), "summary": report.summary(),
            "linear_share": report.linear_share("nc1"), "report": report.to_dict(), "out": args.out,
            "plots": [str(p) for p in plots]}


def cmd_feature_learning(args) -> dict:
    from .studies import feature_learning_study, plot_feature_learning

    if any(n < 2 for n in args.n) or args.d < 2 or args.seeds < 1 or args.iters < 1:
        raise UsageError("--n sizes and --d must be >= 2, --seeds and --iters >= 1")
    rows = feature_learning_study(sizes=tuple(args.n), d=args.d, iters=args.iters, seeds=tuple(range(args.seeds)),
                                  device=args.device, verbose=args.verbose)
    if args.out:
        with open(args.out, "w") as fh:
            json.dump(rows, fh, indent=1)
    if args.plot:
        plot_feature_learning(rows, args.plot)
    return {"rows": rows, "out": args.out, "plot": args.plot}


def show_feature_learning(res: dict) -> str:
    table = {}
    for r in res["rows"]:
        table.setdefault((r["target"], r["n"]), {}).setdefault(r["model"], []).append(r["test_rel_mse"])
    lines = ["| target | n | kernel, iters=0 | RFM | RFM / kernel |", "|---|---|---|---|---|"]
    for (target, n), by in table.items():
        k, f = (sum(by[m]) / len(by[m]) for m in ("kernel (iters=0)", "rfm"))
        lines.append(f"| {target} | {n} | {k:.4g} | {f:.4g} | {f / k:.3g} |")
    tail = "".join(f"\n{k}: {res[k]}" for k in ("out", "plot") if res.get(k))
    return "test MSE / var(y), mean over seeds (RFM / kernel > 1: feature learning hurt)\n" + "\n".join(lines) + tail


def cmd_reproduce(args) -> dict:
    from .reproduce import reproduce

    from .collapse import check_metrics

    if min(args.depth, args.mlp_depth, args.epochs, args.seeds, args.measure_every, args.agop_sample_size) < 1:
        raise UsageError("--depth, --mlp-depth, --epochs, --seeds, --measure-every and --agop-sample-size must be >= 1")
    if args.layer_sample_size < 0:
        raise UsageError("--layer-sample-size must be >= 0 (0: every training row)")
    if len(set(args.feature_maps)) != len(args.feature_maps):
        raise UsageError(f"--feature-maps names a map twice: {' '.join(args.feature_maps)}")
    check_metrics(args.metrics)  # before any data are read or models trained
    summary = reproduce(args.dataset, args.out, seeds=tuple(range(args.seeds)), depth=args.depth,
                        mlp_depth=args.mlp_depth,
                        n_train=args.n_train, epochs=args.epochs, measure_every=args.measure_every,
                        feature_maps=tuple(args.feature_maps), sigma=args.sigma, metrics=tuple(args.metrics),
                        layer_sample_size=args.layer_sample_size or None, agop_sample_size=args.agop_sample_size,
                        baseline=not args.no_baseline, mlp_backbone=args.mlp_backbone,
                        data_home=args.data_home, device=args.device, verbose=args.verbose)
    return {"out": args.out, "n_seeds": summary["n_seeds"], "test_accuracy": summary["test_accuracy"]}


def show_reproduce(res: dict) -> str:
    acc = res["test_accuracy"]
    return "\n".join([f"{res['n_seeds']} seed(s) in {res['out']} (summary.json, depth.png, epochs.png)"] + [
        f"  {m:<14} test accuracy {a['mean']:.4f} +- {a['std']:.4f}" for m, a in acc.items()])


def show_compare(res: dict) -> str:
    m, d = res["mlp"], res["deep_rfm"]
    head = (f"{res['dataset']}: {res['n_train']} train / {res['n_test']} test, depth {res['depth']}\n"
            f"  Deep RFM   test accuracy {d['test_accuracy']:.4f}   fit {d['fit_seconds']:.1f} s\n"
            f"  MLP        test accuracy {m['test_accuracy']:.4f}   fit {m['fit_seconds']:.1f} s "
            f"(train accuracy {m['train_accuracy']:.4f})")
    tail = "".join(f"\n{k}: {v}" for k, v in (("out", res.get("out")), ("plots", ", ".join(res["plots"]))) if v)
    tail += "".join(f"\nwarning: {w}" for w in res.get("warnings", []))
    return f"{head}\n\nNC1 per layer and stage (Δlog10: change of log10 NC1 in the linear / nonlinear stage; negative = collapse)\n" \
           f"{res['table']}\n\n{res['summary']}{tail}"


# ---------------------------------------------------------------------------------------------------------------------
# datasets
def cmd_datasets(args) -> dict:
    from .datasets import available

    return available()


def show_datasets(res: dict) -> str:
    width = max(len(k) for k in res)
    return "\n".join(f"{k:<{width}}  {v}" for k, v in res.items())


# ---------------------------------------------------------------------------------------------------------------------
# bench
def cmd_bench(args) -> list[dict]:
    from tqdm.auto import tqdm

    from . import bench

    if args.compare:
        if args.suite:
            raise UsageError("give either a SUITE to run or --compare OLD NEW, not both")
        rows = bench.compare_results(bench.read_results(args.compare[0]), bench.read_results(args.compare[1]))
        if not rows:
            raise UsageError("the two results files have no run in common (matched on suite, kind, model, dataset, "
                             "n, d, device)")
        return rows
    if not args.suite:
        raise UsageError("name a SUITE to run (see --help), or use --compare OLD.jsonl NEW.jsonl")
    sdir = bench.find_suite_dir(args.suite_dir)
    suites = bench.suite_names(sdir)
    if args.suite not in suites:
        raise UsageError(f"unknown benchmark suite {args.suite!r}; available: {', '.join(suites)}")
    suite_file = sdir / f"{args.suite}.py"
    todo = bench.select_cases(suite_file, quick=args.quick, sizes=args.n, device=args.device, only=args.only)
    out_path = Path(args.out) if args.out else Path("bench-results") / f"{args.suite}-{time.strftime('%Y%m%d-%H%M%S')}.jsonl"
    progress = lambda cases: tqdm(cases, desc=f"bench {args.suite}", disable=not args.verbose, unit="case")  # noqa: E731
    results = bench.run_suite(suite_file, todo, out_path, timeout=args.timeout, progress=progress)
    for rec in results:
        rec.setdefault("results_file", str(out_path))
    return results


def show_bench(res: list[dict]) -> str:
    rows = []
    if res and "ratios" in res[0]:
        rows.append("new / old (time and memory: < 1 is better; score: > 1 is better)")
        for r in res:
            name = " ".join(str(r[k]) for k in ("kind", "model", "variant", "dataset") if r.get(k))
            ratios = "  ".join(f"{f} {v:.3f}" for f, v in r["ratios"].items())
            rows.append(f"{name:<40} n={r.get('n', '')}: {ratios}")
        return "\n".join(rows)
    for r in res:
        if "error" in r:
            rows.append(f"{r.get('kind', '?'):<12} {r.get('model', ''):<20} n={r.get('n', '')}: ERROR {r['error']}")
        elif "skipped" in r:
            rows.append(f"{r.get('kind', '?'):<12} {r.get('model', ''):<20} n={r.get('n', '')}: skipped ({r['skipped']})")
        elif r.get("kind") == "kernel_build":
            rows.append(
                f"{'kernel_build':<12} {'n=%d d=%d' % (r['n'], r['d']):<20} kernel {r['kernel_seconds']:.3f} s, "
                f"GEMM+exp {r['gemm_plus_exp_seconds']:.3f} s, ratio {r['ratio']:.2f} ({r['device']})"
            )
        elif r.get("kind") == "centre_step":
            rows.append(
                f"{'centre_step':<12} {'n=%d m=%d' % (r['n'], r['params']['m']):<20} step {r['step_seconds']:.3f} s, "
                f"floor {r['floor_seconds']:.3f} s, ratio {r['ratio']:.2f} (r={r['params']['r']}, c={r['params']['c']})"
            )
        elif "fit_seconds" not in r:  # a kind this table does not know: its fields as they are
            rows.append(f"{r.get('kind', '?'):<12} {r.get('model', ''):<20} n={r.get('n', '')}: "
                        + ", ".join(f"{k}={v}" for k, v in r.items() if isinstance(v, (int, float))))
        else:
            model = r.get("model", "") + (f" [{r['variant']}]" if r.get("variant") else "")
            rows.append(
                f"{r.get('dataset', ''):<12} {model:<20} n={r['n']:<7} fit {r['fit_seconds']:8.2f} s  "
                f"predict {r['predict_seconds']:6.2f} s  {r['metric']} {r['score']:.4f}  "
                f"peak RSS {r['peak_rss_bytes'] / 2**30:.2f} GiB  ({r['device']})"
            )
    if res:
        rows.append(f"results: {res[0]['results_file']}")
    return "\n".join(rows)


# ---------------------------------------------------------------------------------------------------------------------
def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="drfm",
        description="Deep Recursive Feature Machines: AGOP feature learning with Laplace kernel machines.\n"
                    + __doc__.split("\n", 1)[1],
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    import torch

    from drfm import __version__

    p.add_argument("--version", action="version",
                   version=f"drfm {__version__} (torch {torch.__version__}, python {sys.version.split()[0]})")
    sub = p.add_subparsers(dest="command", metavar="COMMAND")

    def add(name, **kw):
        # the one-line help is also the description `drfm NAME --help` shows
        kw.setdefault("description", kw.get("help"))
        return sub.add_parser(name, **kw)

    def common(sp, device="auto", device_help="'auto' (CUDA if available), 'cpu' or 'cuda[:N]'"):
        sp.add_argument("--json", action="store_true", help="print machine-readable JSON instead of a table")
        sp.add_argument("--verbose", "-v", action="store_true", help="show progress bars")
        if device:
            sp.add_argument("--device", default=device, help=device_help)

    def metrics_arg(sp):
        sp.add_argument("--metrics", nargs="+", default=["nc1", "nc2"],
                        help="metrics: nc1 nc1_papyan nc2 nc2_equinorm nc2_equiangularity cdnv nc1_sphere nc2_sphere "
                             "(on features normalised to the unit sphere) label_alignment effective_features "
                             "mf_share (the kernel picture: participation ratio, variance share of the top K-1 "
                             "eigenvalues), and per layer nc3 (against the layer's least-squares readout), nc4 "
                             "(against the model's predictions), linear_cka (against the one-hot labels) "
                             "(default nc1 nc2); also nc2_uniformity, within_share, between_share, nc3_uniform")

    def data_home_arg(sp):
        sp.add_argument("--data-home", default=None,
                        help="folder holding the MNIST / Fashion-MNIST / CIFAR-10 files (default: $DRFM_DATA, "
                             "~/.cache/drfm)")

    def deep_rfm_args(sp):
        sp.add_argument("--feature-map", default="cosine", choices=["cosine", "relu", "none"],
                        help="Deep RFM random feature map after each layer's M^{1/2} (default cosine)")
        sp.add_argument("--sigma", type=float, default=0.05, help="Cauchy scale of the cosine map (default 0.05)")
        sp.add_argument("--bandwidth", type=float, default=2.0, help="Laplace bandwidth per layer (default 2)")

    sp = add("demo", help="fit an RFM classifier on the bundled digits and report accuracy and AGOP")
    sp.add_argument("--iters", type=int, default=5, help="number of AGOP iterations of the RFM (default 5)")
    sp.add_argument("--depth", type=int, default=8, help="depth of the Deep RFM collapse study (default 8)")
    sp.add_argument("--seed", type=int, default=0, help="random seed for the split and the model")
    common(sp)
    sp.set_defaults(func=cmd_demo, show=show_demo)

    sp = add("collapse", help="fit a Deep RFM and report neural collapse layer by layer, per stage")
    sp.add_argument("--dataset", default="digits", help="dataset name (see `drfm datasets`; default digits)")
    data_home_arg(sp)
    sp.add_argument("--depth", type=int, default=10, help="number of layers (default 10)")
    deep_rfm_args(sp)
    sp.add_argument("--width", type=int, default=None, help="random features per layer (default: input width)")
    sp.add_argument("--n-train", type=int, default=None, help="training points (default: the dataset's split)")
    metrics_arg(sp)
    sp.add_argument("--out", help="write the report as JSON here")
    sp.add_argument("--plot", help="write a plot of each metric against depth here (needs matplotlib)")
    sp.add_argument("--spectra", metavar="FILE",
                    help="write the per-layer feature spectra (the kernel picture of collapse, top 64 eigenvalues of "
                         "each layer's centred feature covariance) here (needs matplotlib)")
    sp.add_argument("--seed", type=int, default=0, help="random seed")
    common(sp)
    sp.set_defaults(func=cmd_collapse, show=show_collapse)

    sp = add(
        "fit", help="fit a model on a dataset or your own files; score it; optionally save it",
        description="Fit an RFM, a Deep RFM or an MLP on a named dataset (see `drfm datasets`) or on your own files, "
                    "report train/test scores, and save the fitted model with --save. Examples:\n"
                    "  drfm fit --dataset digits --model rfm --param iters=3 --save digits.pkl\n"
                    "  drfm fit --X X.npy --y y.npy --model deep-rfm --param depth=4 --test-size 0.2\n"
                    "  drfm fit --data table.csv --target label --task classification",
        formatter_class=argparse.RawDescriptionHelpFormatter)
    sp.add_argument("--dataset", help="a dataset name (uses the dataset's own train/test split)")
    data_home_arg(sp)
    sp.add_argument("--X", help="features file (.npy or .csv, one row per sample)")
    sp.add_argument("--y", help="targets file (.npy or .csv), with --X")
    sp.add_argument("--data", help="one .csv/.npy table holding features and the target column")
    sp.add_argument("--target", help="with --data: target column name or index (default: the last column)")
    sp.add_argument("--model", default="rfm", choices=sorted(MODELS), help="model family (default rfm)")
    sp.add_argument("--task", choices=["classification", "regression"],
                    help="default: the dataset's task; for files, classification when targets are text or few "
                         "integer values")
    sp.add_argument("--param", action="append", metavar="KEY=VALUE",
                    help="a model parameter, repeatable (e.g. --param iters=3 --param bandwidth=5.0); valid keys: "
                         + "; ".join(f"{name}: {', '.join(_param_names(name))}" for name in sorted(MODELS)))
    sp.add_argument("--test-size", type=float, default=0.2,
                    help="fraction held out to score files (default 0.2; 0 = none); datasets keep their split")
    sp.add_argument("--n-train", type=int, default=None, help="with --dataset: training points")
    sp.add_argument("--save", help="write the fitted model here (drfm model format 2: arrays and JSON, no pickle)")
    sp.add_argument("--seed", type=int, default=0, help="random seed (split and model)")
    common(sp)
    sp.set_defaults(func=cmd_fit, show=show_fit)

    sp = add(
        "predict", help="predict with a saved model on a .npy/.csv file",
        description="Load a model saved by `drfm fit --save` and predict on INPUT (.npy or .csv, one row per "
                    "sample). Model files (format 2) hold arrays and JSON and cannot run code when loaded; format 1 "
                    "files from earlier drfm versions are pickles and are refused unless --allow-pickle says you "
                    "trust their source.")
    sp.add_argument("model", help="a model file written by `drfm fit --save`")
    sp.add_argument("input", help="features to predict on (.npy or .csv)")
    sp.add_argument("-o", "--output", help="write predictions here (.npy or .csv; default: print them)")
    sp.add_argument("--allow-pickle", action="store_true",
                    help="also load format 1 model files (pickles from earlier drfm versions, which can run code "
                         "when loaded): only for files from a source you trust")
    common(sp, device="cpu", device_help="where predictions run: 'cpu' (default), 'cuda' or 'auto'")
    sp.set_defaults(func=cmd_predict, show=show_predict)

    sp = add(
        "compare", help="train an MLP and a Deep RFM of the same depth; per-layer collapse by stage and the NFA",
        description="Train a bias-free ReLU MLP (the seed paper's setup by default) and a Deep RFM with the same "
                    "number of layers on one dataset; report per layer NC1 at each stage (input, linear: M^{1/2} or "
                    "S V^T, nonlinear) for both, the linear stage's share of the collapse, the Neural Feature Ansatz "
                    "correlation corr(W^T W, AGOP^{1/2}) of the MLP (trained and at initialisation), and test accuracy.")
    sp.add_argument("--dataset", default="mnist5k", help="dataset name (see `drfm datasets`; default mnist5k)")
    data_home_arg(sp)
    sp.add_argument("--depth", type=int, default=5, help="hidden layers of the MLP = Deep RFM layers (default 5)")
    metrics_arg(sp)
    sp.add_argument("--width", type=int, default=512, help="MLP width (default 512)")
    sp.add_argument("--epochs", type=int, default=250, help="MLP training epochs (default 250)")
    sp.add_argument("--lr", type=float, default=5e-5, help="Adam learning rate (default 5e-5)")
    sp.add_argument("--init-gain", type=float, default=0.1, help="Xavier-uniform gain (default 0.1: small init)")
    sp.add_argument("--loss", default="mse", choices=["mse", "cross_entropy"], help="MLP loss (default mse on +-1)")
    sp.add_argument("--batch-size", type=int, default=128, help="MLP batch size (default 128)")
    sp.add_argument("--measure-every", type=int, default=None,
                    help="also record NC1 and NFA every N epochs (training dynamics; default off)")
    deep_rfm_args(sp)
    sp.add_argument("--n-train", type=int, default=None, help="training points (default: the dataset's split)")
    sp.add_argument("--out", help="write the whole report as JSON here")
    sp.add_argument("--plot", help="write NC1 / NFA against depth here (and against epochs to NAME-epochs.png "
                                   "with --measure-every)")
    sp.add_argument("--seed", type=int, default=0, help="random seed")
    common(sp)
    sp.set_defaults(func=cmd_compare, show=show_compare)

    sp = add("reproduce", help="the seed paper's experiment: Deep RFM (depth 20, cosine sigma 0.05) and the paper's "
                               "MLP (250 epochs) on the same digits, several seeds, resumable per seed; per layer and "
                               "stage mean +- std over seeds, test accuracy, NFA, training panels and figures")
    sp.add_argument("--dataset", default="mnist", help="dataset name (default mnist: the IDX files, see --data-home)")
    data_home_arg(sp)
    sp.add_argument("--out", required=True, help="folder for the per-seed files, summary.json and the figures")
    sp.add_argument("--depth", type=int, default=20, help="Deep RFM layers (default 20)")
    sp.add_argument("--mlp-depth", type=int, default=5, help="the MLP's hidden layers of 512 units (default 5)")
    sp.add_argument("--n-train", type=int, default=50000, help="training digits (default 50000)")
    sp.add_argument("--epochs", type=int, default=250, help="MLP epochs (default 250)")
    sp.add_argument("--measure-every", type=int, default=25, help="MLP snapshot interval in epochs (default 25)")
    sp.add_argument("--seeds", type=int, default=3, help="seeds 0..SEEDS-1 (default 3)")
    sp.add_argument("--feature-maps", "--feature-map", nargs="+", default=["cosine", "relu"],
                    choices=["cosine", "relu", "none"],
                    help="Deep RFM random features: the first is compared with the MLP, the others are fitted beside "
                         "it (default: cosine relu)")
    sp.add_argument("--layer-sample-size", type=int, default=20000,
                    help="rows on which each layer's kernel machine learns its M (0: all; default 20000); the "
                         "features, metrics and final machine use all rows")
    sp.add_argument("--agop-sample-size", type=int, default=20000, help="rows each layer's AGOP averages over")
    sp.add_argument("--no-baseline", action="store_true", help="skip plain Laplace kernel ridge on the raw digits")
    sp.add_argument("--mlp-backbone", choices=["resnet18", "vgg11"],
                    help="the paper's CNN variant: a torchvision ResNet-18 / VGG-11 in front of the MLP, trained with "
                         "it; the MLP head's layers are analysed (needs torchvision; image sets only)")
    sp.add_argument("--sigma", type=float, default=0.05, help="cosine feature scale (default 0.05)")
    metrics_arg(sp)
    common(sp)
    sp.set_defaults(func=cmd_reproduce, show=show_reproduce)

    sp = add("feature-learning", help="when feature learning hurts: RFM against the same kernel without feature "
                                      "learning (iters=0), test error against n, on a target smooth in every "
                                      "direction and on a low-rank target (points on the unit sphere)")
    sp.add_argument("--n", type=int, nargs="+", default=[250, 500, 1000, 2000, 4000], help="training sizes")
    sp.add_argument("--d", type=int, default=20, help="input dimension (default 20)")
    sp.add_argument("--iters", type=int, default=5, help="RFM's AGOP steps (default 5)")
    sp.add_argument("--seeds", type=int, default=1, help="repetitions with seeds 0..SEEDS-1 (default 1)")
    sp.add_argument("--out", help="write the rows here (JSON)")
    sp.add_argument("--plot", help="write the figure here (needs matplotlib)")
    common(sp)
    sp.set_defaults(func=cmd_feature_learning, show=show_feature_learning)

    sp = add("datasets", help="list the datasets available offline")
    common(sp, device=None)
    sp.set_defaults(func=cmd_datasets, show=show_datasets)

    sp = add("bench", help="run a benchmark suite (each case in its own process); JSON lines out")
    sp.add_argument("suite", nargs="?", help="suite name: a file benchmarks/SUITE.py (rfm, solvers, compare)")
    sp.add_argument("--compare", nargs=2, metavar=("OLD", "NEW"),
                    help="instead of running: print new/old ratios of two results files (matched runs)")
    sp.add_argument("--out", help="JSON-lines output file (default bench-results/SUITE-TIMESTAMP.jsonl)")
    sp.add_argument("--n", type=int, nargs="+", help="training sizes to run instead of the suite's defaults")
    sp.add_argument("--quick", action="store_true", help="tiny sizes, to check the suite runs")
    sp.add_argument("--only", nargs="+", metavar="TEXT",
                    help="run only the cases whose kind/model/dataset/variant contain every TEXT "
                         "(e.g. --only RFMRegressor)")
    sp.add_argument("--timeout", type=float, default=3600, help="seconds allowed per case (default 3600)")
    sp.add_argument("--suite-dir", help="directory holding the suites (default: the checkout's benchmarks/)")
    common(sp)
    sp.set_defaults(func=cmd_bench, show=show_bench)
    return p


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if not getattr(args, "command", None):
        parser.print_help()
        return 2
    try:
        res = args.func(args)
    except (UsageError, ValueError, TypeError, FileNotFoundError, ImportError) as exc:
        if os.environ.get("DRFM_DEBUG"):
            raise
        msg = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        print(f"drfm {args.command}: error: {msg}", file=sys.stderr)
        return 2
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
