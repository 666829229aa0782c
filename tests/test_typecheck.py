"""The library passes mypy --strict (the configuration in pyproject.toml's [tool.mypy]); CI runs
the type checker through this test (mypy is in the test extra)."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

pytest.importorskip("mypy")
tomllib = pytest.importorskip("tomllib")


def test_the_configuration_is_strict():
    """Relaxing the checker is a visible change: strict mode stays on for the library, and
    only the framework bridges (torch / jax objects are untyped there) relax the three
    checks that cannot hold for untyped bases and decorators."""
    with open(os.path.join(ROOT, "pyproject.toml"), "rb") as f:
        config = tomllib.load(f)["tool"]["mypy"]
    assert config["strict"] is True
    relaxed = {m for o in config.get("overrides", [])
               for m in o["module"] if any(k.startswith(("disallow", "warn")) for k in o)}
    assert relaxed == {"arraynorm.torch.*", "arraynorm.jax"}


def test_the_library_type_checks(tmp_path):
    out = subprocess.run([sys.executable, "-m", "mypy", "--cache-dir", str(tmp_path), "arraynorm"],
                         cwd=ROOT, capture_output=True, text=True, timeout=600)
    assert out.returncode == 0, out.stdout + out.stderr
    assert "Success: no issues found" in out.stdout
