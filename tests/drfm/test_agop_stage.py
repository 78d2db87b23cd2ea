"""The AGOP-projected stage of a network (h_l AGOP_l^{1/2}) against the closed form of a linear network, whose AGOP
with respect to each layer's input is (the product of the later weights)^T (that product)."""
import numpy as np
import pytest
import torch
from scipy.linalg import sqrtm
from torch import nn

from drfm.networks.analysis import iter_layer_features, mlp_collapse_report


def _linear_net(seed=0):
    torch.manual_seed(seed)
    return nn.Sequential(nn.Linear(5, 4), nn.Linear(4, 3)).double()


def test_agop_stage_of_a_linear_network_is_the_closed_form():
    net = _linear_net()
    X = np.random.default_rng(0).standard_normal((50, 5))
    W1, W2 = (m.weight.detach().numpy() for m in net)
    layers = list(iter_layer_features(net, X, agop_stage=True, agop_sample_size=None))
    # layer 0: d out / d h_0 = W2 W1 at every sample; layer 1: W2
    for layer, J in ((0, W2 @ W1), (1, W2)):
        root = np.real(sqrtm(J.T @ J))
        np.testing.assert_allclose(layers[layer]["agop"], layers[layer]["input"] @ root, atol=1e-8)
    assert set(layers[0]) == {"input", "linear", "agop"}  # (no activation after these layers)
    assert "agop" not in next(iter_layer_features(net, X))


def test_agop_stage_in_a_collapse_report_and_its_summary():
    rng = np.random.default_rng(1)
    y = np.arange(90) % 3
    X = rng.standard_normal((90, 5)) + np.eye(3, 5)[y] * 2
    net = nn.Sequential(nn.Linear(5, 8), nn.ReLU(), nn.Linear(8, 3)).double()
    rep = mlp_collapse_report(net, X, y, metrics=("nc1",), agop_stage=True, agop_sample_size=None)
    stages = {(r["layer"], r["stage"]) for r in rep.rows}
    assert {(0, "agop"), (1, "agop"), (0, "nonlinear")} <= stages
    assert "agop" in rep.to_markdown()  # a column of the table
    # the summary's first and last rows are on the model's path, not the side view
    assert rep.summary() == mlp_collapse_report(net, X, y, metrics=("nc1",)).summary()
    with pytest.raises(ValueError, match="sample_size"):
        list(iter_layer_features(net, X, agop_stage=True, agop_sample_size=0))
