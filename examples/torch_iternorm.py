"""Train a small PyTorch CNN with IterNorm (or decorrelated BN) from arraynorm.torch.

A synthetic task: classify 8×8 two-channel images by which of four quadrants holds a bright
blob, with noise. The model is an ordinary ``torch.nn.Sequential``; the whitening layer is
``arraynorm.torch.IterNorm`` (``--norm dbn`` for ``DecorrelatedBatchNorm``), trained with
``torch.optim.SGD``, its backward being arraynorm's closed-form one. Prints the loss while it
trains and the eval-mode accuracy (running statistics) at the end.

    python examples/torch_iternorm.py                 # 200 steps, a few seconds
    python examples/torch_iternorm.py --norm dbn --steps 100
"""

from __future__ import annotations

import argparse

import torch

import arraynorm.torch as ant


def make_data(n: int, gen: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
    """(n, 2, 8, 8) noisy images with a faint 3×3 blob somewhere in one quadrant (channel 0)
    and its negative in channel 1; the label is the quadrant."""
    labels = torch.randint(0, 4, (n,), generator=gen)
    top = (labels // 2) * 4 + torch.randint(0, 2, (n,), generator=gen)
    left = (labels % 2) * 4 + torch.randint(0, 2, (n,), generator=gen)
    idx = torch.arange(8)
    rows = (idx >= top[:, None]) & (idx < top[:, None] + 3)
    cols = (idx >= left[:, None]) & (idx < left[:, None] + 3)
    blob = (rows[:, :, None] & cols[:, None, :]).float()
    x = torch.randn(n, 2, 8, 8, generator=gen)
    x[:, 0] += 0.6 * blob
    x[:, 1] -= 0.6 * blob
    return x, labels


def make_model(norm: str) -> torch.nn.Module:
    layer = (ant.IterNorm(16, num_groups=4, T=5) if norm == "iternorm"
             else ant.DecorrelatedBatchNorm(16, num_groups=4))
    return torch.nn.Sequential(
        torch.nn.Conv2d(2, 16, 3, padding=1), layer, torch.nn.ReLU(),
        torch.nn.MaxPool2d(2), torch.nn.Flatten(), torch.nn.Linear(16 * 4 * 4, 4))


def main(argv: list[str] | None = None) -> float:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--norm", choices=["iternorm", "dbn"], default="iternorm")
    parser.add_argument("--steps", type=int, default=200)
    parser.add_argument("--batch", type=int, default=64)
    parser.add_argument("--lr", type=float, default=0.05)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)

    torch.manual_seed(args.seed)
    gen = torch.Generator().manual_seed(args.seed)
    model = make_model(args.norm)
    opt = torch.optim.SGD(model.parameters(), lr=args.lr, momentum=0.9)
    loss_fn = torch.nn.CrossEntropyLoss()
    every = max(args.steps // 10, 1)
    for step in range(1, args.steps + 1):
        x, y = make_data(args.batch, gen)
        opt.zero_grad()
        loss = loss_fn(model(x), y)
        loss.backward()
        opt.step()
        if step % every == 0 or step == 1:
            print(f"step {step:4d}  loss {loss.item():.4f}")
    model.eval()
    with torch.no_grad():
        x, y = make_data(512, gen)
        acc = (model(x).argmax(1) == y).float().mean().item()
    print(f"eval accuracy (running statistics) {acc:.3f}")
    return acc


if __name__ == "__main__":
    main()
