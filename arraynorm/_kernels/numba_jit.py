"""numba JIT implementation of :class:`arraynorm.Normalizer` with the standardize or RMS
operation, for NumPy float32/float64 input (the optional extra ``pip install arraynorm[jit]``).

The layout is cut as the NumPy fast path cuts it (:func:`._plan.plan`: the input seen as
``(M, *fine)``, axes merged where neighbours agree on being reduced and on carrying γ/β),
then mapped onto one of two compiled geometries (:mod:`._numba_loops`):

* **rows** — every ``fine`` axis reduced, at most two of them (LN and RMS over trailing
  axes, IN, GN): ``x: (M, A, C)``, one statistic per contiguous row. Forward: one read of
  the row from memory, then in cache the shifted mean, Σ(x − μ)² (two-pass, as the precision
  rule of DESIGN.md §3.3 asks) and the output — 1 read + 1 write per element. Backward:
  Σg and Σg·ŷ, then dx, γ/β cotangents in per-task float64 rows — 2 reads + 1 write.
* **channels** — ``fine`` is (reduced, kept) or (reduced, kept, reduced) and γ is constant
  over each statistic (BN on (N, C) and NCHW, ghost BN): ``x: (M, R1, K, R2)``. Blocks of
  ~256 KiB (rows of r1 × a span of channels) give their mean and M2 in cache (two passes;
  one for float32 data, with the rows geometry's cancellation test);
  the blocks are merged in float64 (Chan, Golub & LeVeque: M2 = Σ M2_b + Σ n_b (μ_b − μ)²),
  every block mean relative to the statistic's first value, so the merge adds O(spread)
  numbers whatever the offset; then one sweep writes y — 2 reads + 1 write, the least a
  statistic over the whole batch allows. Backward: Σdy, Σdy·(x − μ) per block, then dx —
  4 reads + 1 write.

Per-unit weight normalization (w = g·v/‖v‖ along axis 0, ``arraynorm.weight_norm``'s direct
path) is not a normalizer: :func:`unit_scale` and :func:`unit_scale_backward` run its two
loops on v seen as (units, fan-in), one row per task, for float32/float64 v of at least
:data:`MIN_BYTES` — 1 read + 1 write forward, 2 reads + 1 write backward.

Numerics are the portable path's formulas (shifted two-pass moments, rstd = 1/sqrt(σ² +
eps) without forming σ² where it would overflow, ŷ = (x − μ)·rstd, y = ŷ·γ + β, the closed
form backward of :mod:`arraynorm.operation.standardize`), with every sum and every
per-element product in float64 — float32 squares cannot overflow there, float64 sums of
squares outside [2⁻⁹⁰⁰, inf) are redone on values scaled by a power of two — so the results
agree with the portable path to rounding. The mean is kept as shift + μ_s in float64; the
context's ``state.mean`` is its compute-dtype rounding with the remainder kept, as
:mod:`.numpy_fused` does, for the portable JVP (``ctx.yhat``, ``state.y`` are formed from
the kept input on first access). Like PyTorch and :mod:`.numpy_fused`, the forward keeps a
reference to the input, not a copy of ŷ.

Compilation: ``cache=True`` (compiled once per machine and numba version, in
``__pycache__`` next to :mod:`._numba_loops` or, where that is read-only, in
``NUMBA_CACHE_DIR`` or the user's cache; with nowhere writable it compiles once per process).
Twelve loops (and the serial twins of the parallel ones) × two dtypes;
:data:`COMPILE_SECONDS` records the first-call compile/load times.
Parallel loops use ``numba.prange`` with :func:`arraynorm._kernels.fast_path_threads`
threads (``ARRAYNORM_THREADS`` / ``set_fast_paths(threads=)``).

Selection rule (:meth:`NumbaJit.supports`): numba importable and ``ARRAYNORM_JIT`` not
``0``; plain ``numpy.ndarray`` float32/float64 input of at least :data:`MIN_BYTES` (128 KiB),
or of any size for a normalizer marked ``repeated`` (the layers of :mod:`arraynorm.nn`);
parameters NumPy arrays or absent; the standardize or RMS operation with the affine,
conditional-affine or no recovery; a layout of the rows geometry with rows of at most
:data:`MAX_ROW_BYTES` (longer rows leave the cache between sweeps; :mod:`.numpy_fused` cuts
them into chunks) or of the channels geometry. float16, the other layouts (γ varying over a
statistic that spans a kept axis: position norm, LN over non-adjacent axes with γ) and
smaller inputs go to :mod:`.numpy_fused` or the portable path. Loops run in one thread (their
serial twins) below
:data:`PARALLEL_MIN_BYTES`.

Measured for that rule (2-core EPYC shared with two other jobs; float32 forward+backward,
medians of 5–40 interleaved repeats, JIT time / ``numpy_fused`` time, both forced at every
size). On one thread each (the comparison the load disturbs least): LN 0.1–32 MiB 0.58–
0.96 (LN 2048×4096: 0.31–0.41 in quieter runs on two), BN (N, C) 2–16 MiB 0.44–0.76, BN
NCHW 12 MiB 0.57–0.72, IN/GN 12 MiB 0.60–0.63. On two threads the machine's load decides:
with the other core busy every parallel region lasts a scheduler time slice (8.0 ms per
loop measured for BN 4096×1024 against 1.4 ms on one thread), and the same case measured
0.40 in one run and 1.09–1.46 in five others; LN 8192×1024 0.59–0.72, RMS 0.90–0.96, BN NCHW
49 MiB 0.38–0.78, IN 0.62–0.76, GN 0.28–0.65 in two runs with ``OPENBLAS_THREAD_TIMEOUT=4``
(as ``python -m benchmarks`` sets: spinning OpenBLAS threads from a NumPy call just before
otherwise hold the cores the numba threads wait for). Against the portable path the JIT
measured 0.09–0.88 from 128 KiB up. The losses seen are therefore load, not the loops; the
full benchmark on an idle machine (``python -m benchmarks --sizes`` with and without
``--no-jit``) is the check of this rule.
"""

from __future__ import annotations

import contextlib
import ctypes
import dataclasses
import importlib.util
import math
import os
import sys
import threading
import time
from collections.abc import Iterator
from types import ModuleType
from typing import Any

import numpy as np

from .._context import Grads, NormContext, Stages
from .._typing import Array, Namespace
from ..operation import RMSScale, StandardizeState
from ..partition import Layout
from . import _buffers
from ._plan import Plan, plan
from ._switches import fast_path_threads, fast_paths_enabled
from .numpy_fused import _finish_param, _param, fusable_stages
from .portable import PORTABLE

__all__ = ["NumbaJit", "NUMBA_JIT", "MIN_BYTES", "MAX_ROW_BYTES", "BLOCK_ELEMS",
           "COMPILE_SECONDS", "PARALLEL_MIN_BYTES", "available", "unit_scale",
           "unit_scale_backward", "RELU_MIN_BYTES", "relu", "relu_backward", "SOFTMAX_MIN_BYTES",
           "softmax", "softmax_backward"]

#: smaller inputs (bytes) are left to the other implementations. Not for speed: with the
#: per-call cost cut (2026-12-02) the loops beat the portable path at every size measured,
#: 512 B to 128 KiB (forward+backward, float32, one thread: BN 177 vs 285 µs at 8×16, 214 vs
#: 308 at 64×256; LN 124 vs 195, 153 vs 311). But taking them costs every process that
#: normalizes anything numba's import and the cached loops' load (measured +1.5 s: 0.95 →
#: 2.48 s for a script normalizing two tiny arrays), which short scripts, CLI runs, Dask
#: workers and the test suite's subprocesses pay, while the deep-stack benchmark (64 KiB
#: layers) did not move beyond the run-to-run spread (1.67× PyTorch with them on the JIT,
#: 1.55× without). A normalizer marked ``repeated`` (the ``nn`` layers) repays the load and
#: takes the loops at every size: measured 2026-12-02 on a 2-core Xeon, once ReLU no longer
#: took 100 µs a layer, ``deep_stack(200, 256, norm="batch")`` forward+backward at batch 64
#: 120 → 97 ms (LN 114 → 86), while a script normalizing two (8, 16) arrays took 0.34 → 0.77 s
MIN_BYTES = 128 << 10

#: longest row (bytes of the input dtype) the rows geometry takes: three sweeps over a row
#: must find it in cache
MAX_ROW_BYTES = 1 << 20

#: smaller inputs run the loops in one thread: a parallel region costs ~10 µs on an idle
#: machine and milliseconds when a core is busy elsewhere (measured: LN 256×1024 float32
#: forward+backward 0.9 ms on one thread, 10 ms on two with the machine loaded). Lowered from
#: 4 MiB once the per-call cost was cut (2026-12-02, idle 2-core machine, float32
#: forward+backward, one thread → two, min of 9): GN 1×256×56×56 (3 MiB) 1.48 → 0.75 ms,
#: BN 256×1024 0.79 → 0.55, BN 1×64×56×56 0.39 → 0.30, LN 64×4096 0.51 → 0.38, RMS 64×4096
#: 0.54 → 0.39; LN 256×1024 0.49 → 0.53 (256 rows of 4 KiB: the launch is not repaid)
PARALLEL_MIN_BYTES = 512 << 10

#: elements of one block of the channels geometry (float64 accumulators: 256 KiB of float32)
BLOCK_ELEMS = 1 << 16

#: first-call seconds per compiled loop and dtype: numba's compile (cold cache) or cache load
COMPILE_SECONDS: dict[str, float] = {}

_FLOATS = (np.dtype(np.float32), np.dtype(np.float64))
_GEOMETRIES: dict[tuple[Any, ...], tuple[Layout, Any]] = {}
_NO_BLOCKS = 1 << 62  # plan() with blocks larger than any input: only its axis merging is used
#: how long numba's GNU OpenMP workers spin after a parallel loop before they sleep, in
#: libgomp's spin iterations (``GOMP_SPINCOUNT``; each a ``pause`` instruction), given to
#: libgomp as it loads — at the first parallel launch — unless ``GOMP_SPINCOUNT`` or
#: ``OMP_WAIT_POLICY`` is set (then the user's choice stands). libgomp's own default, 300000,
#: keeps a worker busy on a core long after the loop (milliseconds): OpenBLAS's
#: threads then share that core for the next matrix product, which in turn holds up the next
#: loop's worker (the transformer block, 2 cores: LN's backward loop 0.6 ms alone, 6 ms
#: between the block's products). Measured 2026-12-03 on that machine (float32
#: forward+backward, medians; three alternating runs of libgomp's default and 10000):
#: TransformerEncoderBlock(256, 4, 1024) on (32, 128, 256) 148–150 → 134–140 ms; LN, BN and
#: RMS of 1–16 MiB alone unchanged within the runs' ±10% spread (LN 256×1024 215–229 µs,
#: LN 4096×1024 2.55–2.99 ms for 10000, 30000 and 300000 alike; 30000: transformer 132–135).
#: 1000 is too short (LN 256×1024 427 µs: the workers fall asleep between a forward's and a
#: backward's loop, and waking them costs more than the loop), as is no spinning at all
#: (``OMP_WAIT_POLICY=passive``: 446 µs); 100000 helps the transformer less (138 ms).
OMP_SPIN_COUNT = 10_000

_launch_lock = threading.Lock()
_serialize: bool | None = None   # None until the first parallel loop ran (then: is the layer workqueue)
_serial_only = False  # in a child forked after a parallel launch under GNU OpenMP
_loops_module: ModuleType | None = None
_loops_failed = False


def _loops() -> ModuleType | None:
    """The compiled loops, imported on first use (imports numba); ``None`` when numba is not
    installed or ``ARRAYNORM_JIT=0``."""
    global _loops_module, _loops_failed
    if _loops_module is None and not _loops_failed:
        if os.environ.get("ARRAYNORM_JIT", "1").strip().lower() in ("0", "false", "no", "off"):
            _loops_failed = True
            return None
        try:
            # function-level: numba is an optional, heavy dependency (import arraynorm stays
            # light and works without it)
            from . import _numba_loops
        except ImportError:
            _loops_failed = True
            return None
        # numba's default threading layer is GNU OpenMP where libgomp exists (3x lower launch
        # cost than its workqueue layer: 93 vs 325 us per LN forward+backward at 8x16), and a
        # process that has launched it terminates its forked children when they launch it
        # too ("fork() called from a process already using GNU OpenMP"): process pools, which
        # the analysis studies use, would die. So a child forked after a parallel launch
        # under a fork-unsafe layer runs only the loops' serial twins, which never start a
        # threading layer (_after_fork_in_child); so do inputs below PARALLEL_MIN_BYTES
        # everywhere, so a parent and its children compute small inputs with the same code.
        os.register_at_fork(after_in_child=_after_fork_in_child)
        _loops_module = _numba_loops
    return None if _loops_failed else _loops_module


def _extreme(rstd: np.ndarray) -> bool:
    """Whether rstd² leaves float64's range somewhere (a float64 spread beyond 2^±480): the
    loops' backward is compiled with reassociation, which may form rstd² (measured: dx off by
    up to 100% at 2^600, inf at 2^-600), so such inputs take the portable backward, which
    never does. float32 data cannot get there (|rstd| ≤ 1e45)."""
    return bool(rstd.size) and not (float(rstd.max()) < 2.0 ** 480 and float(rstd.min()) > 2.0 ** -480)


def _after_fork_in_child() -> None:
    global _serial_only, _launch_lock
    # a lock another thread held at the fork (a first call compiling) stays held in the child
    _launch_lock = threading.Lock()
    if _serialize is None:
        return  # no parallel loop has run in the parent: the child may start any layer itself
    import numba  # function-level: optional dependency, imported by _loops() before any launch
    if numba.threading_layer() not in ("tbb", "workqueue"):
        _serial_only = True  # from now on in this child: the serial twins only


def available() -> bool:
    """Whether the JIT can run here (numba importable, ``ARRAYNORM_JIT`` not ``0``)."""
    return _loops() is not None


#: how many leading arguments of each loop are the user's arrays (x, dy): passed as
#: read-only views, so a read-only input does not compile another signature; every other
#: array argument is one this module allocated (writable)
_USER_INPUTS = {"rows_forward": 1, "rows_backward": 2, "channels_stats": 1, "channels_apply": 1,
                "channels_grad_sums": 2, "channels_grad_apply": 2, "unit_scale_forward": 2,
                "unit_scale_backward": 3, "relu_backward": 2, "softmax_rows": 1,
                "softmax_backward_rows": 2}
_first_calls: set[tuple[str, str]] = set()
_NO_F32 = np.zeros(1, np.float32)  # rows_forward's float32 γ/β for float64 data (not read)
_thread_counts = threading.local()  # the count this thread last gave numba.set_num_threads


def _read_only(a: np.ndarray) -> np.ndarray:
    v: np.ndarray = a.view()
    v.flags.writeable = False
    return v


def _threads(x: np.ndarray) -> int:
    """Threads for a loop over ``x``: arraynorm's (:func:`fast_path_threads`, capped by numba's
    pool); one (the serial twin) below :data:`PARALLEL_MIN_BYTES` and in a child forked after
    a parallel launch under GNU OpenMP."""
    import numba  # function-level: optional dependency, already imported by _loops()

    if x.nbytes < PARALLEL_MIN_BYTES or _serial_only:
        return 1
    return max(1, min(fast_path_threads(), int(numba.config.NUMBA_NUM_THREADS)))


def _call(loops: ModuleType, name: str, n: int, *args: Any) -> None:
    """Run a compiled loop with ``n`` threads (the caller's :func:`_threads`, asked once per
    forward or backward), timing the first call per signature (compile or cache load) into
    :data:`COMPILE_SECONDS`. Kept lean: it runs 2–4 times per forward+backward (a dtype's
    str() alone costs 5 µs)."""
    import numba  # function-level: optional dependency, already imported by _loops()

    k = _USER_INPUTS[name]
    args = (*map(_read_only, args[:k]), *args[k:])
    if n == 1:  # the serial twin: no threading layer, no launch, no lock
        _timed(loops.SERIAL[name], name + "_serial", args)
        return
    # numba's workqueue threading layer (chosen where neither TBB nor OpenMP is available)
    # aborts the process when two threads run parallel loops at once: calls are serialized
    # until the first one shows which layer numba picked, and for good under workqueue
    global _serialize
    with _launch_lock if _serialize is not False else contextlib.nullcontext():
        first = _serialize is None
        if getattr(_thread_counts, "n", None) != n:  # numba's setting is per thread, 2 µs a call
            # the first one loads numba's threading layer (libgomp): only that moment gets
            # the spin count and the binding, not the loop's compilation (seconds on a cold
            # cache)
            with _first_launch() if first else contextlib.nullcontext():
                numba.set_num_threads(n)
            _thread_counts.n = n
        _timed(getattr(loops, name), name, args)
        if first:
            _serialize = numba.threading_layer() == "workqueue"


@contextlib.contextmanager
def _first_launch() -> Iterator[None]:
    """What numba's threading layer finds as it loads: :func:`_omp_spin_count`, and its
    OpenMP library (``numba.np.ufunc.omppool``) loaded beforehand with ``RTLD_DEEPBIND``
    where :func:`_deep_bind` asks for it — loaded once, the later import finds it bound."""
    with _omp_spin_count():
        if _deep_bind():
            spec = importlib.util.find_spec("numba.np.ufunc.omppool")
            if spec is not None and spec.origin:
                try:
                    ctypes.CDLL(spec.origin, mode=os.RTLD_NOW | os.RTLD_DEEPBIND)
                except OSError:  # numba then loads it the usual way, as before
                    pass
        yield


def _deep_bind() -> bool:
    """Whether numba's OpenMP layer should be loaded with ``RTLD_DEEPBIND``: on Linux, where
    a GNU OpenMP runtime's symbols are in the process's global scope already and
    ``LD_PRELOAD`` is not set.

    PyTorch's wheel brings its own libgomp and loads it, globally, at ``import torch``.
    numba's layer (``omppool``) links the system's ``libgomp.so.1.0.0``, which the loader
    then maps as well, but resolves the ``GOMP_*``/``omp_*`` symbols in the global scope
    first: numba's loops ran on PyTorch's copy, whose settings were read at import — without
    :data:`OMP_SPIN_COUNT` — and numba set that runtime's nesting levels for PyTorch's threads
    too. Bound deep, the layer takes the symbols of the libgomp it links, loaded then with
    the spin count, and PyTorch keeps its own runtime. (Where the global one is the system's
    libgomp itself, the layer binds to that same library either way.) Measured 2026-12-03
    (2-core AMD EPYC, ``import torch`` first, TransformerEncoderBlock(256, 4, 1024) on
    (32, 128, 256) float32, forward medians of 9 after 0.15 s pauses, two runs each):
    arraynorm 80.6–84.0 ms bound as before, 54.5–57.7 ms bound deep; PyTorch's block in the
    same processes 50.7–60.8 and 48.6–54.7 ms. (With arraynorm's loops started first,
    PyTorch imported after maps no copy of its own and shares numba's runtime, nesting levels
    included: its Transformer block measured 3× slower that way, 517–641 against 163–208 ms
    forward+backward. Import torch before the first compiled loop runs.) Not where
    ``LD_PRELOAD`` interposes symbols (a preloaded allocator, a sanitizer): a deep-bound
    library would skip it."""
    if not sys.platform.startswith("linux") or not hasattr(os, "RTLD_DEEPBIND") or os.environ.get("LD_PRELOAD"):
        return False
    try:
        return hasattr(ctypes.CDLL(None), "GOMP_parallel")
    except OSError:  # pragma: no cover - dlopen(NULL) does not fail on glibc
        return False


@contextlib.contextmanager
def _omp_spin_count() -> Iterator[None]:
    """``GOMP_SPINCOUNT`` = :data:`OMP_SPIN_COUNT` in the environment while numba's threading
    layer loads (libgomp reads it once, as it is loaded), then the environment as it was, so
    that child processes do not inherit it. Nothing is changed where the user set
    ``GOMP_SPINCOUNT`` or ``OMP_WAIT_POLICY``; it has no effect where the libgomp numba links
    was loaded before (by any library linking it) or numba's layer is not GNU OpenMP (TBB,
    workqueue, or Intel/LLVM OpenMP, which ignore the variable)."""
    if "GOMP_SPINCOUNT" in os.environ or "OMP_WAIT_POLICY" in os.environ:
        yield
        return
    os.environ["GOMP_SPINCOUNT"] = str(OMP_SPIN_COUNT)
    try:
        yield
    finally:
        os.environ.pop("GOMP_SPINCOUNT", None)


def _timed(fn: Any, name: str, args: tuple[Any, ...]) -> None:
    """``fn(*args)``, the first call per loop and dtype timed into :data:`COMPILE_SECONDS`."""
    if (name, args[0].dtype.char) in _first_calls:
        fn(*args)
        return
    t0 = time.perf_counter()
    fn(*args)
    COMPILE_SECONDS[f"{name}[{args[0].dtype}]"] = time.perf_counter() - t0
    _first_calls.add((name, args[0].dtype.char))


# geometry ------------------------------------------------------------------------------------

@dataclasses.dataclass(frozen=True)
class _Geometry:
    kind: str                       # "rows" or "channels"
    dims: tuple[int, ...]           # (M, A, C) or (M, R1, K, R2)
    strides: tuple[int, int, int]   # rows: γ index m·sm + a·sa + c·sc
    n: int                          # elements per statistic
    plan: Plan


def _geometry(p: Plan, itemsize: int) -> _Geometry | None:
    fine, red, pf = p.fine, p.red, p.pfine
    M, P = p.rows, math.prod(pf)
    if all(red) and len(fine) <= 2:
        if p.n * itemsize > MAX_ROW_BYTES:
            return None
        sm = P if any(p.lead_par) else 0
        if len(fine) == 1:
            return _Geometry("rows", (M, 1, fine[0]), (sm, 0, int(pf[0] > 1)), p.n, p)
        return _Geometry("rows", (M, fine[0], fine[1]),
                         (sm, pf[1] if pf[0] > 1 else 0, int(pf[1] > 1)), p.n, p)
    if (red == (True, False) and pf[0] == 1) or (red == (True, False, True) and pf[0] == pf[2] == 1):
        R2 = fine[2] if len(fine) == 3 else 1
        return _Geometry("channels", (M, fine[0], fine[1], R2), (0, 0, 0), p.n, p)
    return None


def _flat(g: _Geometry) -> tuple[int, int]:
    """The 2-D shape the loops see: (M, A·C) rows, or (M·R1, K·R2) for channels."""
    d = g.dims
    return (d[0], d[1] * d[2]) if g.kind == "rows" else (d[0] * d[1], d[2] * d[3])


def _channel_blocks(g: _Geometry) -> tuple[int, int, int]:
    """(kspan, b, nrb): channels per block, rows of r1 per block, blocks along r1."""
    _, R1, K, R2 = g.dims
    kspan = min(K, max(1, BLOCK_ELEMS // R2))
    b = max(1, BLOCK_ELEMS // (kspan * R2))
    return kspan, b, -(-R1 // b)


def _rows_params(g: _Geometry, weight: Any, bias: Any) -> tuple[np.ndarray, np.ndarray, tuple[int, int, int]]:
    """γ and β flat in float64 (ones/zeros where absent) and their strides."""
    if weight is None and bias is None:
        return np.ones(1), np.zeros(1), (0, 0, 0)
    if any(g.plan.lead_par):  # γ varies with the row (GN, IN): spelled out per row
        f64 = np.dtype(np.float64)
        W, B = _param(g.plan, weight, f64), _param(g.plan, bias, f64)
    else:  # LN, RMS: γ's own C order is the flat order the loops index (_param's, without
        # its reshapes: 2 µs a forward)
        W = None if weight is None else np.asarray(weight, np.float64).ravel()
        B = None if bias is None else np.asarray(bias, np.float64).ravel()
    size = (W if W is not None else B).size  # type: ignore[union-attr]
    Wf = np.ones(size) if W is None else W.ravel()
    Bf = np.zeros(size) if B is None else B.ravel()
    return Wf, Bf, g.strides


def _channel_params(g: _Geometry, a: Any, fill: float) -> np.ndarray:
    """γ or β as (1 or M, K) float64 (``fill`` where absent): one row when it does not vary
    with m (BN, ghost BN)."""
    if a is None:
        return np.full((1, g.dims[2]), fill)
    if not any(g.plan.lead_par):  # one row (BN): γ's C order is the channels' (2 µs saved)
        return np.asarray(a, np.float64).reshape(1, -1)
    pa = _param(g.plan, a, np.dtype(np.float64))
    assert pa is not None
    return pa.reshape(pa.shape[0], -1)


# forward -------------------------------------------------------------------------------------

class _Saved:
    """What the forward keeps: the input (C order), the geometry, the float64 statistics
    (shift, μ_s, rstd per statistic), γ as the loops read it (rows: with its strides;
    channels: with the float64 sum shift + μ_s, the offset of the combined sweeps), the layout whose
    ``param_axes`` γ/β span, and ``mean_lo`` (``layout.stats_shape``, as
    :mod:`.numpy_fused` keeps it; None for RMS: what state.mean rounds off the exact mean).
    A plain class with slots, not a frozen dataclass, whose ``__init__`` sets each field
    through ``object.__setattr__`` (1.5 µs a forward); nothing writes it after."""

    __slots__ = ("x", "geometry", "shift", "mean_s", "rstd", "params", "param_layout", "mean_lo")

    def __init__(self, x: np.ndarray, geometry: _Geometry, shift: np.ndarray,
                 mean_s: np.ndarray, rstd: np.ndarray, params: Any, param_layout: Layout,
                 mean_lo: np.ndarray | None) -> None:
        self.x, self.geometry, self.shift, self.mean_s = x, geometry, shift, mean_s
        self.rstd, self.params, self.param_layout, self.mean_lo = rstd, params, param_layout, mean_lo


def _forward(stages: Stages, xp: Namespace, layout: Layout, playout: Layout, g: _Geometry,
             x: np.ndarray, weight: Any, bias: Any, loops: ModuleType) -> tuple[np.ndarray, NormContext]:
    ct = x.dtype
    xa = np.ascontiguousarray(x)
    rms = type(stages.operation) is RMSScale
    eps = float(stages.eps)
    flat = _flat(g)
    y = _buffers.empty(flat, ct)
    xg = xa.reshape(flat)
    n = _threads(xg)
    if g.kind == "rows":
        W, B, (sm, sa, sc) = _rows_params(g, weight, bias)
        stats, sct = np.empty((5, g.dims[0])), np.empty((4, g.dims[0]), ct)
        f32 = ct == np.float32
        W32, B32 = (W.astype(np.float32), B.astype(np.float32)) if f32 else (_NO_F32, _NO_F32)
        _call(loops, "rows_forward", n, xg, g.dims[1], g.dims[2], W, B, W32, B32, sm, sa, sc, eps,
              rms, f32, y, stats, sct)
        shift, mean_s, _, rstd64, fast = stats
        params: Any = (W, W32, fast, (sm, sa, sc))
    else:
        M, R1, K, R2 = g.dims
        kspan, b, nrb = _channel_blocks(g)
        shift, part, merged = np.empty((M, K)), np.empty((3, M, nrb, K)), np.empty((4, M, K))
        sct = np.empty((4, M, K), ct)
        _call(loops, "channels_stats", n, xg, *g.dims, kspan, b, rms, ct == np.float32, shift, part)
        # serial, O(M·K·blocks); also the mean's float64 sum and its (hi, lo) split
        loops.channels_merge(part, shift, R1, R2, b, eps, ct == np.float64, merged, sct)
        mean_s, _, rstd64, total = merged
        Wk, Bk = _channel_params(g, weight, 1.0), _channel_params(g, bias, 0.0)
        comb = ct == np.float32 and R2 == 1
        _call(loops, "channels_apply", n, xg, *g.dims, total if comb else shift, mean_s,
              rstd64 * Wk, Bk, comb, y)
        params = (Wk, total)
    # the loops stored the statistics in the data dtype: (mean, remainder, σ², rstd)
    st = layout.stats_shape
    mean, mean_lo, var, rstd = sct.reshape((4, *st))
    if rms:
        mean = mean_lo = None

    def compute_y() -> np.ndarray:
        """ŷ in the view shape from the kept input (the portable backward and JVP read it)."""
        xv = xa.reshape(layout.view_shape)
        yv: np.ndarray = xv * rstd if mean is None else ((xv - mean) - mean_lo) * rstd
        return yv

    state = StandardizeState(None, mean, var, rstd, layout.reduce_axes, compute_y=compute_y)
    saved = _Saved(xa, g, shift, mean_s, rstd64, params, playout, mean_lo)
    ctx = NormContext(xp, layout, state, None, weight, bias, x.dtype, NUMBA_JIT, saved=saved,
                      compute_yhat=lambda: np.reshape(state.y, layout.shape))
    return y.reshape(layout.shape), ctx


# backward ------------------------------------------------------------------------------------

def _sum0(a: np.ndarray) -> np.ndarray:
    """``a.sum(axis=0)`` without the reduction's setup for the one or two rows the backward's
    per-task partial sums usually have: the same bits, except that a −0.0 stays −0.0 where
    NumPy's sum, which starts from +0.0, gives +0.0 (the rows' dW/dB start from +0.0 and
    cannot hold −0.0; the channels' r·Σdy·(x − μ) can, where the product underflows). The
    one-row result is a view of ``a``: the callers' arrays are fresh per call and reach the
    user only through ``_finish_param``'s copying ``astype``."""
    out: np.ndarray
    if a.shape[0] == 1:
        out = a[0]
    elif a.shape[0] == 2:
        out = a[0] + a[1]
    else:
        out = a.sum(axis=0)
    return out


def _backward(ctx: NormContext, saved: _Saved, dy: np.ndarray, rms: bool,
              loops: ModuleType) -> Grads:
    g = saved.geometry
    p = g.plan
    ct = saved.x.dtype
    flat = _flat(g)
    xg = saved.x.reshape(flat)
    dyg = np.ascontiguousarray(dy, dtype=ct).reshape(flat)
    dx = _buffers.empty(flat, ct)
    n = _threads(xg)
    if g.kind == "rows":
        W, W32, fast, (sm, sa, sc) = saved.params
        T = max(1, min(n, g.dims[0]))
        dW, dB = np.zeros((T, W.size)), np.zeros((T, W.size))
        _call(loops, "rows_backward", n, xg, dyg, g.dims[1], g.dims[2], W, W32, sm, sa, sc, saved.shift,
              saved.mean_s, saved.rstd, fast, ct == np.float32, rms, dx, dW, dB)
        acc_w, acc_b = _sum0(dW), _sum0(dB)
    else:
        M, _, K, _ = g.dims
        kspan, b, nrb = _channel_blocks(g)
        part = np.empty((2, M, nrb, K))
        _call(loops, "channels_grad_sums", n, xg, dyg, *g.dims, saved.shift, saved.mean_s, kspan, b, part)
        sdy, sdyd = part[:, :, 0] if nrb == 1 else part.sum(axis=2)
        r = saved.rstd
        mdy = np.zeros((M, K)) if rms else sdy / g.n
        comb = ct == np.float32 and g.dims[3] == 1
        Wk, total = saved.params
        _call(loops, "channels_grad_apply", n, xg, dyg, *g.dims, total if comb else saved.shift,
              saved.mean_s, r * Wk, mdy, (r * sdyd / g.n) * r, comb, dx)  # never r²: it under/overflows beyond 1e±154
        acc_w, acc_b = r * sdyd, sdy
        if not any(p.lead_par):
            acc_w, acc_b = _sum0(acc_w), _sum0(acc_b)
    pshape = saved.param_layout.param_shape
    dw = db = None
    if ctx.weight is not None:
        dw = _finish_param(p, acc_w.reshape((-1,) + p.pfine), ctx.weight, pshape)
    if ctx.bias is not None:
        db = _finish_param(p, acc_b.reshape((-1,) + p.pfine), ctx.bias, pshape)
    return dx.reshape(ctx.layout.shape), dw, db


# the implementation --------------------------------------------------------------------------

class NumbaJit:
    """The numba implementation (module docstring): standardize and RMS operations on the
    rows and channels geometries, float32/float64 NumPy input. Its forward-mode product is
    the portable formula on this implementation's statistics; a cotangent that is not a
    floating NumPy array of the output's shape takes the portable backward."""

    name = "numba_jit"

    def _geometry(self, stages: Stages, layout: Layout, x: np.ndarray, weight: Any,
                  bias: Any) -> tuple[Layout, _Geometry | None]:
        # asked twice per forward (supports, forward) and again for every layer of a model
        # with the same shapes: a memo of the pure function of these four
        key = (layout, stages.recovery.param_axes(layout), weight is not None or bias is not None,
               x.dtype.itemsize)
        got = _GEOMETRIES.get(key)
        if got is None:
            playout = dataclasses.replace(layout, param_axes=key[1])
            p = plan(playout, key[2], _NO_BLOCKS)
            got = playout, None if p is None else _geometry(p, key[3])
            if len(_GEOMETRIES) >= 512:
                _GEOMETRIES.clear()
            _GEOMETRIES[key] = got
        return got

    def supports(self, stages: Stages, xp: Namespace, layout: Layout, x: Array,
                 weight: Array | None, bias: Array | None) -> bool:
        if not fusable_stages(stages):
            return False
        if type(x) is not np.ndarray or x.dtype not in _FLOATS or x.size == 0:
            return False
        if x.nbytes < MIN_BYTES and not stages.repeated:
            return False
        if not all(p is None or type(p) is np.ndarray for p in (weight, bias)):
            return False
        if self._geometry(stages, layout, x, weight, bias)[1] is None:
            return False
        return _loops() is not None  # last: the first NumPy input asked about imports numba

    def forward(self, stages: Stages, xp: Namespace, layout: Layout, x: Array,
                weight: Array | None, bias: Array | None) -> tuple[Array, NormContext]:
        playout, g = self._geometry(stages, layout, x, weight, bias)
        loops = _loops()
        assert g is not None and loops is not None, "forward called on an input supports() refused"
        return _forward(stages, xp, layout, playout, g, x, weight, bias, loops)

    def backward(self, stages: Stages, ctx: NormContext, dy: Array) -> Grads:
        loops = _loops()
        if (loops is not None and type(dy) is np.ndarray and dy.dtype in _FLOATS + (np.dtype(np.float16),)
                and tuple(dy.shape) == tuple(ctx.layout.shape)
                and (ctx.x_dtype == np.float32 or not _extreme(ctx.saved.rstd))):
            return _backward(ctx, ctx.saved, dy, ctx.state.mean is None, loops)
        return PORTABLE.backward(stages, ctx, dy)

    def jvp(self, stages: Stages, ctx: NormContext, dx: Array | None, dweight: Array | None,
            dbias: Array | None) -> Array:
        return PORTABLE.jvp(stages, ctx, dx, dweight, dbias)


NUMBA_JIT = NumbaJit()


# per-unit weight normalization ----------------------------------------------------------------

#: the float64 sums of squares (per unit) the weight-norm loops answer for: outside, a unit of
#: zeros or float64 values whose squares leave the range, which the NumPy path redoes scaled by
#: powers of two (arraynorm.weight.per_unit._unit_norms)
_UNIT_SS_RANGE = (2.0 ** -900, 2.0 ** 900)


def unit_scale(v2: np.ndarray, g1: np.ndarray) -> tuple[np.ndarray, np.ndarray] | None:
    """Weight normalization of the rows of ``v2`` (n, m): ``(w, ss)`` with w[i] = v[i]·g[i]/‖v[i]‖
    in v2's dtype and ss[i] = ‖v[i]‖² in float64, by one compiled sweep (each row read from
    memory once, rows shared among :func:`fast_path_threads` threads from
    :data:`PARALLEL_MIN_BYTES`). ``None`` where the JIT does not answer and the caller's NumPy
    path does: numba missing or ``ARRAYNORM_JIT=0``, fast paths off, v2 not a C-contiguous
    float32/float64 array of at least :data:`MIN_BYTES`, g1 not (n,) of v2's dtype, or a sum
    of squares outside :data:`_UNIT_SS_RANGE`.

    Measured 2026-12-02 (2-core Xeon, 4096×4096 float32, forward+backward, min of 7): 61.6 ms
    on the NumPy path (BLAS row dots, then NumPy passes and a temporary), 22.2 ms here,
    PyTorch's ``_weight_norm`` with autograd 34–37 ms. The loops alone run at the copy
    bandwidth (forward 4.6 ms against 5.0 for ``np.copyto`` of v); a fresh 64 MiB output costs
    ~5 ms more in page faults, as it does PyTorch, which w and dv avoid by coming from the
    output pool (:mod:`._buffers`; 2026-12-03 full run: 14.2 ms, PyTorch 36.3 ms).
    """
    if not (fast_paths_enabled() and type(v2) is np.ndarray and v2.dtype in _FLOATS
            and v2.ndim == 2 and v2.flags.c_contiguous and v2.nbytes >= MIN_BYTES
            and type(g1) is np.ndarray and g1.dtype == v2.dtype and g1.shape == v2.shape[:1]):
        return None
    loops = _loops()
    if loops is None:
        return None
    w = _buffers.empty(v2.shape, v2.dtype)
    ss = np.empty(v2.shape[0])
    _call(loops, "unit_scale_forward", _threads(v2), v2, g1, w, ss, np.empty(v2.shape[0], v2.dtype))
    lo, hi = _UNIT_SS_RANGE
    if not (float(ss.min()) >= lo and float(ss.max()) <= hi):  # NaN fails too
        return None
    return w, ss


def unit_scale_backward(dw2: np.ndarray, v2: np.ndarray, g1: np.ndarray,
                        ss: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """The pullback of :func:`unit_scale` at ``(v2, g1)`` with its ``ss``, for ``dw2`` of v2's
    shape and dtype: ``(dv, dg)``, dg[i] = u = Σ dw·v/‖v‖ (float64) and
    dv = (g/‖v‖)·(dw − v·u/‖v‖) in v2's dtype, one compiled sweep reading dw and v once."""
    loops = _loops()
    assert loops is not None and dw2.dtype == v2.dtype and dw2.shape == v2.shape, \
        "unit_scale_backward: only after unit_scale answered, with a cotangent of w's shape"
    dv = _buffers.empty(v2.shape, v2.dtype)
    dg = np.empty(v2.shape[0])
    dw2 = np.ascontiguousarray(dw2)
    _call(loops, "unit_scale_backward", _threads(dw2), dw2, v2, g1, ss, dv, dg,
          np.empty((v2.shape[0], 2), v2.dtype))
    return dv, dg


# ReLU -----------------------------------------------------------------------------------------

#: from this size ReLU's backward is the compiled sweep (below it NumPy is as fast: measured
#: 2026-12-03, 2-core Xeon, float32 (16, 256): 2.9 µs NumPy, 4.0 compiled); the forward from
#: :data:`PARALLEL_MIN_BYTES` (:func:`relu`)
RELU_MIN_BYTES = 64 << 10


def _relu_input(a: Any) -> bool:
    return (type(a) is np.ndarray and a.dtype in _FLOATS and a.nbytes >= RELU_MIN_BYTES
            and a.flags.c_contiguous)


def relu(x: np.ndarray) -> np.ndarray | None:
    """max(x, 0) as NumPy's ``fmax(x, 0)`` gives it (+0 for −0 and NaN): :func:`relu_backward`'s
    loop with t = x, shared among :func:`fast_path_threads` threads, from
    :data:`PARALLEL_MIN_BYTES` (NumPy's ufunc runs on one core; below that its one vectorized
    pass is as fast: (64, 256) float32 4.7–5.2 µs NumPy, 6.0 compiled; (128, 1024) 37 → 18 µs;
    2026-12-03, 2-core Xeon); ``None`` where the JIT does not answer (see
    :func:`relu_backward`)."""
    if not (fast_paths_enabled() and _relu_input(x) and x.nbytes >= PARALLEL_MIN_BYTES):
        return None
    loops = _loops()
    if loops is None:
        return None
    out = _buffers.empty(x.shape, x.dtype)
    flat = x.reshape(-1)
    _call(loops, "relu_backward", _threads(x), flat, flat, out.reshape(-1))  # t = x: x or +0
    return out


def relu_backward(x: np.ndarray, t: np.ndarray) -> np.ndarray | None:
    """t where x > 0, else +0, for NumPy ``x`` and ``t`` of one shape and float32/float64
    dtype, C-contiguous, from :data:`RELU_MIN_BYTES`: one compiled pass reading x and t
    (shared among :func:`fast_path_threads` threads from :data:`PARALLEL_MIN_BYTES`) where
    NumPy's bitwise mask takes four. ``None`` where the JIT does not answer (numba missing or
    ``ARRAYNORM_JIT=0``, fast paths off, another input) and the caller's NumPy path does.
    The same bits as that path: t's NaN, inf and −0 kept where x > 0, +0 elsewhere.

    Measured 2026-12-03 (2-core Xeon, float32, min of 5): (32, 128, 1024) 3.27 ms NumPy,
    0.90 ms here; (128, 1024) 43 → 13 µs; (64, 256) 6.7 → 5.6 µs.
    """
    if not (fast_paths_enabled() and _relu_input(x) and _relu_input(t) and t.dtype == x.dtype
            and t.shape == x.shape):
        return None
    loops = _loops()
    if loops is None:
        return None
    out = _buffers.empty(t.shape, t.dtype)
    _call(loops, "relu_backward", _threads(x), x.reshape(-1), t.reshape(-1), out.reshape(-1))
    return out


# softmax (attention's probabilities) ------------------------------------------------------------

#: from this size (bytes) softmax and its backward along the last axis are the compiled sweeps
SOFTMAX_MIN_BYTES = 64 << 10


def _row_sweep(name: str, arrays: tuple[np.ndarray, ...], scale: Any) -> np.ndarray | None:
    """The loop ``name`` over the last-axis rows of ``arrays`` (checked by the caller: one
    shape, C order) and ``scale``, into a new array like the first; ``None`` without numba."""
    loops = _loops()
    if loops is None:
        return None
    first = arrays[0]
    out = _buffers.empty(first.shape, first.dtype)
    n = first.shape[-1]
    _call(loops, name, _threads(first), *(a.reshape(-1, n) for a in arrays), scale,
          out.reshape(-1, n))
    return out


def softmax(s: np.ndarray, scale: float) -> np.ndarray | None:
    """softmax(scale·s) along the last axis for a float32 C-order NumPy ``s`` of at least
    :data:`SOFTMAX_MIN_BYTES` and a finite ``scale`` (the attention's 1/√d): one compiled sweep,
    each row read from memory once and shared among :func:`fast_path_threads` threads from
    :data:`PARALLEL_MIN_BYTES`, where NumPy's recipe (scale, max, subtract, exp, sum, divide)
    makes six passes. Its exponential is Cephes' expf, vectorized (numba has no vector exp of
    its own): within 1 ulp of the exact exp (NumPy's own is within ~2.4), so p differs from
    NumPy's recipe by a few ulp; the sums are float64. NaN or +inf in a row gives a row of
    NaN, a row of −inf only NaN, as the recipe does. ``None`` where the JIT does not answer
    (numba missing or ``ARRAYNORM_JIT=0``, fast paths off, another dtype or layout, smaller,
    a scale that is not finite) and the caller's NumPy path does.

    Measured 2026-12-03 (2-core Xeon, float32 (32, 4, 128, 128) with the scale, median of 30):
    6.9–9.2 ms for the NumPy recipe, 2.5–2.7 ms here (one thread 4.2–4.4 ms). Inside the
    Transformer-block benchmark, where the scores come fresh from the batched matrix product,
    softmax and the scale's pass took 9.8 ms a step, this 5.5 ms (alternating processes).
    """
    if not (fast_paths_enabled() and type(s) is np.ndarray and s.dtype == np.float32
            and s.ndim >= 1 and s.shape[-1] > 0 and s.nbytes >= SOFTMAX_MIN_BYTES
            and s.flags.c_contiguous and math.isfinite(scale)):
        return None
    return _row_sweep("softmax_rows", (s,), np.float32(scale))


def softmax_backward(g: np.ndarray, p: np.ndarray, scale: float) -> np.ndarray | None:
    """(p·(g − Σ g·p))·scale along the last axis (the cotangent of z for p = softmax(scale·z)),
    for NumPy ``g`` and ``p`` of one shape and float32/float64 dtype, C order, at least
    :data:`SOFTMAX_MIN_BYTES`: one compiled sweep reading g and p once (the sum in float64)
    where NumPy makes five passes. ``None`` where the JIT does not answer, as :func:`softmax`.

    Measured 2026-12-03 (2-core Xeon, float32 (32, 4, 128, 128), median of 30): 3.8 ms NumPy,
    0.8–0.9 ms here (one thread 1.0 ms); inside the Transformer-block benchmark 4.5 → 2.8 ms.
    """
    if not (fast_paths_enabled() and type(g) is np.ndarray and type(p) is np.ndarray
            and g.dtype in _FLOATS and p.dtype == g.dtype and g.shape == p.shape
            and g.ndim >= 1 and g.shape[-1] > 0 and g.nbytes >= SOFTMAX_MIN_BYTES
            and g.flags.c_contiguous and p.flags.c_contiguous and math.isfinite(scale)):
        return None
    return _row_sweep("softmax_backward_rows", (g, p), float(scale))
