"""The README's comparison table from two full runs: one with the ``[jit]`` extra and one
with ``--no-jit`` (``python -m benchmarks --sizes`` and ``--sizes --no-jit``).

``python -m benchmarks.table WITH.json WITHOUT.json`` prints, per case of the first run
(Dask cases left out), the implementation arraynorm ran, the ratio of arraynorm's
forward+backward median to PyTorch CPU's and to JAX's, and arraynorm's share of the copy
bandwidth, for both runs; ``—`` where a peer is absent or the share means nothing (whole
models).
"""

from __future__ import annotations

import argparse
import json
from typing import Any

__all__ = ["comparison_table", "main"]

_MODELS = ("stack", "transformer")


def _ratio(case: dict[str, Any], peer: str) -> str:
    b = case["backends"]
    a, p = b.get("arraynorm-numpy", {}), b.get(peer, {})
    if a.get("status") != "ok" or p.get("status") != "ok":
        return "—"
    return f"{a['fwdbwd']['median_s'] / p['fwdbwd']['median_s']:.2f}"


def _share(case: dict[str, Any]) -> str:
    a = case["backends"].get("arraynorm-numpy", {})
    share = a.get("fwdbwd", {}).get("copy_share") if a.get("status") == "ok" else None
    return "—" if share is None or case["family"] in _MODELS else f"{100 * share:.0f}%"


def comparison_table(with_jit: dict[str, Any], without: dict[str, Any]) -> str:
    """Markdown table of two runs' JSON (as :mod:`benchmarks.harness` writes it)."""
    lines = ["| case | MiB | with `[jit]`: runs | ×PyTorch | ×JAX | % copy bw "
             "| without: ×PyTorch | ×JAX | % copy bw |",
             "|---|---|---|---|---|---|---|---|---|"]
    for key, case in with_jit["cases"].items():
        if key.startswith("dask"):
            continue
        impls = case["backends"].get("arraynorm-numpy", {}).get("implementations") or {}
        mib = round(case["input_bytes"] / 2**20) if case.get("input_bytes") else 0
        row = [case["title"], str(mib), ", ".join(impls) or "-", _ratio(case, "torch-cpu"),
               _ratio(case, "jax-cpu"), _share(case)]
        other = without["cases"].get(key)
        row += ([_ratio(other, "torch-cpu"), _ratio(other, "jax-cpu"), _share(other)]
                if other is not None else ["—"] * 3)
        lines.append("| " + " | ".join(row) + " |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m benchmarks.table", description=__doc__.split("\n\n")[0])
    p.add_argument("with_jit", help="JSON of the run with the [jit] extra")
    p.add_argument("without", help="JSON of the run with --no-jit")
    args = p.parse_args(argv)
    with open(args.with_jit) as f, open(args.without) as g:
        print(comparison_table(json.load(f), json.load(g)))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
