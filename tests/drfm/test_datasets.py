import random

import numpy as np
import pytest

from drfm.datasets import available, load


@pytest.mark.parametrize("name,d", [("digits", 64), ("gaussian", 20), ("mnist5k", 784), ("mnist1d", 40)])
def test_offline_datasets_load(name, d):
    data = load(name, random_state=0)
    assert data.task == "classification" and data.X_train.shape[1] == d
    assert len(np.unique(data.y_train)) >= 5 and np.isfinite(data.X_train).all()
    again = load(name, random_state=0)
    np.testing.assert_array_equal(data.X_train, again.X_train)


def test_mnist1d_leaves_global_rngs_alone():
    np.random.seed(123)
    random.seed(123)
    a, b = np.random.rand(), random.random()
    np.random.seed(123)
    random.seed(123)
    load("mnist1d")
    assert np.random.rand() == a and random.random() == b


def test_mnist1d_generates_more_signals_when_asked():
    data = load("mnist1d", n_train=5500, n_test=700)
    assert data.X_train.shape == (5500, 40) and data.X_test.shape == (700, 40)
    # all distinct signals (generated, not repeated), ten classes
    assert len(np.unique(np.concatenate([data.X_train, data.X_test]), axis=0)) == 6200
    assert set(np.unique(data.y_train)) == set(range(10))


def test_network_sets_fail_fast_offline_with_instructions():
    with pytest.raises(ValueError, match="torchvision|download"):
        load("cifar10")


def test_unknown_name_lists_available():
    with pytest.raises(ValueError, match="generated or bundled: .*digits"):
        load("nope")
    assert "mnist5k" in available()
