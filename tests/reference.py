"""Float64 NumPy references written from the definitions, independent of ``lax``.

Padding amounts are computed here from the textbook formulas, not by the library's
own canonicalizer, so a mistake in one does not hide in the other.
"""

from __future__ import annotations

import itertools

import numpy as np

_NP_MODES = {"zeros": "constant", "reflect": "reflect", "replicate": "edge", "circular": "wrap"}


def explicit_padding(padding, in_spatial, window, strides, dilation):
    """(low, high) per spatial dim for every accepted padding form."""
    n = len(in_spatial)
    if isinstance(padding, str):
        pads = []
        for size, k, s, d in zip(in_spatial, window, strides, dilation, strict=True):
            eff = d * (k - 1) + 1
            if padding.upper() == "VALID":
                pads.append((0, 0))
            elif padding.upper() == "CAUSAL":
                pads.append((eff - 1, 0))
            else:  # SAME: out = ceil(in / s); odd leftover goes to the end
                out = int(np.ceil(size / s))
                total = max(0, (out - 1) * s + eff - size)
                pads.append((total // 2, total - total // 2))
        return pads
    if isinstance(padding, int):
        return [(padding, padding)] * n
    return [(p, p) if isinstance(p, int) else tuple(p) for p in padding]


def grouped_conv_nd(
    x, kernel, *, groups, strides=1, padding="SAME", dilation=1, padding_mode="zeros", bias=None
):
    """Grouped N-d cross-correlation of ``x`` ``(B, *spatial, C)`` in float64.

    ``kernel`` is ``(*window, C // groups, O)``; output channel ``o`` belongs to group
    ``o // (O // groups)`` and reads that group's input channels.
    """
    x = np.asarray(x, np.float64)
    kernel = np.asarray(kernel, np.float64)
    n = kernel.ndim - 2
    window = kernel.shape[:n]
    strides = (strides,) * n if isinstance(strides, int) else tuple(strides)
    dilation = (dilation,) * n if isinstance(dilation, int) else tuple(dilation)
    pads = explicit_padding(padding, x.shape[1:-1], window, strides, dilation)
    x = np.pad(x, [(0, 0), *pads, (0, 0)], mode=_NP_MODES[padding_mode])
    c_in, c_out = x.shape[-1], kernel.shape[-1]
    cg, og = c_in // groups, c_out // groups
    out_sp = [
        (size - (d * (k - 1) + 1)) // s + 1
        for size, k, s, d in zip(x.shape[1:-1], window, strides, dilation, strict=True)
    ]
    y = np.zeros((x.shape[0], *out_sp, c_out))
    for offs in itertools.product(*[range(k) for k in window]):
        idx = tuple(
            slice(o * d, o * d + (m - 1) * s + 1, s)
            for o, d, s, m in zip(offs, dilation, strides, out_sp, strict=True)
        )
        patch = x[(slice(None), *idx, slice(None))]  # (B, *out_sp, C)
        for g in range(groups):
            w = kernel[offs][:, g * og : (g + 1) * og]  # (cg, og)
            y[..., g * og : (g + 1) * og] += patch[..., g * cg : (g + 1) * cg] @ w
    if bias is not None:
        y += np.asarray(bias, np.float64)
    return y


def depthwise_conv_nd(x, kernel, **kw):
    """Depthwise conv: kernel ``(*window, 1, C * M)``, channel ``c * M + m`` reads ``c``."""
    return grouped_conv_nd(x, kernel, groups=np.shape(x)[-1], **kw)


def depthwise_conv_loops(x, kernel, *, strides, pads, dilation):
    """The depthwise definition as explicit scalar loops (2-D, zero padding).

    ``y[b, i, j, c*M+m] = sum_{u,v} xpad[b, i*s + u*d, j*s + v*d, c] * k[u, v, 0, c*M+m]``.
    Slow; used on tiny shapes to pin down :func:`grouped_conv_nd` itself.
    """
    x = np.asarray(x, np.float64)
    kernel = np.asarray(kernel, np.float64)
    kh, kw, _, cm = kernel.shape
    c = x.shape[-1]
    mult = cm // c
    xp = np.pad(x, [(0, 0), *pads, (0, 0)])
    (sh, sw), (dh, dw) = strides, dilation
    oh = (xp.shape[1] - dh * (kh - 1) - 1) // sh + 1
    ow = (xp.shape[2] - dw * (kw - 1) - 1) // sw + 1
    y = np.zeros((x.shape[0], oh, ow, cm))
    for b in range(x.shape[0]):
        for i in range(oh):
            for j in range(ow):
                for ch in range(c):
                    for m in range(mult):
                        acc = 0.0
                        for u in range(kh):
                            for v in range(kw):
                                acc += (
                                    xp[b, i * sh + u * dh, j * sw + v * dw, ch]
                                    * kernel[u, v, 0, ch * mult + m]
                                )
                        y[b, i, j, ch * mult + m] = acc
    return y


def pointwise_conv_nd(x, kernel, bias=None):
    """``y[..., n] = sum_c x[..., c] * kernel[c, n] (+ bias[n])`` in float64."""
    y = np.asarray(x, np.float64) @ np.asarray(kernel, np.float64)
    if bias is not None:
        y = y + np.asarray(bias, np.float64)
    return y


def _per_dim(value, n):
    return (value,) * n if np.isscalar(value) else tuple(value)


def _tap_slices(offsets, dilation, strides, out_spatial):
    """Per spatial dim, the positions of the padded input that one tap reads."""
    return tuple(
        slice(o * d, o * d + (size - 1) * s + 1, s)
        for o, d, s, size in zip(offsets, dilation, strides, out_spatial, strict=True)
    )


def depthwise_input_grad_nd(g, kernel, x_shape, *, strides=1, padding="SAME", dilation=1):
    """``d<depthwise_conv_nd(x, kernel), g>/dx`` in float64, zero padding.

    Each tap's contribution ``g * kernel[tap]``, summed over the depth multiplier, is
    added back to the padded input positions that tap read; the padding is cropped.
    ``x_shape`` is ``(B, *spatial, C)``.
    """
    g = np.asarray(g, np.float64)
    kernel = np.asarray(kernel, np.float64)
    n = kernel.ndim - 2
    window, spatial, c = kernel.shape[:n], tuple(x_shape[1:-1]), x_shape[-1]
    strides, dilation = _per_dim(strides, n), _per_dim(dilation, n)
    pads = explicit_padding(padding, spatial, window, strides, dilation)
    m = kernel.shape[-1] // c
    out_spatial = g.shape[1:-1]
    dxpad = np.zeros(
        (x_shape[0], *(s + lo + hi for s, (lo, hi) in zip(spatial, pads, strict=True)), c)
    )
    for offsets in itertools.product(*(range(k) for k in window)):
        contribution = (g * kernel[offsets][0]).reshape(*g.shape[:-1], c, m).sum(axis=-1)
        idx = _tap_slices(offsets, dilation, strides, out_spatial)
        dxpad[(slice(None), *idx, slice(None))] += contribution
    crop = tuple(slice(lo, lo + s) for s, (lo, _) in zip(spatial, pads, strict=True))
    return dxpad[(slice(None), *crop, slice(None))]


def depthwise_kernel_grad_nd(x, g, window, *, strides=1, padding="SAME", dilation=1):
    """``d<depthwise_conv_nd(x, kernel), g>/dkernel`` in float64, zero padding:
    ``dk[tap, 0, c*M+m] = sum_{b,i} xpad[b, i*s + tap*d, c] * g[b, i, c*M+m]``."""
    x = np.asarray(x, np.float64)
    g = np.asarray(g, np.float64)
    n = len(window)
    strides, dilation = _per_dim(strides, n), _per_dim(dilation, n)
    pads = explicit_padding(padding, x.shape[1:-1], window, strides, dilation)
    xpad = np.pad(x, [(0, 0), *pads, (0, 0)])
    m = g.shape[-1] // x.shape[-1]
    dk = np.zeros((*window, 1, g.shape[-1]))
    for offsets in itertools.product(*(range(k) for k in window)):
        idx = _tap_slices(offsets, dilation, strides, g.shape[1:-1])
        patch = np.repeat(xpad[(slice(None), *idx, slice(None))], m, axis=-1)
        dk[(*offsets, 0)] = (patch * g).sum(axis=tuple(range(n + 1)))
    return dk
