"""Optical flow, warping, the consistency mask of Ruder et al. 2016 and the warping error of Lai et al. 2018.

Conventions (OpenCV's): a flow field `w` [H, W, 2] (x, y) from image `a` to image `b` says where each
pixel of `a` is in `b`: a(p) ~ b(p + w(p)). For frame t of a video:

- backward flow `w_b = flow(frame_t, frame_{t-1})` (defined on frame t's pixels),
- forward flow `w_f = flow(frame_{t-1}, frame_t)` (defined on frame t-1's pixels),
- `warp(prev, w_b)` brings an image aligned with frame t-1 onto frame t's pixels,
- `consistency(w_b, w_f)` is Ruder et al.'s mask c on frame t: 1 where the pixel was visible in t-1.

Images are float [H, W, C] (RGB in [0, 1] in this package). OpenCV (`nst-ort[video]`) is only
needed for `optical_flow`; warping, the mask and the metric are numpy.
"""
from __future__ import annotations

import numpy as np

from ..base.extras import require

METHODS = ("dis", "farneback")


def _gray8(image: np.ndarray) -> np.ndarray:
    """RGB float [0, 1] -> 8-bit luma (DIS works on 8-bit single-channel images)."""
    if image.ndim == 3:
        image = image @ np.array([0.299, 0.587, 0.114], dtype=np.float32)
    return (np.clip(image, 0.0, 1.0) * 255.0 + 0.5).astype(np.uint8)


def optical_flow(a: np.ndarray, b: np.ndarray, method: str = "dis") -> np.ndarray:
    """Dense flow from a to b, float32 [H, W, 2].

    Deviation: Ruder et al. used DeepFlow/EpicFlow; this uses OpenCV's DIS (Kroeger et al. 2016,
    with variational refinement) or Farneback, which ship in the opencv-python-headless wheel and
    run in real time on a CPU. Accuracy on known motion: tests/test_video_flow.py.
    """
    cv2 = require("cv2", "optical flow")
    ga, gb = _gray8(a), _gray8(b)
    if method == "dis":
        dis = cv2.DISOpticalFlow_create(cv2.DISOPTICAL_FLOW_PRESET_MEDIUM)
        flow = dis.calc(ga, gb, None)
    elif method == "farneback":
        flow = cv2.calcOpticalFlowFarneback(ga, gb, None, pyr_scale=0.5, levels=4, winsize=15, iterations=5,
                                            poly_n=5, poly_sigma=1.1, flags=0)
    else:
        raise ValueError(f"unknown flow method {method!r} (one of {', '.join(METHODS)})")
    return np.ascontiguousarray(flow, dtype=np.float32)


def sample_bilinear(image: np.ndarray, x: np.ndarray, y: np.ndarray) -> np.ndarray:
    """image [H, W, C] sampled at float coordinates (clamped to the border), bilinear."""
    h, w = image.shape[:2]
    x = np.clip(x, 0.0, w - 1.0)
    y = np.clip(y, 0.0, h - 1.0)
    x0 = np.minimum(np.floor(x).astype(np.int64), w - 2) if w > 1 else np.zeros(x.shape, np.int64)
    y0 = np.minimum(np.floor(y).astype(np.int64), h - 2) if h > 1 else np.zeros(y.shape, np.int64)
    x1, y1 = np.minimum(x0 + 1, w - 1), np.minimum(y0 + 1, h - 1)
    ax, ay = (x - x0)[..., None], (y - y0)[..., None]
    top = image[y0, x0] * (1 - ax) + image[y0, x1] * ax
    bottom = image[y1, x0] * (1 - ax) + image[y1, x1] * ax
    return top * (1 - ay) + bottom * ay


def warp(image: np.ndarray, flow: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """out(p) = image(p + flow(p)), bilinear. Returns (out [H, W, C], inside [H, W] bool): where
    p + flow(p) falls outside the image, out holds the nearest border pixel and inside is False."""
    h, w = flow.shape[:2]
    squeeze = image.ndim == 2
    img = image[..., None] if squeeze else image
    gx, gy = np.meshgrid(np.arange(w, dtype=np.float64), np.arange(h, dtype=np.float64))
    x, y = gx + flow[..., 0], gy + flow[..., 1]
    inside = (x >= 0) & (x <= w - 1) & (y >= 0) & (y <= h - 1)
    out = sample_bilinear(img.astype(np.float64), x, y).astype(image.dtype if image.dtype.kind == "f" else np.float32)
    return (out[..., 0] if squeeze else out), inside


def _central_gradient(f: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """d/dx, d/dy with the kernel [-0.5, 0, 0.5] (consistencyChecker's CDerivative(3)), edges replicated."""
    p = np.pad(f, ((1, 1), (1, 1)), mode="edge")
    return 0.5 * (p[1:-1, 2:] - p[1:-1, :-2]), 0.5 * (p[2:, 1:-1] - p[:-2, 1:-1])


def gaussian_blur(f: np.ndarray, sigma: float = 0.8, precision: float = 2.0) -> np.ndarray:
    """Separable Gaussian as consistencyChecker's CSmooth(0.8, 2): radius ceil(precision*sigma), normalized."""
    r = int(np.ceil(precision * sigma))
    k = np.exp(-np.arange(-r, r + 1) ** 2 / (2 * sigma * sigma))
    k /= k.sum()
    p = np.pad(f, ((0, 0), (r, r)), mode="symmetric")
    f = sum(k[i] * p[:, i:i + f.shape[1]] for i in range(2 * r + 1))
    p = np.pad(f, ((r, r), (0, 0)), mode="symmetric")
    return sum(k[i] * p[i:i + f.shape[0]] for i in range(2 * r + 1))


def consistency(backward: np.ndarray, forward: np.ndarray, smooth: bool = True) -> np.ndarray:
    """Ruder et al. 2016's per-pixel weight c [H, W] in [0, 1] for frame t (1: visible in t-1).

    backward: flow t -> t-1 on frame t's pixels; forward: flow t-1 -> t on frame t-1's pixels. As the
    authors' consistencyChecker (artistic-videos, consistencyChecker.cpp):
      - 0 where p + w_b(p) leaves the image;
      - disocclusion where the round trip does not come back:
        |w_b(p) + w_f(p + w_b(p))|^2 >= 0.01 (|w_b|^2 + |w_f(p + w_b)|^2) + 0.5;
      - 0 on motion boundaries: |grad u_b|^2 + |grad v_b|^2 > 0.01 |w_b|^2 + 0.002;
      - then a Gaussian (sigma 0.8) with disocclusions at -1 so that the blur spreads outwards,
        clipped to [0, 1].
    """
    h, w = backward.shape[:2]
    b = backward.astype(np.float64)
    gx, gy = np.meshgrid(np.arange(w, dtype=np.float64), np.arange(h, dtype=np.float64))
    bx, by = gx + b[..., 0], gy + b[..., 1]
    # Deviation: the checker asks floor(x) + 1 < W, which also drops every pixel that lands exactly on
    # the last column or row (zero flow included); here the landing point only has to be in the image.
    inside = (bx >= 0) & (bx <= w - 1) & (by >= 0) & (by <= h - 1)
    f_at = sample_bilinear(forward.astype(np.float64), bx, by)  # w_f(p + w_b(p))
    u, v = f_at[..., 0], f_at[..., 1]
    back = (bx + u - gx) ** 2 + (by + v - gy) ** 2
    mag = b[..., 0] ** 2 + b[..., 1] ** 2
    occluded = back >= 0.01 * (mag + u * u + v * v) + 0.5
    dux, duy = _central_gradient(b[..., 0])
    dvx, dvy = _central_gradient(b[..., 1])
    edge = dux ** 2 + duy ** 2 + dvx ** 2 + dvy ** 2 > 0.01 * mag + 0.002
    c = np.ones((h, w))
    c[inside & edge] = 0.0
    c[inside & occluded] = -1.0  # after the motion-boundary test: the checker `continue`s on occlusion first
    c[~inside] = 0.0
    if smooth:
        c = gaussian_blur(c)
    return np.clip(c, 0.0, 1.0).astype(np.float32)


def warping_error(current: np.ndarray, previous: np.ndarray, backward: np.ndarray, mask: np.ndarray) -> float:
    """Lai et al. 2018's warping error between output frames t and t-1:

        E = sum_p M(p) ||O_t(p) - warp(O_{t-1}, w_b)(p)||^2 / sum_p M(p)

    with ||.||^2 summed over the RGB channels of [0, 1] images, M the non-occlusion mask (Lai et
    al. binarize Ruder et al.'s; pass `consistency(...) >= 0.5`) and w_b the backward flow computed
    on the *input* frames. Pixels whose warp leaves the image never count. Returns 0 for an empty mask.
    """
    warped, inside = warp(previous.astype(np.float64), backward)
    m = mask.astype(np.float64) * inside
    total = m.sum()
    if total <= 0:
        return 0.0
    d = ((current.astype(np.float64) - warped) ** 2).sum(axis=-1)
    return float((m * d).sum() / total)
