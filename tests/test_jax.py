"""JAX (outside the CI matrix; runs where jax is installed): the ops trace under jax.jit, and
their closed-form VJPs agree with jax.grad, an autodiff oracle no one here wrote."""

from __future__ import annotations

import numpy as np
import pytest

import arraynorm as an

jax = pytest.importorskip("jax")
jnp = pytest.importorskip("jax.numpy")

RNG = np.random.default_rng(3)

CASES = {
    "batch_norm": (lambda x, w, b: an.batch_norm(x, w, b), (0, 1, 2)),
    "group_norm": (lambda x, w, b: an.group_norm(x, 3, w, b), (0, 2, 3)),
    "instance_norm": (lambda x, w, b: an.instance_norm(x, w, b), (0, 1, 2)),
    "position_norm": (lambda x, w, b: an.position_norm(x, w, b), (0, 1, 2)),
    "ghost_batch_norm": (lambda x, w, b: an.ghost_batch_norm(x, 2, w, b), (0, 2, 3)),
    "layer_norm": (lambda x, w, b: an.layer_norm(x, axis=(1, 2, 3)), (0,)),
    "rms_norm": (lambda x, w, b: an.rms_norm(x), (0,)),
    "local_response_norm": (lambda x, w, b: an.local_response_norm(x, 3), (0,)),
    "l2_normalize": (lambda x, w, b: an.l2_normalize(x), (0,)),
}


@pytest.fixture(autouse=True)
def x64():
    jax.config.update("jax_enable_x64", True)
    yield
    jax.config.update("jax_enable_x64", False)


@pytest.mark.parametrize("name", sorted(CASES))
def test_op_traces_under_jit_and_its_vjp_matches_jax_grad(name):
    f, slots = CASES[name]
    x, w, b = RNG.standard_normal((4, 6, 3, 3)), RNG.uniform(0.5, 1.5, 6), RNG.standard_normal(6)
    dy = RNG.standard_normal(x.shape)
    xj, wj, bj = (jnp.asarray(a) for a in (x, w, b))
    y_jit = jax.jit(f)(xj, wj, bj)
    np.testing.assert_allclose(np.asarray(y_jit), f(x, w, b), rtol=1e-12, atol=1e-12)

    grads = jax.grad(lambda *a: jnp.sum(f(*a) * jnp.asarray(dy)), argnums=(0, 1, 2))(xj, wj, bj)
    # our pullback on JAX arrays, mapped back to (x, weight, bias)
    op = getattr(an, name)
    args = {"batch_norm": (xj, wj, bj), "group_norm": (xj, 3, wj, bj),
            "instance_norm": (xj, wj, bj), "position_norm": (xj, wj, bj),
            "ghost_batch_norm": (xj, 2, wj, bj), "local_response_norm": (xj, 3)}.get(name, (xj,))
    kwargs = {"layer_norm": dict(axis=(1, 2, 3))}.get(name, {})
    y, pb = an.vjp(op, *args, **kwargs)
    ours = pb(jnp.asarray(dy))
    for slot, oracle in zip(slots, grads):
        np.testing.assert_allclose(np.asarray(ours[slot]), np.asarray(oracle), rtol=1e-9, atol=1e-10)


def test_adain_vjp_matches_jax_grad_for_content_and_style():
    c, s = RNG.standard_normal((2, 3, 4, 4)), RNG.standard_normal((2, 3, 5, 5)) * 2 + 1
    dy = RNG.standard_normal(c.shape)
    g = jax.grad(lambda c, s: jnp.sum(an.adain(c, s) * jnp.asarray(dy)), argnums=(0, 1))(
        jnp.asarray(c), jnp.asarray(s))
    _, pb = an.vjp(an.adain, jnp.asarray(c), jnp.asarray(s))
    for ours, oracle in zip(pb(jnp.asarray(dy)), g):
        np.testing.assert_allclose(np.asarray(ours), np.asarray(oracle), rtol=1e-9, atol=1e-10)


@pytest.mark.parametrize("name", sorted(CASES))
def test_jvp_matches_jax_forward_mode_in_every_array_argument(name):
    # jax.jvp differentiates the traced forward pass: an autodiff oracle for the closed form
    f, _ = CASES[name]
    x, w, b = RNG.standard_normal((4, 6, 3, 3)), RNG.uniform(0.5, 1.5, 6), RNG.standard_normal(6)
    tx, tw, tb = RNG.standard_normal(x.shape), RNG.standard_normal(6), RNG.standard_normal(6)
    primals = tuple(jnp.asarray(a) for a in (x, w, b))
    # (the cases that ignore w, b have an output that does not depend on their tangents)
    _, oracle = jax.jvp(f, primals, tuple(jnp.asarray(a) for a in (tx, tw, tb)))
    op = getattr(an, name)
    xj, wj, bj = primals
    txj, twj, tbj = (jnp.asarray(a) for a in (tx, tw, tb))
    args, tans = {"batch_norm": ((xj, wj, bj), (txj, twj, tbj)),
                  "group_norm": ((xj, 3, wj, bj), (txj, None, twj, tbj)),
                  "instance_norm": ((xj, wj, bj), (txj, twj, tbj)),
                  "position_norm": ((xj, wj, bj), (txj, twj, tbj)),
                  "ghost_batch_norm": ((xj, 2, wj, bj), (txj, None, twj, tbj)),
                  "local_response_norm": ((xj, 3), (txj, None))}.get(name, ((xj,), (txj,)))
    kwargs = {"layer_norm": dict(axis=(1, 2, 3))}.get(name, {})
    _, ours = an.jvp(op, args, tans, **kwargs)
    np.testing.assert_allclose(np.asarray(ours), np.asarray(oracle), rtol=1e-9, atol=1e-10)
