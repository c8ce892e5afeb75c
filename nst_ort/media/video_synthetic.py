"""A clip with known motion, made from a still image: the ground truth for flow, masks and warping.

A camera pans and zooms over the still (frame t samples the still at q = zoom_t * p + offset_t) and
an optional square object, cut from a second image, slides over it at its own velocity. Everything
that optical flow and Ruder et al.'s mask estimate is then known analytically:

- the backward flow of frame t (where each of its pixels was in frame t-1) and the forward flow,
- which pixels of frame t were visible in frame t-1 (the truth the consistency mask estimates): not
  those that came in over the frame's border, nor the background the object uncovered.

Used by tests/test_video_*.py and benchmarks/video_consistency.py; numpy only.
"""
from __future__ import annotations

import argparse
import dataclasses
import sys
from fractions import Fraction
from pathlib import Path

import numpy as np

from ..base.errors import NstError
from .flow import gaussian_blur, sample_bilinear
from .images import load_image, resize, save_image, to_uint8
from .video_io import container_for, write_video


@dataclasses.dataclass
class Clip:
    frames: list[np.ndarray]  # float32 RGB [H, W, 3] in [0, 1]
    backward: list[np.ndarray | None]  # true flow t -> t-1 [H, W, 2] (None for t = 0)
    forward: list[np.ndarray | None]  # true flow t-1 -> t on frame t-1's pixels (None for t = 0)
    visible: list[np.ndarray | None]  # [H, W] bool: pixel of frame t visible in frame t-1
    object_mask: list[np.ndarray]  # [H, W] bool: pixels covered by the object in frame t


def _grid(w: int, h: int) -> tuple[np.ndarray, np.ndarray]:
    return np.meshgrid(np.arange(w, dtype=np.float64), np.arange(h, dtype=np.float64))


def camera_clip(still: np.ndarray, size: tuple[int, int], frames: int = 6, pan: tuple[float, float] = (2.5, 1.0),
                zoom: float = 1.01, obj: np.ndarray | None = None, obj_size: int = 0,
                obj_start: tuple[float, float] = (0.3, 0.3), obj_velocity: tuple[float, float] = (-3.0, 2.0), blur: float = 1.0) -> Clip:
    """Frames of (width, height) `size` from `still` [Hs, Ws, 3].

    pan: frame pixels per frame the view moves over the still (x, y); zoom: magnification per frame
    (> 1 zooms in, about the frame's centre); obj: texture of a square object of obj_size px that
    starts at obj_start (fraction of the frame) and moves obj_velocity frame pixels per frame.
    The view starts centred on the still at a scale that fits the whole clip inside it. blur: sigma
    (px) of a Gaussian that band-limits the still and the object's texture.
    """
    w, h = size
    # Still pixels per frame pixel at t = 0: the widest view (zoom only narrows it) plus the pan must fit.
    span_x = w + abs(pan[0]) * frames
    span_y = h + abs(pan[1]) * frames
    s0 = 0.95 * min((still.shape[1] - 1) / span_x, (still.shape[0] - 1) / span_y)
    if s0 > 1.1:
        # Sampling a large still sparsely aliases: each frame would see different detail, and no flow
        # could explain it. Shrink the still (Lanczos) to about one still pixel per frame pixel first.
        k = 1.05 / s0
        still = resize(still, (max(2, round(still.shape[1] * k)), max(2, round(still.shape[0] * k))))
        s0 = 0.95 * min((still.shape[1] - 1) / span_x, (still.shape[0] - 1) / span_y)
    if blur > 0:
        # Band-limit the scene: bilinear resampling of detail at the Nyquist limit is not shift-invariant,
        # so even the true flow would leave a warping error of ~1e-3.
        still = np.stack([gaussian_blur(still[..., c].astype(np.float64), blur) for c in range(3)], -1)
    hs, ws = still.shape[:2]
    cx, cy = (w - 1) / 2.0, (h - 1) / 2.0
    zooms = [s0 / zoom ** t for t in range(frames)]  # still px per frame px
    # Offsets: the frame centre looks at the still's centre, moved by the pan (in frame px of frame t).
    centres = [((ws - 1) / 2.0 + zooms[t] * pan[0] * (t - (frames - 1) / 2.0),
                (hs - 1) / 2.0 + zooms[t] * pan[1] * (t - (frames - 1) / 2.0)) for t in range(frames)]

    def to_still(t, x, y):  # frame t pixel -> still coordinates
        return zooms[t] * (x - cx) + centres[t][0], zooms[t] * (y - cy) + centres[t][1]

    def from_still(t, qx, qy):
        return (qx - centres[t][0]) / zooms[t] + cx, (qy - centres[t][1]) / zooms[t] + cy

    gx, gy = _grid(w, h)
    pos = [(obj_start[0] * w + obj_velocity[0] * t, obj_start[1] * h + obj_velocity[1] * t) for t in range(frames)]

    def in_object(t, x, y):
        if obj is None:
            return np.zeros(np.shape(x), bool)
        ox, oy = pos[t]
        return (x >= ox) & (x < ox + obj_size) & (y >= oy) & (y < oy + obj_size)

    still64 = still.astype(np.float64)
    if obj is not None:
        # The object's texture at 1 texture px per frame px (a square crop, shrunk first: no aliasing).
        side = min(obj.shape[:2])
        obj = resize(obj[:side, :side], (obj_size, obj_size))
        if blur > 0:
            obj = np.stack([gaussian_blur(obj[..., c].astype(np.float64), blur) for c in range(3)], -1)
        scale = 1.0
    out = Clip([], [], [], [], [])
    for t in range(frames):
        qx, qy = to_still(t, gx, gy)
        img = sample_bilinear(still64, qx, qy)
        covered = in_object(t, gx, gy)
        if obj is not None:
            tex = sample_bilinear(obj.astype(np.float64), (gx - pos[t][0]) * scale, (gy - pos[t][1]) * scale)
            img = np.where(covered[..., None], tex, img)
        out.frames.append(img.astype(np.float32))
        out.object_mask.append(covered)
        if t == 0:
            out.backward.append(None)
            out.forward.append(None)
            out.visible.append(None)
            continue
        # Background: the same still point in frame t-1. Object: the same object point.
        px, py = from_still(t - 1, qx, qy)
        dx, dy = pos[t - 1][0] - pos[t][0], pos[t - 1][1] - pos[t][1]
        bx = np.where(covered, dx, px - gx)
        by = np.where(covered, dy, py - gy)
        out.backward.append(np.stack([bx, by], -1).astype(np.float32))
        # Forward, on frame t-1's pixels.
        covered_prev = in_object(t - 1, gx, gy)
        fx, fy = from_still(t, *to_still(t - 1, gx, gy))
        out.forward.append(np.stack([np.where(covered_prev, -dx, fx - gx),
                                     np.where(covered_prev, -dy, fy - gy)], -1).astype(np.float32))
        # Visible in t-1: lands inside frame t-1 and, for background, not under the object there.
        lx, ly = gx + bx, gy + by
        inside = (lx >= 0) & (lx <= w - 1) & (ly >= 0) & (ly <= h - 1)
        out.visible.append(inside & (covered | ~in_object(t - 1, lx, ly)))
    return out


def main(argv: list[str] | None = None) -> int:
    """python -m nst_ort.media.video_synthetic STILL OUT: a demo clip with known motion (a video or a folder)."""
    p = argparse.ArgumentParser(prog="python -m nst_ort.media.video_synthetic",
                                description="Make a clip with a known camera motion (pan and zoom) over a still image.")
    p.add_argument("still", help="the still image")
    p.add_argument("output", help="video file (.mp4, .webm, .mkv, .mov) or a folder of PNG frames")
    p.add_argument("--size", default="256x192", help="WxH of the frames (even numbers for a video)")
    p.add_argument("--frames", type=int, default=24)
    p.add_argument("--fps", type=int, default=12)
    p.add_argument("--object", help="an image to cut a moving square from (occlusions for the mask)")
    args = p.parse_args(argv)
    try:
        w, h = (int(v) for v in args.size.lower().split("x"))
        obj = load_image(args.object) if args.object else None
        clip = camera_clip(load_image(args.still), (w, h), frames=args.frames, obj=obj, obj_size=w // 5)
        out = Path(args.output)

        if container_for(out) is not None:
            write_video(out, (to_uint8(f) for f in clip.frames), len(clip.frames), (w, h), Fraction(args.fps))
        else:
            out.mkdir(parents=True, exist_ok=True)
            for i, f in enumerate(clip.frames):
                save_image(f, out / f"{i + 1:06d}.png")
    except NstError as e:
        print(f"nst-ort: error: {e}", file=sys.stderr)
        return e.exit_code
    except ValueError as e:
        print(f"nst-ort: error: {e}", file=sys.stderr)
        return 2
    print(f"wrote {args.output} ({args.frames} frames, {w}x{h})", file=sys.stderr)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
