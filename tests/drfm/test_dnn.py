"""Trained networks: network AGOP vs per-sample autograd and a closed form, Pearson vs numpy, the SVD split, training
determinism, user networks, errors, and the side-by-side comparison."""
import numpy as np
import pytest
import torch
from sklearn.utils.estimator_checks import parametrize_with_checks
from torch import nn

from drfm import dnn
from drfm.collapse import CollapseReport, nc1
from drfm.deep import DeepRFMClassifier


def _net(d=6, width=8, out=3, seed=0, dtype=torch.float64):
    g = torch.Generator().manual_seed(seed)
    net = dnn.build_mlp(d, out, depth=2, width=width, init_gain=1.0, generator=g)
    return net.to(dtype)


def _blobs(n=90, d=6, k=3, seed=0):
    rng = np.random.default_rng(seed)
    y = np.arange(n) % k
    X = rng.normal(size=(n, d)) + 3 * np.eye(k, d)[y]
    return X, y


# ---------------------------------------------------------------------------------------------------------------------
# network AGOP
@pytest.mark.parametrize("layer", [0, 1, 2])
def test_network_agop_matches_per_sample_autograd(layer):
    net = _net()
    X = torch.as_tensor(_blobs(40)[0])
    # reference: a loop of per-sample autograd.grad, one output at a time
    mods = list(net)
    start = [p for p, m in enumerate(mods) if isinstance(m, nn.Linear)][layer]
    ref = torch.zeros(mods[start].in_features, mods[start].in_features, dtype=torch.float64)
    for x in X:
        h = nn.Sequential(*mods[:start])(x[None]).detach().requires_grad_(True)
        out = nn.Sequential(*mods[start:])(h)[0]
        J = torch.stack([torch.autograd.grad(out[k], h, retain_graph=True)[0][0] for k in range(out.shape[0])])
        ref += J.T @ J
    ref /= len(X)
    got = dnn.network_agop(net, X, layer, batch_size=7)  # blocks that do not divide n
    np.testing.assert_allclose(got, ref.numpy(), rtol=1e-10, atol=1e-14)


def test_network_agop_linear_closed_form():
    """f(x) = a^T W x: the Jacobian is a^T W at every x, so AGOP = W^T a a^T W."""
    g = torch.Generator().manual_seed(1)
    W = torch.randn(5, 7, generator=g, dtype=torch.float64)
    a = torch.randn(1, 5, generator=g, dtype=torch.float64)
    net = nn.Sequential(nn.Linear(7, 5, bias=False), nn.Linear(5, 1, bias=False)).double()
    with torch.no_grad():
        net[0].weight.copy_(W)
        net[1].weight.copy_(a)
    X = torch.randn(23, 7, generator=g, dtype=torch.float64)
    expected = (W.T @ a.T @ a @ W).numpy()
    np.testing.assert_allclose(dnn.network_agop(net, X, 0), expected, rtol=1e-12, atol=1e-14)
    # with respect to the last layer's input the AGOP is a^T a
    np.testing.assert_allclose(dnn.network_agop(net, X, 1), (a.T @ a).numpy(), rtol=1e-12, atol=1e-14)


def test_network_agop_subsample_and_errors():
    net = _net()
    X = _blobs(60)[0]
    sub = dnn.network_agop(net, X, 1, sample_size=20, generator=torch.Generator().manual_seed(0))
    assert sub.shape == (8, 8) and np.all(np.isfinite(sub))
    with pytest.raises(ValueError, match=r"layer must be in \[0, 2\]"):
        dnn.network_agop(net, X, 3)
    with pytest.raises(TypeError, match="layer must be an int"):
        dnn.network_agop(net, X, 1.0)
    with pytest.raises(ValueError, match="has 4 features but the network's first Linear layer expects 6"):
        dnn.network_agop(net, X[:, :4], 0)
    with pytest.raises(ValueError, match="must be 2-D"):
        dnn.network_agop(net, X[0], 0)
    bad = X.copy()
    bad[0, 0] = np.nan
    with pytest.raises(ValueError, match="NaN"):
        dnn.network_agop(net, bad, 0)


# ---------------------------------------------------------------------------------------------------------------------
# Pearson / NFA
def test_pearson_matches_numpy_and_is_scale_invariant():
    rng = np.random.default_rng(0)
    A, B = rng.normal(size=(6, 6)), rng.normal(size=(6, 6))
    assert dnn.pearson(A, B) == pytest.approx(np.corrcoef(A.ravel(), B.ravel())[0, 1], rel=1e-12)
    assert dnn.pearson(A, 3.5 * A) == pytest.approx(1.0, abs=1e-12)
    assert dnn.pearson(A, -2 * A) == pytest.approx(-1.0, abs=1e-12)
    assert dnn.pearson(10 * A, 0.1 * B + 4) == pytest.approx(dnn.pearson(A, B), rel=1e-12)
    with pytest.raises(ValueError, match="constant"):
        dnn.pearson(np.ones((3, 3)), A[:3, :3])
    with pytest.raises(ValueError, match="equally shaped"):
        dnn.pearson(A, B[:3])


def test_psd_sqrt():
    rng = np.random.default_rng(0)
    G = rng.normal(size=(5, 5))
    A = G @ G.T
    R = dnn.psd_sqrt(A)
    np.testing.assert_allclose(R @ R, A, rtol=1e-10, atol=1e-10)
    np.testing.assert_allclose(R, R.T)


def test_nfa_last_layer_is_exact_and_init_subtraction():
    """For the output layer the network AGOP is W^T W itself, so corr(W^T W, AGOP) = 1 exactly."""
    net = _net()
    X = _blobs(50)[0]
    init = {k: v.clone() for k, v in net.state_dict().items()}
    recs = dnn.nfa_correlations(net, X)
    assert [r["layer"] for r in recs] == [0, 1, 2]
    assert recs[2]["nfa_agop"] == pytest.approx(1.0, abs=1e-12)
    assert all(-1 <= r["nfa_sqrt"] <= 1 for r in recs)
    assert "nfa_sqrt_delta" not in recs[0]  # no initial weights given
    g = torch.Generator().manual_seed(5)
    with torch.no_grad():
        for p in net.parameters():
            p.add_(0.3 * torch.randn(p.shape, generator=g, dtype=p.dtype))
    recs = dnn.nfa_correlations(net, X, initial=init)
    assert {"nfa_sqrt_delta", "nfa_agop_delta"} <= set(recs[0])
    # independent recomputation of the delta correlation with numpy
    W = net[0].weight.detach().numpy()
    D = W - init["0.weight"].numpy()
    agop = dnn.network_agop(net, X, 0)
    w, V = np.linalg.eigh(agop)
    root = V @ np.diag(np.sqrt(np.clip(w, 0, None))) @ V.T
    assert recs[0]["nfa_sqrt_delta"] == pytest.approx(np.corrcoef((D.T @ D).ravel(), root.ravel())[0, 1], rel=1e-9)
    assert recs[0]["nfa_sqrt"] == pytest.approx(np.corrcoef((W.T @ W).ravel(), root.ravel())[0, 1], rel=1e-9)


def test_nfa_with_a_dead_network_warns_instead_of_failing():
    net = _net()
    with torch.no_grad():
        net[2].weight.zero_()  # layer 1 outputs nothing: the AGOP w.r.t. layers 0 and 1 is zero
    X = _blobs(30)[0]
    with pytest.warns(RuntimeWarning, match="undefined"):
        recs = dnn.nfa_correlations(net, X)
    assert "nfa_sqrt" not in recs[0] and "nfa_sqrt" in recs[2]


# ---------------------------------------------------------------------------------------------------------------------
# SVD split
def test_svd_split_nc1_equals_nc1_of_wh():
    net = _net()
    X, y = _blobs(90)
    feats = dnn.layer_features(net, X)
    assert len(feats) == 3
    assert set(feats[0]) == {"input", "linear", "nonlinear"} and set(feats[2]) == {"input", "linear"}
    h = torch.as_tensor(X)
    for layer, st in enumerate(feats):
        W = net[2 * layer].weight.detach()
        np.testing.assert_allclose(st["input"], h.numpy(), rtol=1e-12)
        Wh = (h @ W.T).numpy()
        assert nc1(st["linear"], y) == pytest.approx(nc1(Wh, y), rel=1e-9)
        # S V^T h has the norms of W h (U has orthonormal columns)
        np.testing.assert_allclose(np.linalg.norm(st["linear"], axis=1), np.linalg.norm(Wh, axis=1), rtol=1e-9)
        if "nonlinear" in st:
            np.testing.assert_allclose(st["nonlinear"], np.maximum(Wh, 0), rtol=1e-12, atol=1e-14)
        h = torch.relu(h @ W.T)


def test_layer_features_one_layer_at_a_time_equal_all_at_once():
    """The generators behind reports at scale give the same arrays as the all-layers functions (a pass per layer
    over all rows instead of a pass per row batch over all layers), and leave no grad/eval mode on between layers."""
    X, y = _blobs(90)
    mlp = dnn.TorchMLPClassifier(2, 16, lr=1e-2, epochs=2, random_state=0).fit(X, y)
    deep = DeepRFMClassifier(3, random_state=0).fit(X, y)
    mlp.network_.train()  # the generator must not leave it in eval mode while the caller runs
    for model, kw in ((mlp.network_, {"batch_size": 32}), (mlp, {}), (deep, None)):
        if kw is None:
            whole, lazy = deep.layer_features(X), deep.iter_layer_features(X)
        else:
            whole, lazy = dnn.layer_features(model, X, **kw), dnn.iter_layer_features(model, X, **kw)
        n_layers = 0
        for a, b in zip(whole, lazy):
            assert torch.is_grad_enabled() and mlp.network_.training  # nothing left on by the generator
            assert list(a) == list(b)
            for stage in a:
                np.testing.assert_array_equal(a[stage], b[stage])
            n_layers += 1
        assert n_layers == len(whole) and next(lazy, None) is None
    from drfm.collapse import collapse_report, stage_report

    rep = collapse_report(deep, X, y)  # takes the generator
    assert rep.meta["depth"] == 3
    assert rep.rows == stage_report(deep.layer_features(X), y, model_name="deep_rfm").rows


def test_mlp_report_concatenates_with_deep_rfm():
    X, y = _blobs(90)
    mlp = dnn.TorchMLPClassifier(2, 16, lr=1e-2, epochs=3, random_state=0).fit(X, y)
    deep = DeepRFMClassifier(2, random_state=0).fit(X, y)
    from drfm.collapse import collapse_report

    rep = collapse_report(deep, X, y) + dnn.mlp_collapse_report(mlp, X, y)
    assert {r["model"] for r in rep.rows} == {"deep_rfm", "mlp"}
    # the estimator's own layer_features is what collapse_report consumes: same rows as mlp_collapse_report
    rep2 = collapse_report(mlp, X, y, model_name="mlp")
    assert [(r["layer"], r["stage"], r["metric"], r["value"]) for r in rep2.rows] == \
        [(r["layer"], r["stage"], r["metric"], r["value"]) for r in rep.rows if r["model"] == "mlp"]
    table = rep.to_markdown()
    assert "| mlp | 0 |" in table and "| deep_rfm | 1 |" in table
    assert {s["model"] for s in rep.linear_share()} == {"deep_rfm", "mlp"}


# ---------------------------------------------------------------------------------------------------------------------
# training
def test_training_is_deterministic_and_learns():
    X, y = _blobs(120)
    kw = dict(depth=2, width=32, lr=3e-3, epochs=15, batch_size=16, random_state=3)
    a = dnn.TorchMLPClassifier(**kw).fit(X, y)
    b = dnn.TorchMLPClassifier(**kw).fit(X, y)
    for (ka, va), (kb, vb) in zip(a.network_.state_dict().items(), b.network_.state_dict().items()):
        assert ka == kb and torch.equal(va, vb)
    assert [h["train_loss"] for h in a.history_] == [h["train_loss"] for h in b.history_]
    c = dnn.TorchMLPClassifier(**{**kw, "random_state": 4}).fit(X, y)
    assert not torch.equal(a.network_[0].weight, c.network_[0].weight)
    assert a.history_[-1]["train_loss"] < a.history_[0]["train_loss"]
    assert a.score(X, y) > 0.9
    # the paper's architecture: bias-free Linear layers, Xavier-uniform bound gain * sqrt(6 / (fan_in + fan_out))
    w0 = a.initial_state_["0.weight"]
    assert "0.bias" not in a.initial_state_
    assert w0.abs().max() <= 0.1 * np.sqrt(6 / (6 + 32))


def test_measuring_does_not_change_training():
    X, y = _blobs(90)
    kw = dict(depth=2, width=16, lr=5e-3, epochs=4, agop_sample_size=50, random_state=0)
    plain = dnn.TorchMLPClassifier(**kw).fit(X, y)
    measured = dnn.TorchMLPClassifier(**kw, measure_every=1).fit(X, y)
    for a, b in zip(plain.network_.parameters(), measured.network_.parameters()):
        assert torch.equal(a, b)


def test_measure_every_records_dynamics(tmp_path):
    X, y = _blobs(90)
    m = dnn.TorchMLPClassifier(2, 16, lr=5e-3, epochs=4, measure_every=2, agop_sample_size=50,
                               random_state=0).fit(X, y)
    epochs = sorted({r["epoch"] for r in m.dynamics_.rows})
    assert epochs == [0, 2, 4]
    metrics = {r["metric"] for r in m.dynamics_.rows}
    assert {"nc1", "nc2", "nfa_sqrt", "nfa_agop"} <= metrics
    assert "nfa_sqrt_delta" in {r["metric"] for r in m.dynamics_.rows if r["epoch"] == 4}
    assert "nfa_sqrt_delta" not in {r["metric"] for r in m.dynamics_.rows if r["epoch"] == 0}
    # epoch rows stay out of the per-layer table and plot against epochs
    assert m.dynamics_.to_markdown().count("\n") == 1
    out = m.dynamics_.plot(tmp_path / "dyn.png", metrics=["nc1", "nfa_sqrt"], x="epoch", stages=["nonlinear", "weights"])
    assert (tmp_path / "dyn.png").stat().st_size > 0 and out == tmp_path / "dyn.png"
    with pytest.raises(ValueError, match="no rows to plot"):
        CollapseReport().plot(tmp_path / "x.png", x="epoch")


def test_user_sequential_with_bias_and_other_activation():
    X, y = _blobs(90)
    user = nn.Sequential(nn.Linear(6, 12), nn.LeakyReLU(0.1), nn.Dropout(0.0), nn.Linear(12, 3))
    before = user[0].weight.detach().clone()
    m = dnn.TorchMLPClassifier(module=user, lr=1e-2, epochs=5, random_state=0).fit(X, y)
    assert torch.equal(user[0].weight, before)  # the user's module is copied, not trained in place
    assert torch.equal(m.initial_state_["0.weight"], before)  # ... and training starts from its weights
    feats = m.layer_features(X)
    assert len(feats) == 2
    z = torch.as_tensor(X, dtype=torch.float32) @ m.network_[0].weight.T + m.network_[0].bias
    np.testing.assert_allclose(feats[0]["nonlinear"], torch.nn.functional.leaky_relu(z, 0.1).detach().numpy(),
                               rtol=1e-5, atol=1e-6)
    assert m.predict(X).shape == (90,)


@pytest.mark.parametrize("bad, match", [
    (nn.Sequential(nn.Linear(6, 4), nn.BatchNorm1d(4), nn.Linear(4, 3)), r"layer 1 \(BatchNorm1d\) is not supported"),
    (nn.Sequential(nn.ReLU(), nn.Linear(6, 3)), "comes before the first Linear"),
    (nn.Sequential(nn.Linear(6, 4), nn.ReLU(), nn.Tanh(), nn.Linear(4, 3)), "stack 2 activations"),
    (nn.Sequential(nn.ReLU()), "no Linear layer"),
    (nn.Sequential(nn.Linear(5, 4), nn.ReLU(), nn.Linear(4, 3)), "maps 5 inputs to 3 outputs, but the data have 6"),
])
def test_unsupported_networks_get_clear_errors(bad, match):
    X, y = _blobs(30)
    with pytest.raises(ValueError, match=match):
        dnn.TorchMLPClassifier(module=bad, epochs=1).fit(X, y)


def test_bad_parameters_and_inputs():
    X, y = _blobs(30)
    with pytest.raises(TypeError, match="must be a torch.nn.Sequential"):
        dnn.layer_features(nn.Linear(6, 3), X)
    with pytest.raises(ValueError, match="'module' parameter of TorchMLPClassifier must be a torch.nn.Sequential"):
        dnn.TorchMLPClassifier(module=nn.Linear(6, 3)).fit(X, y)
    with pytest.raises(ValueError, match="'loss' parameter"):
        dnn.TorchMLPClassifier(loss="hinge").fit(X, y)
    with pytest.raises(ValueError, match="unknown metrics"):
        dnn.TorchMLPClassifier(measure_metrics=("nc7",), epochs=1).fit(X, y)
    with pytest.raises(FloatingPointError, match="lower 'lr'"):
        dnn.TorchMLPClassifier(1, 8, init_gain=1e6, lr=1e6, epochs=3, loss="mse", random_state=0).fit(X * 1e30, y)


def test_cross_entropy_training():
    X, y = _blobs(90)
    m = dnn.TorchMLPClassifier(2, 16, loss="cross_entropy", lr=1e-2, epochs=30, random_state=0).fit(X, y)
    assert m.history_[-1]["train_loss"] < 0.5 * m.history_[0]["train_loss"]
    assert m.score(X, y) > 0.9


# ---------------------------------------------------------------------------------------------------------------------
# side by side
def test_compare_report_and_table():
    X, y = _blobs(120)
    rep = dnn.compare(X[:90], y[:90], X[90:], y[90:], depth=2, measure_every=2,
                      mlp_params=dict(width=16, lr=1e-2, epochs=4, agop_sample_size=40))
    models = {r["model"] for r in rep.rows}
    assert models == {"deep_rfm", "mlp", "mlp_init", "deep_rfm_vs_mlp"}
    # CKA between the two models' layers, stage by stage
    cka = [r for r in rep.rows if r["model"] == "deep_rfm_vs_mlp"]
    assert {r["metric"] for r in cka} == {"cka"} and {r["layer"] for r in cka} == {0, 1}
    assert all(0.0 <= r["value"] <= 1.0 + 1e-12 for r in cka)
    # sparsity of every layer's feature matrix for both models
    ranks = {(r["model"], r["layer"]) for r in rep.rows if r["metric"] == "m_effective_rank"}
    assert {("deep_rfm", 0), ("deep_rfm", 1), ("mlp", 0), ("mlp", 1)} <= ranks
    assert 0 <= rep.meta["mlp"]["test_accuracy"] <= 1 and 0 <= rep.meta["deep_rfm"]["test_accuracy"] <= 1
    table = dnn.comparison_table(rep)
    lines = table.splitlines()
    assert len(lines) == 2 + 3  # header, rule, MLP layers 0..2 (Deep RFM has 0..1)
    assert lines[2].startswith("| 0 |") and lines[2].count("|") == 13
    assert any("epoch" in r for r in rep.rows)


# ---------------------------------------------------------------------------------------------------------------------
@parametrize_with_checks(
    [dnn.TorchMLPClassifier(2, 16, lr=1e-2, epochs=20, batch_size=32, random_state=0, dtype="float64")],
    expected_failed_checks=lambda est: {},
)
def test_sklearn_compatible(estimator, check):
    check(estimator)
