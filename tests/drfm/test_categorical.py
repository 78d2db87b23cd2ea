"""Categorical columns: one-hot blocks tied in M (against a brute-force permutation average), a mixed pandas table
end to end, unseen categories, validation, persistence."""
import itertools

import numpy as np
import pandas as pd
import pytest
import torch

from drfm import RFMClassifier, RFMRegressor
from drfm._categorical import fit_encoding, tie_groups
from drfm.persistence import load_model, save_model


def _random_psd(d, seed=0):
    g = torch.Generator().manual_seed(seed)
    a = torch.randn(d, d + 2, generator=g, dtype=torch.float64)
    return a @ a.T


def _brute_force_tie(a, groups):
    """The average of P A P^T over every permutation P of the groups' columns (independent reference)."""
    d = a.shape[0]
    perms = [list(itertools.permutations(g)) for g in groups]
    acc = torch.zeros_like(a)
    count = 0
    for choice in itertools.product(*perms):
        p = list(range(d))
        for g, img in zip(groups, choice):
            for src, dst in zip(g, img):
                p[src] = dst
        idx = torch.tensor(p)
        acc += a[idx][:, idx]
        count += 1
    return acc / count


def test_tie_groups_is_the_permutation_average_and_stays_psd():
    a = _random_psd(8)
    groups = [np.array([1, 2, 3]), np.array([5, 6])]
    got = tie_groups(a, groups)
    ref = _brute_force_tie(a, [list(g) for g in groups])
    torch.testing.assert_close(got, ref, rtol=1e-12, atol=1e-12)
    assert float(torch.linalg.eigvalsh(got).min()) > -1e-10
    # diagonal AGOPs: each group's mean
    dg = torch.arange(8, dtype=torch.float64)
    torch.testing.assert_close(tie_groups(dg, groups), torch.tensor([0, 2, 2, 2, 4, 5.5, 5.5, 7],
                                                                    dtype=torch.float64))


def _mixed_table(n, seed):
    rng = np.random.default_rng(seed)
    colour = rng.choice(["red", "green", "blue", "grey", "black"], n)
    size = pd.Categorical(rng.choice(["S", "M", "L"], n))
    x1, x2 = rng.standard_normal(n), rng.standard_normal(n)
    noise = rng.standard_normal((n, 3))
    y = np.where(np.isin(colour, ["red", "blue"]), 1.5, -1.0) * x1 + 0.3 * x2
    frame = pd.DataFrame({"x1": x1, "colour": colour, "x2": x2, "size": size,
                          **{f"n{i}": noise[:, i] for i in range(3)}})
    return frame, y


def test_mixed_table_end_to_end():
    X, y = _mixed_table(1500, 0)
    Xte, yte = _mixed_table(500, 1)
    model = RFMRegressor("auto", iters=3, early_stopping=False, random_state=0).fit(X, y)
    assert model.n_features_in_ == 7 and list(model.feature_names_in_) == list(X.columns)
    assert [c for c, _ in model.categorical_] == [1, 3]
    assert model.categorical_[0][1] == ["black", "blue", "green", "grey", "red"]
    # encoded width: 5 numeric + 5 colours + 3 sizes
    assert model.M_.shape == (13, 13)
    block = model.M_[np.ix_(range(1, 6), range(1, 6))]
    assert np.allclose(np.diag(block), block[0, 0]) and np.allclose(block[~np.eye(5, dtype=bool)], block[0, 1])
    imp = model.feature_importances_
    assert imp.shape == (7,) and imp.sum() == pytest.approx(1.0)
    # the target depends on x1 and on colour; the noise columns and size matter least
    assert set(np.argsort(imp)[-2:]) == {0, 1}, imp
    assert model.score(Xte, yte) > 0.85
    # the same columns given as an explicit list behave identically
    same = RFMRegressor("auto", iters=3, early_stopping=False, random_state=0,
                        categorical_features=["colour", "size"]).fit(X, y)
    np.testing.assert_array_equal(same.predict(Xte), model.predict(Xte))


def test_unseen_category_is_an_all_zero_block_and_names_are_checked():
    X, y = _mixed_table(300, 2)
    model = RFMClassifier(3.0, iters=1, random_state=0).fit(X, y > 0)
    row = X.iloc[:1].copy()
    row["colour"] = "purple"
    enc = fit_encoding(X, "from_dtype", "t")
    assert enc.transform(row, "t")[0, 1:6].sum() == 0.0
    assert model.predict_proba(row).shape == (1, 2)
    with pytest.raises(ValueError, match="feature names"):
        model.predict(X[list(reversed(X.columns))])


def test_categorical_input_errors_are_clear():
    X, y = _mixed_table(100, 3)
    bad = X.copy()
    bad.loc[3, "colour"] = None
    with pytest.raises(ValueError, match="'colour' has missing values"):
        RFMRegressor().fit(bad, y)
    with pytest.raises(ValueError, match="names column 'shade'"):
        RFMRegressor(categorical_features=["shade"]).fit(X, y)
    with pytest.raises(ValueError, match="non-numeric values"):
        RFMRegressor(categorical_features=["size"]).fit(X, y)  # colour is text but not marked
    with pytest.raises(ValueError, match="'categorical_features' parameter"):
        RFMRegressor(categorical_features="all").fit(X, y)
    # numpy input with integer-coded categories by index
    Xn = np.c_[np.arange(100) % 3, np.random.default_rng(0).standard_normal(100)]
    model = RFMRegressor(iters=1, categorical_features=[0]).fit(Xn, y)
    assert model.M_.shape == (4, 4) and model.categorical_ == [[0, [0.0, 1.0, 2.0]]]


def test_numeric_input_is_unchanged_by_the_default():
    rng = np.random.default_rng(4)
    X = rng.standard_normal((200, 4))
    y = X[:, 0] * X[:, 1]
    a = RFMRegressor(iters=1, random_state=0).fit(X, y)
    b = RFMRegressor(iters=1, random_state=0, categorical_features=None).fit(pd.DataFrame(X, columns=list("abcd")), y)
    assert a.categorical_ is None and b.categorical_ is None
    np.testing.assert_array_equal(a.M_, b.M_)


def test_saved_model_keeps_the_encoding(tmp_path):
    X, y = _mixed_table(300, 5)
    model = RFMClassifier(3.0, iters=1, random_state=0).fit(X, y > 0)
    save_model(model, tmp_path / "m.drfm")
    back = load_model(tmp_path / "m.drfm")
    np.testing.assert_array_equal(back.predict_proba(X), model.predict_proba(X))
    assert back.categorical_ == model.categorical_
