"""The training demo's claim, shortened: at the same learning rate, the same deep MLP trained
from the same initialization on the same mini-batches reaches a clearly lower loss with
BatchNorm than without (the survey's "accelerating convergence / larger learning rates").
Seeded, so deterministic; the full demo is ``python -m arraynorm.demo``."""

from __future__ import annotations

import io

import numpy as np

from arraynorm.data import spirals
from arraynorm.demo import main, run_demo


def test_batchnorm_reaches_a_clearly_lower_loss_at_the_same_learning_rate():
    out = io.StringIO()
    plain, bn = run_demo(depth=10, width=64, lr=0.05, steps=300, seed=0, every=50, out=out)
    assert np.all(np.isfinite(bn.losses))
    assert bn.final_loss < 0.2 * plain.final_loss
    assert bn.final_accuracy > 0.98 > plain.final_accuracy
    # the last window of training losses tells the same story as the final evaluation
    assert bn.curve[-1] < 0.5 * plain.curve[-1]
    text = out.getvalue()
    assert "plain" in text and "BatchNorm" in text and text.count("\n") > 10


def test_demo_is_deterministic_and_runs_from_its_command_line(capsys):
    a = run_demo(depth=3, width=16, steps=20, seed=5, out=io.StringIO())
    b = run_demo(depth=3, width=16, steps=20, seed=5, out=io.StringIO())
    np.testing.assert_array_equal(a[0].losses, b[0].losses)
    np.testing.assert_array_equal(a[1].losses, b[1].losses)
    assert main(["--depth", "2", "--width", "8", "--steps", "10", "--every", "5"]) == 0
    assert "whole data set" in capsys.readouterr().out


def test_spirals_are_two_balanced_interleaved_arms():
    x, y = spirals(2000, seed=0)
    assert x.shape == (2000, 2) and set(np.unique(y)) == {0, 1}
    assert abs(y.mean() - 0.5) < 0.05
    r = np.linalg.norm(x, axis=1)
    assert r.max() < 2.1
