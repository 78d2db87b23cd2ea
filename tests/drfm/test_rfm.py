import pickle

import numpy as np
import pytest
import torch
from scipy.spatial.distance import cdist

from drfm import RFMClassifier, RFMRegressor
from kernels import laplace_agop


def lowrank(n, d=100, seed=0):
    rng = np.random.default_rng(seed)
    X = rng.standard_normal((n, d))
    return X, X[:, 0] * X[:, 1]


def laplace_krr_numpy(Xtr, ytr, Xte, bandwidth, reg):
    K = np.exp(-cdist(Xtr, Xtr) / bandwidth)
    alpha = np.linalg.solve(K + reg * np.eye(len(Xtr)), ytr)
    return np.exp(-cdist(Xte, Xtr) / bandwidth) @ alpha


@pytest.mark.parametrize("dtype,tol", [("float64", 1e-8), ("float32", 2e-3)])
def test_iters0_equals_independent_laplace_krr(dtype, tol):
    rng = np.random.default_rng(1)
    X, Xte = rng.standard_normal((300, 7)), rng.standard_normal((50, 7))
    Y = np.stack([np.sin(X[:, 0]), X[:, 1] ** 2], 1)
    ref = laplace_krr_numpy(X, Y, Xte, 3.0, 1e-2)
    model = RFMRegressor(3.0, reg=1e-2, iters=0, dtype=dtype).fit(X, Y)
    np.testing.assert_allclose(model.predict(Xte), ref, rtol=tol, atol=tol)
    np.testing.assert_array_equal(model.M_, np.eye(7))
    assert len(model.history_) == 1 and model.best_iter_ == 0


def test_one_iteration_uses_agop_of_first_fit():
    # the learned M is the normalised AGOP of the iters=0 predictor (independently computed)
    X, y = lowrank(400, d=10, seed=3)
    m0 = RFMRegressor(iters=0, dtype="float64").fit(X, y)
    agop = laplace_agop(torch.tensor(X), torch.tensor(X), torch.tensor(m0.dual_coef_), bandwidth=10.0).numpy()
    m1 = RFMRegressor(iters=1, dtype="float64").fit(X, y)
    np.testing.assert_allclose(m1.M_, agop / np.abs(agop).max(), rtol=1e-6, atol=1e-9)
    np.testing.assert_allclose(m0.agop(), agop, rtol=1e-10)


def test_iter_sample_size_learns_m_on_a_subset_and_fits_all():
    X, y = lowrank(500, d=10, seed=4)
    # a subset as large as the data is the exact algorithm
    full = RFMRegressor(iters=2, dtype="float64", random_state=0).fit(X, y)
    same = RFMRegressor(iters=2, dtype="float64", random_state=0, iter_sample_size=500).fit(X, y)
    np.testing.assert_array_equal(full.M_, same.M_)
    assert same.iter_rows_ is None
    # one feature-learning step on 200 rows: M is the normalised AGOP (over all 500 rows) of the kernel machine fit on
    # exactly those rows, computed independently; the final machine uses all 500 rows
    sub = RFMRegressor(iters=1, dtype="float64", random_state=0, iter_sample_size=200, agop_sample_size=500).fit(X, y)
    rows = sub.iter_rows_
    assert len(rows) == 200 and len(set(rows)) == 200
    m0 = RFMRegressor(iters=0, dtype="float64").fit(X[rows], y[rows])
    agop = laplace_agop(torch.tensor(X), torch.tensor(X[rows]), torch.tensor(m0.dual_coef_), bandwidth=10.0).numpy()
    np.testing.assert_allclose(sub.M_, agop / np.abs(agop).max(), rtol=1e-6, atol=1e-9)
    assert [h["n_rows"] for h in sub.history_] == [200, 500]
    assert sub.X_fit_.shape == (500, 10) and sub.dual_coef_.shape[0] == 500
    # (the transformed columns' spreads differ: the reference is the raw fit, as the loop's final solve is)
    ref = RFMRegressor(iters=0, dtype="float64", standardize=False).fit(X @ sub.sqrt_m_, y)
    np.testing.assert_allclose(sub.predict(X[:50]), ref.predict(X[:50] @ sub.sqrt_m_), rtol=1e-6, atol=1e-8)
    # with an iterative solve on all rows, one more subset solve with the final M starts it; the answer is the
    # full solve's (reference: the direct solve with the same M)
    it = RFMRegressor(iters=1, dtype="float64", random_state=0, iter_sample_size=200, agop_sample_size=500,
                      solver="cg", solver_tol=1e-9).fit(X, y)
    assert [(h["n_rows"], h["solver"]) for h in it.history_] == [(200, "cg"), (200, "cg"), (500, "cg")]
    assert it.history_[-1]["solver_converged"]
    np.testing.assert_allclose(it.M_, sub.M_, rtol=1e-5, atol=1e-8)
    ref = RFMRegressor(iters=0, dtype="float64", standardize=False).fit(X @ it.sqrt_m_, y)
    np.testing.assert_allclose(it.predict(X[:50]), ref.predict(X[:50] @ it.sqrt_m_), rtol=1e-5, atol=1e-7)


def test_solver_max_iter_caps_only_the_solve_on_all_rows():
    # the subset solves, which learn M, run to solver_tol; the cap is the time budget of the final solve on all rows.
    # 1100 subset rows > 1000 Nystrom centres: the preconditioner is inexact, so CG needs several iterations
    import warnings

    X, y = lowrank(1500, d=10, seed=4)
    kw = dict(iters=1, random_state=0, iter_sample_size=1100, solver="cg", solver_tol=1e-6)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        free = RFMRegressor(**kw).fit(X, y)
        capped = RFMRegressor(**kw, solver_max_iter=2).fit(X, y)
    assert [h["n_rows"] for h in capped.history_] == [1100, 1100, 1500]
    for a, b in zip(free.history_[:2], capped.history_[:2]):
        assert b["solver_converged"] and b["solver_iters"] == a["solver_iters"]
    assert capped.history_[0]["solver_iters"] > 2
    assert free.history_[-1]["solver_iters"] > 2 and capped.history_[-1]["solver_iters"] == 2
    np.testing.assert_array_equal(capped.M_, free.M_)


def test_feature_learning_lowrank_target():
    X, y = lowrank(4000, seed=0)
    Xte, yte = lowrank(2000, seed=1)
    plain = RFMRegressor(iters=0).fit(X, y).score(Xte, yte)
    rfm = RFMRegressor(iters=5, random_state=0).fit(X, y)
    r2 = rfm.score(Xte, yte)
    assert plain < 0.3
    assert r2 >= 0.9
    # the learned features are x_0 and x_1
    assert set(np.argsort(rfm.feature_importances_)[-2:]) == {0, 1}


def test_classifier_string_labels_and_decision_function():
    rng = np.random.default_rng(0)
    X = rng.standard_normal((240, 5))
    labels = np.array(["cat", "dog", "eel"])[(X[:, 0] > 0.5).astype(int) + (X[:, 0] > -0.5)]
    clf = RFMClassifier(iters=2, random_state=0).fit(X, labels)
    assert list(clf.classes_) == ["cat", "dog", "eel"]
    assert clf.score(X, labels) > 0.9
    assert clf.decision_function(X).shape == (240, 3)
    binary = RFMClassifier(iters=1).fit(X, X[:, 1] > 0)
    df = binary.decision_function(X)
    assert df.shape == (240,)
    np.testing.assert_array_equal(binary.predict(X), binary.classes_[(df > 0).astype(int)])


def test_validation_fraction_keeps_best_iterate():
    X, y = lowrank(600, d=20, seed=2)
    m = RFMRegressor(iters=3, validation_fraction=0.25, random_state=0).fit(X, y)
    scores = [h["val_score"] for h in m.history_]
    assert m.best_iter_ == int(np.argmax(scores))
    assert len(m.X_fit_) == 450
    assert all(h["seconds"] > 0 and h["solver"] == "direct" for h in m.history_)


def test_pickle_round_trip_identical_predictions():
    X, y = lowrank(300, d=8)
    m = RFMRegressor(iters=2, random_state=0).fit(X, y)
    m2 = pickle.loads(pickle.dumps(m))
    np.testing.assert_array_equal(m.predict(X), m2.predict(X))


def test_random_state_determinism():
    X, y = lowrank(500, d=8)
    kw = dict(iters=2, agop_sample_size=100, validation_fraction=0.2)
    a = RFMRegressor(random_state=5, **kw).fit(X, y)
    b = RFMRegressor(random_state=5, **kw).fit(X, y)
    c = RFMRegressor(random_state=6, **kw).fit(X, y)
    np.testing.assert_array_equal(a.M_, b.M_)
    np.testing.assert_array_equal(a.predict(X), b.predict(X))
    assert not np.array_equal(a.M_, c.M_)


def test_global_rng_untouched():
    X, y = lowrank(100, d=5)
    torch.manual_seed(123)
    np.random.seed(123)
    expected_t, expected_np = torch.rand(1), np.random.rand()
    torch.manual_seed(123)
    np.random.seed(123)
    RFMRegressor(iters=1, random_state=0, agop_sample_size=10).fit(X, y)
    assert torch.rand(1) == expected_t and np.random.rand() == expected_np


def test_verbose_progress_and_logging(capsys):
    X, y = lowrank(100, d=5)
    RFMRegressor(iters=1, verbose=True).fit(X, y)
    err = capsys.readouterr().err
    assert "RFMRegressor" in err  # tqdm writes to stderr
    RFMRegressor(iters=1).fit(X, y)
    assert capsys.readouterr().err == ""


@pytest.mark.parametrize("solver", ["cg", "eigenpro"])
def test_iterative_solver_rfm_agrees_with_direct(solver):
    X, y = lowrank(1500, d=10, seed=4)
    Xte, yte = lowrank(500, d=10, seed=5)
    direct = RFMRegressor(iters=2, solver="direct", random_state=0, dtype="float64").fit(X, y)
    it = RFMRegressor(iters=2, solver=solver, solver_tol=1e-6 if solver == "cg" else 1e-2, solver_max_iter=200,
                      random_state=0, dtype="float64")
    import warnings

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        it.fit(X, y)
    assert it.solver_ == solver and all(h["solver"] == solver for h in it.history_)
    tol = 1e-3 if solver == "cg" else 0.05
    assert abs(it.score(Xte, yte) - direct.score(Xte, yte)) < tol
    if solver == "cg":
        np.testing.assert_allclose(it.M_, direct.M_, rtol=1e-3, atol=1e-4)


def test_auto_solver_choice_and_reason():
    X, y = lowrank(3000, d=5)
    small = RFMRegressor(iters=0).fit(X, y)
    assert small.solver_ == "direct" and "fits the budget" in small.history_[0]["solver_reason"]
    # 64 MB: too small for the 4500 x 4500 kernel matrix (81 MB), enough for the iterative path (~55 MB)
    X, y = lowrank(4500, d=5)
    tight = RFMRegressor(iters=0, memory_budget=64 * 2**20, solver_tol=1e-6).fit(X, y)
    assert tight.solver_ == "cg" and "does not fit" in tight.history_[0]["solver_reason"]
    small = RFMRegressor(iters=0).fit(X, y)
    np.testing.assert_allclose(tight.predict(X[:50]), small.predict(X[:50]), rtol=1e-3, atol=1e-3)
    forced = RFMRegressor(iters=0, solver="eigenpro", solver_tol=0.5).fit(X, y)
    assert forced.solver_ == "eigenpro" and "forced" in forced.history_[0]["solver_reason"]


def test_auto_solver_mid_size_uses_cg_on_the_stored_matrix(monkeypatch):
    import kernels.solvers.plan as plan_mod

    monkeypatch.setattr(plan_mod, "AUTO_DIRECT_MAX_N", 1000)  # make n = 1500 "mid-size"
    X, y = lowrank(1500, d=8, seed=2)  # (a fixed ridge: the solvers' choice and agreement at one system)
    Xte, yte = lowrank(500, d=8, seed=3)
    direct = RFMRegressor(iters=2, solver="direct", random_state=0, dtype="float64", reg=1e-3).fit(X, y)
    stored = RFMRegressor(iters=2, solver_tol=1e-7, random_state=0, dtype="float64", reg=1e-3).fit(X, y)
    assert stored.solver_ == "cg" and all("stored" in h["solver_reason"] for h in stored.history_)
    np.testing.assert_allclose(stored.M_, direct.M_, rtol=1e-4, atol=1e-5)
    np.testing.assert_allclose(stored.predict(Xte), direct.predict(Xte), rtol=1e-4, atol=1e-4)
    # blocked products when the matrix (18 MB) does not fit beside the iterative solver's own ~56 MB
    blocked = RFMRegressor(iters=2, solver="cg", solver_tol=1e-7, random_state=0, dtype="float64", reg=1e-3,
                           memory_budget=64 * 2**20).fit(X, y)
    assert blocked.solver_ == "cg" and "recomputed in blocks" in blocked.history_[0]["solver_reason"]
    np.testing.assert_allclose(blocked.predict(Xte), stored.predict(Xte), rtol=1e-4, atol=1e-4)
    # 'auto' there takes the m-centre model instead (here with m = n = 1500 centres: the exact model)
    centres = RFMRegressor(iters=2, solver_tol=1e-7, random_state=0, dtype="float64", reg=1e-3,
                           memory_budget=64 * 2**20).fit(X, y)
    assert centres.solver_ == "nystrom" and "does not fit" in centres.history_[0]["solver_reason"]
    assert "1500 centres = n: exact" in centres.history_[0]["solver_reason"]
    np.testing.assert_allclose(centres.predict(Xte), stored.predict(Xte), rtol=1e-4, atol=1e-4)
    # a tiny ridge keeps the direct solver while the matrix fits (CG slows down as reg -> 0)
    tiny = RFMRegressor(iters=0, reg=1e-6).fit(X, y)
    assert tiny.solver_ == "direct" and "reg=1e-06" in tiny.history_[0]["solver_reason"]


def test_eigenpro_rfm_does_not_diverge_when_m_sharpens():
    # regression: after the first AGOP step the warm start was far off and EigenPro's residual blew up (R^2 << 0)
    import warnings

    X, y = lowrank(3000, d=20, seed=6)
    Xte, yte = lowrank(1000, d=20, seed=7)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        m = RFMRegressor(iters=3, solver="eigenpro", solver_tol=1e-2, solver_max_iter=5, random_state=0).fit(X, y)
    assert all(h["solver_residual"] < 1.0 for h in m.history_)
    assert m.score(Xte, yte) > 0.8


# ---- the m-centre model (solver='nystrom') ---------------------------------------------------------------------
def test_centre_model_keeps_only_its_centres_and_predicts_through_them():
    X, y = lowrank(3000, d=10, seed=11)
    Xte, _ = lowrank(300, d=10, seed=12)
    m = RFMRegressor(iters=2, solver="nystrom", n_centres=300, iter_sample_size=None, dtype="float64",
                     solver_tol=1e-8, early_stopping=False, random_state=0).fit(X, y)
    assert m.solver_ == "nystrom" and m.X_fit_.shape == (300, 10) and m.dual_coef_.shape[0] == 300
    assert all(h["solver"] == "nystrom" and h["n_centres"] == 300 and h["n_rows"] == 3000 for h in m.history_)
    assert "an approximation" in m.history_[0]["solver_reason"]
    # the centres are training rows, and the prediction is sum_j beta_j k(x, c_j) in the learned metric
    assert all((np.abs(X - c).sum(1) == 0).any() for c in m.X_fit_[:20])
    z, zc = Xte @ m.factor_, m.X_fit_ @ m.factor_
    ref = np.exp(-cdist(z, zc) / m.bandwidth_) @ m.dual_coef_
    np.testing.assert_allclose(m.predict(Xte), ref.ravel(), rtol=1e-8, atol=1e-8)
    # iterations after the first start from the previous coefficients over the same centres
    assert m.history_[-1]["solver_iters"] < 60


def test_centre_model_with_every_point_is_the_exact_fit():
    X, y = lowrank(800, d=6, seed=13)
    Xte, _ = lowrank(200, d=6, seed=14)
    # one fixed ridge: the two solvers' equivalence (reg='auto' would score LOO against GCV)
    exact = RFMRegressor(iters=2, solver="direct", dtype="float64", reg=1e-3, random_state=0).fit(X, y)
    full = RFMRegressor(iters=2, solver="nystrom", n_centres=5000, iter_sample_size=None, dtype="float64",
                        solver_tol=1e-12, solver_max_iter=300, reg=1e-3, random_state=0).fit(X, y)
    assert full.X_fit_.shape[0] == 800 and "= n: exact" in full.history_[0]["solver_reason"]
    np.testing.assert_allclose(full.M_, exact.M_, rtol=1e-6, atol=1e-8)
    np.testing.assert_allclose(full.predict(Xte), exact.predict(Xte), rtol=1e-6, atol=1e-7)


def test_auto_iter_sample_size_learns_m_on_an_exact_subset(monkeypatch):
    import drfm._engine as engine

    monkeypatch.setattr(engine, "AUTO_ITER_SAMPLE_SIZE", 500)
    X, y = lowrank(2000, d=8, seed=15)
    m = RFMRegressor(iters=2, solver="nystrom", n_centres=200, random_state=0).fit(X, y)
    solvers = [(h["solver"], h["n_rows"]) for h in m.history_]
    assert solvers[:2] == [("direct", 500), ("direct", 500)] and solvers[-1] == ("nystrom", 2000), solvers
    assert m.X_fit_.shape[0] == 200
    # explicit None: feature learning on the m-centre model itself
    m = RFMRegressor(iters=2, solver="nystrom", n_centres=200, iter_sample_size=None, random_state=0).fit(X, y)
    assert all(h["solver"] == "nystrom" for h in m.history_)
    # below the threshold M is learned exactly on all rows, and the m-centre model is fit once, at the end
    m = RFMRegressor(iters=2, solver="nystrom", n_centres=100, random_state=0).fit(X[:400], y[:400])
    assert [(h["solver"], h["n_rows"]) for h in m.history_] == [("direct", 400)] * 2 + [("nystrom", 400)]
    # with the exact solvers no subset
    m = RFMRegressor(iters=1, random_state=0).fit(X[:400], y[:400])
    assert all(h["n_rows"] == 400 and h["solver"] == "direct" for h in m.history_)


def test_centre_model_parameters_are_validated():
    X, y = lowrank(100, d=4)
    with pytest.raises(ValueError, match="n_centres"):
        RFMRegressor(n_centres=0).fit(X, y)
    with pytest.raises(ValueError, match="iter_sample_size"):
        RFMRegressor(iter_sample_size="sometimes").fit(X, y)


@pytest.mark.slow
def test_centre_model_is_within_0_005_of_the_exact_fit_at_n_20000():
    from drfm.datasets import load

    data = load("lowrank", n_train=20000, n_test=5000)
    exact = RFMRegressor(iters=5, solver="cg", random_state=0).fit(data.X_train, data.y_train)
    centres = RFMRegressor(iters=5, solver="nystrom", n_centres=2000, random_state=0).fit(data.X_train, data.y_train)
    gap = exact.score(data.X_test, data.y_test) - centres.score(data.X_test, data.y_test)
    assert centres.X_fit_.shape[0] == 2000 and gap <= 0.005, gap


# ---- early stopping: the best iterate by default -----------------------------------------------------------------
def smooth_everywhere(n, d=10, seed=0):
    """A target smooth in every direction (feature learning has nothing to find and tends to hurt)."""
    X = np.random.default_rng(seed).standard_normal((n, d))
    W = np.random.default_rng(1234).standard_normal((d, 40)) / np.sqrt(d)  # one function for every seed
    return X, np.sin(X @ W).sum(1) / np.sqrt(40)


def test_default_fit_keeps_the_best_iterate_and_refits_on_all_rows():
    X, y = smooth_everywhere(2400, seed=1)
    Xte, yte = smooth_everywhere(2000, seed=2)
    per_iterate = [RFMRegressor(iters=t, early_stopping=False, random_state=0).fit(X, y).score(Xte, yte)
                   for t in range(4)]
    model = RFMRegressor(iters=3, random_state=0).fit(X, y)  # n >= 2000: early stopping is on by default
    hist = model.history_
    assert all(h["n_rows"] == 2160 for h in hist[:-1]) and "refit" in hist[-1] and hist[-1]["n_rows"] == 2400
    assert model.X_fit_.shape[0] == 2400 and model.best_iter_ == int(np.argmax([h["val_score"] for h in hist[:-1]]))
    assert model.score(Xte, yte) >= max(per_iterate) - 0.01, (model.score(Xte, yte), per_iterate)
    # early_stopping=False: no split, the last iterate (as before)
    plain = RFMRegressor(iters=3, early_stopping=False, random_state=0).fit(X, y)
    assert all(h["n_rows"] == 2400 and h["val_score"] is None for h in plain.history_) and plain.best_iter_ == 3


def test_early_stopping_stops_after_n_iter_no_change():
    X, y = smooth_everywhere(2000, seed=3)
    model = RFMRegressor(iters=8, n_iter_no_change=1, early_stopping=True, random_state=0).fit(X, y)
    solves = [h for h in model.history_ if "refit" not in h]
    assert len(solves) < 9 and "early_stop" in solves[-1]
    assert solves[-1]["iter"] - model.best_iter_ == 1
    vals = [h["val_score"] for h in solves]
    assert vals[model.best_iter_] == max(vals)


def test_explicit_validation_data():
    X, y = smooth_everywhere(600, seed=4)
    Xv, yv = smooth_everywhere(300, seed=5)
    model = RFMRegressor(iters=3, random_state=0).fit(X, y, X_val=Xv, y_val=yv)
    # no rows held out and no refit: the kept iterate is already fit on every training row
    assert all(h["n_rows"] == 600 and h["val_score"] is not None for h in model.history_)
    assert not any("refit" in h for h in model.history_)
    vals = [h["val_score"] for h in model.history_]
    assert model.best_iter_ == int(np.argmax(vals)) and model.X_fit_.shape[0] == 600
    with pytest.raises(ValueError, match="X_val and y_val"):
        RFMRegressor().fit(X, y, X_val=Xv)
    with pytest.raises(ValueError, match="y_val"):
        RFMRegressor().fit(X, y, X_val=Xv, y_val=yv[:10])
    Xc, yc = X[:200], (X[:200, 0] > 0).astype(int)
    with pytest.raises(ValueError, match="not seen"):
        RFMClassifier(iters=1).fit(Xc, yc, X_val=Xv[:50], y_val=np.full(50, 7))
    clf = RFMClassifier(iters=1, random_state=0).fit(Xc, yc, X_val=Xv[:50], y_val=(Xv[:50, 0] > 0).astype(int))
    assert clf.history_[0]["val_score"] is not None


@pytest.mark.slow
def test_default_fit_on_mnist_scores_the_best_iterate():
    """The issue's case: 8000 MNIST digits, bandwidth 10, reg 1e-3; each AGOP iteration lowers test accuracy
    (0.9643 at iteration 0 ... 0.9500 at 5), and the default fit must score at least the best iterate - 0.002."""
    import os
    from pathlib import Path

    root = Path(os.environ.get("DRFM_DATA", Path(__file__).resolve().parents[3] / "shared" / "data")) / "mnist"
    if not (root / "train-images-idx3-ubyte.gz").is_file():
        pytest.skip(f"MNIST IDX files not found in {root} (set DRFM_DATA to the folder holding mnist/)")
    from drfm._localdata import read_idx as _read_idx

    Xtr = _read_idx(root / "train-images-idx3-ubyte.gz").reshape(-1, 784)[:8000] / 255.0
    ytr = _read_idx(root / "train-labels-idx1-ubyte.gz")[:8000]
    Xte = _read_idx(root / "t10k-images-idx3-ubyte.gz").reshape(-1, 784) / 255.0
    yte = _read_idx(root / "t10k-labels-idx1-ubyte.gz")
    params = dict(bandwidth=10.0, reg=1e-3, random_state=0)
    per_iterate = [RFMClassifier(iters=t, early_stopping=False, **params).fit(Xtr, ytr).score(Xte, yte)
                   for t in (0, 1, 5)]
    default = RFMClassifier(iters=5, **params).fit(Xtr, ytr).score(Xte, yte)
    assert default >= max(per_iterate) - 0.002, (default, per_iterate)


def test_large_n_validation_split_is_capped_and_not_refit(monkeypatch):
    import drfm._engine as engine

    monkeypatch.setattr(engine, "DEFAULT_VALIDATION_MAX_ROWS", 60)  # stands for 10000 rows at n > 200 000
    X, y = smooth_everywhere(2000, seed=6)
    model = RFMRegressor(iters=2, random_state=0).fit(X, y)
    assert all(h["n_rows"] == 1940 for h in model.history_)  # 60 rows held out: 3% < 5%, no refit
    assert not any("refit" in h for h in model.history_)


# ---- predict_proba ---------------------------------------------------------------------------------------------
def _three_classes(n, seed):
    rng = np.random.default_rng(seed)
    X = rng.standard_normal((n, 5))
    y = np.digitize(X[:, 0] + 0.5 * X[:, 1] + 0.4 * rng.standard_normal(n), [-0.5, 0.5])
    return X, np.array(["a", "b", "c"])[y]


def test_predict_proba_of_every_classifier():
    from drfm import DeepRFMClassifier, TorchMLPClassifier

    X, y = _three_classes(400, 0)
    models = [RFMClassifier(iters=1, random_state=0), DeepRFMClassifier(depth=1, random_state=0),
              TorchMLPClassifier(1, 16, epochs=30, lr=1e-2, random_state=0),
              TorchMLPClassifier(1, 16, epochs=30, lr=1e-2, loss="cross_entropy", random_state=0)]
    for model in models:
        import warnings

        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            model.fit(X, y)
        p = model.predict_proba(X[:50])
        assert p.shape == (50, 3) and np.allclose(p.sum(1), 1) and (p >= 0).all()
        np.testing.assert_array_equal(model.classes_[p.argmax(1)], model.predict(X[:50]))
        d = model.decision_function(X[:50])
        # monotone: the class order of the probabilities is the order of the outputs, row by row
        np.testing.assert_array_equal(np.argsort(p, 1), np.argsort(d, 1))


def test_predict_proba_is_temperature_scaled_on_held_out_data(tmp_path):
    from sklearn.calibration import CalibratedClassifierCV
    from sklearn.metrics import log_loss

    from drfm._targets import DEFAULT_TEMPERATURE, softmax_proba

    X, y = _three_classes(900, 1)
    Xv, yv = _three_classes(400, 2)
    Xte, yte = _three_classes(2000, 3)
    plain = RFMClassifier(iters=1, random_state=0).fit(X, y)
    assert plain.proba_temperature_ == DEFAULT_TEMPERATURE  # no held-out data
    tuned = RFMClassifier(iters=1, random_state=0).fit(X, y, X_val=Xv, y_val=yv)
    assert tuned.proba_temperature_ != DEFAULT_TEMPERATURE
    # the fitted temperature minimises the validation log-loss (against a grid of others)
    out_v = tuned._raw_predict(Xv)
    best = log_loss(yv, softmax_proba(out_v, tuned.proba_temperature_), labels=tuned.classes_)
    for t in (0.5, 0.8, 1.25, 2.0):
        assert best <= log_loss(yv, softmax_proba(out_v, tuned.proba_temperature_ * t), labels=tuned.classes_) + 1e-9
    # and it generalises: lower test log-loss than the default temperature
    assert log_loss(yte, tuned.predict_proba(Xte)) < log_loss(yte, plain.predict_proba(Xte))
    # the temperature travels with a saved model
    from drfm.persistence import load_model, save_model

    path = save_model(tuned, tmp_path / "tuned.drfm")
    np.testing.assert_array_equal(load_model(path).predict_proba(Xte[:20]), tuned.predict_proba(Xte[:20]))
    # works inside scikit-learn's calibration wrapper
    cal = CalibratedClassifierCV(RFMClassifier(iters=1, random_state=0), cv=3).fit(X, y)
    assert np.isfinite(log_loss(yte, cal.predict_proba(Xte)))


def test_refit_is_skipped_when_all_rows_fit_only_the_m_centre_model(monkeypatch):
    # the MNIST 60000 case: the kept iterate was solved exactly on the training rows, and all n rows would only
    # fit the m-centre model; that approximate refit scored lower, so the exact model is kept
    import drfm._engine as engine
    from kernels.solvers.plan import plan_solve

    X, y = smooth_everywhere(2400, seed=1)
    n = len(X)

    def plan(rows, *args, **kw):
        if rows == n:  # only the refit sees all rows
            kw = {**kw, "requested": "nystrom", "n_centres": 300}
        return plan_solve(rows, *args, **kw)

    monkeypatch.setattr(engine, "plan_solve", plan)
    model = RFMRegressor(iters=2, random_state=0).fit(X, y)
    hist = model.history_
    assert not any("refit" in h for h in hist) and all(h["solver"] == "direct" for h in hist)
    assert "m-centre" in hist[model.best_iter_]["refit_skipped"]
    assert model.X_fit_.shape[0] == 2160 and model.solver_ == "direct"
    # the kept model is the exact solve: refitting was skipped, not its result dropped
    assert model.dual_coef_.shape[0] == 2160


def test_early_stop_on_the_subset_still_solves_on_all_rows():
    # feature learning on a 300-row subset that stops improving at once (noise target, n_iter_no_change=1) with
    # explicit validation data (so no refit follows): the loop used to end there and return the 300-row subset
    # machine (at 2e6 rows on the 10-class task: a 16 000-row model); the solve on all rows with the kept M follows
    rng = np.random.default_rng(21)
    X = rng.standard_normal((1500, 6))
    y = X[:, 0] + 0.5 * rng.standard_normal(1500)
    m = RFMRegressor(iters=8, iter_sample_size=300, n_iter_no_change=1, random_state=0).fit(X[:1200], y[:1200],
                                                                                          X[1200:], y[1200:])
    solves = [h["n_rows"] for h in m.history_]
    assert len(solves) < 8 and solves[0] == 300  # stopped early on the subset ...
    final = [h for h in m.history_ if "final_after_early_stop" in h]
    assert len(final) == 1 and final[0]["n_rows"] == 1200  # ... then solved on all 1200 rows
    assert not any("refit" in h for h in m.history_)
    # the kept model is the one with the best validation score, the all-rows solve among the candidates
    assert m.history_[m.best_iter_]["val_score"] == max(h["val_score"] for h in m.history_)


def test_the_final_m_centre_cg_stops_on_the_validation_rows():
    # M learned from m-centre models on all rows (iter_sample_size=None, fixed ridge: every solve is an m-centre
    # CG): the solves that drive M run to solver_tol; the final one, whose coefficients are the model, is also
    # stopped by the validation rows once their error is flat (kernels.solvers.centres: HELD_OUT_PATIENCE)
    from kernels.solvers.centres import HELD_OUT_PATIENCE
    from kernels.solvers.ridge import RIDGE_RTOL

    rng = np.random.default_rng(22)
    X = rng.standard_normal((2400, 6))
    y = X[:, 0] * X[:, 1] + 0.05 * rng.standard_normal(2400)
    kw = dict(solver="nystrom", n_centres=200, iters=2, iter_sample_size=None, reg=1e-5, solver_tol=1e-10,
              solver_max_iter=400, dtype="float64", random_state=0)
    on = RFMRegressor(**kw).fit(X, y)
    solves = [h for h in on.history_ if "refit" not in h]
    *driving, final = solves
    assert [h["solver"] for h in solves] == ["nystrom"] * 3
    assert not any("solver_stopped_by" in h for h in driving)
    assert all(h["solver_converged"] for h in driving)  # they reached solver_tol
    assert final["solver_stopped_by"] == "held-out" and not final["solver_converged"]
    errs = final["solver_val_errors"]
    assert len(errs) == final["solver_iters"] and final["solver_iters"] > HELD_OUT_PATIENCE
    assert errs[final["solver_returned_step"] - 1] <= min(errs) * (1 + RIDGE_RTOL)
    # without early stopping nothing else ends it: the same solves run to solver_tol
    off = RFMRegressor(**kw, early_stopping=False).fit(X, y)
    assert not any("solver_stopped_by" in h for h in off.history_)
    assert off.history_[-1]["solver_converged"] and off.history_[-1]["solver_iters"] > final["solver_iters"]


def test_the_refit_runs_the_steps_the_validation_rows_chose():
    # M learned on a 300-row exact subset; the final m-centre model (1000 centres, started cold) is the kept iterate
    # and its CG was stopped on the validation rows: the refit on all rows (no validation rows left) runs as many
    # steps, where it used to run to solver_tol
    rng = np.random.default_rng(23)
    X = rng.standard_normal((3000, 5))
    y = np.sin(X[:, 0]) + X[:, 1] * X[:, 2] + 0.05 * rng.standard_normal(3000)
    m = RFMRegressor(solver="nystrom", n_centres=1000, iters=2, iter_sample_size=300, reg=1e-5, solver_tol=1e-10,
                     solver_max_iter=400, dtype="float64", random_state=0).fit(X, y)
    kept, refit = m.history_[m.best_iter_], m.history_[-1]
    assert kept["solver"] == "nystrom" and not kept["solver_warm_start"]
    assert kept["solver_stopped_by"] == "held-out" and "refit" in refit
    assert refit["solver_iters"] == kept["solver_returned_step"] < 400
    assert "steps" in refit["solver_stopped_by"] and refit["n_rows"] == 3000


def test_the_cg_refit_starts_from_the_kept_coefficients(monkeypatch):
    # the refit on all rows (validation rows given back) starts CG from the kept solve's coefficients, zero on the
    # validation rows: the same system as a cold start solves, in fewer steps
    from drfm.engine import loop as engine

    rng = np.random.default_rng(24)
    X = rng.standard_normal((2400, 6))
    y = X[:, 0] * X[:, 1] + 0.05 * rng.standard_normal(2400)
    kw = dict(solver="cg", iters=2, reg=1e-3, solver_tol=1e-10, solver_max_iter=2000, dtype="float64", random_state=0)
    warm = RFMRegressor(**kw).fit(X, y)
    refit = warm.history_[-1]
    assert "refit" in refit and refit["solver"] == "cg" and refit["solver_warm_start"]
    original = engine._refit
    monkeypatch.setattr(engine, "_refit", lambda *a, **k: original(*a, **{**k, "x0": None}))
    cold = RFMRegressor(**kw).fit(X, y)
    assert not cold.history_[-1]["solver_warm_start"]
    assert refit["solver_iters"] < cold.history_[-1]["solver_iters"]
    np.testing.assert_array_equal(warm.M_, cold.M_)
    np.testing.assert_allclose(warm.dual_coef_, cold.dual_coef_, rtol=0, atol=1e-6 * np.abs(cold.dual_coef_).max())
    Xte = rng.standard_normal((200, 6))
    np.testing.assert_allclose(warm.predict(Xte), cold.predict(Xte), rtol=0, atol=1e-8)
