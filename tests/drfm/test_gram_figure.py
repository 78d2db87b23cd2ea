"""The seed paper's Gram-matrix figure: the class-sorted cosine Gram matrix against a simplex-ETF construction (known
blocks), its storage in reports (the same rows at every layer) and the figure from the API and the CLI."""
import numpy as np
import pytest

from drfm.collapse import CollapseReport, class_gram, stage_report


def _etf_features(K=4, per=30, p=9, noise=0.0, seed=0):
    """Rows at the vertices of a simplex ETF (K unit vectors with pairwise cosine -1/(K-1)), rotated into p
    dimensions and shifted; ``noise`` adds within-class spread."""
    rng = np.random.default_rng(seed)
    E = np.eye(K) - 1.0 / K
    E /= np.linalg.norm(E, axis=1, keepdims=True)
    R = np.linalg.qr(rng.standard_normal((p, p)))[0][:K]
    y = np.repeat(np.arange(K), per)
    rng.shuffle(y)
    H = E[y] @ R + 3.0 + noise * rng.standard_normal((len(y), p))
    return H, y


def test_class_gram_of_a_collapsed_etf_has_the_known_blocks():
    K = 4
    H, y = _etf_features(K)
    G, labels = class_gram(H, y, per_class=10)
    assert G.shape == (40, 40) and list(labels) == sorted(labels)
    same = labels[:, None] == labels[None, :]
    np.testing.assert_allclose(G[same], 1.0, atol=1e-12)
    np.testing.assert_allclose(G[~same], -1.0 / (K - 1), atol=1e-12)
    # spread inside the classes blurs the blocks: the test tells collapsed from not
    Gn, ln = class_gram(*_etf_features(K, noise=1.0), per_class=10)
    assert float(np.abs(Gn[ln[:, None] == ln[None, :]] - 1).max()) > 0.3


def test_grams_in_a_report_use_the_same_rows_at_every_layer_and_plot(tmp_path):
    pytest.importorskip("matplotlib")
    H, y = _etf_features(noise=0.3)
    layers = [{"input": H}, {"input": 2 * H + 1}]  # the same rows scaled: the same cosines about the class means' mean
    rep = stage_report(layers, y, metrics=("nc1",), model_name="m", grams=5)
    g = rep.meta["grams"]["m"]["input"]
    assert np.allclose(g[0], g[1], atol=1e-3) and len(rep.meta["gram_labels"]) == 20
    path = rep.plot_grams(tmp_path / "g.png")
    assert path.stat().st_size > 1000
    rep.to_json(tmp_path / "r.json")
    back = CollapseReport.from_json(tmp_path / "r.json")  # (layer keys come back as strings)
    assert back.plot_grams(tmp_path / "g2.png", layers=[1]).stat().st_size > 1000
    with pytest.raises(ValueError, match="stage"):
        rep.plot_grams(tmp_path / "x.png", stage="linear")
    with pytest.raises(ValueError, match="layers"):
        rep.plot_grams(tmp_path / "x.png", layers=[7])
    with pytest.raises(ValueError, match="grams"):
        CollapseReport().plot_grams(tmp_path / "x.png")
    with pytest.raises(ValueError, match="per_class"):
        class_gram(H, y, per_class=0)
    for bad in (0, 2.5, True, "a"):
        with pytest.raises(ValueError, match="grams"):
            stage_report(layers, y, metrics=("nc1",), model_name="m", grams=bad)


def test_collapse_command_writes_the_gram_figure(tmp_path):
    pytest.importorskip("matplotlib")
    from drfm.cli import main

    path = tmp_path / "grams.png"
    assert main(["collapse", "--dataset", "digits", "--depth", "2", "--n-train", "300", "--grams", str(path)]) == 0
    assert path.stat().st_size > 1000
