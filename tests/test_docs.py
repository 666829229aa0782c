"""The documentation runs: docstring examples (doctest) and the README's Python examples."""

from __future__ import annotations

import doctest
import importlib
import pathlib
import pkgutil
import re

import pytest

import arraynorm

ROOT = pathlib.Path(__file__).resolve().parents[1]


def _modules():
    names = ["arraynorm"]
    for info in pkgutil.walk_packages(arraynorm.__path__, "arraynorm."):
        if ".demo" in info.name or info.name.endswith("__main__"):
            continue
        names.append(info.name)
    return names


#: modules that need an optional framework, and that framework
_OPTIONAL = {"arraynorm.torch": "torch", "arraynorm.jax": "jax"}


@pytest.mark.parametrize("name", _modules())
def test_docstring_examples_run(name):
    for prefix, framework in _OPTIONAL.items():
        if name == prefix or name.startswith(prefix + "."):
            pytest.importorskip(framework)
    module = importlib.import_module(name)
    result = doctest.testmod(module, optionflags=doctest.ELLIPSIS | doctest.NORMALIZE_WHITESPACE)
    assert result.failed == 0, f"{result.failed} doctest(s) failed in {name}"


def _readme_blocks():
    text = (ROOT / "README.md").read_text()
    return re.findall(r"```python\n(.*?)```", text, flags=re.S)


@pytest.mark.parametrize("i", range(len(_readme_blocks())))
def test_readme_python_examples_run_as_written(i):
    code = _readme_blocks()[i]
    for framework in re.findall(r"^import (torch|jax)\b", code, flags=re.M):
        pytest.importorskip(framework)
    if "import cupy" in code:
        from _helpers import cuda_available
        if not cuda_available():
            # no GPU here: the same calls on NumPy, which shares CuPy's API for everything the
            # example uses, so a wrong signature or a missing argument still fails
            code = code.replace("import cupy as cp", "import numpy as cp")
    exec(compile(code, f"README.md block {i}", "exec"), {})
