"""The documentation runs: docstring examples (doctest) and the README's Python examples."""

from __future__ import annotations

import doctest
import importlib
import inspect
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


# ------------------------------------------------------------ every public name has a docstring
#: the modules whose public API is walked (issue 12: "every public method gets one line at least")
_API_MODULES = ["arraynorm", "arraynorm.nn", "arraynorm.optim", "arraynorm.rl",
                "arraynorm.partition", "arraynorm.operation", "arraynorm.recovery",
                "arraynorm.weight", "arraynorm.gradient", "arraynorm.whitening",
                "arraynorm.orthogonal", "arraynorm.compose", "arraynorm.running_stats"]

#: the named methods of the survey's three families exported by ``arraynorm``: each states
#: its formula and has a runnable Examples section (doctest, run above)
NAMED_METHODS = [
    "batch_norm", "layer_norm", "instance_norm", "group_norm", "rms_norm", "position_norm",
    "ghost_batch_norm", "batch_renorm", "local_response_norm", "l2_normalize", "adain",
    "batch_moments", "update_running_stats",
    "decorrelated_batch_norm", "iter_norm", "group_whitening", "whitening_moments",
    "orthogonal_weight_norm", "oni",
    "weight_norm", "centered_weight_norm", "weight_standardization", "spectral_norm",
    "spectral_norm_exact", "spectral_norm_init_u",
    "normalized_gradient", "block_normalized_gradient", "clip_by_global_norm", "clip_by_value",
    "adaptive_gradient_clipping", "lars_trust_ratio", "lamb_trust_ratio", "gradient_centralization",
]


def _public_names(module):
    names = getattr(module, "__all__", None)
    if names is None:
        names = [n for n in vars(module) if not n.startswith("_")]
    return names


def _public_api(modules=None):
    """``(qualified name, object)`` for every public function and class of the walked
    modules, and every public method and property of those classes, inherited ones included
    (those defined by a class outside arraynorm, e.g. ``tuple.count``, are not ours)."""
    seen: dict[str, object] = {}
    for modname in modules or _API_MODULES:
        module = importlib.import_module(modname)
        for name in _public_names(module):
            obj = getattr(module, name)
            if inspect.ismodule(obj) or not (callable(obj) or isinstance(obj, property)):
                continue
            if not getattr(obj, "__module__", "").startswith("arraynorm"):
                continue
            qual = f"{modname}.{name}"
            seen.setdefault(qual, obj)
            if not inspect.isclass(obj):
                continue
            for attr in dir(obj):
                if attr.startswith("_"):
                    continue
                owner = next((c for c in obj.__mro__ if attr in vars(c)), None)
                if owner is None or not owner.__module__.startswith("arraynorm"):
                    continue
                raw = vars(owner)[attr]
                if isinstance(raw, (staticmethod, classmethod)):
                    raw = raw.__func__
                if not (callable(raw) or isinstance(raw, property)):
                    continue   # data attributes (dataclass fields, constants)
                seen.setdefault(f"{qual}.{attr}", getattr(obj, attr, raw) if not isinstance(raw, property) else raw)
    return seen


def _undocumented(modules=None):
    out = []
    for qual, obj in _public_api(modules).items():
        doc = inspect.getdoc(obj)
        generated = inspect.isclass(obj) and doc and doc.startswith(f"{obj.__name__}(")  # dataclass
        if not doc or not doc.strip() or doc == inspect.getdoc(object) or generated:
            out.append(qual)
    return out


def test_every_public_callable_method_and_property_has_a_docstring():
    api = _public_api()
    missing = _undocumented()
    assert len(api) > 300  # the walk found the API (not an empty list that passes)
    assert not missing, f"{len(missing)} of {len(api)} public names have no docstring: {missing}"


@pytest.mark.parametrize("module, framework", [("arraynorm.torch", "torch"), ("arraynorm.jax", "jax")])
def test_the_bridges_public_names_have_docstrings(module, framework):
    pytest.importorskip(framework)   # optional extras
    api = _public_api([module])
    missing = _undocumented([module])
    assert api and not missing, f"{len(missing)} of {len(api)} public names have no docstring: {missing}"


_FORMULA = re.compile(r"(?<![=<>!])\s(=|←|≈|≤)\s|\s=\s*$")


@pytest.mark.parametrize("name", NAMED_METHODS)
def test_named_methods_state_their_formula_and_have_a_runnable_example(name):
    doc = inspect.getdoc(getattr(arraynorm, name))
    assert doc, name
    assert re.search(r"^Examples?\n-+\n", doc, flags=re.M), f"{name}: no Examples section"
    assert ">>>" in doc.split("Example", 1)[1], f"{name}: the Examples section has no doctest"
    prose = [line for line in doc.splitlines() if not line.lstrip().startswith((">>>", "..."))]
    assert any(_FORMULA.search(line) for line in prose), f"{name}: no formula line (y = ...)"
