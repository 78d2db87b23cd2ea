"""`drfm collapse`."""
from __future__ import annotations



from ._common import common, data_home_arg, deep_rfm_args, metrics_arg

#: rows per class of `drfm collapse --grams`' Gram matrices
GRAM_ROWS_PER_CLASS = 20


def register(add) -> None:
    """The `drfm collapse` parser (``add(name, **kw)`` makes a subparser)."""
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
    sp.add_argument("--grams", metavar="FILE",
                    help="write the seed paper's Gram-matrix figure here: per layer, the cosine Gram matrix of the "
                         "layer inputs (centred, 20 rows per class sorted by class) (needs matplotlib)")
    sp.add_argument("--seed", type=int, default=0, help="random seed")
    common(sp)
    sp.set_defaults(func=cmd_collapse, show=show_collapse)


def cmd_collapse(args) -> dict:
    from ..studies import collapse_study

    report = collapse_study(args.dataset, depth=args.depth, feature_map=args.feature_map, width=args.width,
                            sigma=args.sigma, bandwidth=args.bandwidth, device=args.device, seed=args.seed,
                            verbose=args.verbose, n_train=args.n_train, metrics=tuple(args.metrics),
                            data_home=args.data_home, spectra=64 if args.spectra else None,
                            grams=GRAM_ROWS_PER_CLASS if args.grams else None)
    if args.out:
        report.to_json(args.out, indent=1)
    if args.plot:
        report.plot(args.plot)
    if args.spectra:
        report.plot_spectra(args.spectra)
    if args.grams:
        report.plot_grams(args.grams)
    return {**report.meta, "table": report.to_markdown(), "summary": report.summary(), "report": report.to_dict(),
            "out": args.out, "plot": args.plot, "spectra": args.spectra, "grams": args.grams}

def show_collapse(res: dict) -> str:
    head = (f"Deep RFM on {res['dataset']} (depth {res['depth']}, {res['feature_map']} features, "
            f"{res['n_train']} train): test accuracy {res['test_accuracy']:.4f}, fit {res['fit_seconds']:.1f} s")
    tail = "".join(f"\n{k}: {res[k]}" for k in ("out", "plot", "spectra", "grams") if res.get(k))
    return f"{head}\n{res['table']}\n\n{res['summary']}{tail}"
