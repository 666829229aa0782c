"""One small float64 call of every bridged op, shared by the PyTorch and JAX bridge tests.

A case holds NumPy arrays where the op takes arrays and plain values elsewhere; each test
converts the arrays to its framework with :func:`convert`. ``exact`` says whether the op's
pullback is the derivative of its forward at that point — it is not for batch
renormalization where r and d do not clip (the paper's stop-gradient), so finite differences
and autodiff of the forward pass are oracles only for the ``exact`` cases.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, NamedTuple

import numpy as np

import arraynorm as an


class BridgeCase(NamedTuple):
    op: str
    args: tuple[Any, ...]
    kwargs: dict[str, Any]
    exact: bool = True


def _cases() -> dict[str, BridgeCase]:
    rng = np.random.default_rng(12)

    def r(*shape: int) -> np.ndarray:
        return rng.standard_normal(shape)

    def pos(*shape: int) -> np.ndarray:
        return rng.uniform(0.5, 1.5, shape)

    far = {"running_mean": np.full(3, -100.0), "running_var": np.full(3, 1e-4)}
    near = {"running_mean": np.array([0.1, -0.2, 0.0]), "running_var": np.array([0.9, 1.2, 1.0])}
    sigma = np.diag([3.0, 1.0, 0.5])
    return {
        "normalize": BridgeCase("normalize", (r(3, 4, 5), an.partition.Group(2),
                                              an.operation.RMSScale(), pos(4), r(4)), {}),
        "batch_norm": BridgeCase("batch_norm", (r(4, 3, 2), pos(3), r(3)), {}),
        "batch_norm_given_stats": BridgeCase("batch_norm", (r(4, 3, 2), pos(3), r(3)),
                                             {"mean": r(3), "var": pos(3)}),
        "layer_norm": BridgeCase("layer_norm", (r(3, 4, 2), pos(4, 2), r(4, 2)), {"axis": (1, 2)}),
        "instance_norm": BridgeCase("instance_norm", (r(2, 3, 4), pos(3), r(3)), {}),
        "group_norm": BridgeCase("group_norm", (r(2, 4, 3), 2, pos(4), r(4)), {}),
        "rms_norm": BridgeCase("rms_norm", (r(3, 5), pos(5)), {}),
        "position_norm": BridgeCase("position_norm", (r(2, 3, 4), pos(3), r(3)), {}),
        "ghost_batch_norm": BridgeCase("ghost_batch_norm", (r(4, 3, 2), 2, pos(3), r(3)), {}),
        # r = rmax and d = dmax clip: locally constant, so the stop-gradient VJP is exact
        "batch_renorm_clipped": BridgeCase("batch_renorm", (r(4, 3, 2), pos(3), r(3)), far),
        "batch_renorm": BridgeCase("batch_renorm", (r(4, 3, 2), pos(3), r(3)), near, exact=False),
        "local_response_norm": BridgeCase("local_response_norm", (r(2, 5, 3), 3), {}),
        "l2_normalize": BridgeCase("l2_normalize", (r(3, 4),), {}),
        "adain": BridgeCase("adain", (r(2, 3, 4), 1.0 + 2.0 * r(2, 3, 5)), {}),
        "dbn_zca": BridgeCase("decorrelated_batch_norm", (r(8, 4), pos(4), r(4)), {}),
        "dbn_pca": BridgeCase("decorrelated_batch_norm", (r(8, 4) @ np.diag([1.0, 2, 3, 4]),
                                                          pos(4), r(4)), {"method": "pca"}),
        "dbn_cholesky_groups": BridgeCase("decorrelated_batch_norm", (r(6, 4, 2), pos(4), r(4)),
                                          {"method": "cholesky", "num_groups": 2}),
        "dbn_given_stats": BridgeCase("decorrelated_batch_norm", (r(5, 4), pos(4), r(4)),
                                      {"num_groups": 2, "mean": r(4),
                                       "whitening_matrix": np.eye(2) + 0.1 * r(2, 2, 2)}),
        "iter_norm": BridgeCase("iter_norm", (r(8, 4, 2), pos(4), r(4)), {"num_groups": 2, "T": 3}),
        "group_whitening": BridgeCase("group_whitening", (r(2, 4, 3), 2, pos(4), r(4)), {}),
        "orthogonal_weight_norm": BridgeCase("orthogonal_weight_norm", (r(3, 6),), {}),
        "oni": BridgeCase("oni", (r(3, 2, 3),), {}),
        "weight_norm": BridgeCase("weight_norm", (r(3, 4), pos(3)), {}),
        "centered_weight_norm": BridgeCase("centered_weight_norm", (r(3, 4), pos(3, 1)), {}),
        "weight_standardization": BridgeCase("weight_standardization", (r(3, 2, 2),), {}),
        # power iteration converged (σ2/σ1 ≈ 1/3, 20 steps): u, v are the top singular pair,
        # so the constant-(u, v) VJP is the derivative of σ_max
        "spectral_norm": BridgeCase("spectral_norm", (sigma + 0.01 * r(3, 3),
                                                      np.array([0.6, 0.8, 0.0])),
                                    {"n_power_iterations": 20}),
        "spectral_norm_exact": BridgeCase("spectral_norm_exact", (r(4, 3),), {}),
    }


CASES = _cases()


def convert(case: BridgeCase, to: Callable[[np.ndarray], Any]) -> tuple[tuple[Any, ...], dict[str, Any]]:
    """The case's arguments with every NumPy array passed through ``to``."""
    def conv(a: Any) -> Any:
        return to(a) if isinstance(a, np.ndarray) else a
    return tuple(conv(a) for a in case.args), {k: conv(v) for k, v in case.kwargs.items()}


def array_slots(case: BridgeCase) -> tuple[int, ...]:
    """Positions of the array arguments (the differentiable inputs)."""
    return tuple(i for i, a in enumerate(case.args) if isinstance(a, np.ndarray))
