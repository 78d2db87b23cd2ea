"""`drfm compare`."""
from __future__ import annotations

import time
from pathlib import Path


from ._common import UsageError, common, data_home_arg, deep_rfm_args, metrics_arg


def register(add) -> None:
    """The `drfm compare` parser (``add(name, **kw)`` makes a subparser)."""
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


def cmd_compare(args) -> dict:
    from ..data.datasets import load
    from ..rfm import RFMRegressor
    from ..collapse import check_metrics
    from ..studies import compare, comparison_table

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
