"""Suite `rfm`: RFM fit/predict on the low-rank and 10-class tasks, scikit-learn KernelRidge on the same L2 Laplace
kernel as the reference, and the Laplace kernel build against its two unavoidable parts (bare GEMM + bare exp).

Peers measured in the same run: scikit-learn ``KernelRidge`` (same L2 Laplace kernel, M = I), scikit-learn
``MLPClassifier`` (2 x 256 ReLU, Adam, early stopping off) and the public ``xrfm`` package (optional: recorded as
skipped when it is not installed; ``pip install xrfm``).

The kernel family (``kernel=``) side by side on the low-rank task (n = 4000) and on MNIST (8000 training digits, the
10 000 test digits), each at ``bandwidth='auto'`` (case key ``variant``); and MNIST (8000 digits and the full 60 000)
against the peers on the same split: scikit-learn ``HistGradientBoostingClassifier`` and ``SVC`` (defaults), and
``xrfm`` with a 10% validation split tuned on accuracy. MNIST is read from the standard IDX files in ``$DRFM_DATA``
(or drfm's data folder); without them those cases are recorded as skipped.

Cases are declared in ``CASES``; ``drfm bench rfm`` runs each one in its own process (see ``drfm.bench``).
Targets (foundation issue, 2-core CPU): low-rank n=12800 fit <= 50 s with test R^2 >= 0.99; 10-class n=16000
fit <= 150 s with accuracy >= 0.80; kernel build within 1.5x of GEMM + exp.
"""
from __future__ import annotations

import time

import numpy as np

RFM_PARAMS = {"iters": 5, "bandwidth": 10.0, "reg": 1e-3}
LARGE_N_PARAMS = {"iter_sample_size": 12800, "solver_tol": 1e-3, "solver_max_iter": 10}

CASES = [
    {"suite": "rfm", "kind": "kernel_build", "n": 12800, "d": 100},
    {"suite": "rfm", "kind": "kernel_build", "n": 12800, "d": 784},
    {"suite": "rfm", "kind": "fit", "model": "drfm.RFMRegressor", "dataset": "lowrank", "n": 4000},
    {"suite": "rfm", "kind": "fit", "model": "sklearn.KernelRidge", "dataset": "lowrank", "n": 4000},
    {"suite": "rfm", "kind": "fit", "model": "drfm.RFMRegressor", "dataset": "lowrank", "n": 12800},
    {"suite": "rfm", "kind": "fit", "model": "sklearn.KernelRidge", "dataset": "lowrank", "n": 12800},
    {"suite": "rfm", "kind": "fit", "model": "drfm.RFMClassifier", "dataset": "classif10", "n": 16000},
    {"suite": "rfm", "kind": "fit", "model": "sklearn.KernelRidge", "dataset": "classif10", "n": 16000},
    {"suite": "rfm", "kind": "fit", "model": "sklearn.MLPClassifier", "dataset": "classif10", "n": 16000},
    {"suite": "rfm", "kind": "fit", "model": "xrfm.xRFM", "dataset": "lowrank", "n": 12800},
    {"suite": "rfm", "kind": "fit", "model": "xrfm.xRFM", "dataset": "classif10", "n": 16000},
]

#: the kernel family at bandwidth='auto' (the kernel's distance unit at twice the median distance)
KERNEL_VARIANTS = {
    "laplace": {"kernel": "laplace"},
    "gaussian": {"kernel": "gaussian"},
    "laplace_exp_0.5": {"kernel": "laplace_exp", "exponent": 0.5},
    "laplace_exp_1.5": {"kernel": "laplace_exp", "exponent": 1.5},
    "product_laplace": {"kernel": "product_laplace"},
}
CASES += [
    {"suite": "rfm", "kind": "fit", "model": f"drfm.{model}", "dataset": dataset, "n": n, "variant": name,
     "params": {"bandwidth": "auto", **params}}
    for dataset, model, n in (("lowrank", "RFMRegressor", 4000), ("mnist", "RFMClassifier", 8000))
    for name, params in KERNEL_VARIANTS.items()
]
#: MNIST against the peers, drfm with its defaults (bandwidth 10, early stopping on; variant 'defaults', so that
#: ``--only mnist defaults`` selects it apart from the kernel variants)
CASES += [
    {"suite": "rfm", "kind": "fit", "model": model, "dataset": "mnist", "n": n,
     **({"variant": "defaults"} if model.startswith("drfm.") else {})}
    for n in (8000, 60000)
    for model in ("drfm.RFMClassifier", "sklearn.HistGradientBoostingClassifier", "sklearn.SVC", "xrfm.xRFM")
]

#: small problems, where fixed costs dominate (#29): 4000 rows x 60 features, each estimator with its own defaults
CASES += [
    {"suite": "rfm", "kind": "fit", "model": model, "dataset": "lowrank", "n": 4000, "data": {"d": 60},
     "variant": "small-defaults", "defaults": True}
    for model in ("drfm.RFMRegressor", "xrfm.xRFM")
]

#: where a whole fit's time goes, per phase against its floor (#29): the exact path (direct / stored-matrix CG, as
#: solver='auto' picks) and the m-centre model, at d = 100 (low-rank) and d = 784 (MNIST)
#: (the m-centre model at sizes where it is the model of choice: the exact sizes would give it every row as a centre)
CASES += [
    {"suite": "rfm", "kind": "phases", "dataset": dataset, "n": n, "path": path}
    for dataset, sizes in (("lowrank", (12800, 100000)), ("mnist", (8000, 60000)))
    for path, n in zip(("exact", "m-centre"), sizes)
]

QUICK_CASES = [
    {"suite": "rfm", "kind": "kernel_build", "n": 2000, "d": 100},
    {"suite": "rfm", "kind": "fit", "model": "drfm.RFMRegressor", "dataset": "lowrank", "n": 1000},
    {"suite": "rfm", "kind": "fit", "model": "sklearn.KernelRidge", "dataset": "lowrank", "n": 1000},
    {"suite": "rfm", "kind": "fit", "model": "sklearn.MLPClassifier", "dataset": "gaussian", "n": 500},
    {"suite": "rfm", "kind": "fit", "model": "xrfm.xRFM", "dataset": "lowrank", "n": 1000},
    {"suite": "rfm", "kind": "phases", "dataset": "lowrank", "n": 1500, "path": "exact"},
    {"suite": "rfm", "kind": "phases", "dataset": "lowrank", "n": 1500, "path": "m-centre"},
]


def cases(*, quick: bool = False, sizes: list[int] | None = None, device: str = "auto") -> list[dict]:
    """The suite's cases; ``sizes`` replaces the training sizes of the fit cases (one run per model and size)."""
    base = QUICK_CASES if quick else CASES
    if sizes:
        fits = {(c["model"], c["dataset"], c.get("variant")): c for c in base if c["kind"] == "fit"}
        base = [c for c in base if c["kind"] != "fit"] + [
            {**c, "n": n} for n in sizes for c in fits.values()
        ]
        # beyond a direct solve, drfm learns M on a subset of LARGE_N_SUBSET points (direct solves) and fits the
        # final machine on all n (Nystrom-preconditioned CG); KernelRidge needs the dense n x n matrix and is skipped
        base = [c for c in base if not (c["kind"] == "fit" and c["n"] > 40000 and c["model"] == "sklearn.KernelRidge")]
        # (cases with a variant keep their own parameters: 'defaults' means the estimator's defaults at any n)
        base = [{**c, "params": LARGE_N_PARAMS} if c["kind"] == "fit" and c["n"] > 40000
                and c["model"].startswith("drfm.") and not c.get("variant") else c for c in base]
    return [{**c, "device": device} for c in base]


def _median_time(fn, repeats=5):
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return float(np.median(times))


def _kernel_build(case):
    import torch

    from kernels.laplace import laplace_kernel_transformed, sq_norms

    dev = torch.device("cuda" if case["device"] in ("auto", "cuda") and torch.cuda.is_available() else "cpu")
    sync = torch.cuda.synchronize if dev.type == "cuda" else (lambda: None)
    g = torch.Generator().manual_seed(0)
    x = torch.randn(case["n"], case["d"], generator=g).to(dev)
    x_sq = sq_norms(x)
    out = torch.empty(case["n"], case["n"], device=dev)

    def kernel():
        laplace_kernel_transformed(x, x, bandwidth=10.0, x_sq=x_sq, z_sq=x_sq, out=out)
        sync()

    def gemm_exp():
        torch.mm(x, x.T, out=out)
        out.exp_()
        sync()

    def gemm():
        torch.mm(x, x.T, out=out)
        sync()

    kernel(), gemm_exp()  # warm up
    t_kernel, t_parts, t_gemm = _median_time(kernel), _median_time(gemm_exp), _median_time(gemm)
    return {"device": str(dev), "kernel_seconds": t_kernel, "gemm_plus_exp_seconds": t_parts,
            "gemm_seconds": t_gemm, "ratio": t_kernel / t_parts}


def _laplace_l2(A, B, bandwidth):
    from scipy.spatial.distance import cdist

    return np.exp(-cdist(A, B) / bandwidth)


def _score(task, y_true, out, classes=None):
    from sklearn.metrics import accuracy_score, r2_score

    if task == "classification":
        return accuracy_score(y_true, classes[np.argmax(out, 1)])
    return r2_score(y_true, out)


def _xrfm(case, data):
    try:
        import torch
        from xrfm import xRFM
    except ImportError:
        return None
    dev = torch.device("cuda" if case["device"] in ("auto", "cuda") and torch.cuda.is_available() else "cpu")
    classes = None
    if data.task == "classification":
        classes, idx = np.unique(data.y_train, return_inverse=True)
        Y = np.eye(len(classes))[idx]
    else:
        Y = data.y_train.reshape(-1, 1)
    n_val = max(1, len(Y) // 10)  # xRFM tunes on a validation split: the last 10% of the training points
    t = lambda a: torch.as_tensor(np.asarray(a), dtype=torch.float32, device=dev)  # noqa: E731
    metric = "accuracy" if data.task == "classification" else "mse"
    model = xRFM(device=dev, tuning_metric=metric, random_state=0, verbose=False)
    t0 = time.perf_counter()
    model.fit(t(data.X_train[:-n_val]), t(Y[:-n_val]), t(data.X_train[-n_val:]), t(Y[-n_val:]))
    fit_s = time.perf_counter() - t0
    t0 = time.perf_counter()
    # with a classification metric xRFM's predict returns class indices; its predict_proba has one column per class
    out = model.predict_proba(t(data.X_test)) if classes is not None else model.predict(t(data.X_test))
    out = out.cpu().numpy() if hasattr(out, "cpu") else np.asarray(out)
    pred_s = time.perf_counter() - t0
    score = _score(data.task, data.y_test, out.reshape(len(data.y_test), -1) if classes is not None
                   else out.reshape(-1), classes)
    return fit_s, pred_s, score, {"device": str(dev),
                                  "note": f"xRFM defaults, tuning_metric={metric!r}, 10% validation"}


def _timed(model, data, fit=None):
    """(fit seconds, predict-and-score seconds, score) of ``model`` on the dataset's split."""
    t0 = time.perf_counter()
    (fit or model.fit)(data.X_train, data.y_train)
    fit_s = time.perf_counter() - t0
    t0 = time.perf_counter()
    score = model.score(data.X_test, data.y_test)
    return fit_s, time.perf_counter() - t0, score


def _fit(case):
    from drfm import RFMClassifier, RFMRegressor
    from drfm.datasets import load

    try:
        data = load(case["dataset"], n_train=case["n"], **case.get("data", {}))
    except ValueError as exc:  # MNIST without its files
        return {"skipped": str(exc)}
    task = data.task
    model_name = case["model"]
    if model_name in PEERS:
        fit_s, pred_s, score, extra = _peer(model_name, data)
    elif model_name == "xrfm.xRFM":
        res = _xrfm(case, data)
        if res is None:
            return {"skipped": "xrfm is not installed (pip install xrfm)", "task": task}
        fit_s, pred_s, score, extra = res
    elif model_name == "sklearn.MLPClassifier":
        from sklearn.neural_network import MLPClassifier

        model = MLPClassifier(hidden_layer_sizes=(256, 256), max_iter=100, random_state=0)
        import warnings

        def quiet_fit(X, y):
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")  # ConvergenceWarning at max_iter is expected and recorded as n_iter
                model.fit(X, y)

        fit_s, pred_s, score = _timed(model, data, quiet_fit)
        extra = {"device": "cpu", "n_iter": int(model.n_iter_), "note": "2 x 256 ReLU, Adam, max_iter 100"}
    elif model_name.startswith("drfm."):
        cls = RFMRegressor if model_name.endswith("Regressor") else RFMClassifier
        params = {} if case.get("defaults") else {**RFM_PARAMS, **case.get("params", {})}
        model = cls(**params, device=case["device"], random_state=0)
        fit_s, pred_s, score = _timed(model, data)
        extra = {"device": model.device_, "best_iter": model.best_iter_, "bandwidth": model.bandwidth_,
                 "iter_seconds": [round(h["seconds"], 3) for h in model.history_],
                 "solvers": [f"{h['solver']}:{h['n_rows']}:{h['solver_iters']}" for h in model.history_]}
    else:
        from sklearn.kernel_ridge import KernelRidge

        L, reg = RFM_PARAMS["bandwidth"], RFM_PARAMS["reg"]
        classes = None
        if task == "classification":
            classes, idx = np.unique(data.y_train, return_inverse=True)
            Y = np.eye(len(classes))[idx]
        else:
            Y = data.y_train
        t0 = time.perf_counter()
        K = _laplace_l2(data.X_train, data.X_train, L)
        krr = KernelRidge(alpha=reg, kernel="precomputed").fit(K, Y)
        del K
        fit_s = time.perf_counter() - t0
        t0 = time.perf_counter()
        out = krr.predict(_laplace_l2(data.X_test, data.X_train, L))
        pred_s = time.perf_counter() - t0
        score = _score(task, data.y_test, out, classes if task == "classification" else None)
        extra = {"device": "cpu", "note": "float64 numpy; no feature learning (M = I)"}
    return {"task": task, "d": data.n_features, "n_test": len(data.y_test), "fit_seconds": fit_s,
            "predict_seconds": pred_s, "score": float(score),
            "metric": "accuracy" if task == "classification" else "r2", **extra}


#: scikit-learn peers (defaults), by case model name
PEERS = {"sklearn.HistGradientBoostingClassifier": ("sklearn.ensemble", "HistGradientBoostingClassifier",
                                                    {"random_state": 0}),
         "sklearn.SVC": ("sklearn.svm", "SVC", {})}


def _peer(model_name, data):
    import importlib

    module, name, kw = PEERS[model_name]
    model = getattr(importlib.import_module(module), name)(**kw)
    fit_s, pred_s, score = _timed(model, data)
    return fit_s, pred_s, score, {"device": "cpu", "note": f"{name} defaults {kw or ''}".strip()}


#: elementwise passes of a Laplace kernel tile beside its GEMM and exp (kernels.laplace: the near-pair search's run
#: minima, the clamp, sqrt, the scale; and the add of the row norms in the tiles that do not fold them into the GEMM
#: -- the stored matrix, the AGOP and the m-centre model do)
KERNEL_PASSES = 4

#: a phase slower than this multiple of its floor gets a note on why (the issue's bar)
FLOOR_NOTE_RATIO = 2.0


def _rate(fn, work, repeats=5):
    """Work per second of ``fn`` (median of ``repeats`` timed calls after one warm-up)."""
    fn()
    return work / _median_time(fn, repeats)


def _machine_rates(d: int, dtype) -> dict:
    """This machine's rates under the current thread count: float GEMM at depth 1024 (the flop peak the floors use)
    and at the data's depth d (a note's reason), exp per value, and the memory stream of a matrix-vector product."""
    import torch

    g = torch.Generator().manual_seed(0)
    a = torch.randn(2048, 1024, generator=g, dtype=dtype)
    b = torch.randn(1024, 2048, generator=g, dtype=dtype)
    ad, bd = torch.randn(2048, d, generator=g, dtype=dtype), torch.randn(d, 2048, generator=g, dtype=dtype)
    e = torch.rand(1 << 24, generator=g, dtype=dtype).mul_(-20.0)
    e_out = torch.empty_like(e)  # (a fresh result per call would time the page faults of its allocation)
    big = torch.randn(8192, 4096, generator=g, dtype=dtype)  # 128 MiB in float32: beyond every cache
    v = torch.randn(4096, generator=g, dtype=dtype)
    return {"gemm_flops_per_s": _rate(lambda: a @ b, 2.0 * 2048 * 1024 * 2048),
            "gemm_flops_per_s_at_d": _rate(lambda: ad @ bd, 2.0 * 2048 * d * 2048),
            "exp_values_per_s": _rate(lambda: torch.exp(e, out=e_out), e.numel()),
            "stream_bytes_per_s": _rate(lambda: big @ v, big.numel() * big.element_size()),
            # one in-place elementwise pass over memory (what each of the kernel's passes beside GEMM and exp costs
            # where its tiles outgrow the core's cache)
            "pass_values_per_s": _rate(lambda: e_out.mul_(1.0), e_out.numel())}


def _solve_floor(rec, rates, itemsize, c):
    """The floor of one history record's solve (seconds, the kernel values excluded: they are the kernel phase's),
    or None where no floor model is written (EigenPro, a ridge path)."""
    n, m, steps = rec["n_rows"], rec.get("n_centres"), max(int(rec["solver_iters"] or 0), 1)
    flops, stream = rates["gemm_flops_per_s"], rates["stream_bytes_per_s"]
    if "reg_path" in rec:  # reg='auto': the ridge path's solves have no floor model here
        return None
    if rec["solver"] == "direct":  # Cholesky n^3/3 and the two triangular solves
        return (n**3 / 3 + 2 * n * n * c) / flops
    if rec["solver"] == "cg":  # one pass over the stored n x n matrix per step
        return steps * n * n * itemsize / stream
    if rec["solver"] == "nystrom":  # K_mm's factor, and per step two passes over the n x m tiles (K v, K^T u)
        return m**3 / 3 / flops + steps * 2 * n * m * itemsize / stream
    return None


def _agop_floor(rec, rates, c):
    """The AGOP's GEMMs beside its kernel tiles: weights (s x n_c) times the centres' (c d') coefficients, and the
    (c d') x d' outer products over the s samples."""
    s, n_c, d = rec["agop_rows"], rec.get("n_centres") or rec["n_rows"], rec["metric_columns"]
    return (2 * s * n_c * c * (d + 1) + 2 * s * c * d * d) / rates["gemm_flops_per_s"]


def _phases(case):
    """A whole fit (RFM_PARAMS, early stopping as by default) under :class:`kernels.phases.PhaseClock`, then its
    predictions: per phase the seconds against the floor from this machine's rates (kernel: the distance GEMMs at
    peak rate plus one exp per value; solve, AGOP, predictions: their flops at peak or their passes over memory), a
    note where a phase exceeds ``FLOOR_NOTE_RATIO`` x its floor."""
    import torch

    from drfm import RFMClassifier, RFMRegressor
    from drfm.datasets import load
    from kernels.phases import PhaseClock

    try:
        data = load(case["dataset"], n_train=case["n"])
    except ValueError as exc:  # MNIST without its files
        return {"skipped": str(exc)}
    cls = RFMRegressor if data.task == "regression" else RFMClassifier
    params = {**RFM_PARAMS, **({"solver": "nystrom"} if case["path"] == "m-centre" else {})}
    model = cls(**params, device=case["device"], random_state=0)
    with PhaseClock(device=case["device"] if case["device"] != "auto" else None) as fit_clock:
        model.fit(data.X_train, data.y_train)
    with PhaseClock() as pred_clock:
        score = model.score(data.X_test, data.y_test)
    dtype = torch.float32 if model.dtype == "float32" else torch.float64
    itemsize = torch.empty((), dtype=dtype).element_size()
    rates = _machine_rates(data.n_features, dtype)
    c = 1 if data.task == "regression" else len(np.unique(data.y_train))
    hist = model.history_
    kwork = {k: fit_clock.work.get("kernel", {}).get(k, 0) + pred_clock.work.get("kernel", {}).get(k, 0)
             for k in ("gemm_flops", "exp_values")}
    n_c = len(model.X_fit_)  # the final machine's centres (all its training rows on the exact path)
    floors = {
        "kernel": kwork["gemm_flops"] / rates["gemm_flops_per_s"] + kwork["exp_values"] / rates["exp_values_per_s"],
        "solve": None if any(_solve_floor(r, rates, itemsize, c) is None for r in hist)
        else sum(_solve_floor(r, rates, itemsize, c) for r in hist),
        "agop": sum(_agop_floor(r, rates, c) for r in hist if r.get("agop_rows")),
    }
    seconds = {**fit_clock.seconds, "predict": pred_clock.wall - pred_clock.seconds.get("kernel", 0.0)}
    seconds["kernel"] = fit_clock.seconds.get("kernel", 0.0) + pred_clock.seconds.get("kernel", 0.0)
    n_test = len(data.y_test)
    # the predictions' product with the coefficients: a GEMM, or a pass over the kernel tile for c = 1
    floors["predict"] = max(2 * n_test * n_c * c / rates["gemm_flops_per_s"],
                            n_test * n_c * itemsize / rates["stream_bytes_per_s"])
    phases = {}
    for name, sec in seconds.items():
        floor = floors.get(name)
        row = {"seconds": sec, "floor_seconds": floor, "ratio": None if not floor else sec / floor}
        if floor is None:
            row["note"] = "no floor model (a small or bookkeeping phase, or a solver without one)"
        elif row["ratio"] > FLOOR_NOTE_RATIO:
            row["note"] = _why(name, case, rates, hist, data.n_features, c, dtype)
        phases[name] = row
    return {"task": data.task, "d": data.n_features, "n_test": n_test, "fit_seconds": fit_clock.wall,
            "other_seconds": fit_clock.other, "score": float(score), "phases": phases, "rates": rates,
            "kernel_work": kwork, "calls": fit_clock.calls, "n_threads": getattr(model, "n_threads_", None),
            "solvers": [f"{h['solver']}:{h['n_rows']}:{h['solver_iters']}" for h in hist],
            "metric_columns": [h["metric_columns"] for h in hist]}


def _why(name, case, rates, hist, d, c, dtype):
    """The measured reason a phase sits above its floor: the rate this machine reaches on the phase's own shapes."""
    import torch

    peak = rates["gemm_flops_per_s"]
    if name == "kernel":
        share = rates["gemm_flops_per_s_at_d"] / peak
        per_pass, per_exp = 1e9 / rates["pass_values_per_s"], 1e9 / rates["exp_values_per_s"]
        return (f"beside the GEMM and one exp per value a Laplace tile takes {KERNEL_PASSES} elementwise passes "
                f"(the near-pair search, the clamp, sqrt, scale; one more, the row norms' add, where the norms are not "
                f"folded into the GEMM) at {per_pass:.2f} ns per value "
                f"each over memory on this machine, against {per_exp:.2f} ns for exp; the GEMMs run at "
                f"depth {min(h['metric_columns'] for h in hist)}-{d} (a compact factor shrinks it; {share:.0%} of the "
                f"depth-1024 rate at depth {d}), so on a learned low-rank metric the passes, not the GEMM, are the "
                "kernel's cost")
    if name == "solve":
        solvers = {h["solver"] for h in hist}
        parts = []
        if "direct" in solvers:
            n = min(max(h["n_rows"] for h in hist if h["solver"] == "direct"), 4096)
            a = torch.randn(n, n, dtype=dtype)
            spd = a @ a.T + n * torch.eye(n, dtype=dtype)
            rate = _rate(lambda: torch.linalg.cholesky(spd), n**3 / 3, repeats=3)
            parts.append(f"Cholesky at n = {n} runs at {rate / peak:.0%} of GEMM peak ({rate / 1e9:.0f} GFLOP/s)")
        if "nystrom" in solvers:
            parts.append("the m-centre model's products run in float64 on a copy of each float32 tile: 4 bytes read "
                         "and 8 written by the copy and 16 read by the two products per value and step, against the "
                         "floor's 8 (two float32 passes); float32 products lost the small directions of a learned "
                         "metric (kernels/solvers/centres.py)")
        if "cg" in solvers:
            parts.append("each CG step on the stored matrix adds the Nystrom preconditioner's products and the "
                         "vector updates to its pass over the matrix")
        return "; ".join(parts) or "no measurement for this solver"
    if name == "agop":
        rec = next(h for h in reversed(hist) if h.get("agop_rows"))
        n_c, dd = rec.get("n_centres") or rec["n_rows"], rec["metric_columns"]
        w = torch.randn(1024, n_c, dtype=dtype)
        coef = torch.randn(n_c, c * dd, dtype=dtype)
        rate = _rate(lambda: w @ coef, 2.0 * 1024 * n_c * c * dd, repeats=3)
        return (f"the AGOP's GEMMs are thin: (1024 x {n_c}) times ({n_c} x {c * dd}) runs at {rate / peak:.0%} of "
                "GEMM peak")
    if name == "predict":
        return ("beside the kernel tiles (the kernel phase) and their product, predictions widen every tile to "
                "float64 for the sum, shift the rows by the training mean, compute norms, check finiteness and "
                "convert (cProfile, 8000 MNIST digits: 0.06, 0.08, 0.03, 0.02, 0.03 s of 0.27 s; the product 0.04 s)")
    return "no measured reason"


def run_case(case: dict) -> dict:
    if case["kind"] == "phases":
        return _phases(case)
    return _kernel_build(case) if case["kind"] == "kernel_build" else _fit(case)
