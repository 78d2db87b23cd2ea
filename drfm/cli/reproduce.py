"""`drfm reproduce`."""
from __future__ import annotations



from ._common import UsageError, common, data_home_arg, metrics_arg


def register(add) -> None:
    """The `drfm reproduce` parser (``add(name, **kw)`` makes a subparser)."""
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
    sp.add_argument("--subset-study", type=int, nargs="+", metavar="SIZE",
                    help="instead of the study: seed 0's Deep RFM (the first feature map) once per layer sample size "
                         "(0: every row), NC1 / NC2 on all rows and split into each layer's fitted and unfitted rows; "
                         "OUT/subset-SIZE.json per size (resumable), OUT/subset.md")
    metrics_arg(sp)
    common(sp)
    sp.set_defaults(func=cmd_reproduce, show=show_reproduce)


def cmd_reproduce(args) -> dict:
    from ..studies.reproduce import reproduce

    from ..collapse import check_metrics

    if min(args.depth, args.mlp_depth, args.epochs, args.seeds, args.measure_every, args.agop_sample_size) < 1:
        raise UsageError("--depth, --mlp-depth, --epochs, --seeds, --measure-every and --agop-sample-size must be >= 1")
    if args.layer_sample_size < 0:
        raise UsageError("--layer-sample-size must be >= 0 (0: every training row)")
    if len(set(args.feature_maps)) != len(args.feature_maps):
        raise UsageError(f"--feature-maps names a map twice: {' '.join(args.feature_maps)}")
    check_metrics(args.metrics)  # before any data are read or models trained
    if args.subset_study is not None:
        return _subset(args)
    summary = reproduce(args.dataset, args.out, seeds=tuple(range(args.seeds)), depth=args.depth,
                        mlp_depth=args.mlp_depth,
                        n_train=args.n_train, epochs=args.epochs, measure_every=args.measure_every,
                        feature_maps=tuple(args.feature_maps), sigma=args.sigma, metrics=tuple(args.metrics),
                        layer_sample_size=args.layer_sample_size or None, agop_sample_size=args.agop_sample_size,
                        baseline=not args.no_baseline, mlp_backbone=args.mlp_backbone,
                        data_home=args.data_home, device=args.device, verbose=args.verbose)
    return {"out": args.out, "n_seeds": summary["n_seeds"], "test_accuracy": summary["test_accuracy"]}

def _subset(args) -> dict:
    from ..studies.reproduce import subset_study

    if min(args.subset_study) < 0:
        raise UsageError("--subset-study sizes must be >= 0 (0: every training row)")
    summary = subset_study(args.dataset, args.out, sizes=tuple(s or None for s in args.subset_study),
                           depth=args.depth, n_train=args.n_train, feature_map=args.feature_maps[0], sigma=args.sigma,
                           agop_sample_size=args.agop_sample_size, metrics=tuple(args.metrics),
                           data_home=args.data_home, device=args.device, verbose=args.verbose)
    return {"out": args.out, "subset": {m: v["test_accuracy"] for m, v in summary["runs"].items()}}


def show_reproduce(res: dict) -> str:
    if "subset" in res:
        return "\n".join([f"subset study in {res['out']} (subset.md, subset.json, subset-SIZE.json)"] + [
            f"  {m:<16} test accuracy {a:.4f}" for m, a in res["subset"].items()])
    acc = res["test_accuracy"]
    return "\n".join([f"{res['n_seeds']} seed(s) in {res['out']} (summary.json, report.md, depth.png, epochs.png; "
                      "the paper's NC1 scale: the same names with -paper)"] + [
        f"  {m:<14} test accuracy {a['mean']:.4f}" + ("" if a["std"] is None else f" +- {a['std']:.4f}")
        for m, a in acc.items()])
