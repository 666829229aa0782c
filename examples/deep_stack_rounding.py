"""How far apart do two correct runs of a 200-layer BatchNorm stack end up?

The benchmark's deep-stack case (``deep_stack(200, 256, norm="batch")``, batch 64) reports
max|y − arraynorm| ≈ 5 for PyTorch and for arraynorm's own portable path: not a disagreement
of the implementations but the stack's sensitivity, which multiplies every rounding
difference by a constant factor per layer (the gradient explosion of Yang et al. 2019 seen
in the forward pass). This prints, per depth, arraynorm against PyTorch with both in
float64 (the same weights; PyTorch only where it is installed) and arraynorm in float32
against float64: both grow by about four orders of magnitude every 50 layers until they
reach the size of the outputs.

    python examples/deep_stack_rounding.py
"""

from __future__ import annotations

import numpy as np

from arraynorm import nn


def _torch_twin(model: nn.Sequential) -> object | None:
    try:
        import torch
    except ImportError:
        return None
    layers = []
    for lin, bn, _ in model:
        tl = torch.nn.Linear(lin.in_features, lin.out_features).double()
        tl.load_state_dict({"weight": torch.from_numpy(np.asarray(lin.weight)),
                            "bias": torch.from_numpy(np.asarray(lin.bias))})
        tb = torch.nn.BatchNorm1d(lin.out_features, eps=bn.eps).double()
        tb.weight.data = torch.from_numpy(np.asarray(bn.weight))
        tb.bias.data = torch.from_numpy(np.asarray(bn.bias))
        layers += [tl, tb, torch.nn.ReLU()]
    return torch.nn.Sequential(*layers).train()


def main() -> None:
    x = np.random.default_rng(1).standard_normal((64, 256))
    print("depth  |arraynorm64 - torch64|  |arraynorm32 - arraynorm64|  max|y|")
    for depth in (10, 50, 100, 150, 200):
        m64 = nn.deep_stack(depth, 256, norm="batch", rng=0, dtype="float64")
        m32 = nn.deep_stack(depth, 256, norm="batch", rng=0, dtype="float32")
        y64, y32 = m64(x), m32(x.astype(np.float32)).astype(np.float64)
        twin = _torch_twin(m64)
        if twin is None:
            vs_torch = "(no torch)"
        else:
            import torch

            with torch.no_grad():
                yt = twin(torch.from_numpy(x)).numpy()
            vs_torch = f"{np.abs(y64 - yt).max():.1e}"
        print(f"{depth:5d}  {vs_torch:>23}  {np.abs(y32 - y64).max():26.1e}  {np.abs(y64).max():6.1f}")


if __name__ == "__main__":
    main()
