"""The ``drfm`` command line: a thin shell over the public API.

    drfm demo                 RFM on scikit-learn's bundled digits (accuracy, time, AGOP spectrum) and a small Deep RFM
                              neural-collapse study (table per layer and stage)
    drfm collapse             Deep RFM layerwise collapse report on a dataset (table, JSON, plot)
    drfm compare              train an MLP and a Deep RFM of equal depth: per-layer collapse by stage, NFA, accuracy
    drfm datasets             list the datasets available offline
    drfm bench SUITE          run a benchmark suite from benchmarks/ (each case in its own process), JSON lines out

Exit codes: 0 success, 2 bad arguments or files (one-line reason on stderr, no traceback; set DRFM_DEBUG=1 for the
traceback), 1 unexpected failure.
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

__all__ = ["main"]


class UsageError(Exception):
    """A user error: reported as one line on stderr with exit code 2."""


# ---------------------------------------------------------------------------------------------------------------------
# demo
def _collapse_study(dataset, *, depth, feature_map, width, sigma, bandwidth, device, seed, verbose, n_train=None,
                    metrics=("nc1", "nc2")):
    from .collapse import collapse_report
    from .datasets import load
    from .deep import DeepRFMClassifier

    data = load(dataset, n_train=n_train, random_state=seed)
    if data.task != "classification":
        raise UsageError(f"dataset {dataset!r} is a regression set; collapse needs class labels")
    model = DeepRFMClassifier(depth, feature_map=feature_map, width=width, sigma=sigma, bandwidth=bandwidth,
                              device=device, random_state=seed, verbose=verbose)
    t0 = time.perf_counter()
    model.fit(data.X_train, data.y_train)
    fit_s = time.perf_counter() - t0
    acc = model.score(data.X_test, data.y_test)
    report = collapse_report(model, data.X_train, data.y_train, metrics=metrics)
    report.meta.update({"dataset": dataset, "feature_map": feature_map, "test_accuracy": float(acc),
                        "fit_seconds": fit_s, "n_train": len(data.y_train), "n_test": len(data.y_test)})
    return report


def cmd_demo(args) -> dict:
    import numpy as np

    from .datasets import load
    from .rfm import RFMClassifier

    data = load("digits", random_state=args.seed)
    model = RFMClassifier(iters=args.iters, device=args.device, random_state=args.seed, verbose=args.verbose)
    t0 = time.perf_counter()
    model.fit(data.X_train, data.y_train)
    fit_s = time.perf_counter() - t0
    acc = model.score(data.X_test, data.y_test)
    eig = np.linalg.eigvalsh(model.M_)[::-1]
    report = _collapse_study("digits", depth=args.depth, feature_map="relu", width=None, sigma=0.05, bandwidth=2.0,
                             device=args.device, seed=args.seed, verbose=args.verbose)
    return {
        "dataset": "digits",
        "n_train": len(data.y_train),
        "n_test": len(data.y_test),
        "test_accuracy": float(acc),
        "fit_seconds": fit_s,
        "device": model.device_,
        "iters": args.iters,
        "train_accuracy_per_iter": [h["train_score"] for h in model.history_],
        "top_agop_eigenvalues": [float(v) for v in eig[:8]],
        "agop_effective_rank": float(eig.sum() ** 2 / (eig**2).sum()) if eig.any() else 0.0,
        "deep_rfm": {**report.meta, "table": report.to_markdown(), "summary": report.summary(),
                     "report": report.to_dict()},
    }


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
    report = _collapse_study(args.dataset, depth=args.depth, feature_map=args.feature_map, width=args.width,
                             sigma=args.sigma, bandwidth=args.bandwidth, device=args.device, seed=args.seed,
                             verbose=args.verbose, n_train=args.n_train, metrics=tuple(args.metrics))
    if args.out:
        report.to_json(args.out, indent=1)
    if args.plot:
        report.plot(args.plot)
    return {**report.meta, "table": report.to_markdown(), "summary": report.summary(), "report": report.to_dict(),
            "out": args.out, "plot": args.plot}


def show_collapse(res: dict) -> str:
    head = (f"Deep RFM on {res['dataset']} (depth {res['depth']}, {res['feature_map']} features, "
            f"{res['n_train']} train): test accuracy {res['test_accuracy']:.4f}, fit {res['fit_seconds']:.1f} s")
    tail = "".join(f"\n{k}: {res[k]}" for k in ("out", "plot") if res.get(k))
    return f"{head}\n{res['table']}\n\n{res['summary']}{tail}"


# ---------------------------------------------------------------------------------------------------------------------
# compare
def cmd_compare(args) -> dict:
    from . import dnn
    from .datasets import load

    data = load(args.dataset, n_train=args.n_train, random_state=args.seed)
    if data.task != "classification":
        raise UsageError(f"dataset {args.dataset!r} is a regression set; compare needs class labels")
    mlp = {"width": args.width, "epochs": args.epochs, "lr": args.lr, "init_gain": args.init_gain,
           "loss": args.loss, "batch_size": args.batch_size, "device": args.device}
    deep = {"feature_map": args.feature_map, "sigma": args.sigma, "bandwidth": args.bandwidth, "device": args.device}
    t0 = time.perf_counter()
    report = dnn.compare(data.X_train, data.y_train, data.X_test, data.y_test, depth=args.depth, mlp_params=mlp,
                         deep_params=deep, measure_every=args.measure_every, random_state=args.seed,
                         verbose=args.verbose)
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
    return {**report.meta, "table": dnn.comparison_table(report), "summary": report.summary(),
            "linear_share": report.linear_share("nc1"), "report": report.to_dict(), "out": args.out,
            "plots": [str(p) for p in plots]}


def show_compare(res: dict) -> str:
    m, d = res["mlp"], res["deep_rfm"]
    head = (f"{res['dataset']}: {res['n_train']} train / {res['n_test']} test, depth {res['depth']}\n"
            f"  Deep RFM   test accuracy {d['test_accuracy']:.4f}   fit {d['fit_seconds']:.1f} s\n"
            f"  MLP        test accuracy {m['test_accuracy']:.4f}   fit {m['fit_seconds']:.1f} s "
            f"(train accuracy {m['train_accuracy']:.4f})")
    tail = "".join(f"\n{k}: {v}" for k, v in (("out", res.get("out")), ("plots", ", ".join(res["plots"]))) if v)
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
def _suite_dir(arg: str | None) -> Path:
    candidates = [Path(arg)] if arg else []
    if os.environ.get("DRFM_BENCHMARKS"):
        candidates.append(Path(os.environ["DRFM_BENCHMARKS"]))
    candidates += [Path(__file__).resolve().parents[1] / "benchmarks", Path.cwd() / "benchmarks"]
    for c in candidates:
        if (c / "_harness.py").is_file():
            return c
    raise UsageError(
        "benchmark suites not found: they ship with the source tree (benchmarks/); run from a checkout "
        "or pass --suite-dir"
    )


def _load_suite(path: Path):
    import importlib.util

    spec = importlib.util.spec_from_file_location(f"_drfm_suite_{path.stem}", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def cmd_bench(args) -> list[dict]:
    from tqdm.auto import tqdm

    sdir = _suite_dir(args.suite_dir)
    suites = sorted(p.stem for p in sdir.glob("*.py") if not p.stem.startswith("_"))
    if args.suite not in suites:
        raise UsageError(f"unknown benchmark suite {args.suite!r}; available: {', '.join(suites)}")
    suite_file = sdir / f"{args.suite}.py"
    suite = _load_suite(suite_file)
    todo = suite.cases(quick=args.quick, sizes=args.n, device=args.device)
    out_path = Path(args.out) if args.out else Path("bench-results") / f"{args.suite}-{time.strftime('%Y%m%d-%H%M%S')}.jsonl"
    out_path.parent.mkdir(parents=True, exist_ok=True)
    marker = "DRFM-BENCH-RESULT "
    results = []
    with open(out_path, "w") as fh:
        for case in tqdm(todo, desc=f"bench {args.suite}", disable=not args.verbose, unit="case"):
            proc = subprocess.run(
                [sys.executable, str(sdir / "_harness.py"), str(suite_file), json.dumps(case)],
                capture_output=True, text=True, timeout=args.timeout,
            )
            lines = [ln for ln in proc.stdout.splitlines() if ln.startswith(marker)]
            if proc.returncode != 0 or not lines:
                tail = (proc.stderr or proc.stdout).strip().splitlines()[-1:] or ["no output"]
                rec = {**case, "error": tail[0], "returncode": proc.returncode}
            else:
                rec = json.loads(lines[-1][len(marker):])
            results.append(rec)
            fh.write(json.dumps(rec) + "\n")
            fh.flush()
    for rec in results:
        rec.setdefault("results_file", str(out_path))
    return results


def show_bench(res: list[dict]) -> str:
    rows = []
    for r in res:
        if "error" in r:
            rows.append(f"{r.get('kind', '?'):<12} {r.get('model', ''):<20} n={r.get('n', '')}: ERROR {r['error']}")
        elif r.get("kind") == "kernel_build":
            rows.append(
                f"{'kernel_build':<12} {'n=%d d=%d' % (r['n'], r['d']):<20} kernel {r['kernel_seconds']:.3f} s, "
                f"GEMM+exp {r['gemm_plus_exp_seconds']:.3f} s, ratio {r['ratio']:.2f} ({r['device']})"
            )
        else:
            rows.append(
                f"{r.get('dataset', ''):<12} {r.get('model', ''):<20} n={r['n']:<7} fit {r['fit_seconds']:8.2f} s  "
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
        description="Deep Recursive Feature Machines: AGOP feature learning with Laplace kernel machines.",
    )
    sub = p.add_subparsers(dest="command", metavar="COMMAND")

    def common(sp, device=True):
        sp.add_argument("--json", action="store_true", help="print machine-readable JSON instead of a table")
        sp.add_argument("--verbose", "-v", action="store_true", help="show progress bars")
        if device:
            sp.add_argument("--device", default="auto", help="'auto' (CUDA if available), 'cpu' or 'cuda[:N]'")

    sp = sub.add_parser("demo", help="fit an RFM classifier on the bundled digits and report accuracy and AGOP")
    sp.add_argument("--iters", type=int, default=5, help="number of AGOP iterations of the RFM (default 5)")
    sp.add_argument("--depth", type=int, default=8, help="depth of the Deep RFM collapse study (default 8)")
    sp.add_argument("--seed", type=int, default=0, help="random seed for the split and the model")
    common(sp)
    sp.set_defaults(func=cmd_demo, show=show_demo)

    sp = sub.add_parser("collapse", help="fit a Deep RFM and report neural collapse layer by layer, per stage")
    sp.add_argument("--dataset", default="digits", help="dataset name (see `drfm datasets`; default digits)")
    sp.add_argument("--depth", type=int, default=10, help="number of layers (default 10)")
    sp.add_argument("--feature-map", default="cosine", choices=["cosine", "relu", "none"],
                    help="random feature map after each layer's M^{1/2} (default cosine)")
    sp.add_argument("--width", type=int, default=None, help="random features per layer (default: input width)")
    sp.add_argument("--sigma", type=float, default=0.05, help="Cauchy scale of the cosine map (default 0.05)")
    sp.add_argument("--bandwidth", type=float, default=2.0, help="Laplace bandwidth per layer (default 2)")
    sp.add_argument("--n-train", type=int, default=None, help="training points (default: the dataset's split)")
    sp.add_argument("--metrics", nargs="+", default=["nc1", "nc2"],
                    help="metrics: nc1 nc1_papyan nc2 nc2_equinorm nc2_equiangularity cdnv (default nc1 nc2)")
    sp.add_argument("--out", help="write the report as JSON here")
    sp.add_argument("--plot", help="write a plot of each metric against depth here (needs matplotlib)")
    sp.add_argument("--seed", type=int, default=0, help="random seed")
    common(sp)
    sp.set_defaults(func=cmd_collapse, show=show_collapse)

    sp = sub.add_parser(
        "compare", help="train an MLP and a Deep RFM of the same depth; per-layer collapse by stage and the NFA",
        description="Train a bias-free ReLU MLP (the seed paper's setup by default) and a Deep RFM with the same "
                    "number of layers on one dataset; report per layer NC1 at each stage (input, linear: M^{1/2} or "
                    "S V^T, nonlinear) for both, the linear stage's share of the collapse, the Neural Feature Ansatz "
                    "correlation corr(W^T W, AGOP^{1/2}) of the MLP (trained and at initialisation), and test accuracy.")
    sp.add_argument("--dataset", default="mnist5k", help="dataset name (see `drfm datasets`; default mnist5k)")
    sp.add_argument("--depth", type=int, default=5, help="hidden layers of the MLP = Deep RFM layers (default 5)")
    sp.add_argument("--width", type=int, default=512, help="MLP width (default 512)")
    sp.add_argument("--epochs", type=int, default=250, help="MLP training epochs (default 250)")
    sp.add_argument("--lr", type=float, default=5e-5, help="Adam learning rate (default 5e-5)")
    sp.add_argument("--init-gain", type=float, default=0.1, help="Xavier-uniform gain (default 0.1: small init)")
    sp.add_argument("--loss", default="mse", choices=["mse", "cross_entropy"], help="MLP loss (default mse on +-1)")
    sp.add_argument("--batch-size", type=int, default=128, help="MLP batch size (default 128)")
    sp.add_argument("--measure-every", type=int, default=None,
                    help="also record NC1 and NFA every N epochs (training dynamics; default off)")
    sp.add_argument("--feature-map", default="cosine", choices=["cosine", "relu", "none"],
                    help="Deep RFM random feature map (default cosine)")
    sp.add_argument("--sigma", type=float, default=0.05, help="Deep RFM cosine scale (default 0.05)")
    sp.add_argument("--bandwidth", type=float, default=2.0, help="Deep RFM Laplace bandwidth (default 2)")
    sp.add_argument("--n-train", type=int, default=None, help="training points (default: the dataset's split)")
    sp.add_argument("--out", help="write the whole report as JSON here")
    sp.add_argument("--plot", help="write NC1 / NFA against depth here (and against epochs to NAME-epochs.png "
                                   "with --measure-every)")
    sp.add_argument("--seed", type=int, default=0, help="random seed")
    common(sp)
    sp.set_defaults(func=cmd_compare, show=show_compare)

    sp = sub.add_parser("datasets", help="list the datasets available offline")
    common(sp, device=False)
    sp.set_defaults(func=cmd_datasets, show=show_datasets)

    sp = sub.add_parser("bench", help="run a benchmark suite (each case in its own process); JSON lines out")
    sp.add_argument("suite", help="suite name: a file benchmarks/SUITE.py (e.g. rfm)")
    sp.add_argument("--out", help="JSON-lines output file (default bench-results/SUITE-TIMESTAMP.jsonl)")
    sp.add_argument("--n", type=int, nargs="+", help="training sizes to run instead of the suite's defaults")
    sp.add_argument("--quick", action="store_true", help="tiny sizes, to check the suite runs")
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
    except (UsageError, ValueError, TypeError, FileNotFoundError) as exc:
        if os.environ.get("DRFM_DEBUG"):
            raise
        msg = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        print(f"drfm {args.command}: error: {msg}", file=sys.stderr)
        return 2
    if args.json:
        print(json.dumps(res, indent=None if isinstance(res, list) else 2, default=str))
    else:
        print(args.show(res))
    return 0


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
