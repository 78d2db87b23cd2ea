"""Suite `compare`: a trained MLP (5 hidden layers of 512, the seed paper's setup) beside a Deep RFM of depth 5 on
5000 MNIST digits (4000 train / 1000 test): per-layer NC1 by stage, the linear stage's share of each layer's collapse,
NFA correlation per layer (trained and at initialisation), test accuracy, seconds.

Target (DNN issue, 2-core CPU): the whole comparison in <= 5 minutes.
"""
from __future__ import annotations

import time

CASES = [
    {"suite": "compare", "dataset": "mnist5k", "depth": 5, "width": 512, "epochs": 250, "measure_every": 50},
]
QUICK_CASES = [
    {"suite": "compare", "dataset": "digits", "depth": 2, "width": 32, "epochs": 5, "measure_every": None,
     "lr": 1e-3},
]


def cases(*, quick: bool = False, sizes: list[int] | None = None, device: str = "auto") -> list[dict]:
    base = QUICK_CASES if quick else CASES
    if sizes:
        base = [{**c, "n": n} for n in sizes for c in base]
    return [{**c, "device": device} for c in base]


def run_case(case: dict) -> dict:
    from drfm import dnn
    from drfm.datasets import load

    data = load(case["dataset"], n_train=case.get("n"), random_state=0)
    t0 = time.perf_counter()
    mlp = {"width": case["width"], "epochs": case["epochs"], "device": case["device"]}
    if "lr" in case:
        mlp["lr"] = case["lr"]
    report = dnn.compare(data.X_train, data.y_train, data.X_test, data.y_test, depth=case["depth"],
                         mlp_params=mlp, deep_params={"device": case["device"]},
                         measure_every=case["measure_every"])
    seconds = time.perf_counter() - t0
    layers = {}
    for r in report.rows:
        if "epoch" in r or r["metric"] not in ("nc1", "nfa_sqrt", "nfa_sqrt_delta"):
            continue
        key = f"{r['model']}/{r['stage']}/{r['metric']}"
        layers.setdefault(key, {})[r["layer"]] = r["value"]
    return {
        "model": "mlp-vs-deep_rfm", "n": report.meta["n_train"], "n_test": report.meta["n_test"],
        "seconds": seconds, "fit_seconds": seconds, "predict_seconds": 0.0,
        "score": report.meta["mlp"]["test_accuracy"], "metric": "mlp_accuracy",
        "deep_rfm_accuracy": report.meta["deep_rfm"]["test_accuracy"],
        "mlp_fit_seconds": report.meta["mlp"]["fit_seconds"],
        "mlp_train_accuracy": report.meta["mlp"]["train_accuracy"],
        "deep_rfm_fit_seconds": report.meta["deep_rfm"]["fit_seconds"],
        "per_layer": {k: {str(layer): v for layer, v in sorted(d.items())} for k, d in sorted(layers.items())},
        "linear_share": report.linear_share("nc1"),
        "table": dnn.comparison_table(report),
        "device": case["device"],
    }
