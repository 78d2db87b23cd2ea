"""Row-sharded kernel operators across processes (gloo on localhost): world sizes 2 and 3 against one process on the
same data, float64; uneven shards (one rank holds a single row); a rank that raises stops the others, and no test
can hang (every process has a deadline)."""
import subprocess
import sys

import numpy as np
import pytest
import torch

from kernels import Points, laplace_agop, solve_centres
from kernels._reference import family_kernel_numpy
from tests._ranks import ROOT, launch
from tests.kernels._dist_worker import problem

pytestmark = pytest.mark.skipif(not torch.distributed.is_available(), reason="torch.distributed not available")


def _launch(world, mode, tmp_path, deadline=120):
    return launch("tests.kernels._dist_worker", world, mode, tmp_path, deadline)


@pytest.mark.parametrize("world", [2, 3])
def test_sharded_products_cg_and_agop_equal_one_process(world, tmp_path):
    results, outs = _launch(world, "ok", tmp_path)
    assert all(rc == 0 for rc, _ in results), [err[-2000:] for _, err in results]
    parts = [torch.load(o) for o in outs]
    X, R, alpha, Y = problem()
    K = torch.as_tensor(family_kernel_numpy(X.numpy(), X.numpy(), name="laplace", bandwidth=2.0, r=R.numpy()))
    assert parts[0]["rows"] == (0, 1)  # uneven: rank 0 holds one row
    product = torch.cat([p["product"] for p in parts])
    torch.testing.assert_close(product, K @ alpha, rtol=1e-10, atol=1e-10)
    # distributed preconditioned CG reaches the single-process solution
    x = torch.cat([p["cg"] for p in parts])
    ref = torch.linalg.solve(K + 1e-2 * torch.eye(len(K), dtype=torch.float64), Y)
    assert float((x - ref).norm() / ref.norm()) < 1e-6
    assert len({p["cg_iters"] for p in parts}) == 1  # every rank stopped at the same step
    assert all(torch.equal(p["centres"], parts[0]["centres"]) for p in parts)  # rank 0's centres everywhere
    # the AGOP over every rank's rows equals the single-process AGOP
    ref_agop = laplace_agop(X, X, alpha, bandwidth=2.0, sqrt_m=R)
    ref_low = laplace_agop(X, X, alpha, bandwidth=2.0, sqrt_m=R[:, :2])
    ref_centred = laplace_agop(X, X, alpha, bandwidth=2.0, sqrt_m=R, centering=True)
    dg = torch.diagonal(R).sqrt()
    ref_diag = laplace_agop(X, X, alpha, bandwidth=2.0, sqrt_m=dg, diag=True, centering=True)
    ref_centres = solve_centres(Points.of(X, R), Points.of(X[::4][:30], R), Y, bandwidth=2.0, reg=1e-2, rtol=1e-12,
                                max_iter=500).x
    for p in parts:  # (summed in another order: equal to round-off of the whole matrix)
        assert float((p["agop"] - ref_agop).norm() / ref_agop.norm()) < 1e-10
        assert float((p["agop_low"] - ref_low).norm() / ref_low.norm()) < 1e-10
        # centred: the mean outer product minus the outer product of the mean cancels most digits of the sums, which
        # were added in another order (measured 1.2e-10 relative on the diagonal)
        assert float((p["agop_centred"] - ref_centred).norm() / ref_centred.norm()) < 1e-8
        assert float((p["agop_diag"] - ref_diag).norm() / ref_diag.norm()) < 1e-8
        assert float((p["centres_fit"] - ref_centres).norm() / ref_centres.norm()) < 1e-8
        torch.testing.assert_close(p["centres_fit"], parts[0]["centres_fit"], rtol=0, atol=0)  # rank 0's everywhere
    assert all(p["bytes"] > 0 for p in parts)


def test_a_rank_that_raises_stops_the_others(tmp_path):
    results, _ = _launch(2, "raise", tmp_path, deadline=90)
    (rc0, err0), (rc1, err1) = results
    assert rc1 != 0 and "rank 1 failed on purpose" in err1
    assert rc0 != 0  # rank 0 did not hang in its next collective: it failed with the lost peer


@pytest.mark.parametrize("world", [pytest.param(2, marks=pytest.mark.slow), 3])  # (also tests/drfm/test_one_engine.py)
def test_distributed_rfm_fit_equals_one_process(world, tmp_path):
    from drfm import RFMClassifier, RFMRegressor
    from tests.kernels._dist_worker import RFM_KW, lowrank

    results, outs = _launch(world, "rfm", tmp_path, deadline=240)
    assert all(rc == 0 for rc, _ in results), [err[-3000:] for _, err in results]
    parts = [torch.load(o, weights_only=False) for o in outs]
    X, y = lowrank()
    Xte = np.random.default_rng(9).standard_normal((50, X.shape[1]))
    ref = RFMRegressor(**RFM_KW).fit(X, y)
    ref_clf = RFMClassifier(**RFM_KW).fit(X, (y > 0).astype(int))

    def rel(a, b):
        return float(np.linalg.norm(a - b) / np.linalg.norm(b))

    for p in parts:  # the complete model on every rank, equal to the single-process fit
        assert rel(p["M"], ref.M_) < 1e-6 and rel(p["pred"], ref.predict(Xte)) < 1e-6
        assert rel(p["clf_M"], ref_clf.M_) < 1e-6 and rel(p["clf_dec"], ref_clf.decision_function(Xte)) < 1e-6
        assert list(p["classes"]) == [0, 1]  # agreed although rank 0 holds one row
        np.testing.assert_array_equal(p["pred"], parts[0]["pred"])
    assert parts[1]["pred_mine"].shape == (0,)  # a rank without test rows
    for p in parts[1:]:  # random_state=None: every rank used rank 0's draws
        np.testing.assert_array_equal(p["free_M"], parts[0]["free_M"])
    assert parts[0]["history"][0]["world_size"] == world


def test_mismatched_features_are_one_clear_error_on_every_rank(tmp_path):
    results, _ = _launch(2, "bad_shape", tmp_path, deadline=120)
    for rc, err in results:
        assert rc != 0 and "the ranks' data disagree" in err and "rank 1: 5 features" in err, err[-1500:]


def test_drfm_fit_under_torchrun(tmp_path):
    # `torchrun --nproc-per-node=2 -m drfm.cli fit ...`: each rank fits its row range; rank 0 reports and saves a
    # model that predicts as the single-process fit
    from drfm.cli import main
    from drfm.persistence import load_model
    from tests.kernels._dist_worker import lowrank

    X, y = lowrank(300, seed=5)
    np.save(tmp_path / "X.npy", X)
    np.save(tmp_path / "y.npy", y)
    params = ["--param", "iters=1", "--param", "solver=cg", "--param", "solver_tol=1e-11", "--param",
              "solver_max_iter=2000", "--param", "early_stopping=False", "--param", "dtype='float64'",
              "--param", "bandwidth=3.0", "--param", "reg=0.01"]
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", "2", "-m", "drfm.cli",
           "fit", "--X", str(tmp_path / "X.npy"), "--y", str(tmp_path / "y.npy"), "--json", "--device", "cpu",
           "--save", str(tmp_path / "m.drfm"), *params]
    proc = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=240)
    assert proc.returncode == 0, proc.stderr[-3000:]
    import json
    res = json.loads(proc.stdout[proc.stdout.index("{"):])
    assert res["world_size"] == 2 and res["rank"] == 0
    model = load_model(tmp_path / "m.drfm")
    assert model.distributed and model.X_fit_.shape[0] == res["n_train"] == 240  # 300 rows, 20% held out
    # the same fit in one process (the CLI's own split: same seed)
    single = tmp_path / "s.drfm"
    assert main(["fit", "--X", str(tmp_path / "X.npy"), "--y", str(tmp_path / "y.npy"), "--device", "cpu",
                 "--save", str(single), *params]) == 0
    ref = load_model(single)
    Xte = np.random.default_rng(1).standard_normal((40, X.shape[1]))
    np.testing.assert_allclose(model.predict(Xte), ref.predict(Xte), rtol=1e-6, atol=1e-8)
    # the scores are over all rows: equal to the single-process run's
    single_res = json.loads(subprocess.run([sys.executable, "-m", "drfm.cli", "fit", "--X", str(tmp_path / "X.npy"),
                                            "--y", str(tmp_path / "y.npy"), "--device", "cpu", "--json", *params],
                                           cwd=ROOT, capture_output=True, text=True, timeout=120).stdout)
    assert abs(res["train_score"] - single_res["train_score"]) < 1e-6
    assert abs(res["test_score"] - single_res["test_score"]) < 1e-6


def test_bench_distributed_quick(tmp_path):
    # the suite runs, counts no bytes at world size 1 and the same result at world size 2
    from drfm.cli import main
    import json

    out = tmp_path / "d.jsonl"
    assert main(["bench", "distributed", "--quick", "--out", str(out)]) == 0
    one, two = [json.loads(line) for line in out.read_text().splitlines()]
    assert one["world_size"] == 1 and one["bytes_per_step"] == 0 and two["bytes_per_step"] > 4 * 1000
    assert abs(one["score"] - two["score"]) < 1e-5


@pytest.mark.parametrize("world", [pytest.param(2, marks=pytest.mark.slow), 3])  # (also tests/drfm/test_one_engine.py)
def test_distributed_deep_rfm_equals_one_process(world, tmp_path):
    from drfm import DeepRFMClassifier
    from tests.kernels._dist_worker import deep_kw, lowrank

    results, outs = _launch(world, "deep", tmp_path, deadline=300)
    assert all(rc == 0 for rc, _ in results), [err[-3000:] for _, err in results]
    parts = [torch.load(o, weights_only=False) for o in outs]
    X, y = lowrank(200, seed=4)
    labels = np.digitize(y, [-0.5, 0.5])
    ref = DeepRFMClassifier(3, **deep_kw()).fit(X, labels)
    Xte = np.random.default_rng(2).standard_normal((30, X.shape[1]))
    ref_dec = ref.decision_function(Xte)
    for p in parts:
        np.testing.assert_allclose(p["mean"], ref.mean_, rtol=1e-12, atol=1e-14)
        for M, R in zip(p["Ms"], [layer.M for layer in ref.layers_]):
            assert np.linalg.norm(M - R) / np.linalg.norm(R) < 1e-6
        assert np.linalg.norm(p["dec"] - ref_dec) / np.linalg.norm(ref_dec) < 1e-6
        np.testing.assert_array_equal(p["free_W"], parts[0]["free_W"])
        np.testing.assert_array_equal(p["free_dec"], parts[0]["free_dec"])
