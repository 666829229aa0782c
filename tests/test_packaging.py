"""The wheel built from the repository: one top-level package, the commands work from any
directory, results go under the current directory, and the package list matches the tree."""

from __future__ import annotations

import pathlib
import subprocess
import sys
import tomllib
import zipfile

import pytest

ROOT = pathlib.Path(__file__).resolve().parents[1]


def _packages_on_disk() -> set[str]:
    """Every package folder (with an __init__.py), under the name it installs as."""
    out = set()
    for top, name in (("arraynorm", "arraynorm"), ("analysis", "arraynorm.analysis"),
                      ("benchmarks", "arraynorm.benchmarks")):
        for init in (ROOT / top).rglob("__init__.py"):
            rel = init.parent.relative_to(ROOT / top).parts
            if "__pycache__" not in rel:
                out.add(".".join((name, *rel)))
    return out


def test_the_declared_package_list_is_every_package_folder():
    conf = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["setuptools"]
    assert set(conf["packages"]) == _packages_on_disk()


@pytest.fixture(scope="module")
def installed(tmp_path_factory):
    """The wheel built from the checkout, installed (without dependencies) into a folder."""
    tmp = tmp_path_factory.mktemp("wheel")
    build = subprocess.run([sys.executable, "-m", "pip", "wheel", "-q", "--no-deps", "-w",
                            str(tmp / "dist"), str(ROOT)], capture_output=True, text=True,
                           timeout=600)
    assert build.returncode == 0, build.stderr[-2000:]
    wheel = next((tmp / "dist").glob("arraynorm-*.whl"))
    target = tmp / "site"
    inst = subprocess.run([sys.executable, "-m", "pip", "install", "-q", "--no-deps",
                           "--target", str(target), str(wheel)], capture_output=True, text=True,
                          timeout=600)
    assert inst.returncode == 0, inst.stderr[-2000:]
    return wheel, target


def test_the_wheel_installs_one_top_level_package_with_license_and_types(installed):
    wheel, _ = installed
    names = zipfile.ZipFile(wheel).namelist()
    tops = {n.split("/")[0] for n in names if not n.split("/")[0].endswith(".dist-info")}
    assert tops == {"arraynorm"}
    assert "arraynorm/py.typed" in names
    assert "arraynorm/analysis/__main__.py" in names and "arraynorm/benchmarks/harness.py" in names
    meta = next(n for n in names if n.endswith("METADATA"))
    text = zipfile.ZipFile(wheel).read(meta).decode()
    assert "License-Expression: BSD-3-Clause" in text
    assert any(n.endswith("licenses/LICENSE") for n in names)


def _run(target, *args, cwd):
    env = {"PYTHONPATH": str(target), "PATH": "/usr/bin:/bin", "MPLBACKEND": "Agg"}
    return subprocess.run([sys.executable, *args], cwd=cwd, env=env, capture_output=True,
                          text=True, timeout=600)


def test_the_commands_run_from_any_directory_and_write_under_it(installed, tmp_path):
    _, target = installed
    listing = _run(target, "-m", "arraynorm.analysis", "list", cwd=tmp_path)
    assert listing.returncode == 0, listing.stderr[-2000:]
    assert "rank" in listing.stdout
    study = _run(target, "-m", "arraynorm.analysis", "rank", "--quick", "--no-progress",
                 "--json", "r.json", cwd=tmp_path)
    assert study.returncode == 0, study.stderr[-2000:]
    assert (tmp_path / "r.json").is_file()
    bench = _run(target, "-m", "arraynorm.benchmarks", "--quick", "--cases", "rms",
                 "--backends", "arraynorm-numpy", "--repeats", "1", "--no-plot", cwd=tmp_path)
    assert bench.returncode == 0, bench.stderr[-2000:]
    assert list((tmp_path / "benchmark-results").glob("*-quick.json"))
    assert not list((target / "arraynorm" / "benchmarks").glob("results"))


def test_console_scripts_point_at_the_namespaced_mains():
    scripts = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["scripts"]
    assert scripts == {"arraynorm-analysis": "arraynorm.analysis.__main__:main",
                       "arraynorm-bench": "arraynorm.benchmarks.__main__:main"}
    import analysis.__main__
    import benchmarks.__main__

    assert callable(analysis.__main__.main) and callable(benchmarks.__main__.main)
