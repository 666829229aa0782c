"""Terminal table, targets, Markdown note and PNG chart of a benchmark run."""

from __future__ import annotations

from typing import Any

from . import dask_norm

__all__ = ["format_row", "header", "targets", "round2_targets", "markdown", "sweep_markdown", "plot"]

MODES = ("fwd", "fwdbwd")
MODE_TITLE = {"fwd": "forward", "fwdbwd": "forward+backward"}

# issue 5's speed targets, as ratios of arraynorm's time to a peer's (same run)
TORCH_CPU_LIMIT = {"bn": 1.0, "in": 1.0, "rms": 1.0, "ln": 1.5, "gn": 1.5}
NAIVE_SPEEDUP = 3.0
TORCH_CUDA_LIMIT = 1.0
GPU_BANDWIDTH_SHARE = 0.70


def _ms(t: float | None) -> str:
    return "-" if t is None else (f"{t * 1e3:8.2f}" if t < 10 else f"{t * 1e3:8.0f}")


def header() -> str:
    return (f"{'case':30s} {'backend':19s} {'fwd med ms':>10s} {'fwd+bwd med':>11s} {'min':>8s} "
            f"{'GB/s':>6s} {'%copy':>6s} {'peak/x':>6s}  note")


def format_row(title: str, backend: str, r: dict[str, Any]) -> str:
    if r.get("status") != "ok":
        return f"{title:30s} {backend:19s} {r.get('status', '')}"
    fb = r["fwdbwd"]
    peak = r.get("peak_over_input")
    share = "-" if fb["copy_share"] is None else f"{100 * fb['copy_share']:.0f}%"
    return (f"{title:30s} {backend:19s} {_ms(r['fwd']['median_s']):>10s} {_ms(fb['median_s']):>11s} "
            f"{_ms(fb['min_s']):>8s} {'-' if fb['gbps'] is None else format(fb['gbps'], '6.1f'):>6s} {share:>6s} "
            f"{'-' if peak is None else f'{peak:5.1f}x':>6s}  {r.get('check', '')}")


def _median(res: dict[str, Any], case: str, backend: str, mode: str) -> float | None:
    r = res["cases"].get(case, {}).get("backends", {}).get(backend, {})
    return r[mode]["median_s"] if r.get("status") == "ok" else None


def targets(res: dict[str, Any]) -> list[dict[str, Any]]:
    """Each target of issue 5 that this run can judge: the measured ratio, the limit, met."""
    out = []
    for cid, c in res["cases"].items():
        fam = c["family"]
        an = _median(res, cid, "arraynorm-numpy", "fwdbwd")
        for peer, limit, kind in (("torch-cpu", TORCH_CPU_LIMIT.get(fam), "time ratio to"),
                                  ("naive-numpy", 1.0 / NAIVE_SPEEDUP, "time ratio to")):
            other = _median(res, cid, peer, "fwdbwd")
            if limit is None or an is None or other is None:
                continue
            ratio = an / other
            out.append({"case": cid, "title": c["title"], "target": f"arraynorm-numpy {kind} {peer}",
                        "ratio": ratio, "limit": limit, "met": ratio <= limit})
        gpu = _median(res, cid, "arraynorm-cupy", "fwdbwd")
        tc = _median(res, cid, "torch-cuda", "fwdbwd")
        if fam in TORCH_CPU_LIMIT and gpu is not None and tc is not None:
            out.append({"case": cid, "title": c["title"], "target": "arraynorm-cupy time ratio to torch-cuda",
                        "ratio": gpu / tc, "limit": TORCH_CUDA_LIMIT, "met": gpu / tc <= TORCH_CUDA_LIMIT})
        share = c["backends"].get("arraynorm-cupy", {}).get("fwdbwd", {}).get("copy_share")
        if c.get("bandwidth_target") and gpu is not None and share is not None:
            out.append({"case": cid, "title": c["title"], "target": "arraynorm-cupy share of device copy bandwidth",
                        "ratio": share, "limit": GPU_BANDWIDTH_SHARE, "met": share >= GPU_BANDWIDTH_SHARE})
    return out


# issue 13's CPU targets (round 2), as ratios of arraynorm's time (its best installed
# implementation: the arraynorm-numpy backend) to a peer's in the same run
ROUND2_PEER_LIMIT = 1.0           # × PyTorch CPU and × JAX CPU; whole models and WN × PyTorch
ROUND2_MATMUL_LIMIT = 1.05        # × the naive recipe where matrix products bound the time
ROUND2_BANDWIDTH_SHARE = 0.50     # of the CPU copy bandwidth, on the large memory-bound cases
ROUND2_NORM_FAMILIES = ("ln", "bn", "gn", "in", "rms")
ROUND2_BANDWIDTH_CASES = ("ln-large", "bn", "gn", "in", "rms")  # the full sizes of those cases
ROUND2_PEERS = {"wn": ("torch-cpu",), "stack": ("torch-cpu",), "transformer": ("torch-cpu",),
                "sn": ("naive-numpy",), "iternorm": ("naive-numpy",)}


def round2_targets(res: dict[str, Any]) -> list[dict[str, Any]]:
    """Each target of issue 13 that this run can judge (not a quick run: its arrays are not the
    issue's sizes): arraynorm ≤ 1.0× PyTorch CPU and ≤ 1.0× JAX CPU on every normalization
    case and size of the sweep, ≤ 1.0× PyTorch on WeightNorm and the whole models, ≤ 1.05× the
    naive recipe on SpectralNorm and IterNorm, ≥ 50% of the copy bandwidth on the large
    memory-bound cases; forward+backward medians."""
    if res.get("settings", {}).get("quick"):
        return []
    out = []
    for cid, c in res["cases"].items():
        fam = c["family"]
        an = _median(res, cid, "arraynorm-numpy", "fwdbwd")
        if an is None:
            continue
        if fam in ROUND2_NORM_FAMILIES:
            peers = [(p, ROUND2_PEER_LIMIT) for p in ("torch-cpu", "jax-cpu")]
        else:
            peers = [(p, ROUND2_MATMUL_LIMIT if p == "naive-numpy" else ROUND2_PEER_LIMIT)
                     for p in ROUND2_PEERS.get(fam, ())]
        for peer, limit in peers:
            other = _median(res, cid, peer, "fwdbwd")
            if other is not None:
                out.append({"case": cid, "title": c["title"], "target": f"time ratio to {peer}",
                            "ratio": an / other, "limit": limit, "met": an / other <= limit})
        share = c["backends"]["arraynorm-numpy"]["fwdbwd"].get("copy_share")
        if cid in ROUND2_BANDWIDTH_CASES and share is not None:
            out.append({"case": cid, "title": c["title"], "target": "share of the copy bandwidth",
                        "ratio": share, "limit": ROUND2_BANDWIDTH_SHARE,
                        "met": share >= ROUND2_BANDWIDTH_SHARE})
    return out


def round2_markdown(res: dict[str, Any]) -> list[str]:
    """The issue 13 targets as a table (computed from the run's medians), with the count met."""
    tg = round2_targets(res)
    if not tg:
        return []
    met = sum(t["met"] for t in tg)
    lines = ["## Targets (issue 13: CPU, round 2), forward+backward", "",
             f"{met} of {len(tg)} met. Ratios: arraynorm-numpy's median time over the peer's (limit: "
             "at most); bandwidth: arraynorm-numpy's share of the copy bandwidth (limit: at least).",
             ""]
    return lines + _targets_table(tg) + [""]


def _targets_table(tg: list[dict[str, Any]]) -> list[str]:
    """Judged targets as markdown table rows (case, target, measured, limit, met)."""
    return (["| case | target | measured | limit | met |", "|---|---|---|---|---|"]
            + [f"| {t['title']} | {t['target']} | {t['ratio']:.2f} | {t['limit']:.2f} | "
               f"{'yes' if t['met'] else '**no**'} |" for t in tg])


def markdown(res: dict[str, Any]) -> str:
    """A short note: machine, method, the fwd+bwd table, targets."""
    m = res["machine"]
    bw = res["bandwidth"]
    lines = [f"# arraynorm benchmarks — {m['date'][:10]}, {m['cpu']} ({m['cpus_available']} CPUs)", ""]
    gpu = m.get("gpu")
    lines += [
        f"- machine: {m['platform']}; {m['memory_gib']} GiB; caches {m['caches']}; "
        f"GPU: {gpu['name'] if gpu else 'none'}",
        f"- load average (1, 5, 15 min) at start {m['loadavg_1_5_15']}, at end {res.get('loadavg_end')}",
        f"- versions: " + ", ".join(f"{k} {v}" for k, v in m["versions"].items() if v),
        f"- BLAS/threads: " + "; ".join(f"{t.get('internal_api')} {t.get('version')} "
                                          f"{t.get('num_threads')} threads" for t in m["threadpools"]),
        f"- settings: {res['settings']}",
        f"- copy bandwidth: CPU {bw['cpu']['gbps']:.1f} GB/s ({bw['cpu']['method']})"
        + (f"; GPU {bw['gpu']['gbps']:.0f} GB/s ({bw['gpu']['method']})" if bw.get("gpu") else "; GPU: none"),
        "",
        "Times are medians of interleaved repeats (min in the JSON)"
        + ("; each sample follows an idle pause and one untimed call" if res["settings"].get("wake_call") else "")
        + "; GB/s counts the bytes an op must "
        "move (forward: read x, write y; forward+backward: that plus read x, dy and write dx) over the "
        "time; %copy is that against the copy bandwidth above; peak/x is the memory allocated at the "
        "peak of forward+backward over the input's size.",
        "",
    ]
    backends = [b for b in res["backends"]]
    lines.append("| case | " + " | ".join(backends) + " |")
    lines.append("|---|" + "---|" * len(backends))
    for c in res["cases"].values():
        cells = []
        for b in backends:
            r = c["backends"].get(b, {})
            if r.get("status") != "ok":
                cells.append("absent" if str(r.get("status", "")).startswith("absent") else str(r.get("status", "-"))[:30])
                continue
            fb, fw = r["fwdbwd"], r["fwd"]
            share = "" if fb["copy_share"] is None else f", {100 * fb['copy_share']:.0f}%"
            rate = "" if fb["gbps"] is None else f" ({fb['gbps']:.1f} GB/s{share})"
            cells.append(f"{fw['median_s'] * 1e3:.1f} / {fb['median_s'] * 1e3:.1f} ms{rate}")
        lines.append(f"| {c['title']} | " + " | ".join(cells) + " |")
    lines += ["", "Cells: forward / forward+backward median; GB/s and % of copy bandwidth for forward+backward.", ""]
    lines += implementation_markdown(res)
    lines += faults_markdown(res)
    tg = res.get("targets", [])
    if tg:
        lines += ["## Targets (issue 5), forward+backward", ""] + _targets_table(tg) + [""]
    lines += round2_markdown(res)
    lines += sweep_markdown(res)
    for r in res.get("dask", {}).values():
        lines += dask_norm.markdown(r)
    absent = sorted({f"{b}: {r['status']}" for c in res["cases"].values()
                     for b, r in c["backends"].items() if str(r.get("status", "")).startswith("absent")})
    if absent:
        lines += ["## Absent", ""] + [f"- {a}" for a in absent] + [""]
    return "\n".join(lines)


def implementation_markdown(res: dict[str, Any]) -> list[str]:
    """Per case: the arraynorm implementation(s) the selector chose for forward+backward and
    the peak memory of forward+backward over the input's size, per CPU backend measured; then
    the JIT's first-call (compile or cache-load) times."""
    mem = [b for b, d in res["backends"].items()
           if any(c["backends"].get(b, {}).get("peak_over_input") is not None for c in res["cases"].values())]
    lines = ["## Implementation used and peak memory (forward+backward)", "",
             "| case | arraynorm-numpy runs | " + " | ".join(f"{b} peak/x" for b in mem) + " |",
             "|---|---|" + "---|" * len(mem)]
    for c in res["cases"].values():
        used = c["backends"].get("arraynorm-numpy", {}).get("implementations")
        cell = "-" if not used else ", ".join(f"{k}" + (f" ×{v}" if v > 1 else "") for k, v in used.items())
        peaks = []
        for b in mem:
            p = c["backends"].get(b, {}).get("peak_over_input")
            peaks.append("-" if p is None else f"{p:.2f}")
        lines.append(f"| {c['title']} | {cell} | " + " | ".join(peaks) + " |")
    lines.append("")
    first = res.get("jit_first_call_s") or {}
    jit = res.get("settings", {}).get("jit")
    lines.append(f"numba JIT: {'on' if jit else 'off (ARRAYNORM_JIT=0 or numba not installed)'}"
                 + (f"; first calls (compile on a cold cache, load on a warm one; cache "
                    f"{res['settings'].get('numba_cache_dir')}): "
                    + ", ".join(f"{k} {v:.2f} s" for k, v in first.items())
                    + f"; total {sum(first.values()):.1f} s" if first else ""))
    lines.append("")
    return lines


def faults_markdown(res: dict[str, Any]) -> list[str]:
    """Minor page faults per forward+backward call (median over the samples), per CPU backend,
    for the cases where any backend has at least one: the fresh pages a call touches, ~1 µs
    each, which the allocator's state decides (:mod:`benchmarks.allocator`)."""
    cpu = [b for b, d in res["backends"].items() if d.get("device") == "cpu"]
    rows = []
    for c in res["cases"].values():
        cells = [c["backends"].get(b, {}).get("fwdbwd", {}).get("minor_faults_per_call") for b in cpu]
        if any(v is not None and v >= 1 for v in cells):
            rows.append(f"| {c['title']} | " + " | ".join("-" if v is None else f"{v:.0f}" for v in cells) + " |")
    head = [f"## Page faults per forward+backward call ({res['settings'].get('malloc', 'allocator not recorded')})", ""]
    if not rows:
        return head + ["None of at least one per call in any case.", ""]
    return head + ["| case | " + " | ".join(cpu) + " |", "|---|" + "---|" * len(cpu)] + rows + [""]


def sweep_markdown(res: dict[str, Any]) -> list[str]:
    """The Dask sweep section: throughput in process and on 1 and 2 worker processes."""
    out = []
    for sid, s in res.get("sweeps", {}).items():
        out += [f"## Dask sweep ({sid})", ""]
        if s.get("status") != "ok":
            out += [f"{s.get('status')}", ""]
            continue
        opts = ", ".join(f"{k}={v}" for k, v in s["options"].items())
        out += [f"`analysis.{s['study']}({opts})`: {s['points']} independent points, one study call "
                f"per sample, interleaved; results {'bit-identical' if s['identical'] else '**not identical**'} "
                f"across executors; load average at the end {s['loadavg']} on {s['cpus']} CPUs.", "",
                "| executor | median s | points/s |", "|---|---|---|"]
        for label, r in s["runs"].items():
            out.append(f"| {label} | {r['median_s']:.2f} | {r['points_per_s']:.1f} |")
        out += ["", f"Throughput with 2 workers over 1 worker: **{s['ratio_2_over_1']:.2f}**.", ""]
    return out


def plot(res: dict[str, Any], path: str) -> None:
    """Bar chart of forward+backward time per case and backend, CPU and GPU side by side."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    cases = list(res["cases"].values())
    sides = [("cpu", "CPU"), ("gpu", "GPU")]
    fig, axes = plt.subplots(1, 2, figsize=(15, 0.55 * len(cases) + 2.5), sharey=True)
    for ax, (dev, title) in zip(axes, sides):
        names = [b for b, d in res["backends"].items() if d["device"] == dev]
        have = [b for b in names if any(c["backends"].get(b, {}).get("status") == "ok" for c in cases)]
        if not have:
            ax.text(0.5, 0.5, f"no {title} results in this run\n(" + (
                "no CUDA device" if dev == "gpu" else "no CPU backend selected") + ")",
                ha="center", va="center", transform=ax.transAxes)
            ax.set_xticks([])
        h = 0.8 / max(1, len(have))
        for k, b in enumerate(have):
            ys, xs = [], []
            for i, c in enumerate(cases):
                r = c["backends"].get(b, {})
                if r.get("status") == "ok":
                    ys.append(i + (k - (len(have) - 1) / 2) * h)
                    xs.append(r["fwdbwd"]["median_s"] * 1e3)
            ax.barh(ys, xs, height=h, label=b)
        if have:
            ax.set_xscale("log")
            ax.legend(loc="lower right", fontsize=8)
        ax.set_title(f"{title}: forward+backward, median ms (log scale)")
        ax.grid(axis="x", which="both", alpha=0.3)
    axes[0].set_yticks(range(len(cases)))
    axes[0].set_yticklabels([c["title"] for c in cases], fontsize=8)
    axes[0].invert_yaxis()
    m = res["machine"]
    gpu = m.get("gpu")
    fig.suptitle(f"arraynorm benchmarks {m['date'][:10]}: {m['cpu']} ({m['cpus_available']} CPUs)"
                 + (f", {gpu['name']}" if gpu else ", no GPU"), fontsize=10)
    fig.tight_layout(rect=(0, 0, 1, 1 - 0.45 / fig.get_figheight()))  # room for the suptitle
    fig.savefig(path, dpi=110)
    plt.close(fig)
