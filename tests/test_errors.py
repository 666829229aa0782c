"""Bad input gets a clear error naming the argument, never NaN or a wrong shape."""

from __future__ import annotations

import numpy as np
import pytest

import arraynorm as an
from _helpers import from_numpy

X4 = np.random.default_rng(0).standard_normal((4, 6, 3, 3))


@pytest.mark.parametrize("dtype", ["int64", "int32", "bool", "complex128"])
@pytest.mark.parametrize("f", [
    lambda x: an.batch_norm(x), lambda x: an.layer_norm(x), lambda x: an.instance_norm(x),
    lambda x: an.group_norm(x, 2), lambda x: an.rms_norm(x), lambda x: an.position_norm(x),
    lambda x: an.ghost_batch_norm(x, 2), lambda x: an.local_response_norm(x, 3),
    lambda x: an.l2_normalize(x), lambda x: an.adain(x, x), lambda x: an.batch_moments(x),
])
def test_non_floating_input_is_a_type_error_naming_the_argument(xp, f, dtype):
    if dtype == "complex128" and not hasattr(xp, "complex128"):
        pytest.skip("backend has no complex dtype")
    x = xp.asarray(from_numpy(xp, X4.astype(dtype)))
    with pytest.raises(TypeError, match=r"(x|content) must have a real floating dtype"):
        f(x)


@pytest.mark.parametrize("f,shape,msg", [
    (lambda x: an.batch_norm(x), (5,), "at least 2 dimensions"),
    (lambda x: an.instance_norm(x), (4, 6), "at least 3 dimensions"),
    (lambda x: an.group_norm(x, 2), (6,), "at least 2 dimensions"),
    (lambda x: an.local_response_norm(x, 3), (4, 6), "at least 3 dimensions"),
    (lambda x: an.layer_norm(x, axis=2), (4, 6), "axis=2 is out of range"),
    (lambda x: an.batch_norm(x, axis=3), (4, 6, 2), "axis=3 is out of range"),
    (lambda x: an.batch_norm(x, axis=0), (4, 6, 2), "cannot be 0"),
])
def test_rank_too_small_for_the_axis_is_a_value_error(xp, f, shape, msg):
    with pytest.raises(ValueError, match=msg):
        f(from_numpy(xp, np.ones(shape)))


def test_num_groups_must_divide_channels(xp):
    with pytest.raises(ValueError, match="num_groups=4 must divide the number of channels, got 6"):
        an.group_norm(from_numpy(xp, X4), 4)
    with pytest.raises(ValueError, match="num_groups must be a positive int"):
        an.group_norm(from_numpy(xp, X4), 0)


def test_virtual_batch_size_must_divide_batch(xp):
    with pytest.raises(ValueError, match="virtual_batch_size=3 must divide the batch size, got batch 4"):
        an.ghost_batch_norm(from_numpy(xp, X4), 3)


@pytest.mark.parametrize("shape", [(1, 6), (1, 6, 1, 1)])
def test_training_batch_norm_with_one_value_per_channel_is_refused(xp, shape):
    x = from_numpy(xp, np.ones(shape))
    with pytest.raises(ValueError, match="expected more than 1 value per channel"):
        an.batch_norm(x)
    with pytest.raises(ValueError, match="expected more than 1 value per channel"):
        an.batch_moments(x)
    # inference with given statistics accepts a batch of one, as PyTorch does
    m, v = from_numpy(xp, np.zeros(6)), from_numpy(xp, np.ones(6))
    assert tuple(an.batch_norm(x, mean=m, var=v).shape) == shape


def test_instance_norm_with_one_spatial_value_is_refused(xp):
    with pytest.raises(ValueError, match="spatial size 1"):
        an.instance_norm(from_numpy(xp, np.ones((3, 4, 1))))


@pytest.mark.parametrize("f,name,bad", [
    (lambda x, p: an.batch_norm(x, p), "weight", (5,)),
    (lambda x, p: an.batch_norm(x, None, p), "bias", (6, 1)),
    (lambda x, p: an.group_norm(x, 2, p), "weight", (3,)),
    (lambda x, p: an.layer_norm(x, p, axis=(-2, -1)), "weight", (9,)),
    (lambda x, p: an.rms_norm(x, p), "weight", (4,)),
    (lambda x, p: an.batch_norm(x, mean=p, var=p), "mean", (4,)),
    (lambda x, p: an.batch_renorm(x, running_mean=p, running_var=p), "running_mean", (2,)),
])
def test_parameter_of_the_wrong_shape_is_a_value_error(xp, f, name, bad):
    with pytest.raises(ValueError, match=rf"{name} must have shape \(\d+(, \d+)*,?\), got"):
        f(from_numpy(xp, X4), from_numpy(xp, np.ones(bad)))


def test_integer_weight_is_a_type_error(xp):
    with pytest.raises(TypeError, match="weight must have a real floating dtype"):
        an.batch_norm(from_numpy(xp, X4), from_numpy(xp, np.ones(6, dtype="int64")))


@pytest.mark.parametrize("eps", [-1e-5, float("nan"), float("inf")])
@pytest.mark.parametrize("f", [
    lambda x, e: an.batch_norm(x, eps=e), lambda x, e: an.layer_norm(x, eps=e),
    lambda x, e: an.group_norm(x, 2, eps=e), lambda x, e: an.rms_norm(x, eps=e),
    lambda x, e: an.l2_normalize(x, eps=e), lambda x, e: an.adain(x, x, eps=e),
])
def test_negative_or_non_finite_eps_is_refused(xp, f, eps):
    with pytest.raises(ValueError, match="eps must be"):
        f(from_numpy(xp, X4), eps)


def test_non_number_eps_is_a_type_error():
    with pytest.raises(TypeError, match="eps must be a real Python number, got str"):
        an.layer_norm(X4, eps="1e-5")


@pytest.mark.parametrize("kw,msg", [
    (dict(rmax=0.5), "rmax must be >= 1.0"), (dict(dmax=-1.0), "dmax must be >= 0.0"),
    (dict(rmax=float("nan")), "rmax must be finite"),
])
def test_batch_renorm_limits_are_validated(kw, msg):
    m, v = np.zeros(6), np.ones(6)
    with pytest.raises(ValueError, match=msg):
        an.batch_renorm(X4, running_mean=m, running_var=v, **kw)


@pytest.mark.parametrize("kw,msg", [(dict(size=0), "size must be a positive int"),
                                    (dict(size=3, k=0.0), "k must be > 0.0"),
                                    (dict(size=3, beta=float("inf")), "beta must be finite")])
def test_local_response_norm_parameters_are_validated(kw, msg):
    with pytest.raises(ValueError, match=msg):
        an.local_response_norm(X4, **kw)


def test_l2_normalize_p_below_one_is_refused():
    with pytest.raises(ValueError, match="p must be a number >= 1 or inf, got 0.5"):
        an.l2_normalize(X4, p=0.5)


def test_batch_norm_needs_both_statistics_or_neither():
    with pytest.raises(ValueError, match="pass both mean and var"):
        an.batch_norm(X4, mean=np.zeros(6))


def test_arrays_from_two_namespaces_are_a_type_error_naming_both():
    import array_api_strict as xps
    w = xps.asarray(np.ones(6))
    with pytest.raises(TypeError, match="weight is a array_api_strict array but x is a numpy array"):
        an.batch_norm(X4, w)
    with pytest.raises(TypeError, match="style is a array_api_strict array but content is a numpy array"):
        an.adain(X4, xps.asarray(X4))


def test_arrays_on_two_devices_are_a_value_error_naming_both():
    import array_api_strict as xps
    x = xps.asarray(X4)
    w = xps.asarray(np.ones(6), device=xps.Device("device1"))
    with pytest.raises(ValueError, match="weight is on device .* but x is on device"):
        an.batch_norm(x, w)


def test_non_array_input_is_a_type_error():
    with pytest.raises(TypeError, match="x must be an array .* got list"):
        an.layer_norm([[1.0, 2.0]])


def test_adain_style_must_match_content_batch_and_channels():
    with pytest.raises(ValueError, match="style must match content"):
        an.adain(X4, X4[:, :3])


def test_pullback_checks_the_cotangent_shape(xp):
    y, pb = an.vjp(an.layer_norm, from_numpy(xp, X4))
    with pytest.raises(ValueError, match=r"dy must have the output's shape \(4, 6, 3, 3\)"):
        pb(from_numpy(xp, np.ones((4, 6))))


def test_vjp_of_a_function_without_backward_is_a_type_error():
    with pytest.raises(TypeError, match="has no registered backward pass"):
        an.vjp(np.sin, X4)


def test_running_stats_validation():
    z = np.zeros(3)
    with pytest.raises(ValueError, match="count must be an int >= 2"):
        an.update_running_stats(z, z, z, z, 1)
    with pytest.raises(ValueError, match="needs num_batches_tracked >= 1"):
        an.update_running_stats(z, z, z, z, 4, momentum=None)
    with pytest.raises(ValueError, match=r"momentum must be in \[0, 1\]"):
        an.update_running_stats(z, z, z, z, 4, momentum=1.5)
    with pytest.raises(ValueError, match=r"batch_var must have shape \(3,\)"):
        an.update_running_stats(z, z, z, np.zeros(4), 4)


def test_l2_normalize_non_number_p_is_a_type_error():
    with pytest.raises(TypeError, match="p must be a Python number"):
        an.l2_normalize(X4, p="2")


# issue 8.7: None where an array belongs, the batch axis as LRN's channel axis, bad cotangents

@pytest.mark.parametrize("call,name", [
    (lambda: an.batch_renorm(None, running_mean=np.zeros(6), running_var=np.ones(6)), "x"),
    (lambda: an.adain(None, X4), "content"),
    (lambda: an.adain(X4, None), "style"),
    (lambda: an.weight_norm(None, np.ones(4)), "v"),
    (lambda: an.weight_norm(np.ones((4, 3)), None), "g"),
    (lambda: an.spectral_norm(None, np.ones(4)), "weight"),
    (lambda: an.batch_norm(X4, [1.0] * 6), "weight"),
])
def test_none_or_a_list_where_an_array_belongs_is_a_type_error_naming_it(call, name):
    """Issue 8.7: these raised AttributeError ('NoneType' object has no attribute 'dtype')."""
    with pytest.raises(TypeError, match=rf"{name} must be an array .*got (NoneType|list)"):
        call()


def test_local_response_norm_refuses_the_batch_axis_as_channel_axis(xp):
    """Issue 8.7: axis=0 was accepted silently (it is the batch axis)."""
    with pytest.raises(ValueError, match="axis .*cannot be 0, the batch axis"):
        an.local_response_norm(from_numpy(xp, X4), 3, axis=0)


@pytest.mark.parametrize("dtype", ["int64", "bool", "complex128"])
def test_pullback_refuses_integer_bool_and_complex_cotangents(xp, dtype):
    """Issue 8.7: such cotangents were accepted (a complex one losing its imaginary part)."""
    if dtype == "complex128" and not hasattr(xp, "complex128"):
        pytest.skip("backend has no complex dtype")
    y, pb = an.vjp(an.group_norm, from_numpy(xp, X4), 2)
    dy = from_numpy(xp, np.full(X4.shape, 1 + 1j) if dtype == "complex128" else np.ones(X4.shape, dtype))
    with pytest.raises(TypeError, match="group_norm pullback: dy must have a real floating dtype"):
        pb(dy)
    _, pb2 = an.Normalizer(an.partition.Group(2), an.operation.Standardize()).vjp(from_numpy(xp, X4))
    with pytest.raises(TypeError, match="dy must have a real floating dtype"):
        pb2(dy)


def test_pullback_refuses_a_cotangent_of_another_library():
    """Issue 8.7: a torch cotangent for NumPy primals raised AttributeError."""
    torch = pytest.importorskip("torch")
    _, pb = an.vjp(an.layer_norm, X4)
    with pytest.raises(TypeError, match="dy is a torch array but output is a numpy array"):
        pb(torch.ones(X4.shape, dtype=torch.float64))
    with pytest.raises(TypeError, match=r"dy must be an array .*got list"):
        pb(X4.tolist())
    (_, _), pb2 = an.vjp(an.spectral_norm, np.ones((3, 4)), np.ones(3))
    with pytest.raises(TypeError, match=r"dy\[0\] is a torch array"):
        pb2((torch.ones(3, 4, dtype=torch.float64), None))


# issue 8.9: load_state_dict is atomic and refuses bad values at load time

def _bn_state(**changes):
    bn = an.nn.BatchNorm(3)
    state = bn.state_dict()
    state.update(changes)
    return bn, state


def test_load_state_dict_is_atomic():
    """Issue 8.9: a shape error on a later key was raised after earlier keys were written."""
    bn, state = _bn_state(weight=np.full(3, 7.0), running_var=np.ones(4))
    before = bn.state_dict()
    with pytest.raises(ValueError, match=r"running_var must have shape \(3,\), got \(4,\)"):
        bn.load_state_dict(state)
    for k, v in bn.state_dict().items():
        np.testing.assert_array_equal(v, before[k])


@pytest.mark.parametrize("key,value,error,msg", [
    ("weight", np.ones(3, np.int64), TypeError, "weight must have a real floating dtype .*not cast silently.*int64"),
    ("weight", np.ones(3, bool), TypeError, "weight must have a real floating dtype"),
    ("weight", np.ones(3) * (1 + 1j), TypeError, "weight must have a real floating dtype"),
    ("weight", np.array(["a", "b", "c"]), TypeError, "weight must have a real floating dtype"),
    ("weight", [1.0, 2.0, 3.0], TypeError, "weight must be an array .*got list"),
    ("bias", None, TypeError, "bias must be an array .*got NoneType"),
    ("num_batches_tracked", 2.7, TypeError, "num_batches_tracked must be an int"),
    ("num_batches_tracked", "abc", TypeError, "num_batches_tracked must be an int"),
    ("num_batches_tracked", True, TypeError, "num_batches_tracked must be an int"),
    ("num_batches_tracked", np.ones(2, np.int64), TypeError, "num_batches_tracked must be an int or a 0-d integer array"),
    ("num_batches_tracked", -5, ValueError, "num_batches_tracked must be >= 0, got -5"),
    ("running_var", -np.ones(3), ValueError, "running_var must be >= 0 everywhere"),
    ("running_var", np.array([1.0, np.nan, 1.0]), ValueError, "running_var must be >= 0 everywhere"),
])
def test_load_state_dict_refuses_bad_values_with_a_clear_error(key, value, error, msg):
    """Issue 8.9: these were cast silently, raised raw NumPy/AttributeError errors, or loaded
    and failed (or gave NaN) at the next training or eval step."""
    bn, state = _bn_state(**{key: value})
    before = bn.state_dict()
    with pytest.raises(error, match=f"BatchNorm.load_state_dict: {msg}"):
        bn.load_state_dict(state)
    for k, v in bn.state_dict().items():
        np.testing.assert_array_equal(v, before[k])


def test_load_state_dict_accepts_other_libraries_and_0d_integer_counters(xp):
    """What is valid still loads: floating arrays of any library and precision (converted to
    the buffer's library and dtype) and a 0-d integer counter, as a PyTorch state dict has."""
    bn, state = _bn_state(weight=from_numpy(xp, np.full(3, 2.0), "float32"),
                          running_var=from_numpy(xp, np.full(3, 0.5)))
    state["num_batches_tracked"] = xp.asarray(from_numpy(xp, np.asarray(4, np.int64)))
    bn.load_state_dict(state)
    assert isinstance(bn.weight, np.ndarray) and bn.weight.dtype == np.float64
    np.testing.assert_array_equal(bn.weight, 2.0)
    np.testing.assert_array_equal(bn.running_var, 0.5)
    assert bn.num_batches_tracked == 4 and type(bn.num_batches_tracked) is int


def test_load_state_dict_of_a_non_mapping_is_a_type_error():
    with pytest.raises(TypeError, match="state must be a mapping"):
        an.nn.BatchNorm(3).load_state_dict([("weight", np.ones(3))])


@pytest.mark.parametrize("f,good_w", [
    (lambda x, w, b: an.layer_norm(x, w, b), 3), (lambda x, w, b: an.batch_norm(x, w, b), 6),
    (lambda x, w, b: an.group_norm(x, 2, w, b), 6), (lambda x, w, b: an.instance_norm(x, w, b), 6),
    (lambda x, w, b: an.rms_norm(x, w), 3), (lambda x, w, b: an.ghost_batch_norm(x, 2, w, b), 6),
])
def test_the_ops_remembered_checks_refuse_what_the_first_call_would_have(f, good_w):
    """The functional ops reuse one normalizer per (partition, eps) and its memo of checked
    input signatures: after good calls, another shape, dtype, parameter shape or parameter
    dtype is checked again and refused as on a first call (and the good call still answers
    as a fresh normalizer does)."""
    rng = np.random.default_rng(3)
    x = rng.standard_normal((4, 6, 3, 3)).astype(np.float32)
    w, b = np.ones(good_w, np.float32), np.zeros(good_w, np.float32)
    want = f(x.astype(np.float64), w.astype(np.float64), b.astype(np.float64))
    for _ in range(2):
        np.testing.assert_allclose(f(x, w, b), want, rtol=2e-6, atol=2e-6)
    with pytest.raises(ValueError, match="weight"):
        f(x, np.ones(good_w + 1, np.float32), b)
    with pytest.raises(TypeError, match="weight must have a real floating dtype"):
        f(x, w.astype(np.int32), b)
    with pytest.raises(TypeError, match="x must have a real floating dtype"):
        f(x.astype(np.int16), w, b)
    with pytest.raises(ValueError, match="weight"):  # γ no longer fits the normalized axes
        f(x[..., :2] if good_w == 3 else x[:, :4], w, b)


@pytest.mark.parametrize("bad,good", [
    (lambda x: an.layer_norm(x, axis=True), lambda x: an.layer_norm(x, axis=1)),
    (lambda x: an.group_norm(x, True), lambda x: an.group_norm(x, 1)),
    (lambda x: an.ghost_batch_norm(x, 2.0), lambda x: an.ghost_batch_norm(x, 2)),
    (lambda x: an.batch_norm(x, axis=True), lambda x: an.batch_norm(x, axis=1)),
])
def test_a_refused_argument_equal_to_a_good_one_stays_refused_and_harms_nothing(bad, good):
    """True == 1 and 2.0 == 2, so partitions built from them are equal: what the ops remember
    per partition (layouts, normalizers) must neither let the bad one through after a good
    call nor keep refusing the good one after a bad call."""
    x = np.random.default_rng(4).standard_normal((4, 6, 3))
    want = good(x)
    for _ in range(2):
        with pytest.raises((TypeError, ValueError)):
            bad(x)
        np.testing.assert_array_equal(good(x), want)
