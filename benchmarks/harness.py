"""The benchmark run: every selected case on every selected backend, timed interleaved, with
the machine's copy bandwidth, peak memory and an output check; then table, JSON, Markdown, PNG.
"""

from __future__ import annotations

import gc
import json
import os
import statistics
import sys
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np

from . import allocator, dask_norm, machine, report, sweep, timing
from .cases import BACKENDS, CASES, MODEL_FAMILIES, Absent, Backend, Case, make_inputs, size_sweep

__all__ = ["run", "select"]

# repeats, warm-ups and the shortest sample (s): a full run is ~10 min on 2 cores
FULL = {"repeats": 9, "warmup": 1, "min_sample_s": 0.05}
QUICK = {"repeats": 3, "warmup": 1, "min_sample_s": 0.01}

#: idle pause before each timed sample (timing.interleaved): cases that call BLAS (OpenBLAS's
#: threads spin ~0.1 s after a call) and the others (GNU OpenMP's, PyTorch's, a few ms).
#: Measured 2026-12-02 without it, OpenBLAS at its defaults: PyTorch's deep-stack forward
#: 23 ms alone, 109 ms (median) interleaved with arraynorm's matrix products.
SETTLE_S = {"blas": 0.15, "other": 0.02}
_BLAS_FAMILIES = MODEL_FAMILIES + ("wn", "sn", "iternorm", "conv", "cnn")

#: what a case's agreement check means where it is not rounding-sized
_CHECK_NOTES = {"stack": " (a BN stack amplifies rounding ~1.2x a layer: "
                         "examples/deep_stack_rounding.py)"}


def select(items: Sequence[Any], wanted: Sequence[str] | None, what: str) -> list[Any]:
    """The items whose ``id`` is in ``wanted`` (all when ``None``), in the given order."""
    if not wanted:
        return list(items)
    ids = {it.id: it for it in items}
    bad = [w for w in wanted if w not in ids]
    if bad:
        raise SystemExit(f"unknown {what} {', '.join(bad)}; choose from {', '.join(ids)}")
    return [ids[w] for w in wanted]


def _to_numpy(a: Any) -> np.ndarray:
    if isinstance(a, (tuple, list)):
        a = a[0]
    if hasattr(a, "detach"):
        return a.detach().cpu().numpy()
    if hasattr(a, "get"):
        return a.get()
    return np.asarray(a)


def _timer(backend: Backend) -> str:
    if backend.timer != "cuda":
        return backend.timer
    try:
        import cupyx.profiler  # noqa: F401
        return "cuda"
    except Exception:
        return "cuda-torch"


def _implementations(fn: Callable[[], Any]) -> dict[str, int]:
    """Which arraynorm implementations (numba_jit, numpy_fused, portable) ``fn`` runs: their
    forward passes during one call, counted (not the selector's answers: a normalizer
    remembers its selection per input signature, so after the first call it asks no more)."""
    import arraynorm._kernels as kernels

    seen: dict[str, int] = {}
    impls = (kernels.PORTABLE, *kernels.IMPLEMENTATIONS)

    def recording(impl: Any) -> Callable[..., Any]:
        forward = impl.forward

        def run(*args: Any, **kw: Any) -> Any:
            seen[impl.name] = seen.get(impl.name, 0) + 1
            return forward(*args, **kw)
        return run

    for impl in impls:
        impl.forward = recording(impl)  # an instance attribute: shadows the class's method
    try:
        fn()
    finally:
        for impl in impls:
            vars(impl).pop("forward", None)
    return seen


def _free_gpu() -> None:
    try:
        import cupy as cp
        cp.get_default_memory_pool().free_all_blocks()
    except Exception:
        pass
    try:
        import torch
        if torch.cuda.is_available():
            torch.cuda.empty_cache()
    except Exception:
        pass


def _setup_torch() -> dict[str, Any] | None:
    try:
        import torch
    except Exception:
        return None
    n = machine.describe()["cpus_available"]
    torch.set_num_threads(n)
    return {"torch_num_threads": torch.get_num_threads()}


def _run_case(case: Case, backends: list[Backend], quick: bool, cfg: dict[str, Any],
              bw: dict[str, Any], log: Callable[[str], None]) -> dict[str, Any]:
    arrays = make_inputs(case, quick)
    main = arrays["v"] if case.family in ("wn", "sn") else arrays["x"]
    nbytes = int(main.nbytes)
    out: dict[str, Any] = {"title": case.title(quick), "family": case.family,
                           "shape": list(case.shape(quick)), "dtype": "float32", "input_bytes": nbytes,
                           "bandwidth_target": case.bandwidth_target, "backends": {}}
    impls = {}
    for b in backends:
        try:
            impls[b.id] = b.prepare(case, arrays, quick)
        except Absent as e:
            out["backends"][b.id] = {"status": f"absent: {e}"}
    # outputs agree? (the forward of every backend against the first available one); a
    # forward+backward too, so that a backend that fails is reported before the timing
    ref = None
    for bid, impl in list(impls.items()):
        try:
            y = _to_numpy(impl.fwd())
            impl.fwdbwd()
        except Exception as e:  # a peer that fails is reported, the run goes on
            out["backends"][bid] = {"status": f"error: {type(e).__name__}: {e}"[:200]}
            del impls[bid]
            continue
        if ref is None:
            ref, ref_id = y, bid
        out["backends"][bid] = {"status": "ok", "check": "reference" if bid == ref_id else
                                f"max|y-{ref_id}|={float(np.max(np.abs(y.astype(np.float64) - ref))):.1e}"
                                + _CHECK_NOTES.get(case.family, "")}
    for bid, impl in impls.items():
        if bid.startswith("arraynorm"):
            out["backends"][bid]["implementations"] = _implementations(impl.fwdbwd)
    # a whole model's time is matrix products and many passes: no bandwidth figure for it
    moved = None if case.family in MODEL_FAMILIES else {"fwd": 2 * nbytes, "fwdbwd": 5 * nbytes}
    bdev = {b.id: b for b in backends}
    for mode in report.MODES:
        fns = {bid: (getattr(impl, mode), _timer(bdev[bid])) for bid, impl in impls.items()}
        settle = SETTLE_S["blas" if case.family in _BLAS_FAMILIES else "other"]
        timed = timing.interleaved(fns, repeats=cfg["repeats"], warmup=cfg["warmup"],
                                   min_sample_s=cfg["min_sample_s"],
                                   settle_s=0.0 if quick else settle)
        for bid, t in timed.items():
            ref_bw = bw["gpu"] if bdev[bid].device == "gpu" else bw["cpu"]
            gbps = None if moved is None else moved[mode] / t.median / 1e9
            out["backends"][bid][mode] = {
                "median_s": t.median, "min_s": t.min, "samples_s": t.samples, "inner": t.inner,
                "minor_faults_per_call": statistics.median(t.faults) if t.faults else None,
                "bytes_moved": None if moved is None else moved[mode], "gbps": gbps,
                "copy_share": gbps / ref_bw["gbps"] if ref_bw and gbps is not None else None}
    for bid, impl in impls.items():
        peak = timing.peak_memory(impl.fwdbwd, bdev[bid].memory) if bdev[bid].memory else None
        out["backends"][bid]["peak_bytes"] = peak
        out["backends"][bid]["peak_over_input"] = None if peak is None else peak / nbytes
    for bid in [b.id for b in backends]:
        log(report.format_row(out["title"], bid, out["backends"][bid]))
    del impls, arrays
    gc.collect()
    _free_gpu()
    return out


def _progress(items: Sequence[Any]) -> Any:
    """Cases with a progress bar on stderr (the full run takes minutes); tqdm shows it only on
    a terminal (``disable=None``), so logs and CI output stay clean."""
    try:
        from tqdm.auto import tqdm
    except ImportError:  # tqdm is in the bench extra; without it, no bar
        return items
    return tqdm(items, desc="benchmark cases", unit="case", leave=False, disable=None,
                file=sys.stderr)


def default_out_dir() -> str:
    """Where results go by default, always under the current directory: ``benchmarks/results``
    in a checkout of the repository (where the committed results live), ``benchmark-results``
    anywhere else (an installed package never writes into site-packages)."""
    if os.path.isfile(os.path.join("benchmarks", "harness.py")):
        return os.path.join("benchmarks", "results")
    return "benchmark-results"


def run(*, cases: Sequence[str] | None = None, backends: Sequence[str] | None = None,
        quick: bool = False, repeats: int | None = None, out_dir: str | None = None,
        plot: bool = True, log: Callable[[str], None] = print, sizes: bool = False,
        jit: bool = True, pin_malloc: bool = True) -> dict[str, Any]:
    """Run the benchmarks; write ``<date>-<machine>[-quick][-nojit].{json,md,png}`` into
    ``out_dir`` (default :func:`default_out_dir`) and return the results dictionary.

    ``sizes``: every normalization case also at smaller sizes (:func:`.cases.size_sweep`).
    ``jit=False``: arraynorm without its numba implementation (``ARRAYNORM_JIT=0``, as if the
    ``[jit]`` extra were not installed; it must be set before arraynorm first loads numba, so
    a process that already ran the JIT keeps it and says so in the settings).
    ``pin_malloc``: fix glibc's mmap and trim thresholds first (:mod:`.allocator`), so that
    no library's outputs page-fault by the luck of what ran before it; False leaves them
    moving. Either way the settings say which, and every CPU timing its page faults per call."""
    malloc_note = allocator.pin() if pin_malloc else "allocator defaults (--malloc-default)"
    if not jit:
        os.environ["ARRAYNORM_JIT"] = "0"
    cfg = dict(QUICK if quick else FULL)
    if repeats is not None:
        cfg["repeats"] = int(repeats)
    # the Dask sweep is its own section (a study's sweep, not an array op): run with the
    # rest, or alone with --cases dask-sweep
    run_sweep = not cases or sweep.ID in cases
    run_dask_norm = not cases or dask_norm.ID in cases  # likewise: clusters, not a backend
    op_cases = [c for c in cases or () if c not in (sweep.ID, dask_norm.ID)]
    sel_cases = [] if cases and not op_cases else select(CASES, op_cases, "case")
    if sizes:
        sel_cases = size_sweep(sel_cases, quick)
    sel_backends = select(BACKENDS, backends, "backend")
    torch_info = _setup_torch() if any(b.id.startswith("torch") for b in sel_backends) else None
    import arraynorm as an
    from arraynorm._kernels import fast_path_threads, numba_jit

    settings = {"quick": quick, **cfg, "arraynorm_fast_paths": an.fast_paths_enabled(),
                "arraynorm_threads": fast_path_threads(), **(torch_info or {}),
                "openblas": _openblas_note(), "malloc": malloc_note, "settle_s": None if quick else SETTLE_S,
                "wake_call": True, "buffer_pool_bytes": an.buffer_pool_info()["limit"],
                "jit": numba_jit.available(),
                "numba_cache_dir": os.environ.get("NUMBA_CACHE_DIR", "numba default")}
    info = machine.describe()
    log(f"arraynorm benchmarks on {info['cpu']} ({info['cpus_available']} CPUs), "
        f"GPU: {info['gpu']['name'] if info['gpu'] else 'none'}; load {info['loadavg_1_5_15']}")
    log(f"settings: {settings}")
    bw = {"cpu": timing.copy_bandwidth_cpu(64 * 2**20 if quick else 256 * 2**20), "gpu": timing.copy_bandwidth_gpu()}
    log(f"copy bandwidth: CPU {bw['cpu']['gbps']:.1f} GB/s"
        + (f", GPU {bw['gpu']['gbps']:.0f} GB/s" if bw["gpu"] else ", GPU: none"))
    status = {}
    for b in sel_backends:
        try:
            b.check()
            status[b.id] = "ok"
        except Absent as e:
            status[b.id] = f"absent: {e}"
            log(f"{b.id}: {status[b.id]}")
    usable = [b for b in sel_backends if status[b.id] == "ok"]
    res: dict[str, Any] = {
        "machine": info, "settings": settings, "bandwidth": bw,
        "backends": {b.id: {"device": b.device, "description": b.description, "status": status[b.id]}
                     for b in sel_backends},
        "cases": {}}
    log(report.header())
    for case in _progress(sel_cases):
        c = _run_case(case, usable, quick, cfg, bw, log)
        for b in sel_backends:
            if status[b.id] != "ok":
                c["backends"][b.id] = {"status": status[b.id]}
        res["cases"][case.id] = c
    if run_sweep:
        res["sweeps"] = {sweep.ID: sweep.run(quick, min(cfg["repeats"], sweep.MAX_REPEATS), log)}
    if run_dask_norm:
        res["dask"] = {dask_norm.ID: dask_norm.run(quick, min(cfg["repeats"], dask_norm.MAX_REPEATS),
                                                   log)}
    res["loadavg_end"] = [round(v, 2) for v in os.getloadavg()]
    # first call of each compiled loop and dtype: numba's compile (cold cache) or cache load
    res["jit_first_call_s"] = dict(numba_jit.COMPILE_SECONDS)
    if res["jit_first_call_s"]:
        log("JIT first calls (compile on a cold cache, load on a warm one): "
            + ", ".join(f"{k} {v:.2f} s" for k, v in res["jit_first_call_s"].items())
            + f"; total {sum(res['jit_first_call_s'].values()):.1f} s")
    # the targets are stated for the full sizes (memory-bound arrays, the cases): a
    # quick run's small arrays sit in cache and say nothing about them, so it judges none
    res["targets"] = [] if quick else report.targets(res)
    if quick:
        log("targets: not judged on quick sizes (they apply to the full run)")
    for t in res["targets"]:
        log(f"target {t['title']}: {t['target']} = {t['ratio']:.2f} (limit {t['limit']:.2f}) "
            f"{'met' if t['met'] else 'NOT met'}")
    round2 = report.round2_targets(res)  # the note lists them too (computed from the medians)
    if round2:
        log(f"issue 13 targets: {sum(t['met'] for t in round2)} of {len(round2)} met; not met: "
            + "; ".join(f"{t['title']} {t['target']} {t['ratio']:.2f}" for t in round2 if not t["met"]))
    out_dir = out_dir or default_out_dir()
    os.makedirs(out_dir, exist_ok=True)
    stem = os.path.join(out_dir, machine.slug(info) + ("-quick" if quick else "")
                        + ("" if settings["jit"] else "-nojit") + ("-sizes" if sizes else ""))
    with open(stem + ".json", "w") as f:
        json.dump(res, f, indent=1, default=_json_default, allow_nan=False)
    with open(stem + ".md", "w") as f:
        f.write(report.markdown(res))
    written = [stem + ".json", stem + ".md"]
    if plot and res["cases"]:
        try:
            report.plot(res, stem + ".png")
            written.append(stem + ".png")
        except ImportError as e:
            log(f"no chart: {e}")
    res["files"] = written
    log("wrote " + ", ".join(written))
    return res


def _openblas_note() -> str:
    from . import OPENBLAS_NOTE

    return OPENBLAS_NOTE


def _json_default(o: Any) -> Any:
    if isinstance(o, (np.floating, np.integer)):
        return o.item()
    return str(o)


if __name__ == "__main__":  # pragma: no cover
    sys.exit("run: python -m benchmarks")
