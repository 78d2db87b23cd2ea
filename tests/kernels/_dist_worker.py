"""One rank of the distributed tests (started by tests/kernels/test_distributed.py, never collected by pytest).

python -m tests.kernels._dist_worker WORLD RANK PORT MODE OUT
"""
import sys
from datetime import timedelta

import torch


def problem(seed=0, n=101, d=5, c=3):
    g = torch.Generator().manual_seed(seed)
    X = torch.randn(n, d, generator=g, dtype=torch.float64)
    A = torch.randn(d, d, generator=g, dtype=torch.float64)
    R = A @ A.T / d + 0.2 * torch.eye(d, dtype=torch.float64)
    alpha = torch.randn(n, c, generator=g, dtype=torch.float64)
    Y = torch.randn(n, c, generator=g, dtype=torch.float64)
    return X, R, alpha, Y


def shard_sizes(n, world):
    """Uneven shards: rank 0 holds one row, the others split the rest (the last one the remainder)."""
    if world == 1:
        return [n]
    rest = n - 1
    each = rest // (world - 1)
    return [1] + [each] * (world - 2) + [rest - each * (world - 2)]


def lowrank(n=240, d=6, seed=3):
    import numpy as np

    rng = np.random.default_rng(seed)
    X = rng.standard_normal((n, d))
    return X, X[:, 0] * X[:, 1]


#: the RFM settings of the distributed-vs-single-process fits: the iterative path solved tightly on all rows
RFM_KW = dict(bandwidth=3.0, iters=2, reg=1e-2, solver="cg", solver_tol=1e-11, solver_max_iter=2000,
              iter_sample_size=None, early_stopping=False, dtype="float64", random_state=0)


def fit_rfm(world, rank, out):
    import numpy as np

    from drfm import RFMClassifier, RFMRegressor

    X, y = lowrank()
    Xte = np.random.default_rng(9).standard_normal((50, X.shape[1]))
    sizes = shard_sizes(len(X), world)
    off = sum(sizes[:rank])
    rows = slice(off, off + sizes[rank])
    reg = RFMRegressor(distributed=True, **RFM_KW).fit(X[rows], y[rows])
    clf = RFMClassifier(distributed=True, **RFM_KW).fit(X[rows], (y[rows] > 0).astype(int))
    mine = Xte if rank != 1 else Xte[:0]  # rank 1 has no test rows
    # random_state=None and a random AGOP sample: the draws must still agree across ranks (rank 0's seed)
    free = RFMRegressor(distributed=True, **{**RFM_KW, "random_state": None, "agop_sample_size": 100})
    free.fit(X[rows], y[rows])
    torch.save({"M": reg.M_, "pred": reg.predict(Xte), "pred_mine": reg.predict(mine), "alpha": reg.dual_coef_,
                "clf_M": clf.M_, "clf_dec": clf.decision_function(Xte), "classes": clf.classes_,
                "history": reg.history_, "free_M": free.M_}, out)


def deep_kw():
    from drfm import RFMRegressor

    layer = RFMRegressor(2.0, iters=1, reg=1e-2, solver="cg", solver_tol=1e-11, solver_max_iter=2000,
                         iter_sample_size=None, early_stopping=False)
    return dict(layer=layer, feature_map="cosine", width=64, dtype="float64", random_state=0)


def fit_deep(world, rank, out):
    import numpy as np

    from drfm import DeepRFMClassifier

    X, y = lowrank(200, seed=4)
    labels = np.digitize(y, [-0.5, 0.5])  # 3 classes
    sizes = shard_sizes(len(X), world)
    off = sum(sizes[:rank])
    rows = slice(off, off + sizes[rank])
    deep = DeepRFMClassifier(3, distributed=True, **deep_kw()).fit(X[rows], labels[rows])
    Xte = np.random.default_rng(2).standard_normal((30, X.shape[1]))
    # random_state=None: the feature-map weights must still be the same on every rank (rank 0's generator)
    free = DeepRFMClassifier(2, distributed=True, **{**deep_kw(), "random_state": None}).fit(X[rows], labels[rows])
    torch.save({"Ms": [layer.M for layer in deep.layers_], "dec": deep.decision_function(Xte),
                "mean": deep.mean_, "free_W": free.layers_[0].W, "free_dec": free.decision_function(Xte)}, out)


def main(world, rank, port, mode, out):
    torch.set_num_threads(1)
    import torch.distributed as dist

    dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank, world_size=world,
                            timeout=timedelta(seconds=30))
    if mode in ("rfm", "deep"):
        (fit_rfm if mode == "rfm" else fit_deep)(world, rank, out)
        dist.destroy_process_group()
        return
    if mode == "bad_shape":

        from drfm import RFMRegressor

        X, y = lowrank()
        X = X[:, :5] if rank == 1 else X
        RFMRegressor(distributed=True, **RFM_KW).fit(X[rank::world], y[rank::world])
        return
    from kernels import Points
    from kernels.distributed import Comm, ShardedKernel, distributed_agop
    from kernels.family import Kernel
    from kernels.solvers import NystromEigensystem, NystromPreconditioner, solve_centres, solve_cg

    X, R, alpha, Y = problem()
    sizes = shard_sizes(X.shape[0], world)
    off = sum(sizes[:rank])
    rows = slice(off, off + sizes[rank])
    comm = Comm()
    kern = Kernel("laplace", 2.0)
    op = ShardedKernel(X[rows], comm, kernel=kern, sqrt_m=R)
    res = {"rank": rank, "rows": (off, off + sizes[rank]), "product": op.matmul(alpha[rows])}
    if mode == "raise" and rank == 1:
        raise RuntimeError("rank 1 failed on purpose")
    eig = NystromEigensystem(op, n_centres=40, generator=torch.Generator().manual_seed(rank))  # rank 0's draw wins
    pre = NystromPreconditioner(op, reg=1e-2, eigensystem=eig, rank=30)
    sol = solve_cg(op, Y[rows], reg=1e-2, rtol=1e-12, max_iter=1000, M=pre)
    res.update(cg=sol.x, cg_iters=sol.n_iter, centres=eig.centres,
               agop=distributed_agop(X[rows], op.all, alpha, comm, kernel=kern, sqrt_m=R),
               # a low-rank (d, 2) factor: the ranks sum the 2 x 2 AGOP of its coordinates
               agop_low=distributed_agop(X[rows], Points.of(X, R[:, :2]), alpha, comm, kernel=kern, sqrt_m=R[:, :2]),
               # centering (the gradient sums reduced too) and the diagonal AGOP
               agop_centred=distributed_agop(X[rows], op.all, alpha, comm, kernel=kern, sqrt_m=R, centering=True),
               agop_diag=distributed_agop(X[rows], X, alpha, comm, kernel=kern, sqrt_m=torch.diagonal(R).sqrt(),
                                          diag=True, centering=True),
               # the m-centre model sharded by rows: the same 30 centres on every rank, one m x c all-reduce per step
               centres_fit=solve_centres(Points.of(X[rows], R), Points.of(X[::4][:30], R), Y[rows], kernel=kern,
                                         reg=1e-2, rtol=1e-12, max_iter=500, comm=comm).x,
               bytes=comm.bytes_communicated)
    torch.save(res, out)
    dist.destroy_process_group()


if __name__ == "__main__":
    w, r, p = (int(v) for v in sys.argv[1:4])
    main(w, r, p, sys.argv[4], sys.argv[5])
