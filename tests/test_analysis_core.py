"""The analysis package's shared core: result objects and their JSON, fits with confidence
intervals, seeds and executors, option checking, the Jacobian operator, spectra, the CLI."""

from __future__ import annotations

import concurrent.futures
import json
import math
import pathlib
import subprocess
import sys

import numpy as np
import pytest
import scipy.linalg
from scipy import stats

import analysis
from analysis._backend import Backend, point_rng
from analysis._executor import SerialExecutor, as_executor
from analysis._fit import fit_growth, fit_line, fit_power
from analysis._operator import dense_jacobian, jacobian_operator
from analysis._result import StudyResult, to_builtin
from analysis._spectra import effective_rank, orthogonality_gap, stable_rank

ROOT = pathlib.Path(__file__).resolve().parents[1]


# ----------------------------------------------------------------------------- results
def test_result_json_has_the_common_skeleton_and_round_trips():
    r = StudyResult("demo", {"depth": 3, "widths": (1, 2)},
                    {"rate": np.float64(1.5), "curve": np.arange(3.0), "nested": {"a": 2}},
                    {"rate": 1.4}, "it grows", [{"norm": "none", "rate": 1.5}])
    d = json.loads(r.to_json())
    assert set(d) == {"study", "params", "measured", "theory", "verdict", "table"}
    assert d["measured"]["curve"] == [0.0, 1.0, 2.0] and d["params"]["widths"] == [1, 2]
    back = StudyResult.from_json(r.to_json())
    assert back.as_dict() == r.as_dict()


def test_non_finite_values_become_null_in_strict_json():
    r = StudyResult("demo", {}, {"x": float("inf"), "y": [1.0, float("nan")]})
    text = r.to_json()
    assert "Infinity" not in text and "NaN" not in text
    assert json.loads(text)["measured"] == {"x": None, "y": [1.0, None]}


def test_compare_lines_up_theory_and_measured_keys():
    r = StudyResult("demo", {}, {"a": {"rate": 2.0}, "b": 1.0, "only_measured": 3.0},
                    {"a": {"rate": 1.6}, "b": 0.0})
    rows = {row["quantity"]: row for row in r.compare()}
    assert set(rows) == {"a.rate", "b"}
    assert rows["a.rate"]["rel. diff"] == pytest.approx(0.25)
    assert rows["b"]["rel. diff"] is None  # relative to a zero theory: undefined, not inf


def test_from_json_rejects_something_that_is_not_a_result():
    with pytest.raises(ValueError, match="missing"):
        StudyResult.from_json('{"study": "x"}')


def test_to_builtin_converts_numpy_scalars_and_arrays():
    out = to_builtin({"i": np.int64(3), "b": np.bool_(True), "a": np.ones((2, 2), np.float32)})
    assert out == {"i": 3, "b": True, "a": [[1.0, 1.0], [1.0, 1.0]]}
    assert type(out["i"]) is int and type(out["b"]) is bool


# ----------------------------------------------------------------------------- fits
def test_fit_growth_recovers_an_exact_exponential_rate():
    depth = np.arange(20)
    fit = fit_growth(depth, 3.0 * 1.37 ** depth)
    assert fit.rate == pytest.approx(1.37, rel=1e-12)
    lo, hi = fit.confidence_interval()
    assert lo <= fit.slope <= hi and hi - lo < 1e-10


def test_fit_confidence_interval_matches_the_t_distribution_coverage():
    # the 95% interval of the slope must contain the true slope in ~95% of noisy data sets
    rng = np.random.default_rng(0)
    x = np.arange(12.0)
    hits = 0
    for _ in range(400):
        y = 0.5 - 0.2 * x + rng.standard_normal(x.size) * 0.3
        lo, hi = fit_line(x, y).confidence_interval(0.95)
        hits += lo <= -0.2 <= hi
    # binomial(400, 0.95): 95% of draws fall in [372, 388]
    assert 366 <= hits <= 394


def test_fit_line_interval_equals_scipy_linregress_by_hand():
    rng = np.random.default_rng(1)
    x = rng.uniform(0, 5, 30)
    y = 2 * x + rng.standard_normal(30)
    fit = fit_line(x, y)
    ref = stats.linregress(x, y)
    t = stats.t.ppf(0.975, 28)
    assert fit.confidence_interval() == pytest.approx((ref.slope - t * ref.stderr,
                                                       ref.slope + t * ref.stderr))


def test_fit_power_recovers_an_exponent_and_drops_nonpositive_points():
    x = np.array([1.0, 2.0, 4.0, 8.0, 16.0, 0.0])
    y = np.append(5 * x[:5] ** -0.5, 1.0)
    fit = fit_power(x, y)
    assert fit.slope == pytest.approx(-0.5, abs=1e-12) and fit.n == 5


def test_fit_with_too_few_points_is_nan_with_an_infinite_interval():
    fit = fit_line([1.0], [2.0])
    assert math.isnan(fit.slope) and fit.confidence_interval() == (-math.inf, math.inf)


# ----------------------------------------------------------------------------- seeds, executors
def test_point_rng_depends_on_seed_and_key_only():
    a = point_rng(3, "x", 1).standard_normal(4)
    point_rng(3, "y", 2).standard_normal(100)  # another point drawn in between changes nothing
    assert np.array_equal(a, point_rng(3, "x", 1).standard_normal(4))
    assert not np.array_equal(a, point_rng(4, "x", 1).standard_normal(4))
    assert not np.array_equal(a, point_rng(3, "x", 2).standard_normal(4))


def _square(v):
    return v * v


def test_executors_return_results_in_point_order():
    points = [{"v": i} for i in range(7)]
    assert SerialExecutor().map(_square, points, progress=False) == [i * i for i in range(7)]
    with concurrent.futures.ThreadPoolExecutor(3) as pool:
        assert as_executor(pool).map(_square, points, progress=False) == [i * i for i in range(7)]


def test_as_executor_rejects_objects_that_cannot_run_points():
    with pytest.raises(TypeError, match="executor"):
        as_executor(42)


def test_a_study_on_a_process_pool_is_bit_identical_to_serial():
    serial = analysis.rank(quick=True, progress=False)
    with concurrent.futures.ProcessPoolExecutor(2) as pool:
        parallel = analysis.rank(quick=True, progress=False, executor=pool)
    assert json.dumps(serial.as_dict()["measured"]) == json.dumps(parallel.as_dict()["measured"])


# ----------------------------------------------------------------------------- options
def test_study_options_are_checked_with_clear_errors():
    with pytest.raises(TypeError, match="unknown option"):
        analysis.rank(depht=3)
    with pytest.raises(TypeError, match="depth must be an int"):
        analysis.rank(depth=3.5)
    with pytest.raises(ValueError, match="backend must be one of"):
        analysis.rank(quick=True, backend="tensorflow")
    with pytest.raises(ValueError, match="norms must be among"):
        analysis.rank(quick=True, norms=("batch", "nope"))


def test_params_record_every_option_and_the_run_conditions():
    r = analysis.rank(quick=True, progress=False, seed=5)
    opts = analysis.STUDIES["rank"].options
    assert set(opts) <= set(r.params)
    assert r.params["seed"] == 5 and r.params["backend"] == "numpy"
    assert r.params["dtype"] == "float64" and r.params["threads"]["limit"] == 1
    assert {"numpy", "scipy", "arraynorm", "python"} <= set(r.params["versions"])


def test_quick_sizes_apply_only_to_options_not_given():
    r = analysis.rank(quick=True, depth=5, progress=False)
    assert r.params["depth"] == 5
    assert r.params["widths"] == analysis.STUDIES["rank"].quick["widths"]


# ----------------------------------------------------------------------------- spectra
def test_rank_measures_of_known_matrices():
    q = scipy.linalg.qr(np.random.default_rng(0).standard_normal((8, 8)))[0]
    assert orthogonality_gap(q[:5]) == pytest.approx(0.0, abs=1e-14)  # orthonormal rows
    same = np.tile(np.arange(1.0, 7.0), (4, 1))
    assert orthogonality_gap(same) == pytest.approx(math.sqrt(1 - 1 / 4))  # collinear
    assert stable_rank(np.array([2.0, 2.0, 0.0])) == pytest.approx(2.0)
    assert stable_rank(np.array([3.0, 1.0])) == pytest.approx(10 / 9)
    assert effective_rank(np.ones(5)) == pytest.approx(5.0)
    assert effective_rank(np.array([1.0, 0.0, 0.0])) == pytest.approx(1.0)


# ----------------------------------------------------------------------------- Jacobians
def test_dense_jacobian_of_a_linear_stack_is_the_product_of_its_weights():
    import arraynorm as an

    model = an.nn.deep_stack(3, 4, activation="identity", bias=False, rng=0)
    x = np.random.default_rng(1).standard_normal((1, 4))
    j = dense_jacobian(model, x, mode="vjp")
    w = [np.asarray(m.params["weight"]) for _, m in model.named_modules() if "weight" in m.params]
    assert np.allclose(j, w[2] @ w[1] @ w[0], rtol=1e-13, atol=1e-14)


def test_jacobian_operator_shape_and_transpose_product():
    import arraynorm as an

    model = an.nn.deep_stack(2, 3, in_features=5, out_features=2, activation="tanh", rng=0)
    x = np.random.default_rng(2).standard_normal((4, 5))
    op, y = jacobian_operator(model, x)
    assert op.shape == (y.size, x.size) == (8, 20)
    u = np.random.default_rng(3).standard_normal(8)
    eps = 1e-6
    # Jᵀu from the operator against central differences of ⟨u, f(x)⟩
    g = op.rmatvec(u)
    fd = np.empty(20)
    for i in range(20):
        e = np.zeros(20)
        e[i] = eps
        fp = model.forward(x + e.reshape(x.shape)).ravel() @ u
        fm = model.forward(x - e.reshape(x.shape)).ravel() @ u
        fd[i] = (fp - fm) / (2 * eps)
    assert np.allclose(g, fd, rtol=1e-7, atol=1e-9)


# ----------------------------------------------------------------------------- backends
@pytest.mark.parametrize("backend", ["torch", "array_api_strict", "dask"])
def test_backend_round_trip_keeps_values_and_dtype(backend):
    if backend == "torch":
        pytest.importorskip("torch")
    b = Backend(backend, "float64")
    host = np.random.default_rng(0).standard_normal((3, 2))
    a = b.asarray(host)
    assert str(a.dtype).endswith("float64")
    assert np.array_equal(b.to_numpy(a), host)


def test_backend_rejects_unknown_names():
    with pytest.raises(ValueError, match="backend must be one of"):
        Backend("jax")
    with pytest.raises(ValueError, match="dtype must be one of"):
        Backend("numpy", "float16")


# ----------------------------------------------------------------------------- CLI
def _run(*args, cwd=ROOT):
    return subprocess.run([sys.executable, "-m", "analysis", *args], cwd=cwd,
                          capture_output=True, text=True, timeout=300)


def test_cli_lists_every_registered_study():
    out = _run("list")
    assert out.returncode == 0, out.stderr
    for name in analysis.STUDIES:
        assert name in out.stdout


def test_cli_rejects_an_unknown_study_and_a_bad_option():
    assert _run("nonexistent").returncode == 2
    bad = _run("rank", "--depth", "x")
    assert bad.returncode == 2 and "invalid int value" in bad.stderr


def test_report_quick_writes_markdown_json_and_figures(tmp_path):
    out = _run("report", "--quick", "--out", str(tmp_path), "--no-progress")
    assert out.returncode == 0, out.stderr
    md = (tmp_path / "report.md").read_text()
    for name in analysis.STUDIES:
        assert f"## {name}" in md
        d = json.loads((tmp_path / f"{name}.json").read_text())
        assert d["study"] == name and d["verdict"]
        assert (tmp_path / f"{name}.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
