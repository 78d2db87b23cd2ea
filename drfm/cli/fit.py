"""`drfm fit`."""
from __future__ import annotations

import argparse
import os
import time

import numpy as np

from ._common import MODELS, UsageError, common, csv_header_arg, data_home_arg, model_class, parse_params


class _FitHelp(argparse.RawDescriptionHelpFormatter):
    """Lists every model's parameter names under ``--param``, computed only when the help is shown (building the
    parser constructs no model)."""

    def _expand_help(self, action):
        text = super()._expand_help(action)
        if action.dest == "param":
            text += " " + "; ".join(f"{name}: {', '.join(_param_names(name))}" for name in sorted(MODELS))
        return text


def _param_names(model: str) -> list[str]:
    """The parameters ``--param`` accepts for a model family (its classifier's)."""
    return sorted(model_class(model, "classification")().get_params(deep=False))


def register(add) -> None:
    """The `drfm fit` parser (``add(name, **kw)`` makes a subparser)."""
    sp = add(
        "fit", help="fit a model on a dataset or your own files; score it; optionally save it",
        description="Fit an RFM, a Deep RFM or an MLP on a named dataset (see `drfm datasets`) or on your own files, "
                    "report train/test scores, and save the fitted model with --save. Examples:\n"
                    "  drfm fit --dataset digits --model rfm --param iters=3 --save digits.drfm\n"
                    "  drfm fit --X X.npy --y y.npy --model deep-rfm --param depth=4 --test-size 0.2\n"
                    "  drfm fit --data table.csv --target label --task classification",
        formatter_class=_FitHelp)
    sp.add_argument("--dataset", help="a dataset name (uses the dataset's own train/test split)")
    data_home_arg(sp)
    sp.add_argument("--X", help="features file (.npy or .csv, one row per sample)")
    sp.add_argument("--y", help="targets file (.npy or .csv), with --X")
    sp.add_argument("--data", help="one .csv/.npy table holding features and the target column")
    sp.add_argument("--target", help="with --data: target column name or index (default: the last column)")
    csv_header_arg(sp)
    sp.add_argument("--model", default="rfm", choices=sorted(MODELS), help="model family (default rfm)")
    sp.add_argument("--task", choices=["classification", "regression"],
                    help="default: the dataset's task; for files, classification when targets are text or few "
                         "integer values")
    sp.add_argument("--param", action="append", metavar="KEY=VALUE",
                    help="a model parameter, repeatable (e.g. --param iters=3 --param bandwidth=5.0); valid keys:")
    sp.add_argument("--standardize", action="store_true",
                    help="standardise the numeric feature columns with the training rows' mean and spread (one-hot "
                         "columns of categorical ones untouched; regression targets centred), stored in the model "
                         "and applied to every input it predicts on (rfm only: --param standardize=true)")
    sp.add_argument("--test-size", type=float, default=0.2,
                    help="fraction held out to score files (default 0.2; 0 = none); datasets keep their split")
    sp.add_argument("--n-train", type=int, default=None, help="with --dataset: training points")
    sp.add_argument("--save", help="write the fitted model here (drfm model format 2: arrays and JSON, no pickle)")
    sp.add_argument("--seed", type=int, default=0, help="random seed (split and model)")
    common(sp)
    sp.set_defaults(func=cmd_fit, show=show_fit)


def cmd_fit(args) -> dict:
    from ..data.io import check_output_path

    check_output_path(args.save, "--save")  # before the data are read and the model is fitted
    rank, world, rank_device = _init_distributed(args.device)
    try:
        return _fit_and_score(args, rank, world, rank_device)
    finally:
        _close_distributed(world)


def _fit_and_score(args, rank, world, rank_device) -> dict:
    from .._params import plain_params
    from ..data.io import training_data
    from ..data.models import save_model

    data = training_data(dataset=args.dataset, X=args.X, y=args.y, data=args.data, target=args.target,
                         task=args.task, test_size=args.test_size, n_train=args.n_train, seed=args.seed,
                         data_home=args.data_home, shard=(rank, world) if world > 1 else None, header=args.header)
    cls = model_class(args.model, data.task)
    params = parse_params(args.param)
    valid = set(cls().get_params(deep=True))  # nested parameters too (e.g. a Deep RFM's layer__reg)
    unknown = sorted(set(params) - valid)
    if unknown:
        raise UsageError(f"unknown parameter(s) {', '.join(unknown)} for {cls.__name__}; valid: "
                         f"{', '.join(sorted(valid))}")
    if data.categorical:  # text columns of a CSV: categorical features (RFM one-hot encodes them, one block each)
        cols = ", ".join(repr(data.feature_names[j]) if data.feature_names else f"column {j + 1}"
                         for j in data.categorical)
        if "categorical_features" not in valid:
            raise UsageError(f"feature column(s) {cols} hold text: {cls.__name__} takes numbers only; --model rfm "
                             "fits categorical columns directly (or one-hot encode them first)")
        if params.get("categorical_features", "from_dtype") == "from_dtype":
            params["categorical_features"] = list(data.categorical)
    if args.standardize:
        if "standardize" not in valid:
            raise UsageError(f"--standardize: {cls.__name__} has no standardize parameter (use --model rfm, or scale "
                             "the features before fitting)")
        params.setdefault("standardize", True)
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

def _close_distributed(world: int) -> None:
    """Under torchrun: tear the process group down before the process exits (a gloo group left to the interpreter's
    exit can abort the rank: 'terminate called without an active exception', seen once in CI)."""
    if world <= 1:
        return
    import torch.distributed as dist

    if dist.is_initialized():
        dist.destroy_process_group()


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
