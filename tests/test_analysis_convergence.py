"""The convergence study: its definitions (stable, largest stable lr), the tasks and the
sequence model's backward pass, the seed's claim that BN allows larger learning rates,
determinism across executors and backends, JSON/plot/CLI."""

from __future__ import annotations

import concurrent.futures
import json
import math
import pathlib
import subprocess
import sys

import numpy as np
import pytest
from scipy import optimize

import analysis
from analysis._backend import Backend, point_rng
from analysis._tasks import build_model, make_task, majority_sequences
from analysis.convergence import largest_stable, parse_method
from arraynorm.data import spirals

ROOT = pathlib.Path(__file__).resolve().parents[1]
# one run through every task (about a second): shared by several tests
SMALL = dict(tasks=("spirals", "teacher", "sequence"), methods=("none", "batch", "layer+clip", "none+ngd"),
             lrs=(0.1, 1.0, 10.0), steps=12, samples=64, batch=16, depth=3, width=8,
             seq_width=8, windows=4, progress=False)


@pytest.fixture(scope="module")
def small():
    return analysis.convergence(**SMALL)


# ------------------------------------------------------------------------------ definitions
def test_largest_stable_lr_is_the_top_of_the_stable_prefix_of_the_grid():
    lrs = [0.01, 0.1, 1.0, 10.0]
    assert largest_stable(lrs, [True, True, False, True]) == 0.1  # a lucky point above a failure
    assert largest_stable(lrs, [True, True, True, True]) == 10.0
    assert largest_stable(lrs, [False, True, True, True]) is None
    assert largest_stable(lrs[::-1], [True, False, True, True]) == 0.1  # order of the grid


def test_methods_parse_into_a_normalization_and_a_gradient_transform():
    assert parse_method("batch") == ("batch", None)
    assert parse_method("none+clip") == ("none", "clip")
    for bad in ("bn", "batch+adam", "+clip"):
        with pytest.raises(ValueError, match="method"):
            parse_method(bad)


def test_stable_means_finite_final_loss_below_the_initial_one(small):
    for task in SMALL["tasks"]:
        for method, d in small.measured[task].items():
            for final, ok, div in zip(d["final_loss"], d["stable"], d["diverged_step"]):
                expect = final is not None and math.isfinite(final) and final < d["initial_loss"]
                assert ok == expect, (task, method)
                if div[0] is not None:  # a stopped run counts as diverged
                    assert not ok
            assert d["largest_stable_lr"] == largest_stable(small.measured["lrs"], d["stable"])


# ------------------------------------------------------------------------------ tasks
def test_tasks_reuse_the_demo_spirals_and_label_the_majority_token():
    rng = point_rng(0, "data", "spirals")
    t = make_task("spirals", 50, rng)
    x, y = spirals(50, seed=int(point_rng(0, "data", "spirals").integers(2**31)))
    np.testing.assert_array_equal(t.x, x)
    np.testing.assert_array_equal(t.y, y)
    one_hot, label = majority_sequences(200, 9, 4, np.random.default_rng(1))
    tokens = one_hot.argmax(axis=2)
    counts = np.stack([np.bincount(row, minlength=4) for row in tokens])
    assert np.all(counts[np.arange(200), label] == counts.max(axis=1))
    ties = (counts == counts.max(axis=1, keepdims=True)).argmax(axis=1)
    np.testing.assert_array_equal(label, ties)  # ties go to the smallest token
    reg = make_task("teacher", 300, np.random.default_rng(2))
    assert abs(reg.y.mean()) < 1e-12 and reg.y.std() == pytest.approx(1.0)


@pytest.mark.parametrize("norm", ["none", "batch", "layer", "rms"])
def test_sequence_model_gradient_matches_finite_differences(norm):
    # the embedding, positional and mean-pooling pieces are new backward code: check the
    # full model's gradient along a random direction of the embedding against SciPy
    b = Backend("numpy", "float64")
    task = make_task("sequence", 6, np.random.default_rng(0), length=5, vocab=3)
    model = build_model(task, norm, depth=1, width=4, rng=np.random.default_rng(1), b=b)
    loss = task.loss()
    x, y = task.arrays(b)
    emb = model[0]
    w0 = emb.params["weight"].copy()

    def f(flat):
        emb.params["weight"] = flat.reshape(w0.shape)
        return float(loss(model(x), y))

    numeric = optimize.approx_fprime(w0.ravel(), f, 1e-7)
    emb.params["weight"] = w0
    loss(model(x), y)
    model.backward(loss.backward())
    np.testing.assert_allclose(emb.grads["weight"].ravel(), numeric, rtol=1e-4, atol=1e-7)


# ------------------------------------------------------------------------------ the claim
def test_bn_allows_a_larger_learning_rate_than_no_normalization():
    """The seed's claim, at the study's quick sizes: BN's largest stable lr is at least the
    unnormalized network's on every task, and strictly larger on the spirals (depth 6)."""
    r = analysis.convergence(quick=True, methods=("none", "batch"), progress=False)
    for task in r.measured:
        if task == "lrs":
            continue
        bn, plain = r.measured[task]["batch"], r.measured[task]["none"]
        assert (bn["largest_stable_lr"] or 0) >= (plain["largest_stable_lr"] or 0), task
    sp = r.measured["spirals"]
    assert sp["batch"]["largest_stable_lr"] > sp["none"]["largest_stable_lr"]
    # the mechanism: past the plain network's limit, BN's hidden weights grew, so their
    # effective learning rate η/‖W‖² shrank (scale invariance)
    i = r.measured["lrs"].index(sp["batch"]["largest_stable_lr"])
    assert sp["batch"]["weight_norm_growth"][i] > 2.0
    assert "≥ the unnormalized network's on 3 of 3" in r.verdict


# ------------------------------------------------------------------------------ plumbing
def test_serial_and_process_pool_give_identical_results_and_seeds_matter(small):
    with concurrent.futures.ProcessPoolExecutor(2) as pool:
        pooled = analysis.convergence(**SMALL, executor=pool)
    assert pooled.as_dict()["measured"] == small.as_dict()["measured"]
    again = analysis.convergence(**SMALL)
    assert again.as_dict()["measured"] == small.as_dict()["measured"]
    other = analysis.convergence(**SMALL, seed=1)
    assert other.as_dict()["measured"] != small.as_dict()["measured"]


@pytest.mark.parametrize("backend", ["torch", "array_api_strict"])
def test_backends_give_the_numpy_numbers(backend):
    if backend == "torch":
        pytest.importorskip("torch")
    kw = dict(SMALL, methods=("none", "batch", "layer+clip"), lrs=(0.1, 10.0), steps=6)
    ref = analysis.convergence(**kw).measured
    got = analysis.convergence(**kw, backend=backend).measured
    for task in kw["tasks"]:
        for m, d in ref[task].items():
            g = got[task][m]
            assert g["stable"] == d["stable"] and g["diverged_step"] == d["diverged_step"]
            f = np.array(d["final_loss"], dtype=float)
            np.testing.assert_allclose(np.array(g["final_loss"], dtype=float), f, rtol=1e-9)
            np.testing.assert_allclose(g["initial_loss"], d["initial_loss"], rtol=1e-12)


def test_result_json_skeleton_plot_and_table(small, tmp_path):
    d = json.loads(small.to_json())
    assert {"study", "params", "measured", "theory", "verdict", "table"} <= set(d)
    assert d["study"] == "convergence" and d["params"]["lrs"] == [0.1, 1.0, 10.0]
    # a diverged run is null in strict JSON, never NaN/Infinity
    assert "Infinity" not in small.to_json() and "NaN" not in small.to_json()
    back = analysis.StudyResult.from_json(small.to_json(tmp_path / "c.json"))
    back.plot(tmp_path / "c.png")
    assert (tmp_path / "c.png").read_bytes()[:4] == b"\x89PNG"
    rows = {(r["task"], r["method"]) for r in small.table}
    assert ("sequence", "layer+clip") in rows and ("sequence", "none+ngd") in rows


def test_cli_writes_json_and_png(tmp_path):
    j, p = tmp_path / "r.json", tmp_path / "r.png"
    out = subprocess.run([sys.executable, "-m", "analysis", "convergence", "--quick",
                          "--no-progress", "--tasks", "spirals", "--methods", "none,batch",
                          "--lrs", "0.1,1", "--steps", "5", "--json", str(j), "--plot", str(p)],
                         cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    d = json.loads(j.read_text())
    assert d["study"] == "convergence" and d["params"]["methods"] == ["none", "batch"]
    assert "largest stable" in out.stdout and p.read_bytes()[:4] == b"\x89PNG"


def test_bad_options_are_rejected():
    with pytest.raises(ValueError, match="tasks"):
        analysis.convergence(tasks=("mnist",))
    with pytest.raises(ValueError, match="method"):
        analysis.convergence(methods=("batchnorm",))
    with pytest.raises(ValueError, match="lrs"):
        analysis.convergence(lrs=(0.0, 1.0))
    with pytest.raises(ValueError, match="momentum"):
        analysis.convergence(momentum=1.0)
