"""``python -m benchmarks [--quick] [--cases ID ...] [--backends ID ...]``: see :mod:`benchmarks`."""

from __future__ import annotations

import argparse
import os

from . import run
from . import dask_norm, sweep
from .cases import BACKENDS, CASES


def _ids(values: list[str] | None) -> list[str] | None:
    if not values:
        return None
    return [v for item in values for v in item.split(",") if v]


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(
        prog="python -m benchmarks",
        description="Time arraynorm's normalizations against a naive NumPy recipe and PyTorch "
                    "(CPU, and CUDA where present), with the machine's copy bandwidth as the limit.")
    p.add_argument("--quick", action="store_true", help="small sizes and fewer repeats (under a minute)")
    p.add_argument("--cases", nargs="+", metavar="ID",
                   help="cases to run (comma or space separated): " + ", ".join(c.id for c in CASES)
                   + f", {sweep.ID} (an analysis sweep in process and on 1 and 2 Dask workers)"
                   + f", {dask_norm.ID} (synchronized BN of a large Dask array on 1 and 2 workers)")
    p.add_argument("--backends", nargs="+", metavar="ID",
                   help="backends to run: " + ", ".join(b.id for b in BACKENDS))
    p.add_argument("--repeats", type=int, help="timed repeats per backend (default 9, quick 3)")
    p.add_argument("--out", metavar="DIR", help="where results go (default: benchmarks/results in a checkout, "
                        "./benchmark-results elsewhere)")
    p.add_argument("--no-plot", action="store_true", help="skip the PNG chart")
    p.add_argument("--sizes", action="store_true",
                   help="also run every normalization case at smaller sizes (1 MiB up; quick: 0.25 MiB)")
    p.add_argument("--no-jit", action="store_true",
                   help="arraynorm without its numba implementation (ARRAYNORM_JIT=0: as without the [jit] extra)")
    p.add_argument("--jit-cold-cache", action="store_true",
                   help="compile the JIT's loops afresh (an empty NUMBA_CACHE_DIR) to report cold compile times")
    p.add_argument("--malloc-default", action="store_true",
                   help="leave glibc's moving mmap/trim thresholds (by default they are pinned for every "
                        "library alike, so that no library's outputs page-fault by the luck of what ran before)")
    a = p.parse_args(argv)
    if a.jit_cold_cache:
        import tempfile

        os.environ["NUMBA_CACHE_DIR"] = tempfile.mkdtemp(prefix="arraynorm-numba-")
    run(cases=_ids(a.cases), backends=_ids(a.backends), quick=a.quick, repeats=a.repeats,
        out_dir=a.out, plot=not a.no_plot, sizes=a.sizes, jit=not a.no_jit,
        pin_malloc=not a.malloc_default)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
