"""drfm reproduce: per-seed files, resumable, summary mean +- std over seeds, figures."""
import json

import numpy as np
import pytest

from drfm.cli import main
from drfm.collapse import CollapseReport


def test_reproduce_is_resumable_and_summarises_seeds(tmp_path):
    pytest.importorskip("matplotlib")
    out = tmp_path / "study"
    args = ["reproduce", "--dataset", "digits", "--out", str(out), "--depth", "2", "--n-train", "300",
            "--epochs", "2", "--measure-every", "1", "--device", "cpu", "--metrics", "nc1", "within_share",
            "--layer-sample-size", "200"]
    assert main(args + ["--seeds", "1"]) == 0
    first = (out / "seed-0.json").stat().st_mtime_ns
    assert main(args + ["--seeds", "2"]) == 0  # continues: seed 0 is not run again
    assert (out / "seed-0.json").stat().st_mtime_ns == first and (out / "seed-1.json").exists()
    summary = json.loads((out / "summary.json").read_text())
    assert summary["n_seeds"] == 2 and (out / "depth.png").exists() and (out / "epochs.png").exists()
    reps = [CollapseReport.from_json(out / f"seed-{s}.json") for s in (0, 1)]
    row = next(r for r in summary["rows"] if r["model"] == "deep_rfm" and r["layer"] == 1
               and r["stage"] == "linear" and r["metric"] == "nc1" and r["epoch"] is None)
    vals = [next(r["value"] for r in rep.rows if (r["model"], r["layer"], r["stage"], r["metric"]) ==
                 ("deep_rfm", 1, "linear", "nc1") and "epoch" not in r) for rep in reps]
    # the sample standard deviation (ddof 1), as the paper's plots
    assert row["mean"] == pytest.approx(np.mean(vals)) and row["std"] == pytest.approx(np.std(vals, ddof=1))
    assert row["std"] != pytest.approx(np.std(vals))
    # the paper's scale beside it: NC1 / K (digits: 10 classes, recorded), every other metric unchanged
    paper = json.loads((out / "summary-paper.json").read_text())
    prow = next(r for r in paper["rows"] if (r["model"], r["layer"], r["stage"], r["metric"], r["epoch"]) ==
                ("deep_rfm", 1, "linear", "nc1", None))
    assert reps[0].meta["n_classes"] == 10 and paper["scale"] == "paper"
    assert prow["mean"] == pytest.approx(np.mean(vals) / 10) and prow["std"] == pytest.approx(np.std(vals, ddof=1) / 10)
    other = lambda summ: [r for r in summ["rows"] if r["metric"] == "within_share"]  # noqa: E731
    assert other(paper) == other(summary) and (out / "report-paper.md").exists() and (out / "depth-paper.png").exists()
    accs = [rep.meta["mlp"]["test_accuracy"] for rep in reps]
    assert summary["test_accuracy"]["mlp"]["mean"] == pytest.approx(np.mean(accs))
    # the paper's MLP training: readout init and Adam reset recorded in the seed's parameters
    assert reps[0].meta["mlp"]["params"]["reset_adam"] is True
    # the MLP keeps its own depth (5 hidden layers, the paper's) whatever the Deep RFM depth
    assert reps[0].meta["mlp"]["params"]["depth"] == 5 and reps[0].meta["deep_rfm"]["params"]["depth"] == 2
    assert any(r["metric"] == "train_loss" for r in reps[0].rows)
    panel = {r["metric"] for r in reps[0].rows if r["model"] == "mlp" and r.get("epoch") is not None}
    assert {"within_share", "between_share", "within_total_paper", "between_total_paper", "nc1", "train_loss",
            "nfa_sqrt"} <= panel
    # the ReLU variant and the kernel ridge baseline, each a part of the seed, summarised like the others
    assert {"deep_rfm_relu", "laplace_krr"} <= set(summary["test_accuracy"])
    assert any(r["model"] == "deep_rfm_relu" and r["stage"] == "nonlinear" for r in reps[0].rows)
    assert reps[0].meta["deep_rfm"]["params"]["feature_map"] == "cosine"
    assert reps[0].meta["deep_rfm_relu"]["params"]["feature_map"] == "relu"
    assert reps[0].meta["laplace_krr"]["params"]["iters"] == 0
    assert list(reps[0].meta["resources"]) == ["compare", "laplace_krr", "deep_rfm_relu"]  # the order they ran
    report = (out / "report.md").read_text()
    assert "| deep_rfm_relu |" in report and "## deep_rfm: nc1" in report and "| laplace_krr |" in report
    assert f"{row['mean']:.3g} +- {row['std']:.2g}" in report
    # each layer's M learned on --layer-sample-size rows; the metrics on all of them
    assert reps[0].meta["deep_rfm"]["params"]["layer__iter_sample_size"] == 200
    assert all(r["n_samples"] == 300 for r in reps[0].rows if r["model"] == "deep_rfm" and r["metric"] == "nc1")


def test_reproduce_resumes_within_a_seed(tmp_path, monkeypatch):
    """A run stopped inside a part continues with that part (the finished ones are not rerun)."""
    from drfm import reproduce as rp

    out = tmp_path / "study"
    args = ["reproduce", "--dataset", "digits", "--out", str(out), "--depth", "1", "--n-train", "200",
            "--epochs", "1", "--measure-every", "1", "--device", "cpu", "--seeds", "2", "--no-baseline"]
    real, calls = rp._run_part, []

    def stop_after_compare(part, *a, **k):
        calls.append(part)
        if part != "compare":
            raise KeyboardInterrupt
        return real(part, *a, **k)

    monkeypatch.setattr(rp, "_run_part", stop_after_compare)
    assert main(args) == 130  # the CLI reports the interrupt in one line
    # part by part: both seeds' comparisons ran before the first ReLU variant (which was stopped)
    assert calls == ["compare", "compare", "deep_rfm_relu"]
    assert (out / "seed-1" / "compare.json").exists() and not (out / "seed-0.json").exists()
    # the summary already counts what is done: both seeds for the compared models, none for the variant yet
    summary = rp.summarise(out, plot=False)
    assert summary["test_accuracy"]["mlp"]["n_seeds"] == 2 and "deep_rfm_relu" not in summary["test_accuracy"]
    calls.clear()
    monkeypatch.setattr(rp, "_run_part", lambda part, *a, **k: (calls.append(part), real(part, *a, **k))[1])
    assert main(args) == 0
    assert calls == ["deep_rfm_relu", "deep_rfm_relu"]  # the finished parts are not run again
    assert (out / "seed-0.json").exists() and (out / "seed-1.json").exists()
    rep = CollapseReport.from_json(out / "seed-1.json")
    assert {"deep_rfm", "mlp", "deep_rfm_relu"} <= set(rep.meta) and rep.meta["seed"] == 1


def test_summarise_needs_the_classes_for_the_papers_scale(tmp_path):
    from drfm import reproduce as rp

    rep = CollapseReport(meta={"mlp": {"test_accuracy": 0.9}})  # a seed file from before n_classes was recorded
    rep.add(model="deep_rfm", layer=0, stage="input", metric="nc1", value=2.0, n_samples=10)
    rep.to_json(tmp_path / "seed-0.json")
    with pytest.raises(ValueError, match="n_classes"):
        rp.summarise(tmp_path, plot=False, scale="paper")
    with pytest.raises(ValueError, match="scale"):
        rp.summarise(tmp_path, plot=False, scale="seed")
    summary = rp.summarise(tmp_path, plot=False, scale="paper", n_classes=10)
    assert summary["rows"][0]["mean"] == pytest.approx(0.2) and summary["rows"][0]["std"] is None  # (one seed)
    assert summary["test_accuracy"]["mlp"]["std"] is None and "0.9000 |" in (tmp_path / "report-paper.md").read_text()


def test_reproduce_rejects_bad_arguments_before_work(tmp_path, capsys):
    assert main(["reproduce", "--out", str(tmp_path / "x"), "--metrics", "nc9"]) == 2
    assert "unknown metrics" in capsys.readouterr().err
    assert main(["reproduce", "--out", str(tmp_path / "x"), "--depth", "0"]) == 2
    assert main(["reproduce", "--out", str(tmp_path / "x"), "--feature-maps", "relu", "relu"]) == 2
    assert main(["reproduce", "--out", str(tmp_path / "x"), "--layer-sample-size", "-1"]) == 2
    assert main(["reproduce", "--out", str(tmp_path / "x"), "--dataset", "lowrank", "--mlp-backbone", "vgg11"]) == 2
    assert "needs an image set" in capsys.readouterr().err
    assert not (tmp_path / "x").exists()


def test_reproduce_mlp_backbone_needs_torchvision_before_any_work(tmp_path, capsys, monkeypatch):
    import sys

    monkeypatch.setitem(sys.modules, "torchvision", None)  # as on a machine without it
    assert main(["reproduce", "--dataset", "digits", "--out", str(tmp_path / "x"), "--mlp-backbone", "resnet18"]) == 2
    assert "needs torchvision" in capsys.readouterr().err
    assert not (tmp_path / "x").exists()


def test_reproduce_passes_the_backbone_and_the_sets_image_shape(tmp_path, monkeypatch):
    """With --mlp-backbone the MLP of every seed gets the backbone and the set's image shape (torchvision stood in
    for by a small module with ResNet's attribute layout: the real one is not importable on every test machine)."""
    import sys
    import types

    import torch
    from torch import nn

    class TinyResNet(nn.Module):
        def __init__(self):
            super().__init__()
            self.conv1, self.fc = nn.Conv2d(3, 4, 3, padding=1), nn.Linear(4, 1000)

        def forward(self, x):
            return self.fc(torch.relu(self.conv1(x)).mean((2, 3)))

    fake = types.ModuleType("torchvision")
    fake.models = types.SimpleNamespace(resnet18=lambda weights=None: TinyResNet())
    monkeypatch.setitem(sys.modules, "torchvision", fake)
    out = tmp_path / "study"
    assert main(["reproduce", "--dataset", "digits", "--out", str(out), "--depth", "1", "--n-train", "150",
                 "--epochs", "1", "--measure-every", "1", "--device", "cpu", "--seeds", "1", "--no-baseline",
                 "--feature-maps", "cosine", "--mlp-backbone", "resnet18"]) == 0
    rep = CollapseReport.from_json(out / "seed-0.json")
    params = rep.meta["mlp"]["params"]
    assert params["backbone"] == "resnet18" and tuple(params["image_shape"]) == (1, 8, 8)
    assert any(r["model"] == "mlp" and r["layer"] == 0 for r in rep.rows)


def test_subset_study_splits_fitted_and_unfitted_rows_and_resumes(tmp_path):
    out = tmp_path / "subset"
    args = ["reproduce", "--dataset", "digits", "--out", str(out), "--depth", "2", "--n-train", "300",
            "--device", "cpu", "--metrics", "nc1", "--subset-study", "120", "0"]
    assert main(args) == 0
    part = CollapseReport.from_json(out / "subset-120.json")
    first = (out / "subset-120.json").stat().st_mtime_ns
    models = {r["model"] for r in part.rows}
    assert models == {"deep_rfm_120", "deep_rfm_120/fitted", "deep_rfm_120/unfitted"}
    # every layer's fitted rows are 120 of the 300, the others 180
    assert {r["n_samples"] for r in part.rows if r["model"].endswith("/fitted")} == {120}
    assert {r["n_samples"] for r in part.rows if r["model"].endswith("/unfitted")} == {180}
    full = CollapseReport.from_json(out / "subset-all.json")
    assert {r["model"] for r in full.rows} == {"deep_rfm_all"} and full.meta["deep_rfm_all"]["layer_sample_size"] is None
    summary = json.loads((out / "subset.json").read_text())
    row = next(r for r in summary["linear_stage"] if r["model"] == "deep_rfm_120" and r["layer"] == 1)
    want = {(r["model"], r.get("rows", "all")): r["value"] for r in part.rows
            if (r["layer"], r["stage"], r["metric"]) == (1, "linear", "nc1")}
    assert (row["nc1_all"], row["nc1_fitted"], row["nc1_unfitted"]) == (
        want["deep_rfm_120", "all"], want["deep_rfm_120/fitted", "fitted"], want["deep_rfm_120/unfitted", "unfitted"])
    assert "| deep_rfm_120 | 1 |" in (out / "subset.md").read_text()
    assert main(args) == 0  # resumed: nothing is fitted again
    assert (out / "subset-120.json").stat().st_mtime_ns == first
    # other settings in the same folder: refused by name
    assert main(args[:-3] + ["--sigma", "0.2", "--subset-study", "120"]) == 2
