"""The framework bridges are optional: ``import arraynorm`` loads neither PyTorch nor JAX."""

from __future__ import annotations

import os
import pathlib
import subprocess
import sys

ROOT = pathlib.Path(__file__).resolve().parents[1]


def test_import_arraynorm_imports_neither_torch_nor_jax():
    code = ("import sys, arraynorm, arraynorm.nn, arraynorm.optim, arraynorm._bridge; "
            "print(sorted(m for m in ('torch', 'jax', 'jaxlib') if m in sys.modules))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         cwd=ROOT, env={**os.environ, "PYTHONPATH": str(ROOT)}, timeout=120)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "[]"
