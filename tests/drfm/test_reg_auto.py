"""reg='auto' in the RFM loop: each route (exact leave-one-out, validation walk, m-centre path, carried, LOO on a
subset) against an independent reference -- the oracle ridge on test data, a fit with the chosen value given as a
float, the held-out error recomputed from the outputs -- and in scikit-learn's tools."""
import numpy as np
import pytest
from sklearn.model_selection import GridSearchCV
from sklearn.pipeline import make_pipeline
from sklearn.preprocessing import StandardScaler

from drfm import RFMClassifier, RFMRegressor
from drfm.engine import loop as engine_loop
from kernels.solvers import RIDGE_GRID

BASE = dict(device="cpu", dtype="float64", random_state=0, bandwidth=3.0)
NOISE = 0.5


def _noisy(n, seed, d=2):
    """A smooth signal of two features plus noise: the Laplace kernel interpolating the noise (a small ridge) costs
    twice the oracle's test error here (0.13 against 0.06 at 700 rows)."""
    rng = np.random.default_rng(seed)
    X = rng.standard_normal((n, d))
    signal = np.sin(2 * X[:, 0]) + X[:, 0] * X[:, 1]
    return X, signal + NOISE * rng.standard_normal(n), signal


def _mse(model, X, f):
    return float(np.mean((model.predict(X) - f) ** 2))


def _oracle(X, y, Xte, fte, **kw):
    """The grid value with the smallest test error against the noiseless signal, and that error."""
    errs = [_mse(RFMRegressor(reg=lam, **kw, **BASE).fit(X, y), Xte, fte) for lam in RIDGE_GRID]
    k = int(np.argmin(errs))
    return RIDGE_GRID[k], errs[k]


@pytest.mark.parametrize("route", ["loo", "holdout"])
def test_noisy_target_gets_the_oracles_ridge_and_error(route):
    X, y, _ = _noisy(700 if route == "loo" else 1500, seed=1)
    Xte, _, fte = _noisy(2000, seed=2)
    kw = dict(iters=0)
    fit_kw = {}
    if route == "holdout":
        Xv, yv, _ = _noisy(400, seed=3)
        fit_kw = dict(X_val=Xv, y_val=yv)
    auto = RFMRegressor(**kw, **BASE).fit(X, y, **fit_kw)
    assert auto.history_[-1]["reg_criterion"] == route
    lam, err = _oracle(X, y, Xte, fte, **kw)
    assert lam / 10 <= auto.reg_ <= lam * 10, (auto.reg_, lam)
    assert _mse(auto, Xte, fte) <= 1.05 * err, (_mse(auto, Xte, fte), err)
    # and the fixed default it replaces is measurably worse on this noise level
    assert _mse(RFMRegressor(reg=1e-3, **kw, **BASE).fit(X, y), Xte, fte) > 1.2 * err


@pytest.mark.parametrize("route,solver,extra", [
    ("loo", "auto", {}),
    ("holdout", "auto", {"val": True}),
    ("gcv", "nystrom", {"n_centres": 150, "iter_sample_size": None}),
    ("holdout", "nystrom", {"n_centres": 150, "iter_sample_size": None, "val": True}),
])
def test_the_chosen_ridge_given_as_a_float_gives_the_same_model(route, solver, extra):
    extra = dict(extra)
    X, y, _ = _noisy(600, seed=4)
    fit_kw = {}
    if extra.pop("val", False):
        Xv, yv, _ = _noisy(200, seed=5)
        fit_kw = dict(X_val=Xv, y_val=yv)
    # one solve (iters=0): the model is that solve's at the chosen value
    kw = dict(iters=0, solver=solver, early_stopping=False, solver_tol=1e-12, solver_max_iter=500, **extra)
    auto = RFMRegressor(**kw, **BASE).fit(X, y, **fit_kw)
    assert [h["reg_criterion"] for h in auto.history_] == [route]
    fixed = RFMRegressor(**{**kw, "reg": auto.reg_}, **BASE).fit(X, y, **fit_kw)
    Xte = _noisy(100, seed=6)[0]
    np.testing.assert_allclose(auto.predict(Xte), fixed.predict(Xte), rtol=0, atol=1e-6 * np.std(y))


def test_the_walks_errors_are_the_validation_errors_of_the_one_hot_targets():
    rng = np.random.default_rng(7)
    X = rng.standard_normal((500, 4))
    y = (X[:, 0] + 0.8 * rng.standard_normal(500) > 0).astype(int) + (X[:, 1] > 0.5)
    Xv = rng.standard_normal((150, 4))
    yv = (Xv[:, 0] + 0.8 * rng.standard_normal(150) > 0).astype(int) + (Xv[:, 1] > 0.5)
    clf = RFMClassifier(iters=0, **BASE).fit(X, y, X_val=Xv, y_val=yv)
    rec = clf.history_[0]
    assert rec["reg_criterion"] == "holdout" and len(rec["reg_path"]) >= 3
    onehot = (yv[:, None] == clf.classes_[None, :]).astype(float)
    for lam, err in rec["reg_path"]:
        m = RFMClassifier(iters=0, reg=lam, **BASE).fit(X, y)
        assert err == pytest.approx(np.mean((m.decision_function(Xv) - onehot) ** 2), rel=1e-9)
    assert clf.reg_ == min(rec["reg_path"], key=lambda p: p[1])[0]


def test_a_cg_walk_builds_the_stored_matrix_once_and_solves_as_if_rebuilt(monkeypatch):
    # K does not depend on the ridge: a walk of CG solves on the stored matrix builds it once per solve's metric,
    # and every value's solution and validation error are those of a solve on a freshly built K
    from kernels import operators

    X, y, _ = _noisy(800, seed=8)
    Xv, yv, _ = _noisy(200, seed=9)
    kw = dict(iters=1, solver="cg", early_stopping=False, solver_tol=1e-10, **BASE)
    builds = []
    real = operators.StoredKernel.__init__

    def counting(self, *a, built=False, **k):
        builds.append(built)
        real(self, *a, built=built, **k)

    monkeypatch.setattr(operators.StoredKernel, "__init__", counting)
    reused = RFMRegressor(**kw).fit(X, y, X_val=Xv, y_val=yv)
    walks = [len(h["reg_path"]) for h in reused.history_]
    assert builds.count(False) == len(walks) and builds.count(True) == sum(walks) - len(walks), (builds, walks)

    def rebuilding(self, *a, built=False, **k):
        real(self, *a, built=False, **k)

    monkeypatch.setattr(operators.StoredKernel, "__init__", rebuilding)
    fresh = RFMRegressor(**kw).fit(X, y, X_val=Xv, y_val=yv)
    assert [h["reg_path"] for h in fresh.history_] == [h["reg_path"] for h in reused.history_]
    np.testing.assert_array_equal(fresh.predict(Xv), reused.predict(Xv))


def test_the_first_walk_starts_at_the_leave_one_out_choice_of_a_few_rows(monkeypatch):
    from kernels.solvers.ridge import loo_path
    import torch

    X, y, _ = _noisy(600, seed=10)
    Xv, yv, _ = _noisy(200, seed=11)
    monkeypatch.setattr(engine_loop, "WALK_START_ROWS", 600)  # all rows: the start is reproducible outside
    m = RFMRegressor(iters=1, solver="cg", early_stopping=False, solver_tol=1e-10, **BASE).fit(X, y, X_val=Xv,
                                                                                                  y_val=yv)
    Xt = torch.as_tensor(X)
    K = torch.exp(-torch.cdist(Xt, Xt) / BASE["bandwidth"])
    expected = loo_path(K, torch.as_tensor(y)[:, None], RIDGE_GRID)[0].reg
    first, second = m.history_[0], m.history_[1]
    assert first["reg_start"] == pytest.approx(expected) and first["reg_criterion"] == "holdout"
    assert second["reg_start"] == first["reg"]  # later walks start from the last choice
    assert len(first["reg_path"]) <= 5  # a start near the answer: the value and its neighbours, a step or two


def test_more_centres_than_the_path_affords_carry_the_subsets_choice(monkeypatch):
    monkeypatch.setattr(engine_loop, "CENTRE_PATH_MAX_M", 50)
    X, y, _ = _noisy(900, seed=8)
    model = RFMRegressor(iters=1, solver="nystrom", n_centres=100, iter_sample_size=300, early_stopping=False,
                         **BASE).fit(X, y)
    sub, last = model.history_[-2], model.history_[-1]
    assert last["n_centres"] == 100 and last["reg_criterion"] == "carried from the previous solve (x 900 / 300 rows)"
    # the same ridge per row: reg / rows (both systems weigh reg ||f||^2 against a sum of squares over their rows)
    assert last["reg"] == pytest.approx(sub["reg"] * 900 / 300, rel=1e-12) and sub["reg_criterion"] == "loo"
    assert model.reg_ == last["reg"]
    assert last["reg_seconds"] == 0.0 < sub["reg_seconds"]  # carrying costs nothing; the solve is not counted


def test_the_same_ridge_per_row_is_the_same_model_on_duplicated_rows():
    """The convention the carry rests on, checked on the solvers: every row given twice (2n rows, the m-centre model
    with the n distinct rows as centres) with reg 2 lam is the exact solve on the n rows with reg lam."""
    import torch

    from kernels.family import Kernel
    from kernels.operators import Points
    from kernels.solvers import solve_centres

    rng = np.random.default_rng(12)
    X = torch.as_tensor(rng.standard_normal((60, 3)))
    y = torch.as_tensor(rng.standard_normal((60, 1)))
    kern = Kernel(bandwidth=2.0)
    lam = 0.05
    alpha = torch.linalg.solve(kern.matrix(X, X) + lam * torch.eye(60, dtype=X.dtype), y)
    beta = solve_centres(Points.of(torch.cat([X, X])), Points.of(X), torch.cat([y, y]), kernel=kern, reg=2 * lam,
                         rtol=1e-12).x
    # the same function: sum_j k(., x_j) alpha_j with alpha = beta
    torch.testing.assert_close(beta.reshape(-1, 1), alpha, rtol=1e-6, atol=1e-8)
    beta_unscaled = solve_centres(Points.of(torch.cat([X, X])), Points.of(X), torch.cat([y, y]), kernel=kern,
                                  reg=lam, rtol=1e-12).x
    assert float((beta_unscaled.reshape(-1, 1) - alpha).abs().max()) > 1e-3  # (the test can tell the two apart)


def test_without_validation_rows_a_large_solve_takes_the_loo_choice_of_a_subset(monkeypatch):
    monkeypatch.setattr(engine_loop, "LOO_MAX_ROWS", 200)
    X, y, _ = _noisy(600, seed=9)
    model = RFMRegressor(iters=1, early_stopping=False, **BASE).fit(X, y)
    assert {h["reg_criterion"] for h in model.history_} == {"loo on 200 of 600 rows"}
    assert model.reg_ >= 1e-2  # the noise asks for far more than the old fixed 1e-3
    # the subset is LOO_SUBSET_ROWS when that is smaller than what the exact path affords
    monkeypatch.setattr(engine_loop, "LOO_SUBSET_ROWS", 150)
    model = RFMRegressor(iters=1, early_stopping=False, **BASE).fit(X, y)
    assert {h["reg_criterion"] for h in model.history_} == {"loo on 150 of 600 rows"}


def test_early_stopping_refit_keeps_the_kept_solves_ridge():
    X, y, _ = _noisy(2400, seed=10)
    model = RFMRegressor(iters=2, **BASE).fit(X, y)
    refit, kept = model.history_[-1], model.history_[model.best_iter_]
    # the kept solve's ridge at the same ridge per row: x all rows / its rows
    assert "refit" in refit and refit["reg"] == pytest.approx(kept["reg"] * 2400 / kept["n_rows"], rel=1e-12)
    assert kept["n_rows"] < 2400 and refit["reg"] == model.reg_
    assert refit["reg_criterion"] == f"the kept solve's ({model.best_iter_}) x 2400 / {kept['n_rows']} rows"


def test_reg_auto_in_scikit_learns_tools():
    X, y, _ = _noisy(300, seed=11)
    search = GridSearchCV(RFMRegressor(iters=1, random_state=0), {"bandwidth": [2.0, 8.0]}, cv=2).fit(X, y)
    assert search.best_estimator_.reg == "auto" and search.best_estimator_.reg_ > 0
    pipe = make_pipeline(StandardScaler(), RFMRegressor(iters=1, random_state=0)).fit(X, y)
    assert pipe[-1].reg_ in RIDGE_GRID
    for es in (True, False):
        m = RFMRegressor(iters=1, early_stopping=es, random_state=0).fit(X, y)
        kept = m.history_[m.best_iter_]
        # (a refit on all 300 rows carries the kept value at the same ridge per row)
        assert kept["reg"] in RIDGE_GRID and m.reg_ == pytest.approx(kept["reg"] * (300 if es else kept["n_rows"])
                                                                     / kept["n_rows"], rel=1e-12)


@pytest.mark.parametrize("reg", ["fast", -1.0, float("nan"), [1e-3]])
def test_bad_reg_is_refused_naming_it(reg):
    X, y, _ = _noisy(50, seed=12)
    with pytest.raises((ValueError, TypeError), match="'reg'"):
        RFMRegressor(reg=reg).fit(X, y)


def test_standardize_is_the_fit_on_standardised_columns_and_centred_targets():
    rng = np.random.default_rng(13)
    X = rng.standard_normal((300, 3)) * [1000.0, 1.0, 0.01] + [5e4, 0.0, 3.0]
    y = 50.0 + X[:, 0] / 1000 * X[:, 1] + 0.1 * rng.standard_normal(300)
    Xte = rng.standard_normal((40, 3)) * [1000.0, 1.0, 0.01] + [5e4, 0.0, 3.0]
    kw = dict(iters=2, reg=1e-2, **BASE)
    std = RFMRegressor(standardize=True, **kw).fit(X, y)
    mu, sd = X.mean(0), X.std(0)
    ref = RFMRegressor(**kw).fit((X - mu) / sd, y - y.mean())
    np.testing.assert_allclose(std.x_mean_, mu)
    np.testing.assert_allclose(std.x_scale_, sd)
    np.testing.assert_allclose(std.predict(Xte), ref.predict((Xte - mu) / sd) + y.mean(), rtol=1e-10, atol=1e-10)
    np.testing.assert_allclose(std.M_, ref.M_, rtol=1e-10, atol=1e-12)
    # the score the loop records is the R^2 of the un-centred outputs
    assert std.history_[0]["train_score"] == pytest.approx(ref.history_[0]["train_score"], rel=1e-10)
    # the raw columns put every point far from every other: the unstandardised fit is far worse
    yte = 50.0 + Xte[:, 0] / 1000 * Xte[:, 1]
    from drfm import KernelScaleWarning

    with pytest.warns(KernelScaleWarning, match="standardize=True"):
        raw = RFMRegressor(standardize=False, **kw).fit(X, y)
    assert std.score(Xte, yte) > 0.8 > raw.score(Xte, yte)
    # the default, 'auto', standardises these columns (spreads 1000 : 1 : 0.01) exactly as True does
    auto = RFMRegressor(**kw).fit(X, y)
    assert auto.standardized_ and auto.column_spread_ == pytest.approx(1000.0, rel=0.2)
    np.testing.assert_array_equal(auto.predict(Xte), std.predict(Xte))


def test_standardize_auto_leaves_columns_that_share_a_scale_alone():
    from sklearn.datasets import load_digits

    X, y = load_digits(return_X_y=True)
    X = X[:600] / 16
    kw = dict(iters=1, reg=1e-3, **BASE)
    auto = RFMClassifier(**kw).fit(X, y[:600])
    assert not auto.standardized_ and auto.column_spread_ < 5
    raw = RFMClassifier(standardize=False, **kw).fit(X, y[:600])
    np.testing.assert_array_equal(auto.decision_function(X[:50]), raw.decision_function(X[:50]))
    # a Deep RFM's final machine never standardises the layers' features, whatever its template says
    from drfm import DeepRFMClassifier

    deep = DeepRFMClassifier(1, random_state=0, layer=RFMRegressor(2.0, iters=1, standardize=True)).fit(X, y[:600])
    assert deep.final_.standardized_ is False


def test_standardize_leaves_one_hot_blocks_and_classifier_targets_alone():
    import pandas as pd

    rng = np.random.default_rng(14)
    X = pd.DataFrame({"price": rng.normal(1e4, 3e3, 200), "colour": rng.choice(["red", "blue"], 200)})
    X["colour"] = X["colour"].astype("category")
    y = (X["price"] > 1e4).astype(int) ^ (X["colour"] == "red")
    clf = RFMClassifier(standardize=True, iters=1, **BASE).fit(X, y)
    assert clf.x_scale_[0] == pytest.approx(X["price"].std(ddof=0)) and list(clf.x_scale_[1:]) == [1.0, 1.0]
    assert set(np.unique(clf.X_fit_[:, 1:])) == {0.0, 1.0} and not hasattr(clf, "y_offset_")
    assert clf.score(X, y) > 0.9
