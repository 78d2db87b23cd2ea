"""The seed paper's MLP training as a preset (#14 item 2): readout init, Adam re-created every epoch,
standardised inputs; the training panels (tr Sigma_W / tr Sigma_T, tr Sigma_B / tr Sigma_T, loss, NFA per epoch)."""
import numpy as np
import pytest
import torch

from drfm import TorchMLPClassifier
from drfm import collapse as C
from drfm.nets import build_mlp


def _blobs(n=120, seed=0):
    rng = np.random.default_rng(seed)
    y = rng.integers(0, 3, n)
    return rng.standard_normal((n, 6)) + 3.0 * np.eye(3, 6)[y] + 100.0, y


def test_shares_sum_to_one_and_match_their_definition():
    H, y = _blobs()
    w, b = C.within_share(H, y), C.between_share(H, y)
    assert w + b == pytest.approx(1.0, abs=1e-12)
    mu = H.mean(0)
    means = np.stack([H[y == c].mean(0) for c in range(3)])
    tr_w = sum(((H[y == c] - means[c]) ** 2).sum() for c in range(3)) / len(H)
    assert w == pytest.approx(tr_w / (((H - mu) ** 2).sum() / len(H)), rel=1e-12)
    collapsed = np.eye(3, 6)[y] * 5.0
    assert C.within_share(collapsed, y) == pytest.approx(0.0, abs=1e-15)


def test_readout_init_pytorch_is_the_default_linear_init():
    g = torch.Generator().manual_seed(0)
    net = build_mlp(20, 4, depth=2, width=50, init_gain=0.1, bias=True, generator=g, readout_init="pytorch")
    out, hidden = net[-1], net[0]
    bound = 1 / np.sqrt(50)
    w = out.weight.detach().numpy()
    assert np.abs(w).max() <= bound and np.abs(w).max() > 0.8 * bound  # U(-1/sqrt(fan_in), 1/sqrt(fan_in))
    assert np.abs(out.bias.detach().numpy()).max() > 0  # the default init draws the bias too
    assert np.abs(hidden.weight.detach().numpy()).max() <= 0.1 * np.sqrt(6 / 70)  # hidden layers: Xavier gain 0.1
    assert not hidden.bias.detach().any()
    with pytest.raises(ValueError, match="readout_init"):
        build_mlp(2, 2, readout_init="he")


def test_reset_adam_restarts_the_moments_every_epoch(monkeypatch):
    X, y = _blobs()
    made = []
    original = torch.optim.Adam

    def counting(*args, **kwargs):
        made.append(1)
        return original(*args, **kwargs)

    monkeypatch.setattr(torch.optim, "Adam", counting)
    TorchMLPClassifier(1, 8, epochs=4, lr=1e-2, random_state=0).fit(X, y)
    assert len(made) == 1
    made.clear()
    TorchMLPClassifier(1, 8, epochs=4, lr=1e-2, reset_adam=True, random_state=0).fit(X, y)
    assert len(made) == 4  # one per epoch


def test_paper_preset_and_training_panels():
    X, y = _blobs(150)
    mlp = TorchMLPClassifier.paper(depth=2, width=32, epochs=6, lr=1e-3, measure_every=3,
                                   measure_metrics=("within_share", "between_share"), random_state=0)
    assert mlp.readout_init == "pytorch" and mlp.reset_adam and mlp.standardize and mlp.lr == 1e-3
    mlp.fit(X, y)
    rows = mlp.dynamics_.rows
    epochs = sorted({r["epoch"] for r in rows if r["metric"] == "within_share"})
    assert epochs == [0, 3, 6]
    losses = {r["epoch"]: r["value"] for r in rows if r["metric"] == "train_loss"}
    assert set(losses) == {3, 6} and losses[3] == pytest.approx(mlp.history_[2]["train_loss"])
    assert any(r["metric"].startswith("nfa") for r in rows)
    shares = [(r["value"], s["value"]) for r in rows if r["metric"] == "within_share" for s in rows
              if s["metric"] == "between_share" and (s["epoch"], s["layer"], s["stage"]) ==
              (r["epoch"], r["layer"], r["stage"])]
    assert shares and all(abs(w + b - 1) < 1e-9 for w, b in shares)
    assert np.allclose(mlp.mean_, X.mean(0))  # standardised inputs
