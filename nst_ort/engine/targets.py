"""What the training graph is fed at each scale, and the image a scale starts from.

The content and style images are read once; per scale they are resized, recolored (--color) and run
through the eval graph: content features, style Grams (blended into one target, or one per style
with its mask), plus the loss weights. Images are float RGB [H, W, 3] in [0, 1]; the graphs' image
is [1, 3, H, W].
"""
from __future__ import annotations

from typing import Callable

import numpy as np

from ..base.errors import ImageError, UsageError
from ..media import color
from ..media.images import fit_size, load_image, load_mask, resize
from . import contract
from .artifacts import Artifacts
from .config import Config
from .weights import Weights


def chw(image: np.ndarray) -> np.ndarray:
    """[H, W, 3] -> the graphs' [1, 3, H, W] float32."""
    return np.ascontiguousarray(image.transpose(2, 0, 1)[None], dtype=np.float32)


def hwc(x: np.ndarray) -> np.ndarray:
    """[1, 3, H, W] -> [H, W, 3]."""
    return np.ascontiguousarray(x[0].transpose(1, 2, 0))


class Targets:
    """The run's input images and what they become at each scale's size."""

    def __init__(self, config: Config, artifacts: Artifacts, features: Callable[[np.ndarray], dict[str, np.ndarray]],
                 weights: Weights, warn: Callable[[str], None], content: np.ndarray | None = None):
        """features: image [H, W, 3] -> the eval graph's outputs (Graphs.features; sessions are made
        when the first scale needs them, not when the images are read). content: the content image as an
        array instead of reading config.content (a video frame)."""
        self.config, self.artifacts, self.features, self.weights = config, artifacts, features, weights
        notes: list[str] = []
        if content is not None:
            self.content = np.asarray(content, np.float32)
        else:
            self.content = load_image(config.content, notes) if config.content is not None else None
        if not config.styles:
            raise UsageError("at least one style image is needed")
        self.styles = [load_image(s.path, notes) for s in config.styles]
        for n in notes:
            warn(n)
        self.init = config.resolved_init()
        self.init_image = load_image(config.init) if self.init not in ("content", "noise") else None

    # -- sizes ---------------------------------------------------------------------------------
    def size_at(self, long_side: int) -> tuple[int, int]:
        """(width, height) of the image at a scale's long side."""
        if self.content is None:
            tw, th = self.config.texture_size or (self.config.size, self.config.size)
            return fit_size(tw, th, long_side)
        return fit_size(self.content.shape[1], self.content.shape[0], long_side)

    # -- images at a size ----------------------------------------------------------------------
    def content_at(self, size: tuple[int, int]) -> np.ndarray | None:
        if self.content is None:
            return None
        img = resize(self.content, size)
        if self.config.color == "luminance":
            img = color.luminance(img)
        return img

    def style_at(self, k: int, size: tuple[int, int]) -> np.ndarray:
        style = self.styles[k]
        long_side = max(1, round(max(size) * self.config.style_scale))
        img = resize(style, fit_size(style.shape[1], style.shape[0], long_side))
        min_side = self.artifacts.min_size
        if min(img.shape[:2]) < min_side:
            raise ImageError(f"{self.config.styles[k].path}: {img.shape[1]}x{img.shape[0]} after --style-scale is "
                             f"smaller than the network's minimum of {min_side} px")
        ref = resize(self.content, size) if self.content is not None else None
        if ref is not None and self.config.color == "histogram":
            img = color.match_histogram(img, ref)
        elif ref is not None and self.config.color == "luminance":
            img = color.match_luminance(img, ref)
        return img

    def initial(self, size: tuple[int, int], previous: np.ndarray | None, rng: np.random.Generator) -> np.ndarray:
        """The image [1, 3, H, W] a scale starts from: the previous scale's result (coarse-to-fine
        warm start, or an image given to Stylizer.warm_start) resized, else config.init."""
        if previous is not None:
            return chw(resize(hwc(previous), size))
        if self.init == "content":
            return chw(self.content_at(size))
        if self.init == "noise":
            return rng.uniform(0.0, 1.0, (1, 3, size[1], size[0])).astype(np.float32)
        img = resize(self.init_image, size)
        if self.config.color == "luminance":
            img = color.luminance(img)
        return chw(img)

    # -- the training graph's feeds ------------------------------------------------------------
    def feeds(self, size: tuple[int, int], x0: np.ndarray) -> dict[str, np.ndarray]:
        """Every training-graph input but the image, for images of `size` (x0: the start image)."""
        a = self.artifacts
        content = self.content_at(size)
        if content is not None:
            feats = self.features(content)
        else:
            # Texture synthesis: content terms have weight 0; targets only need the right shapes.
            feats = {k: np.zeros_like(v) for k, v in self.features(hwc(x0)).items()}
        weights = np.array([s.weight for s in self.config.styles], np.float32)
        weights = weights / weights.sum()  # Config.validate: not all zero
        grams = [self.features(self.style_at(k, size)) for k in range(len(self.styles))]
        masked = any(s.mask is not None for s in self.config.styles)
        feeds = {contract.content_target(n): feats[contract.content_feature(n)] for n in a.content_layers}
        if masked:
            masks = np.stack([
                load_mask(s.mask, size) if s.mask is not None else np.ones(size[::-1], np.float32)
                for s in self.config.styles])[:, None]
            for n in a.style_layers:
                feeds[contract.style_target(n)] = np.stack([g[contract.gram(n)] for g in grams])
            feeds[contract.STYLE_MASKS] = masks.astype(np.float32)
            feeds[contract.STYLE_WEIGHTS] = weights
        else:
            # Blending Grams (as neural-style does) has the same minimizer as weighting the K style
            # losses, at one Gram per layer instead of K.
            for n in a.style_layers:
                feeds[contract.style_target(n)] = sum(wk * g[contract.gram(n)] for wk, g in zip(weights, grams))[None]
            feeds[contract.STYLE_MASKS] = np.ones((1, 1, size[1], size[0]), np.float32)
            feeds[contract.STYLE_WEIGHTS] = np.ones(1, np.float32)
        feeds.update(self.weights.feeds())
        return feeds
