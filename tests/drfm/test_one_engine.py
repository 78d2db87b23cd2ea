"""One engine for one process or many (issue 26): a distributed fit is the single-process loop with its collectives
over ranks, so every setting gives the single-process model -- tested against one process on all rows with 2 and 3
gloo ranks and uneven shards (one rank holding 1 row, one holding none), float64; every disagreement between the
ranks is one clear error on every rank; a rank that dies or is paused makes the others fail within the timeout."""
import os
import signal
import time

import numpy as np
import pytest
import torch

from tests._ranks import finish, launch, start
from tests.drfm._engine_worker import cases, outputs, held_out_rows

pytestmark = pytest.mark.skipif(not torch.distributed.is_available(), reason="torch.distributed not available")
WORKER = "tests.drfm._engine_worker"


@pytest.fixture(scope="module")
def single_process():
    """Every parity case fitted in this process on all rows."""
    import warnings

    res = {}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        for name, make, (X, y) in cases():
            model = make().fit(X, y)
            res[name] = {"out": outputs(model, held_out_rows(X)), "M": model.M_, "best_iter": model.best_iter_,
                         "history": model.history_, "n_fit": model.X_fit_.shape[0],
                         "categorical": getattr(model, "categorical_", None),
                         "standardized": getattr(model, "standardized_", None),
                         "classes": getattr(model, "classes_", None)}
    return res


@pytest.mark.parametrize("world", [pytest.param(2, marks=pytest.mark.slow), 3])  # (3 ranks: a 1-row and a 0-row shard)
def test_every_setting_gives_the_single_process_model(world, single_process, tmp_path):
    results, outs = launch(WORKER, world, "parity", tmp_path, deadline=400)
    assert all(rc == 0 for rc, _ in results), [err[-3000:] for _, err in results]
    parts = [torch.load(o, weights_only=False) for o in outs]
    for name, ref in single_process.items():
        scale = float(np.std(ref["out"])) or 1.0
        for rank, part in enumerate(parts):
            got = part[name]
            where = f"{name}, rank {rank} of {world}"
            # the same solves, the same kept iterate, the same model
            assert [h["solver"] for h in got["history"]] == [h["solver"] for h in ref["history"]], where
            assert [h["n_rows"] for h in got["history"]] == [h["n_rows"] for h in ref["history"]], where
            assert got["best_iter"] == ref["best_iter"] and got["n_fit"] == ref["n_fit"], where
            # reg='auto' (every case's default) chose the same ridge at every solve, by the same route
            assert [(h["reg"], h.get("reg_criterion")) for h in got["history"]] == \
                [(h["reg"], h.get("reg_criterion")) for h in ref["history"]], where
            dev = float(np.max(np.abs(got["out"] - ref["out"]))) / scale
            assert dev < 1e-6, f"{where}: predictions differ by {dev:.3g} of their std"
            np.testing.assert_allclose(got["M"], ref["M"], rtol=1e-6, atol=1e-8, err_msg=where)
            assert repr(got["categorical"]) == repr(ref["categorical"]), where
            assert got["standardized"] == ref["standardized"], where
            if ref["classes"] is not None:
                assert list(got["classes"]) == list(ref["classes"]), where
            np.testing.assert_array_equal(got["out"], parts[0][name]["out"])  # identical on every rank
    # standardize='auto' standardised the table whose columns' spreads differ, and not the Gaussian columns
    assert single_process["standardize_auto"]["standardized"] and not single_process["defaults"]["standardized"]
    # the defaults held out validation rows, stopped early or ran out, and refit on all rows -- as one process
    assert "refit" in single_process["defaults"]["history"][-1]
    # the m-centre solves ran sharded by rows and say what they communicated
    hist = parts[0]["nystrom_sharded"]["history"]
    assert all(h["sharded"] and h["bytes_per_step"] > 0 and h["world_size"] == world for h in hist)
    assert parts[0]["cg_es"]["history"][0]["sharded"]
    # the final m-centre CG scored its steps on the validation rows of every rank, as one process did
    last = [h for h in parts[0]["nystrom_es_cg"]["history"] if h["solver"] == "nystrom"][-1]
    ref = [h for h in single_process["nystrom_es_cg"]["history"] if h["solver"] == "nystrom"][-1]
    assert last["sharded"] and last["solver_stopped_by"] == ref["solver_stopped_by"]
    assert last["solver_iters"] == ref["solver_iters"] == len(ref["solver_val_errors"])
    np.testing.assert_allclose(last["solver_val_errors"], ref["solver_val_errors"], rtol=1e-9)


@pytest.mark.parametrize("mode, message", [
    ("labels", "labels are of different types"),
    ("val_one_rank", "X_val / y_val were given on rank(s) [1] only"),
    ("params", "The 'iters' parameter of RFMRegressor differs between the ranks (rank 0: 1, rank 1: 2)"),
    ("underflow", "below float32's smallest normal number 1.18e-38 (column 2"),
])
def test_a_disagreement_between_ranks_is_one_clear_error_on_every_rank(mode, message, tmp_path):
    results, _ = launch(WORKER, 2, mode, tmp_path, deadline=120)
    for rank, (rc, err) in enumerate(results):
        assert rc != 0 and message in err, f"rank {rank}: {err[-2000:]}"
        assert "EnforceNotMet" not in err and "gloo" not in err.lower().split("valueerror")[-1]


def test_ranks_fit_under_one_thread_count(tmp_path):
    """n_threads='auto' measures each rank's idle cores; ranks solving their replicated systems under different
    counts could round a stopping decision apart, so the ranks agree on the smallest count."""
    results, outs = launch(WORKER, 2, "threads", tmp_path, deadline=120)
    for rank, (rc, err) in enumerate(results):
        assert rc == 0, f"rank {rank}: {err[-2000:]}"
    assert [torch.load(o)["n_threads"] for o in outs] == [1, 1]


@pytest.mark.parametrize("how", ["kill", "pause"])
def test_a_rank_that_dies_or_is_paused_stops_the_other_within_the_timeout(how, tmp_path):
    procs, outs = start(WORKER, 2, how, tmp_path)
    try:
        started = str(outs[1]).replace(".pt", ".started")
        t0 = time.time()
        while not os.path.exists(started):
            assert time.time() - t0 < 60 and procs[1].poll() is None, "rank 1 did not start its fit"
            time.sleep(0.1)
        time.sleep(2.0)  # inside the fit
        os.kill(procs[1].pid, signal.SIGKILL if how == "kill" else signal.SIGSTOP)
        t_signal = time.time()
        rc0, err0 = finish(procs[:1], deadline=60)[0]
        waited = time.time() - t_signal
    finally:
        for p in procs:
            if p.poll() is None:
                os.kill(p.pid, signal.SIGKILL)
                p.wait()
    assert rc0 != 0 and "RankFailureError" in err0, err0[-2000:]
    state = "has exited" if how == "kill" else "is paused"
    assert f"rank 1 (pid {procs[1].pid}) {state}" in err0, err0[-2000:]
    assert waited < 5.0 + 20, f"rank 0 took {waited:.0f} s to fail (timeout 5 s)"
