"""The style study: AdaIN's statistics transfer and IN's invariance, exactly (eps = 0) and with
the closed-form eps factor, against NumPy written here; BN's and LN's non-invariance; the
encoder's homogeneity; the plug-in point for any encoder (a PyTorch one); determinism across
executors and backends; JSON/plot/CLI; the missing-extra error."""

from __future__ import annotations

import concurrent.futures
import json
import pathlib
import subprocess
import sys

import numpy as np
import pytest

pytest.importorskip("sklearn")

import analysis  # noqa: E402
import arraynorm as an  # noqa: E402
from analysis import _digits  # noqa: E402
from analysis._backend import Backend  # noqa: E402
from analysis.style import (_pairs, adain_std, channel_statistics, digits_encoder,  # noqa: E402
                            instance_change, transfer_statistics)

ROOT = pathlib.Path(__file__).resolve().parents[1]
SMALL = dict(pairs=6, seeds=2, encoder_epochs=0.0, test=97, channels=(4, 8), progress=False)


@pytest.fixture(scope="module")
def small():
    return analysis.style(**SMALL)


def _features(rng, shape=(5, 3, 6, 7), loc=0.0, scale=1.0):
    # channels with different means and spreads, as CNN features have
    mu = rng.normal(0, 3, shape[:2])[..., None, None]
    sd = rng.uniform(0.2, 4, shape[:2])[..., None, None]
    return loc + scale * (mu + sd * rng.standard_normal(shape))


def _in_numpy(x, eps):
    """Instance normalization written here: per sample and channel over the positions."""
    m = x.mean(axis=(2, 3), keepdims=True)
    v = x.var(axis=(2, 3), keepdims=True)
    return (x - m) / np.sqrt(v + eps)


# ------------------------------------------------------------------------ statistics transfer
def test_adain_output_has_the_style_statistics_to_rounding_at_eps_zero():
    rng = np.random.default_rng(0)
    c, s = _features(rng), _features(rng, (5, 3, 4, 9), loc=5.0)  # spatial sizes differ
    y = an.adain(c, s, eps=0.0)
    ym, ysd = y.mean(axis=(2, 3)), y.std(axis=(2, 3))
    sm, ssd = s.mean(axis=(2, 3)), s.std(axis=(2, 3))
    np.testing.assert_allclose(ym, sm, rtol=0, atol=1e-13 * np.abs(sm).max())
    np.testing.assert_allclose(ysd, ssd, rtol=1e-13)
    # the layer is the function
    np.testing.assert_array_equal(an.nn.AdaIN(eps=0.0)(c, s), y)


@pytest.mark.parametrize("eps", [1e-5, 1e-2, 1.0])
def test_adain_std_follows_the_closed_form_eps_factor(eps):
    rng = np.random.default_rng(1)
    c, s = _features(rng), _features(rng)
    y = an.adain(c, s, eps=eps)
    # AdaIN written here: σ_eps(s)·(c − μ(c))/σ_eps(c) + μ(s)
    ref = np.sqrt(s.var(axis=(2, 3), keepdims=True) + eps) * _in_numpy(c, eps) + \
        s.mean(axis=(2, 3), keepdims=True)
    np.testing.assert_allclose(y, ref, rtol=1e-12, atol=1e-12)
    pred = adain_std(c.var(axis=(2, 3)), s.var(axis=(2, 3)), eps)
    np.testing.assert_allclose(y.std(axis=(2, 3)), pred, rtol=1e-13)
    np.testing.assert_allclose(y.mean(axis=(2, 3)), s.mean(axis=(2, 3)), atol=1e-12)
    # the correction is real: away from the style's std by more than rounding
    assert np.max(np.abs(pred / s.std(axis=(2, 3)) - 1)) > 1e-7


def test_transfer_statistics_takes_any_encoder_here_a_pytorch_one():
    """The plug-in point for a pretrained network: a torch encoder on torch images."""
    torch = pytest.importorskip("torch")
    torch.manual_seed(0)
    conv = torch.nn.Conv2d(3, 5, 3, padding=1, dtype=torch.float64)

    def encoder(images):
        with torch.no_grad():
            return conv(images)

    c = torch.randn(2, 3, 8, 8, dtype=torch.float64)
    s = 2 + 3 * torch.randn(2, 3, 10, 10, dtype=torch.float64)
    st = transfer_statistics(c, s, eps=0.0, encoder=encoder)
    assert isinstance(st["output"], torch.Tensor) and st["output"].shape == (2, 5, 8, 8)
    fs = encoder(s).numpy()
    np.testing.assert_allclose(st["style_mean"], fs.mean(axis=(2, 3)), rtol=1e-14)
    np.testing.assert_allclose(st["output_mean"], st["style_mean"], atol=1e-13)
    np.testing.assert_allclose(st["output_std"], st["style_std"], rtol=1e-13)
    np.testing.assert_allclose(st["predicted_std"], st["style_std"], rtol=1e-14)


# ------------------------------------------------------------------------ invariance
@pytest.mark.parametrize("per", ["image", "channel"])
def test_instance_norm_ignores_per_instance_affine_changes(per):
    rng = np.random.default_rng(2)
    x = _features(rng)
    shape = (5, 1, 1, 1) if per == "image" else (5, 3, 1, 1)
    a, b = np.exp(rng.uniform(-2, 2, shape)), rng.uniform(-5, 5, shape)
    x2 = a * x + b
    np.testing.assert_allclose(an.instance_norm(x2, eps=0.0), an.instance_norm(x, eps=0.0),
                               rtol=0, atol=1e-13)
    eps = 0.1
    # with eps > 0: IN(a x + b) = k IN(x), k = sqrt((σ² + eps)/(σ² + eps/a²))
    var = x.var(axis=(2, 3), keepdims=True)
    k = np.sqrt((var + eps) / (var + eps / a ** 2))
    got, base = an.instance_norm(x2, eps=eps), an.instance_norm(x, eps=eps)
    np.testing.assert_allclose(got, k * base, rtol=1e-12, atol=1e-13)
    # the study's closed form of the relative change is that factor's
    rel = np.linalg.norm(got - base) / np.linalg.norm(base)
    assert instance_change(var[..., 0, 0], np.broadcast_to(a[..., 0, 0], var.shape[:2]), eps) == \
        pytest.approx(rel, rel=1e-10)


def test_batch_norm_is_invariant_only_to_batch_wide_changes_and_layer_norm_not_per_channel():
    rng = np.random.default_rng(3)
    x = _features(rng)
    a1, b1 = 2.5, -1.5
    np.testing.assert_allclose(an.batch_norm(a1 * x + b1, eps=0.0), an.batch_norm(x, eps=0.0),
                               atol=1e-13)
    a = np.exp(rng.uniform(-1.4, 1.4, (5, 1, 1, 1)))
    b = rng.uniform(-2, 2, (5, 1, 1, 1))
    ref = an.batch_norm(x, eps=0.0)
    change = np.linalg.norm(an.batch_norm(a * x + b, eps=0.0) - ref) / np.linalg.norm(ref)
    assert change > 0.1
    ln = lambda z: an.group_norm(z, 1, eps=0.0)  # noqa: E731
    np.testing.assert_allclose(ln(a * x + b), ln(x), atol=1e-13)
    ac = np.exp(rng.uniform(-1.4, 1.4, (5, 3, 1, 1)))
    assert np.linalg.norm(ln(ac * x) - ln(x)) / np.linalg.norm(ln(x)) > 0.1


def test_bias_free_relu_encoder_carries_image_contrast_exactly_but_not_brightness():
    b = Backend()
    encoder, _ = digits_encoder((4, 8), 0.0, np.random.default_rng(4), b, 97)
    x = _digits.digits_split(97)[1].x[:6]
    a = np.exp(np.random.default_rng(5).uniform(-1, 1, (6, 1, 1, 1)))
    f = encoder(x)
    np.testing.assert_allclose(encoder(a * x), a * f, rtol=1e-13, atol=1e-13)
    fb = encoder(x + 0.5)
    # brightness: the features move, and not by a per-channel constant (IN would undo that)
    delta = (fb - f).reshape(6, f.shape[1], -1)
    assert np.max(delta.std(axis=2)) > 1e-3


# ------------------------------------------------------------------------ the study
def test_study_measures_the_exact_identities_and_the_closed_forms(small):
    m, t = small.measured, small.theory
    tr0 = m["transfer"]["eps=0"]
    assert tr0["mean_error"] < 1e-13 and tr0["std_error_vs_style"] < 1e-13
    for e in small.params["eps"]:
        k = f"eps={e:g}"
        assert m["transfer"][k]["std_error_vs_closed_form"] < 1e-13
        assert m["transfer"][k]["mean_error"] < 1e-13
        if e > 0:
            assert m["transfer"][k]["std_error_vs_style"] == pytest.approx(
                t["transfer"][k]["std_error_vs_style"], rel=1e-6)
    assert m["transfer"]["eps=0.1"]["std_error_vs_style"] > 1e-4  # eps matters at 0.1
    assert m["layer_vs_function"] == 0.0
    inv = m["invariance"]
    for key in t["invariance"]:
        assert inv[key]["eps=0"] < 1e-13, key
        assert inv[key]["max deviation from closed form"] < 1e-12, key
    for key in ("batch/image", "batch/channel", "layer/channel", "instance/image_brightness"):
        assert key not in t["invariance"] and inv[key]["eps=0"] > 0.05, key
    assert set(t["invariance"]) == {"instance/batch", "instance/image", "instance/channel",
                                    "instance/image_contrast", "layer/batch", "layer/image",
                                    "layer/image_contrast", "batch/batch"}
    assert "BN's output changes by" in small.verdict


def test_pairs_are_distinct_images_of_different_digits():
    labels = _digits.digits_split(97)[1].y
    c, s = _pairs(labels, 40, np.random.default_rng(6))
    assert len(set(c) | set(s)) == 80
    assert np.all(labels[c] != labels[s])


def test_channel_statistics_are_biased_per_sample_and_channel():
    x = np.arange(2 * 3 * 4 * 5, dtype=float).reshape(2, 3, 4, 5) ** 1.5
    m, sd = channel_statistics(x)
    np.testing.assert_allclose(m, x.mean(axis=(2, 3)))
    np.testing.assert_allclose(sd, x.std(axis=(2, 3)))


# ------------------------------------------------------------------------ plumbing
def test_serial_and_process_pool_give_identical_results_and_seeds_matter(small):
    with concurrent.futures.ProcessPoolExecutor(2) as pool:
        pooled = analysis.style(**SMALL, executor=pool)
    assert pooled.as_dict()["measured"] == small.as_dict()["measured"]
    other = analysis.style(**SMALL, seed=1)
    assert other.measured["example"] != small.measured["example"]


@pytest.mark.parametrize("backend", ["torch", "array_api_strict"])
def test_backends_give_the_numpy_numbers(backend, small):
    if backend == "torch":
        pytest.importorskip("torch")
    got = analysis.style(**dict(SMALL, seeds=1), backend=backend).measured
    ref = analysis.style(**dict(SMALL, seeds=1)).measured
    for key, d in ref["invariance"].items():
        for k, v in d.items():
            if v > 1e-10:  # the measured changes; rounding-level values differ by rounding
                assert got["invariance"][key][k] == pytest.approx(v, rel=1e-9), (key, k)
            else:
                assert got["invariance"][key][k] < 1e-13, (key, k)
    for k, d in ref["transfer"].items():
        for q, v in d.items():
            g = got["transfer"][k][q]
            assert (g == pytest.approx(v, rel=1e-9)) if v > 1e-10 else g < 1e-13, (k, q)
    np.testing.assert_allclose(got["example"]["output_maps"], ref["example"]["output_maps"],
                               rtol=1e-12, atol=1e-12)


def test_result_json_skeleton_plot_and_table(small, tmp_path):
    d = json.loads(small.to_json())
    assert {"study", "params", "measured", "theory", "verdict", "table"} <= set(d)
    assert d["study"] == "style" and d["params"]["eps"] == [0.0, 1e-5, 1e-3, 0.1]
    back = analysis.StudyResult.from_json(small.to_json(tmp_path / "s.json"))
    back.plot(tmp_path / "s.png")
    assert (tmp_path / "s.png").read_bytes()[:4] == b"\x89PNG"
    assert len(small.table) == 3 * 5
    assert any(row["quantity"].startswith("invariance.instance/channel") for row in small.compare())


def test_cli_writes_json_and_png(tmp_path):
    j, p = tmp_path / "r.json", tmp_path / "r.png"
    out = subprocess.run([sys.executable, "-m", "analysis", "style", "--quick", "--no-progress",
                          "--pairs", "4", "--eps", "0,0.01", "--json", str(j), "--plot", str(p)],
                         cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    d = json.loads(j.read_text())
    assert d["study"] == "style" and d["params"]["eps"] == [0.0, 0.01]
    assert "AdaIN" in out.stdout and p.read_bytes()[:4] == b"\x89PNG"


def test_missing_scikit_learn_says_what_to_install(monkeypatch):
    monkeypatch.setitem(sys.modules, "sklearn", None)
    _digits._load.cache_clear()
    try:
        with pytest.raises(ImportError, match=r'pip install "arraynorm\[applications\]"'):
            analysis.style(quick=True, progress=False)
    finally:
        _digits._load.cache_clear()


def test_bad_options_are_rejected():
    with pytest.raises(ValueError, match="eps"):
        analysis.style(eps=(-1.0,))
    with pytest.raises(ValueError, match="pairs"):
        analysis.style(pairs=1)
    with pytest.raises(ValueError, match="pairs"):
        analysis.style(pairs=100, test=97)
    with pytest.raises(ValueError, match="encoder_epochs"):
        analysis.style(encoder_epochs=-1.0)
