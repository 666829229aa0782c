"""arraynorm.jax: every op with a backward as a ``jax.custom_vjp`` function.

Oracles: ``jax.grad`` of the plain op, i.e. JAX's autodiff of the traced portable forward
pass (float64, x64 enabled), and arraynorm's own ``vjp`` where the pullback is by design not
the derivative of the forward (batch renormalization's stop-gradient).
"""

from __future__ import annotations

import re

import numpy as np
import pytest

jax = pytest.importorskip("jax")
jnp = pytest.importorskip("jax.numpy")

import arraynorm as an  # noqa: E402
import arraynorm.jax as anj  # noqa: E402
from arraynorm._bridge import bridged_ops  # noqa: E402
from _bridge_cases import CASES, array_slots, convert  # noqa: E402


@pytest.fixture(autouse=True)
def x64():
    jax.config.update("jax_enable_x64", True)
    yield
    jax.config.update("jax_enable_x64", False)


def _loss(f, case, args, kwargs):
    """sum(sin(f(...))) as a function of (the positional arrays, the keyword arrays)."""
    slots = array_slots(case)
    kw_names = [k for k, v in kwargs.items() if isinstance(v, jax.Array)]

    def loss(arrays, kw_arrays):
        a = list(args)
        for i, v in zip(slots, arrays):
            a[i] = v
        out = f(*a, **{**kwargs, **dict(zip(kw_names, kw_arrays))})
        return jnp.sum(jnp.sin(out[0] if isinstance(out, tuple) else out))

    return loss, [args[i] for i in slots], [kwargs[k] for k in kw_names]


def _assert_close(got, ref, rtol=1e-10):
    got, ref = np.asarray(got), np.asarray(ref)
    scale = max(float(np.max(np.abs(ref))), 1.0)
    np.testing.assert_allclose(got, ref, rtol=rtol, atol=rtol * scale)


def test_every_op_with_a_backward_is_bridged():
    assert set(bridged_ops()) <= set(anj.__all__)
    assert {c.op for c in CASES.values()} == set(bridged_ops())


@pytest.mark.parametrize("name", sorted(CASES))
def test_grad_under_jit_equals_jax_grad_of_the_plain_op(name):
    case = CASES[name]
    args, kwargs = convert(case, jnp.asarray)
    loss, arrays, kw_arrays = _loss(getattr(anj, case.op), case, args, kwargs)
    plain, _, _ = _loss(getattr(an, case.op), case, args, kwargs)

    # one compilation for both; the oracle traces the portable path (under jit, so that keyword
    # arrays are traced alongside the inputs: arraynorm compares devices, a tracer has none)
    @jax.jit
    def both(arrays, kw_arrays):
        return (jax.value_and_grad(loss)(arrays, kw_arrays),
                jax.value_and_grad(plain)(arrays, kw_arrays))

    (value, grads), (value_ref, ref) = both(arrays, kw_arrays)
    _assert_close(value, value_ref, 1e-13)
    if not case.exact:  # the pullback is by design not the forward's derivative: use vjp's
        out, pullback = an.vjp(getattr(an, case.op),
                               *(np.asarray(a) if isinstance(a, jax.Array) else a for a in args),
                               **{k: np.asarray(v) for k, v in kwargs.items()})
        ct = pullback(np.cos(out))
        ref = [ct[i] for i in array_slots(case)]
    for g, r, a in zip(grads, ref, arrays):
        _assert_close(g, r)
        assert g.dtype == a.dtype


@pytest.mark.parametrize("name", ["batch_norm", "batch_renorm_clipped"])
def test_eager_grad_equals_the_jitted_grad(name):
    case = CASES[name]
    args, kwargs = convert(case, jnp.asarray)
    loss, arrays, kw_arrays = _loss(getattr(anj, case.op), case, args, kwargs)
    for g, gj in zip(jax.grad(loss)(arrays, kw_arrays), jax.jit(jax.grad(loss))(arrays, kw_arrays)):
        _assert_close(g, gj, 1e-13)


def test_keyword_arrays_are_constants_and_spectral_norms_u_is_state():
    x = jnp.asarray(np.random.default_rng(0).standard_normal((5, 3)))
    g = jax.jit(jax.grad(lambda m: jnp.sum(anj.batch_norm(x, mean=m, var=jnp.ones(3)) ** 2)))(
        jnp.zeros(3))
    assert not np.asarray(g).any()
    w = jnp.asarray(np.random.default_rng(1).standard_normal((3, 4)))
    u = jnp.asarray([0.6, 0.8, 0.0])
    g = jax.jit(jax.grad(lambda w: jnp.sum(anj.spectral_norm(w, u)[1])))(w)
    assert not np.asarray(g).any()


def test_under_jit_the_recomputed_decomposition_is_merged_with_the_forward():
    """The bwd recomputes the statistics; XLA's CSE should leave one eigendecomposition."""
    x = jnp.asarray(np.random.default_rng(2).standard_normal((32, 8, 3)))

    def count(f):
        g = jax.jit(jax.grad(lambda x: jnp.sum(jnp.sin(f(x, num_groups=2)))))
        text = g.lower(x).compile().as_text()
        return len(re.findall(r'custom_call_target="[^"]*(?:syevd|eigh)[^"]*"', text))

    plain, wrapped = count(an.decorrelated_batch_norm), count(anj.decorrelated_batch_norm)
    if plain == 0:
        pytest.skip("this backend names its eigendecomposition differently")
    assert wrapped <= plain


def _mlp(params, x, norm):
    h = x @ params["w1"] + params["b1"]
    if norm == "iternorm":
        h = anj.iter_norm(h, params["g"], params["beta"], num_groups=2, T=5)
    else:
        h = anj.decorrelated_batch_norm(h, params["g"], params["beta"], num_groups=2)
    return jnp.tanh(h) @ params["w2"] + params["b2"]


@pytest.mark.parametrize("norm", ["iternorm", "dbn"])
def test_a_jax_mlp_with_whitening_trains_with_gradient_descent(norm):
    rng = np.random.default_rng(3)
    x = jnp.asarray(rng.standard_normal((64, 5)) @ rng.standard_normal((5, 5)))
    t = jnp.sin(x[:, :1]) + 0.5 * x[:, 1:2] * x[:, 2:3]
    params = {"w1": jnp.asarray(rng.standard_normal((5, 8)) / np.sqrt(5)), "b1": jnp.zeros(8),
              "g": jnp.ones(8), "beta": jnp.zeros(8),
              "w2": jnp.asarray(rng.standard_normal((8, 1)) / np.sqrt(8)), "b2": jnp.zeros(1)}

    def loss(p):
        return jnp.mean((_mlp(p, x, norm) - t) ** 2)

    step = jax.jit(lambda p: jax.tree_util.tree_map(lambda a, g: a - 0.1 * g, p, jax.grad(loss)(p)))
    losses = [float(loss(params))]
    for _ in range(60):
        params = step(params)
        losses.append(float(loss(params)))
    assert np.isfinite(losses).all()
    assert losses[-1] < 0.5 * losses[0], losses[::10]
