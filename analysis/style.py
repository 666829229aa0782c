"""Style: instance normalization and AdaIN on CNN feature maps — the statistics-transfer
property and the invariance to per-image contrast and brightness (Ulyanov et al. 2016, 2017;
Huang & Belongie 2017, "Arbitrary style transfer in real-time with adaptive instance
normalization"; the survey's §7 application of IN).

With μ, σ² the mean and biased variance of one sample's channel over the spatial positions
and σ_eps = sqrt(σ² + eps),

    IN(x)       = (x − μ(x)) / σ_eps(x),
    AdaIN(c, s) = σ_eps(s) · IN(c) + μ(s).

Exact consequences, measured here to float rounding on the features of a CNN:

* **Statistics transfer.** For every eps, mean(AdaIN(c, s)) = μ(s) exactly (IN(c) has zero
  mean), and its biased standard deviation is

      sd(AdaIN(c, s)) = sqrt((σ²(s) + eps) · σ²(c) / (σ²(c) + eps)),

  so for eps = 0 the output's per-channel mean and standard deviation are the style's, and for
  eps > 0 they differ from the style's by this closed form (up by the style's eps, down by
  the content's).
* **Invariance.** For a > 0 and any b per sample and channel, IN(a·x + b) = k · IN(x) with
  k = sqrt((σ² + eps) / (σ² + eps/a²)): exactly IN(x) for eps = 0, and the change for eps > 0
  is that closed form. LN (statistics per sample over channels and positions; GN with one
  group) has the same identity for a, b per sample but not per channel; BN (statistics per
  channel over the batch and positions) for a, b shared by the whole batch but not per
  sample. Contrast and brightness of an input image reach the features of a conv–ReLU–max-pool
  encoder without biases as follows: a·x gives exactly a·features (the encoder is positively
  homogeneous), while x + b does not give features + b' (zero padding and the ReLU see the
  shift), so IN's invariance covers image contrast exactly and image brightness only
  approximately — the study measures by how much.

The features are the last convolution's output (before its ReLU, so no channel is constant
and the eps = 0 identities are defined) of a bias-free :func:`arraynorm.nn.cnn_stack`
trained briefly on scikit-learn's bundled 8×8 digits (``encoder_epochs=0``: random weights).

Real style transfer needs more than this: an encoder pretrained on natural images (Huang &
Belongie use VGG-19 up to relu4_1) and a decoder trained to invert it, neither of which can be
downloaded here. :func:`transfer_statistics` takes any ``encoder`` callable — a VGG in
PyTorch, a JAX model — and measures the same statistics on its features; ``decoder(AdaIN(
encoder(content), encoder(style)))`` is the stylized image once a decoder is trained.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any

import numpy as np

import arraynorm as an

from ._backend import Backend, point_rng
from ._digits import digits_split, require_sklearn, train_classifier
from ._plot import colors, figure
from ._result import register_plotter
from ._study import Context, Outcome, study

__all__ = ["style", "NORMS", "TRANSFORMS", "channel_statistics", "transfer_statistics",
           "adain_std", "instance_change", "digits_encoder"]

#: normalizations whose invariance is measured, and by which statistics they normalize
NORMS = ("instance", "layer", "batch")
#: per-instance changes: of the features (a, b shared by the batch, per image, per image and
#: channel) and of the input images (contrast a·x, brightness x + b, per image)
TRANSFORMS = ("batch", "image", "channel", "image_contrast", "image_brightness")
#: which (norm, transform) pairs leave the output unchanged up to the eps factor
INVARIANT = {("instance", t) for t in TRANSFORMS if t != "image_brightness"} | {
    ("layer", "batch"), ("layer", "image"), ("layer", "image_contrast"), ("batch", "batch")}

Array = Any


def channel_statistics(f: Any) -> tuple[np.ndarray, np.ndarray]:
    """``(mean, biased std)`` of every sample and channel of (N, C, *S) maps over the spatial
    axes, as NumPy float64 arrays of shape (N, C) (any array-API input)."""
    a = Backend.to_numpy(f)
    a = a.reshape(a.shape[0], a.shape[1], -1)
    return a.mean(axis=2), a.std(axis=2)


def adain_std(content_var: np.ndarray, style_var: np.ndarray, eps: float) -> np.ndarray:
    """sd(AdaIN(c, s)) = sqrt((σ²(s) + eps) σ²(c) / (σ²(c) + eps)) from the biased variances."""
    cv, sv = np.asarray(content_var, dtype=float), np.asarray(style_var, dtype=float)
    return np.sqrt((sv + eps) * cv / (cv + eps))


def instance_change(var: np.ndarray, a: np.ndarray, eps: float) -> float:
    """‖IN(a·x + b) − IN(x)‖_F / ‖IN(x)‖_F in closed form, from the biased variances σ² (N, C)
    of x and the scales a > 0 broadcast to (N, C): IN(a·x + b) = k·IN(x) with
    k = sqrt((σ² + eps)/(σ² + eps/a²)), and ‖IN(x)‖² = M Σ σ²/(σ² + eps) (M positions)."""
    var = np.asarray(var, dtype=float)
    a = np.broadcast_to(np.asarray(a, dtype=float), var.shape)
    k = np.sqrt((var + eps) / (var + eps / a ** 2))
    w = var / (var + eps) if eps > 0 else np.ones_like(var)
    return float(np.sqrt(np.sum((k - 1) ** 2 * w) / np.sum(w)))


def transfer_statistics(content: Any, style: Any, *, eps: float = 1e-5,
                        encoder: Callable[[Any], Any] | None = None) -> dict[str, Any]:
    """AdaIN's statistics transfer on feature maps, measured: the per-channel mean and std of
    content, style and output, beside the closed form.

    ``content`` and ``style`` are (N, C, *S) feature maps of any array-API library (the same
    N and C; spatial sizes may differ) — or, with ``encoder``, whatever ``encoder`` maps to
    such features (images): this is where a pretrained network plugs in. The output is
    :func:`arraynorm.adain` of the features, computed in their namespace.

    Returns NumPy float64 arrays (N, C) ``content_mean``, ``content_std``, ``style_mean``,
    ``style_std``, ``output_mean``, ``output_std``, ``predicted_std`` (:func:`adain_std`),
    and ``output``, the AdaIN output itself (in the features' namespace).

    Example: a pretrained VGG-19 to relu4_1, as Huang & Belongie (needs torchvision and its
    weights, which this package does not download)::

        import torch, torchvision
        vgg = torchvision.models.vgg19(weights="IMAGENET1K_V1").features[:21].eval()
        def encoder(images):                      # (N, 3, H, W) normalized RGB
            with torch.no_grad():
                return vgg(images).double()
        stats = transfer_statistics(content_images, style_images, encoder=encoder)
        # stats["output"] is what a trained decoder turns into the stylized image

    Runnable with any feature extractor, here a random bias-free CNN on NumPy arrays:

    >>> import numpy as np, arraynorm as an
    >>> net = an.nn.cnn_stack((4,), num_classes=None, norm="none", bias=False, rng=0)
    >>> encoder = lambda images: net[0][0](images)          # the first conv's maps
    >>> rng = np.random.default_rng(1)
    >>> c, s = rng.standard_normal((2, 1, 8, 8)), 3 + 2 * rng.standard_normal((2, 1, 8, 8))
    >>> st = transfer_statistics(c, s, eps=0.0, encoder=encoder)
    >>> bool(np.allclose(st["output_mean"], st["style_mean"]) and
    ...      np.allclose(st["output_std"], st["style_std"]))
    True
    """
    if encoder is not None:
        content, style = encoder(content), encoder(style)
    out = an.adain(content, style, eps=eps)
    cm, cs = channel_statistics(content)
    sm, ss = channel_statistics(style)
    om, osd = channel_statistics(out)
    return {"content_mean": cm, "content_std": cs, "style_mean": sm, "style_std": ss,
            "output_mean": om, "output_std": osd,
            "predicted_std": adain_std(cs ** 2, ss ** 2, eps), "output": out}


def digits_encoder(channels: tuple[int, ...], epochs: float, rng: np.random.Generator,
                   b: Backend, test: int) -> tuple[Callable[[Any], Any], an.nn.Sequential]:
    """``(encoder, classifier)``: a bias-free ``cnn_stack`` (no normalization, max pooling)
    trained for ``epochs`` on the digits' training split (batch 16, lr 0.05, momentum 0.9;
    0 epochs: random weights), and the map from images (N, 1, 8, 8) to the last convolution's
    output (before its ReLU)."""
    model = an.nn.cnn_stack(channels, norm="none", bias=False, num_classes=10, rng=rng,
                            xp=b.xp, dtype=b.dtype)
    if epochs > 0:
        train, _ = digits_split(test)
        train_classifier(model, train, b, batch=16, lr=0.05, momentum=0.9,
                         samples=round(epochs * train.n), rng=rng)
    model.eval()
    model.requires_grad_(False)
    blocks = [m for m in model if isinstance(m, an.nn.Sequential)]
    last = blocks[-1]
    head = model[:list(model).index(last)]

    def encoder(images: Any) -> Any:
        return last[0](head(images))  # the last block's Conv2d, before its ReLU

    return encoder, model


def _normalize(norm: str, f: Array, eps: float) -> Array:
    if norm == "instance":
        return an.instance_norm(f, eps=eps)
    if norm == "layer":
        return an.group_norm(f, 1, eps=eps)
    return an.batch_norm(f, eps=eps)  # batch statistics (training mode)


def _rel(new: Array, old: Array) -> float:
    """‖new − old‖_F / ‖old‖_F (in float64 on the host)."""
    n, o = Backend.to_numpy(new), Backend.to_numpy(old)
    return float(np.linalg.norm(n - o) / np.linalg.norm(o))


def _eps_key(eps: float) -> str:
    return f"eps={eps:g}"


def _pairs(labels: np.ndarray, pairs: int, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """``pairs`` content indices and as many distinct style indices, all different images,
    each style image showing another digit than its content."""
    idx = rng.permutation(len(labels))
    content, pool = idx[:pairs], list(idx[pairs:])
    style = []
    for i in content:
        j = next(k for k, s in enumerate(pool) if labels[s] != labels[i])
        style.append(pool.pop(j))
    return content, np.array(style)


def _style_point(*, rep: int, pairs: int, channels: tuple[int, ...], encoder_epochs: float,
                 eps: tuple[float, ...], test: int, backend: str, dtype: str,
                 seed: int) -> dict[str, Any]:
    """One encoder and one set of content/style pairs and transforms: the transfer errors per
    eps, the relative output changes per norm, transform and eps beside the closed forms, and
    the first pair's maps for the figure."""
    b = Backend(backend, dtype)
    rng = point_rng(seed, "style", rep)
    encoder, _ = digits_encoder(channels, encoder_epochs, rng, b, test)
    _, held = digits_split(test)
    ci, si = _pairs(held.y, pairs, rng)
    content, style = b.asarray(held.x[ci]), b.asarray(held.x[si])
    fc, fs = encoder(content), encoder(style)
    out: dict[str, Any] = {"transfer": {}, "invariance": {}, "closed_form": {}}
    layer = an.nn.AdaIN(eps=0.0)
    layer_gap = float(np.max(np.abs(Backend.to_numpy(layer(fc, fs))
                                    - Backend.to_numpy(an.adain(fc, fs, eps=0.0)))))
    for e in eps:
        st = transfer_statistics(fc, fs, eps=e)
        scale = st["style_std"]
        out["transfer"][_eps_key(e)] = {
            "mean_error": float(np.max(np.abs(st["output_mean"] - st["style_mean"]) / scale)),
            "std_error_vs_style": float(np.max(np.abs(st["output_std"] - scale) / scale)),
            "std_error_vs_closed_form": float(np.max(np.abs(st["output_std"] - st["predicted_std"])
                                                     / st["predicted_std"])),
            "closed_form_std_error_vs_style": float(np.max(np.abs(st["predicted_std"] - scale)
                                                           / scale)),
        }
        if e == eps[0]:
            ex = st
    out["layer_vs_function"] = layer_gap
    # the per-instance changes: a = e^u, u ~ U(−log 4, log 4), b ~ U(−2, 2) in feature units
    n, c = fc.shape[0], fc.shape[1]
    f_sd = float(np.std(Backend.to_numpy(fc)))
    draws = {"batch": (1, 1), "image": (n, 1), "channel": (n, c)}
    a_of: dict[str, np.ndarray] = {}
    changed: dict[str, Array] = {}
    for t, (na, nc) in draws.items():
        a = np.exp(rng.uniform(-math.log(4), math.log(4), (na, nc, 1, 1)))
        sh = rng.uniform(-2, 2, (na, nc, 1, 1)) * f_sd
        a_of[t] = np.broadcast_to(a[..., 0, 0], (n, c))
        changed[t] = fc * b.asarray(a) + b.asarray(sh)
    # contrast and brightness of the input images (standardized pixels), per image
    a_img = np.exp(rng.uniform(-math.log(4), math.log(4), (n, 1, 1, 1)))
    b_img = rng.uniform(-1, 1, (n, 1, 1, 1))
    a_of["image_contrast"] = np.broadcast_to(a_img[..., 0, 0], (n, c))
    changed["image_contrast"] = encoder(content * b.asarray(a_img))
    changed["image_brightness"] = encoder(content + b.asarray(b_img))
    var_in = channel_statistics(fc)[1] ** 2
    flat = Backend.to_numpy(fc).reshape(n, -1)
    var_ln = np.broadcast_to(flat.var(axis=1)[:, None], (n, c))
    for norm in NORMS:
        for t in TRANSFORMS:
            key = f"{norm}/{t}"
            out["invariance"][key] = {}
            for e in eps:
                out["invariance"][key][_eps_key(e)] = _rel(
                    _normalize(norm, changed[t], e), _normalize(norm, fc, e))
            if (norm, t) in INVARIANT:
                # the closed-form change: k per (sample, channel) for IN, per sample for LN,
                # one k for BN under a batch-wide a (its variance: per channel over the batch)
                if norm == "instance":
                    var, a = var_in, a_of[t]
                elif norm == "layer":
                    var, a = var_ln, a_of[t][:, :1]
                else:
                    fcn = Backend.to_numpy(fc)
                    var = np.broadcast_to(fcn.var(axis=(0, 2, 3))[None, :], (n, c))
                    a = a_of[t][:1, :1]
                out["closed_form"][key] = {_eps_key(e): instance_change(var, a, e) for e in eps}
    out["example"] = {
        "content_image": Backend.to_numpy(content[0, 0, ...]).tolist(),
        "style_image": Backend.to_numpy(style[0, 0, ...]).tolist(),
        "content_maps": Backend.to_numpy(fc[0, :3, ...]).tolist(),
        "style_maps": Backend.to_numpy(fs[0, :3, ...]).tolist(),
        "output_maps": Backend.to_numpy(ex["output"][0, :3, ...]).tolist(),
        **{k: ex[k][0].tolist() for k in ("content_mean", "content_std", "style_mean",
                                          "style_std", "output_mean", "output_std")},
        "content_digit": int(held.y[ci[0]]), "style_digit": int(held.y[si[0]]),
    }
    return out


@study("style", quick=dict(pairs=8, seeds=1, encoder_epochs=0.0, test=297),
       report=dict(pairs=128, seeds=3, encoder_epochs=2.0))
def style(ctx: Context, *, pairs: int = 128, seeds: int = 3, channels: tuple[int, ...] = (8, 16),
          encoder_epochs: float = 2.0, eps: tuple[float, ...] = (0.0, 1e-5, 1e-3, 1e-1),
          test: int = 797) -> Outcome:
    """AdaIN transfers the style's channel statistics; IN ignores per-instance a·x + b of CNN features, BN does not.

    Parameters
    ----------
    pairs : content/style image pairs (test digits; the style of another digit) per seed.
    seeds : independent encoders, pairs and transforms.
    channels : conv channels of the encoder (:func:`arraynorm.nn.cnn_stack`, no
        normalization, no bias, max pooling); features are the last conv's output.
    encoder_epochs : epochs of training the encoder as a digit classifier (0: random).
    eps : the eps values at which AdaIN and the normalizations are measured (0 = the exact
        identities; > 0 = the closed-form eps corrections).
    test : held-out digits (content and style images come from them).
    """
    fname = "style"
    require_sklearn()
    if pairs < 2 or seeds < 1 or not channels or min(channels) < 1:
        raise ValueError(f"{fname}: need pairs >= 2, seeds >= 1 and positive channels, got "
                         f"pairs={pairs}, seeds={seeds}, channels={channels}")
    if not eps or min(eps) < 0 or not all(math.isfinite(e) for e in eps):
        raise ValueError(f"{fname}: eps must be finite values >= 0, got {eps}")
    if not (encoder_epochs >= 0 and math.isfinite(encoder_epochs)):
        raise ValueError(f"{fname}: encoder_epochs must be >= 0, got {encoder_epochs}")
    digits_split(test)
    if pairs > test // 2:
        raise ValueError(f"{fname}: pairs must be at most test // 2 = {test // 2}, got {pairs}")
    eps = tuple(sorted(set(float(e) for e in eps)))
    points = [dict(rep=r, pairs=pairs, channels=channels, encoder_epochs=encoder_epochs, eps=eps,
                   test=test, **ctx.point_options()) for r in range(seeds)]
    runs = ctx.map(_style_point, points, desc="style")
    keys = [_eps_key(e) for e in eps]

    def worst(get: Callable[[dict[str, Any]], float]) -> float:
        return float(max(get(r) for r in runs))

    transfer = {k: {q: worst(lambda r, k=k, q=q: r["transfer"][k][q])
                    for q in ("mean_error", "std_error_vs_style", "std_error_vs_closed_form")}
                for k in keys}
    closed = {k: worst(lambda r, k=k: r["transfer"][k]["closed_form_std_error_vs_style"])
              for k in keys}
    measured: dict[str, Any] = {"eps": list(eps), "transfer": transfer,
                                "layer_vs_function": worst(lambda r: r["layer_vs_function"])}
    # the closed form's deviation of sd(output) from sd(style) is exactly 0 at eps = 0
    theory: dict[str, Any] = {"transfer": {k: {"mean_error": 0.0, "std_error_vs_closed_form": 0.0,
                                                "std_error_vs_style": closed[k] if e > 0 else 0.0}
                                            for k, e in zip(keys, eps)},
                              "layer_vs_function": 0.0}
    inv: dict[str, Any] = {}
    inv_theory: dict[str, Any] = {}
    table = []
    for key in runs[0]["invariance"]:
        per_seed = {k: [r["invariance"][key][k] for r in runs] for k in keys}
        inv[key] = {k: float(np.mean(v)) for k, v in per_seed.items()}
        inv[key].update({f"{k} std": float(np.std(v, ddof=1)) if len(v) > 1 else 0.0
                         for k, v in per_seed.items()})
        norm, t = key.split("/")
        row: dict[str, Any] = {"norm": norm, "change": t}
        if key in runs[0]["closed_form"]:
            inv_theory[key] = {k: float(np.mean([r["closed_form"][key][k] for r in runs]))
                               for k in keys}
            # the largest gap between measured and closed form over seeds
            inv[key]["max deviation from closed form"] = worst(
                lambda r, key=key: max(abs(r["invariance"][key][k] - r["closed_form"][key][k])
                                       for k in keys))
        for k in keys:
            row[f"rel. change {k}"] = inv[key][k]
        row["closed form"] = "yes" if key in inv_theory else "— (changes)"
        table.append(row)
    measured["invariance"], theory["invariance"] = inv, inv_theory
    measured["example"] = runs[0]["example"]
    return Outcome(measured, theory, _verdict(measured, theory, eps, seeds), table)


def _verdict(m: dict[str, Any], t: dict[str, Any], eps: tuple[float, ...], seeds: int) -> str:
    k0, k1 = _eps_key(eps[0]), _eps_key(eps[-1])
    tr = m["transfer"]
    inv = m["invariance"]
    exact = [f"instance/{x}" for x in TRANSFORMS if f"instance/{x}" in t["invariance"]]
    in_dev = max(inv[k]["max deviation from closed form"] for k in exact)
    in_0 = max(inv[k][k0] for k in exact)
    parts = [
        f"AdaIN's output has the style's channel mean to {tr[k0]['mean_error']:.1e} and std to "
        f"{tr[k0]['std_error_vs_style']:.1e} (relative, {k0}); at {k1} its std is off the "
        f"style's by up to {tr[k1]['std_error_vs_style']:.1e}, as the closed form's eps factor "
        f"says (to {max(v['std_error_vs_closed_form'] for v in tr.values()):.1e} at every eps)",
        f"IN's output under per-image and per-channel contrast/brightness changes of the "
        f"features (and image contrast) changes by at most {in_0:.1e} at {k0}, "
        f"and by the closed-form eps factor (to {in_dev:.1e}) otherwise",
        f"under image brightness x + b it changes by {100 * inv['instance/image_brightness'][k0]:.1f} "
        f"± {100 * inv['instance/image_brightness'][k0 + ' std']:.1f}% (padding and ReLU: not invariant)",
        f"BN's output changes by {100 * inv['batch/image'][k0]:.0f} ± "
        f"{100 * inv['batch/image'][k0 + ' std']:.0f}% under per-image changes (invariant only to "
        f"batch-wide ones: {inv['batch/batch'][k0]:.1e}); LN by "
        f"{100 * inv['layer/channel'][k0]:.0f}% under per-channel ones",
    ]
    return "; ".join(parts) + f" ({seeds} seed{'s' if seeds > 1 else ''})."


@register_plotter("style")
def _plot(r: Any) -> Any:
    m = r.measured
    ex = m["example"]
    fig, ax = figure(5, 3, width=2.6, height=2.5,
                     title="AdaIN and IN on CNN feature maps of the digits")
    rows = (("content", ex["content_image"], ex["content_maps"]),
            ("style", ex["style_image"], ex["style_maps"]),
            ("AdaIN(c, s)", None, ex["output_maps"]))
    for i, (name, img, maps) in enumerate(rows):
        a = ax[5 * i]
        if img is not None:
            a.imshow(np.asarray(img), cmap="gray_r")
            digit = ex["content_digit"] if i == 0 else ex["style_digit"]
            a.set_title(f"{name} image (a {digit})", fontsize=8)
        else:
            a.text(0.5, 0.5, "AdaIN output\n= σ(s)·IN(c) + μ(s)\n(eps = "
                   f"{m['eps'][0]:g})", ha="center", va="center", fontsize=8)
        a.set_axis_off()
        vmin = min(float(np.min(x)) for x in (ex["content_maps"], ex["style_maps"], ex["output_maps"]))
        vmax = max(float(np.max(x)) for x in (ex["content_maps"], ex["style_maps"], ex["output_maps"]))
        for j in range(min(3, len(maps))):
            b = ax[5 * i + 1 + j]
            b.imshow(np.asarray(maps[j]), cmap="viridis", vmin=vmin, vmax=vmax)
            b.set_title(f"{name}, channel {j}", fontsize=8)
            b.set_axis_off()
    # per-channel statistics: the output lands on the style
    a = ax[4]
    col = colors(("content", "style", "output"))
    for name, mk in (("content", "o"), ("style", "s"), ("output", "x")):
        a.scatter(ex[f"{name}_mean"], ex[f"{name}_std"], marker=mk, s=22, color=col[name],
                  label=name, facecolors="none" if mk != "x" else None)
    for cm, cs, om, os_ in zip(ex["content_mean"], ex["content_std"], ex["output_mean"],
                               ex["output_std"]):
        a.plot([cm, om], [cs, os_], color="0.7", lw=0.5)
    a.set(xlabel="channel mean", ylabel="channel std", title="per-channel statistics (1 pair)")
    a.legend(fontsize=7)
    # the eps correction: measured vs closed-form relative std deviation from the style
    a = ax[9]
    eps = np.asarray(m["eps"], dtype=float)
    pos = eps > 0
    meas = [m["transfer"][_eps_key(e)]["std_error_vs_style"] for e in eps[pos]]
    th = [r.theory["transfer"][_eps_key(e)]["std_error_vs_style"] for e in eps[pos]] \
        if r.theory else meas
    a.loglog(eps[pos], th, "k-", lw=1, label="closed form")
    a.loglog(eps[pos], meas, "o", color=col["output"], label="measured")
    a.set(xlabel="eps", ylabel="max |sd(out) − sd(s)| / sd(s)", title="AdaIN's eps correction")
    a.legend(fontsize=7)
    # invariance: relative change of each normalization's output, per change
    a = ax[14]
    k0 = _eps_key(m["eps"][0])
    norms = list(NORMS)
    width = 0.8 / len(norms)
    ncol = colors(norms)
    floor = 1e-17
    for i, n in enumerate(norms):
        vals = [max(m["invariance"][f"{n}/{t}"][k0], floor) for t in TRANSFORMS]
        a.bar(np.arange(len(TRANSFORMS)) + i * width, vals, width, color=ncol[n], label=n)
    a.set_yscale("log")
    a.set_xticks(np.arange(len(TRANSFORMS)) + width, ["batch", "image", "chan.", "img ×a", "img +b"],
                 fontsize=7, rotation=30)
    a.set(ylabel=f"relative output change ({k0})", title="change under a·x + b", ylim=(floor, 10))
    a.legend(fontsize=7, loc="center left")
    return fig
