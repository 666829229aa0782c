"""The Dask normalization case: throughput of batch norm's statistics and normalization of a
large float32 array on a ``LocalCluster`` of 1 worker process and of 2, reported in GB/s of
input and as the ratio of 2 workers' throughput to 1 worker's.

The input is generated lazily on the workers (``da.random``, chunked along the batch) and never
reaches the client; a sample is ``persist_statistics`` + the forward (the one-pass statistics,
persisted) and the sum of the output (the normalization pass, regenerating the chunks): two
passes over the input, the way a synchronized BN runs on data larger than the cluster's memory.
Generating the chunks is part of every sample (as reading them from storage would be); the
``generate`` line times that alone (a sum of the input) so the normalization's share is
visible. Both clusters are started and warmed up before timing, the executors interleaved
round by round. On a machine with 2 cores shared with other work, 2 workers cannot reach
twice the throughput; the JSON records the load.
"""

from __future__ import annotations

import os
import statistics
import time
from collections.abc import Callable
from typing import Any

from .sweep import local_clusters, worker_label

__all__ = ["ID", "SIZES", "WORKERS", "MAX_REPEATS", "measure", "run"]

ID = "dask-norm"
#: (rows, features, rows per chunk) of the float32 input: 64 MiB quick, 1 GiB full
SIZES = {"quick": (65_536, 256, 8_192), "full": (1_048_576, 256, 16_384)}
WORKERS = (1, 2)
MAX_REPEATS = 3


def _input(size: tuple[int, int, int], seed: int) -> Any:
    import dask.array as da
    import numpy as np

    n, c, rows = size
    return da.random.default_rng(seed).random((n, c), dtype=np.float32, chunks=(rows, c)) * 4.0 + 1.0


def _normalize(client: Any, size: tuple[int, int, int]) -> float:
    """One sample: synchronized BN statistics (persisted) and the normalized output's sum."""
    import arraynorm as an

    x = _input(size, 0)
    # as_current: persist (inside the forward) goes to this client's cluster, not the default
    with client.as_current(), an.persist_statistics():
        y, _ = an.Normalizer(an.partition.Batch(), an.operation.Standardize()).forward(x)
        return float(client.compute(y.sum(dtype="float64")).result())


def _generate(client: Any, size: tuple[int, int, int]) -> float:
    x = _input(size, 0)
    return float(client.compute(x.sum(dtype="float64")).result())


def measure(clients: dict[str, Any], size: tuple[int, int, int], repeats: int) -> dict[str, Any]:
    """Time the normalization (and the generation alone) on each client (label → Dask
    client), ``repeats`` rounds interleaved after one warm-up each. Returns ``{"size",
    "bytes", "runs": {label: {"samples_s", "median_s", "gb_per_s", "generate_median_s"}},
    "sums_agree"}``; ``sums_agree``: every run's Σy equals the first (Σy ≈ 0: BN's output
    is centred), to float64 rounding of the chunked sum."""
    n, c, _ = size
    nbytes = n * c * 4
    labels = list(clients)
    sums = [_normalize(clients[k], size) for k in labels]  # warm-up: imports on the workers
    samples: dict[str, list[float]] = {k: [] for k in labels}
    gen: dict[str, list[float]] = {k: [] for k in labels}
    for i in range(repeats):
        for label in labels[i % len(labels):] + labels[:i % len(labels)]:
            t0 = time.perf_counter()
            sums.append(_normalize(clients[label], size))
            samples[label].append(time.perf_counter() - t0)
            t0 = time.perf_counter()
            _generate(clients[label], size)
            gen[label].append(time.perf_counter() - t0)
    runs = {k: {"samples_s": v, "median_s": statistics.median(v),
                "gb_per_s": nbytes / 1e9 / statistics.median(v),
                "generate_median_s": statistics.median(gen[k])} for k, v in samples.items()}
    agree = all(abs(s - sums[0]) <= 1e-6 * n * c for s in sums)
    return {"size": list(size), "bytes": nbytes, "runs": runs, "sums_agree": agree}


def run(quick: bool, repeats: int, log: Callable[[str], None] = print) -> dict[str, Any]:
    """Start a LocalCluster of each size in :data:`WORKERS`, time the case on each, close them;
    the result has ``ratio_2_over_1`` (throughput, higher is better)."""
    try:
        import distributed  # noqa: F401  (the Dask cases need the dask extra)
    except ImportError as e:
        return {"status": f"absent: {e}"}
    size = SIZES["quick" if quick else "full"]
    with local_clusters(WORKERS) as clients:
        res = measure(clients, size, repeats)
    one, two = (res["runs"][worker_label(n)]["gb_per_s"] for n in WORKERS)
    res.update(status="ok", ratio_2_over_1=two / one, cpus=os.cpu_count(),
               loadavg=[round(v, 2) for v in os.getloadavg()])
    for label, r in res["runs"].items():
        log(f"{'dask BN stats+normalize ' + format(res['bytes'] / 2**20, '.0f') + ' MiB':30s} "
            f"{label:19s} {r['median_s']:8.2f} s  {r['gb_per_s']:6.2f} GB/s "
            f"(generating alone {r['generate_median_s']:.2f} s)")
    log(f"dask BN throughput 2 workers / 1 worker = {res['ratio_2_over_1']:.2f}")
    return res


def markdown(res: dict[str, Any]) -> list[str]:
    """The report's section for this case."""
    out = [f"## Dask batch norm beyond one worker ({ID})", ""]
    if res.get("status") != "ok":
        return out + [f"{res.get('status')}", ""]
    n, c, rows = res["size"]
    out += [f"Synchronized BN (`persist_statistics`: one-pass statistics, then the normalized "
            f"output's sum) of a ({n}, {c}) float32 input ({res['bytes'] / 2**20:.0f} MiB, chunks "
            f"of {rows} rows) generated on the workers; sums "
            f"{'agree' if res['sums_agree'] else '**disagree**'} across runs; load average at "
            f"the end {res['loadavg']} on {res['cpus']} CPUs.", "",
            "| executor | median s | GB/s | generating alone s |", "|---|---|---|---|"]
    for label, r in res["runs"].items():
        out.append(f"| {label} | {r['median_s']:.2f} | {r['gb_per_s']:.2f} | "
                   f"{r['generate_median_s']:.2f} |")
    return out + ["", f"Throughput with 2 workers over 1 worker: **{res['ratio_2_over_1']:.2f}**.", ""]
