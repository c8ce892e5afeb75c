"""The shards figure (docs/images/video_shards.png) for benchmarks/video_scaleout.py: each run's warping
error per frame (true flow) with the seam frames shaded and 2x the clip's median marked, and below,
the frames around the first seam of each sharded run. Drawn with Pillow only (no plotting library)."""
from __future__ import annotations

from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw, ImageFont

from nst_ort.media.images import to_uint8

COLORS = [(90, 90, 90), (214, 39, 40), (31, 119, 180), (44, 160, 44)]


def _font(size: int):
    try:
        return ImageFont.load_default(size=size)
    except TypeError:  # Pillow < 10.1: one size
        return ImageFont.load_default()


def _chart(video: dict, starts: list[int], width: int, height: int) -> Image.Image:
    img = Image.new("RGB", (width, height), "white")
    d = ImageDraw.Draw(img)
    font, small = _font(15), _font(12)
    left, right, top, bottom = 70, 20, 60, 46
    names = list(video)
    n = len(next(iter(video.values()))["warping_error_true_flow"]) + 1  # frames
    ymax = max(max(v["warping_error_true_flow"]) for v in video.values()) * 1.1
    x = lambda f: left + (f - 2) * (width - left - right) / max(1, n - 2)  # noqa: E731
    y = lambda e: top + (1 - e / ymax) * (height - top - bottom)  # noqa: E731
    seam_run = names[-1]
    for f in video[seam_run]["seam_frames"]:
        d.rectangle([x(f) - 12, top, x(f) + 12, height - bottom], fill=(255, 236, 200))
    for a in starts:
        d.line([x(a) - 0.5 * (x(3) - x(2)), top, x(a) - 0.5 * (x(3) - x(2)), height - bottom], fill=(150, 150, 150), width=1)
    twice = 2 * video[seam_run]["median"]
    for xx in range(left, width - right, 10):
        d.line([xx, y(twice), xx + 5, y(twice)], fill=COLORS[(len(names) - 1) % len(COLORS)], width=1)
    d.text((width - right - 4, y(twice) - 16), f"2x the median ({seam_run.split(', ')[-1]})", fill=(60, 60, 60),
           font=small, anchor="ra")
    d.line([left, top, left, height - bottom, width - right, height - bottom], fill="black", width=1)
    for k in range(5):
        e = ymax * k / 4
        d.text((left - 6, y(e)), f"{e:.1e}", fill="black", font=small, anchor="rm")
    for f in range(2, n + 1):
        d.text((x(f), height - bottom + 6), str(f), fill="black", font=small, anchor="ma")
    d.text(((left + width - right) / 2, height - 18), "frame (shaded: the seam frames; grey line: where a shard starts)",
           fill="black", font=small, anchor="ma")
    for i, name in enumerate(names):
        pts = [(x(f), y(e)) for f, e in zip(range(2, n + 1), video[name]["warping_error_true_flow"])]
        color = COLORS[i % len(COLORS)]
        d.line(pts, fill=color, width=3)
        for px, py in pts:
            d.ellipse([px - 4, py - 4, px + 4, py + 4], fill=color)
        label = name + (" (frames 2-4: under the sharded runs' lines, the same bytes)" if name == "sequential" else "")
        d.text((left + 100, 4 + 16 * i), label, fill=color, font=font)
    d.text((8, 4), "warping error", fill="black", font=small)
    return img


def _strip(frames: list[np.ndarray], first: int, label: str, width: int) -> Image.Image:
    tiles = [Image.fromarray(to_uint8(f)) for f in frames]
    scale = max(1, (width - 20) // (len(tiles) * tiles[0].width + 10 * len(tiles)))
    tiles = [t.resize((t.width * scale, t.height * scale), Image.NEAREST) for t in tiles]
    img = Image.new("RGB", (width, tiles[0].height + 44), "white")
    d = ImageDraw.Draw(img)
    d.text((10, 4), label, fill="black", font=_font(15))
    xx = 10
    for k, t in enumerate(tiles):
        img.paste(t, (xx, 24))
        d.text((xx + t.width // 2, 26 + t.height), f"frame {first + k}", fill="black", font=_font(12), anchor="ma")
        xx += t.width + 10
    return img


def draw(path: Path, video: dict, frames_of: dict, starts: list[int], args) -> None:
    width = 1100
    parts = [_chart(video, starts, width, 420)]
    a = starts[0]
    for name in video:
        if name == "sequential":
            continue
        lo, hi = max(1, a - 1), min(args.frames, a + 3)
        parts.append(_strip(frames_of[name][lo - 1:hi], lo, f"{name}: frames {lo}-{hi} (the second shard starts at "
                                                            f"frame {a})", width))
    img = Image.new("RGB", (width, sum(p.height for p in parts)), "white")
    yy = 0
    for p in parts:
        img.paste(p, (0, yy))
        yy += p.height
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    img.save(path, optimize=True)
