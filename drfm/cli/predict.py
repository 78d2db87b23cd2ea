"""`drfm predict`."""
from __future__ import annotations

import sys
import time


from ._common import UsageError, common, csv_header_arg


def register(add) -> None:
    """The `drfm predict` parser (``add(name, **kw)`` makes a subparser)."""
    sp = add(
        "predict", help="predict with a saved model on a .npy/.csv file",
        description="Load a model saved by `drfm fit --save` and predict on INPUT (.npy or .csv, one row per "
                    "sample). Model files (format 2) hold arrays and JSON and cannot run code when loaded; format 1 "
                    "files from earlier drfm versions are pickles and are refused unless --allow-pickle says you "
                    "trust their source.")
    sp.add_argument("model", help="a model file written by `drfm fit --save`")
    sp.add_argument("input", help="features to predict on (.npy or .csv)")
    csv_header_arg(sp)
    sp.add_argument("-o", "--output", help="write predictions here (.npy or .csv; default: print them)")
    sp.add_argument("--allow-pickle", action="store_true",
                    help="also load format 1 model files (pickles from earlier drfm versions, which can run code "
                         "when loaded): only for files from a source you trust")
    common(sp, device="cpu", device_help="where predictions run: 'cpu' (default), 'cuda' or 'auto'")
    sp.set_defaults(func=cmd_predict, show=show_predict)


def cmd_predict(args) -> dict:
    import numpy as np

    from ..data.io import check_output_path, feature_table, model_inputs, read_array, write_array
    from ..data.models import ModelFileError, load_model, read_header

    check_output_path(args.output, "output file", (".npy", ".csv", ".txt"))

    try:
        model = load_model(args.model, device=args.device, allow_pickle=args.allow_pickle)
        header = read_header(args.model)
    except (ModelFileError, FileNotFoundError) as exc:
        raise UsageError(str(exc)) from None
    # a model with categorical columns reads the text in them (a CSV); every other column must be a number
    text_columns = bool(getattr(model, "categorical_", None))
    X, names = read_array(args.input, "input", header=args.header, numeric=not text_columns)
    if text_columns:
        X, _ = feature_table(X, f"input file {args.input!r}", names)
    if X.ndim == 1:
        X = X[None, :] if X.shape[0] == model.n_features_in_ else X[:, None]
    X, preprocessing = model_inputs(X, names, header, f"input file {args.input!r}")
    if X.shape[1] != model.n_features_in_:
        raise UsageError(f"input file {args.input!r} has {X.shape[1]} columns but the model expects "
                         f"{model.n_features_in_} features")
    t0 = time.perf_counter()
    pred = np.asarray(model.predict(X))
    seconds = time.perf_counter() - t0
    if len(pred) != len(X):  # one prediction per input row, in order, end to end
        raise RuntimeError(f"{len(pred)} predictions for {len(X)} input rows")
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
