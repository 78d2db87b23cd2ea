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


# ---------------------------------------------------------------------------------------------------------------------
# convolutional backbone + MLP head (the paper's ResNet-18 / VGG-11 variant)
def _images(n=240, seed=0):
    """8 x 8 one-channel images whose class sets which quadrant is bright (a CNN separates them easily)."""
    rng = np.random.default_rng(seed)
    y = np.arange(n) % 4
    img = rng.normal(0, 0.3, (n, 1, 8, 8))
    for c in range(4):
        r, q = divmod(c, 2)
        img[y == c, 0, 4 * r: 4 * r + 4, 4 * q: 4 * q + 4] += 2.0
    return img.reshape(n, 64), y


def _cnn():
    torch.manual_seed(0)
    return torch.nn.Sequential(torch.nn.Conv2d(1, 6, 3, padding=1), torch.nn.ReLU(), torch.nn.AdaptiveAvgPool2d(2),
                               torch.nn.Flatten())


def test_backbone_is_trained_end_to_end_and_the_head_is_analysed():
    from drfm.collapse import collapse_report
    from drfm.nets import layer_features

    X, y = _images()
    cnn = _cnn()
    kw = dict(depth=2, width=32, init_gain=1.0, lr=1e-2, epochs=15, backbone=cnn, image_shape=(1, 8, 8),
              dtype="float64", random_state=0)
    m = TorchMLPClassifier(**kw).fit(X, y)
    assert m.history_[-1]["train_accuracy"] > 0.9
    # the backbone's weights moved from the given module's (which is left as it was)
    assert not torch.allclose(m.backbone_[0].weight.cpu().float(), cnn[0].weight)
    assert m.network_[0].in_features == 24  # the head takes the backbone's 6 x 2 x 2 features
    # the analysed inputs are the backbone's features of the standardised rows, computed by hand here
    Xs = (X - m.mean_) / m.scale_
    with torch.no_grad():
        feats = m.backbone_(torch.as_tensor(Xs).reshape(-1, 1, 8, 8)).numpy()
        manual_out = m.network_(torch.as_tensor(feats)).numpy()
    net, inputs, init = m.network_view(X)
    assert net is m.network_ and set(init) == set(m.network_.state_dict())
    np.testing.assert_allclose(inputs, feats, rtol=1e-12)
    np.testing.assert_allclose(m.decision_function(X), manual_out, rtol=1e-10)
    np.testing.assert_allclose(layer_features(m, X)[0]["input"], feats, rtol=1e-12)
    rep = collapse_report(m, X, y, model_name="mlp")
    assert sorted({r["layer"] for r in rep.rows}) == [0, 1, 2]  # the head's three Linear layers
    # deterministic under random_state
    m2 = TorchMLPClassifier(**kw).fit(X, y)
    np.testing.assert_array_equal(m.predict_proba(X), m2.predict_proba(X))
    # snapshots measure the head on the backbone's features at that epoch
    m3 = TorchMLPClassifier(**{**kw, "epochs": 2, "measure_every": 1}).fit(X, y)
    assert {r["epoch"] for r in m3.dynamics_.rows} == {0, 1, 2}


def test_backbone_errors_are_clear_and_come_before_training(monkeypatch):
    import sys
    import types

    from drfm.persistence import save_model

    X, y = _images(40)
    with pytest.raises(ValueError, match="'image_shape'.*must be given"):
        TorchMLPClassifier(backbone=_cnn()).fit(X, y)
    with pytest.raises(ValueError, match="holds 128 values, but the rows have 64"):
        TorchMLPClassifier(backbone=_cnn(), image_shape=(2, 8, 8)).fit(X, y)
    with pytest.raises(TypeError, match="three positive ints"):
        TorchMLPClassifier(backbone=_cnn(), image_shape=(1, 8.0, 8)).fit(X, y)
    with pytest.raises(ValueError, match="failed on a batch of images"):
        TorchMLPClassifier(backbone=torch.nn.Conv2d(3, 4, 3), image_shape=(1, 8, 8)).fit(X, y)
    with pytest.raises(ValueError, match="must map .* to \\(n, p\\)"):
        TorchMLPClassifier(backbone=torch.nn.Conv2d(1, 4, 3), image_shape=(1, 8, 8)).fit(X, y)
    with pytest.raises(ValueError, match="backbone gives 24 features"):
        TorchMLPClassifier(backbone=_cnn(), image_shape=(1, 8, 8), module=build_mlp(64, 4, depth=1)).fit(X, y)
    # named backbones need torchvision: not installed, and installed but broken (a build for another torch)
    monkeypatch.setitem(sys.modules, "torchvision", None)
    with pytest.raises(ImportError, match="needs torchvision, and it is not installed"):
        TorchMLPClassifier(backbone="resnet18", image_shape=(1, 8, 8)).fit(X, y)
    broken = types.ModuleType("torchvision")

    def fail(name):
        raise RuntimeError("operator torchvision::nms does not exist")

    broken.__getattr__ = fail
    monkeypatch.setitem(sys.modules, "torchvision", broken)
    with pytest.raises(ImportError, match="installed but failed to import .*torchvision::nms"):
        TorchMLPClassifier(backbone="vgg11", image_shape=(1, 8, 8)).fit(X, y)
    # a model with a backbone cannot go into drfm's model file: a TypeError naming it
    m = TorchMLPClassifier(1, 8, epochs=1, backbone=_cnn(), image_shape=(1, 8, 8), random_state=0).fit(X, y)
    with pytest.raises(TypeError, match="with a backbone cannot be saved.*torch.save"):
        save_model(m, "unused.drfm")


def test_named_backbones_are_adapted_to_the_images(monkeypatch):
    """ResNet-18 / VGG-11 adaptation (first convolution's channels, classifier removed, VGG padding to 32) checked on
    stand-ins with torchvision's attribute layout (torchvision itself cannot be installed on every test machine; the
    real models are used when it imports)."""
    import sys
    import types

    from torch import nn

    class FakeResNet(nn.Module):
        def __init__(self):
            super().__init__()
            self.conv1 = nn.Conv2d(3, 64, 7, stride=2, padding=3, bias=False)
            self.pool = nn.AdaptiveAvgPool2d(1)
            self.fc = nn.Linear(64, 1000)

        def forward(self, x):
            return self.fc(self.pool(torch.relu(self.conv1(x))).flatten(1))

    class FakeVGG(nn.Module):
        def __init__(self):
            super().__init__()
            layers = [nn.Conv2d(3, 64, 3, padding=1), nn.ReLU()]
            for _ in range(5):
                layers.append(nn.MaxPool2d(2))  # five halvings: needs at least 32 pixels
            self.features = nn.Sequential(*layers)

    fake = types.ModuleType("torchvision")
    fake.models = types.SimpleNamespace(resnet18=lambda weights=None: FakeResNet(),
                                        vgg11=lambda weights=None: FakeVGG())
    monkeypatch.setitem(sys.modules, "torchvision", fake)
    from drfm._backbones import build_backbone

    gen = torch.Generator().manual_seed(0)
    net, width = build_backbone("resnet18", (1, 28, 28), gen, "T")
    assert net.conv1.in_channels == 1 and isinstance(net.fc, nn.Identity) and width == 64
    net, width = build_backbone("vgg11", (1, 28, 28), gen, "T")  # 28 -> padded to 32 -> 1 x 1 after 5 poolings
    assert net[1][0].in_channels == 1 and width == 64
    net3, _ = build_backbone("vgg11", (3, 32, 32), gen, "T")
    assert net3[1][0].in_channels == 3  # three-channel images keep the original first convolution
    # initialised from the fit's generator (torch's global RNG untouched)
    state = torch.random.get_rng_state()
    a, _ = build_backbone("resnet18", (1, 28, 28), torch.Generator().manual_seed(5), "T")
    b, _ = build_backbone("resnet18", (1, 28, 28), torch.Generator().manual_seed(5), "T")
    assert torch.equal(a.conv1.weight, b.conv1.weight) and torch.equal(torch.random.get_rng_state(), state)


def test_real_torchvision_backbones_when_available():
    try:
        import torchvision  # noqa: F401
    except Exception:  # absent, or installed for another torch build
        pytest.skip("torchvision does not import here")
    rng = np.random.default_rng(0)
    X, y = rng.random((16, 784)), np.arange(16) % 2
    for name in ("resnet18", "vgg11"):
        m = TorchMLPClassifier(1, 16, epochs=1, backbone=name, image_shape=(1, 28, 28), random_state=0).fit(X, y)
        assert m.network_[0].in_features == 512 and m.predict(X).shape == (16,)
