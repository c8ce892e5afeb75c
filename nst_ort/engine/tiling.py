"""The exact tiled loss and gradient (docs/tiling.md): the image in tiles, each run as a crop with a
halo through the model's tile graphs (manifest "tiling", export/tiled.py), the whole-image parts
(Gram sums, style losses and their dL/dG, TV) on the host.

    layout = Layout.of(H, W, tile, align, halo)        # which pixels each tile owns, which it reads
    step = TiledTrainStep(tiled, feeds, shape, tile)   # the untiled TrainStep's feeds, same call
    loss, closs, sloss, tv, grad = step(x)             # = train.onnx's outputs, up to float32 rounding
    features = tiled_features(tiled, image, tile)      # = Graphs.features(image) (eval targets)

Memory: one crop's activations (two graph runs per tile, each session with its arena), what pass 1
keeps for pass 2 of as many crops as the memory plan allows, and image-sized arrays on the host (the
gradient, the masks at each layer's size, the content targets), never the whole image's activations.
"""
from __future__ import annotations

import dataclasses
import os

import numpy as np
import onnxruntime as ort

from ..base.errors import UsageError
from . import contract
from .artifacts import Artifacts
from .providers import Placement
from .session import make_session, run_error

_AREA_MIN = 1e-6  # the untiled graph's clamp of a mask's area (manual_grad.style_terms)


# --- the layout: which pixels a tile owns and which it reads --------------------------------------


@dataclasses.dataclass(frozen=True)
class Tile:
    own: tuple[int, int, int, int]  # rows [r0, r1), columns [c0, c1) this tile's terms count
    crop: tuple[int, int, int, int]  # rows and columns the tile's graphs read: own + halo, clipped


def _spans(n: int, tile: int) -> list[tuple[int, int]]:
    starts = list(range(0, n, tile))
    return [(a, starts[i + 1] if i + 1 < len(starts) else n) for i, a in enumerate(starts)]


@dataclasses.dataclass(frozen=True)
class Layout:
    height: int
    width: int
    tile: int  # a tile's own size in pixels (a multiple of align); the last ones take what is left
    align: int
    halo: int
    tiles: tuple[Tile, ...]

    @classmethod
    def of(cls, height: int, width: int, tile: int, align: int, halo: int) -> "Layout":
        if tile <= 0 or tile % align:
            raise UsageError(f"--tile {tile}: a tile's size must be a positive multiple of {align} px for this model")
        tiles = []
        for r0, r1 in _spans(height, tile):
            for c0, c1 in _spans(width, tile):
                crop = (max(0, r0 - halo), min(height, r1 + halo), max(0, c0 - halo), min(width, c1 + halo))
                tiles.append(Tile((r0, r1, c0, c1), crop))
        return cls(height, width, tile, align, halo, tuple(tiles))

    def rows_cols(self) -> tuple[int, int]:
        return len(_spans(self.height, self.tile)), len(_spans(self.width, self.tile))

    def largest_crop(self) -> tuple[int, int]:
        """(height, width) of the largest crop: what one tile's activations are sized by."""
        return (max(t.crop[1] - t.crop[0] for t in self.tiles), max(t.crop[3] - t.crop[2] for t in self.tiles))

    def describe(self) -> str:
        r, c = self.rows_cols()
        ch, cw = self.largest_crop()
        return (f"{r}x{c} tiles of {self.tile} px (halo {self.halo} px, grid {self.align} px), "
                f"largest crop {cw}x{ch}, {len(self.tiles)} crops per pass")


def _layer_span(span: tuple[int, int], stride: int, n: int) -> slice:
    """The layer positions of image pixels [a, b) of an image n px long: b at the image's end maps to
    n // stride (floor-mode pools), else b // stride."""
    a, b = span
    return slice(a // stride, n // stride if b == n else b // stride)


# --- bilinear resizing as torch's F.interpolate(mode="bilinear", align_corners=False) -------------


def _interp_matrix(n_in: int, n_out: int) -> np.ndarray:
    """[n_out, n_in] weights of torch's bilinear resize along one axis (size given: scale = in / out)."""
    scale = n_in / n_out
    src = np.maximum((np.arange(n_out, dtype=np.float64) + 0.5) * scale - 0.5, 0.0)
    i0 = np.minimum(np.floor(src).astype(np.int64), n_in - 1)
    i1 = np.minimum(i0 + 1, n_in - 1)
    w1 = src - i0
    m = np.zeros((n_out, n_in))
    np.add.at(m, (np.arange(n_out), i0), 1.0 - w1)
    np.add.at(m, (np.arange(n_out), i1), w1)
    return m


def resize_bilinear(masks: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    """masks [K, 1, H, W] -> [K, 1, h, w] float32, as F.interpolate(bilinear, align_corners=False)."""
    k, _, H, W = masks.shape
    h, w = size
    if (h, w) == (H, W):
        return masks.astype(np.float32)
    ry, rx = _interp_matrix(H, h), _interp_matrix(W, w)
    out = np.einsum("yh,khw,xw->kyx", ry, masks[:, 0].astype(np.float64), rx, optimize=True)
    return out[:, None].astype(np.float32)


# --- sessions ----------------------------------------------------------------------------------------


class TiledGraphs:
    """The model's tile graphs on one placement, and what the manifest says about them.

    Two families (docs/tiling.md): tile_grams + tile_train (pass 2 runs the forward again), and, where
    the folder has them and keep_graphs is True (a run's choice), tile_grams_keep + tile_train_kept
    (pass 1 also returns what the backward needs, pass 2 is the backward alone). Only one family's
    sessions are made: each keeps a CPU arena, and two families would hold four arenas' peaks."""

    def __init__(self, artifacts: Artifacts, placement: Placement, variant: str | None = None,
                 keep_graphs: bool = False):
        """variant: "cpu" (the Winograd graphs) or "plain"; None: as the training graph would be chosen."""
        entry = tiling_entry(artifacts)
        if entry is None:
            raise UsageError(no_tiling_reason(artifacts))
        self.artifacts, self.placement = artifacts, placement
        self.align, self.halo = int(entry["align"]), int(entry["halo"])
        self.strides = {n: int(s) for n, s in entry["strides"].items()}
        cpu, self.keeps = graph_family(entry, placement, variant, keep_graphs)
        self.variant = "cpu" if cpu else "plain"
        suffix = "_cpu" if cpu else ""
        first, second = ("grams_keep", "train_kept") if self.keeps else ("grams", "train")
        # CPU arenas on both: without one every run maps its activations afresh and the kernel zeroes
        # each page on first touch (measured at 1024x768, one tile: 2.07 M page faults and 3.8 s of
        # system time per step, 10.4 s of CPU time against 5.7 s with arenas). The arenas keep both passes' peaks
        # for the session's life: memory.tiled_estimate counts pass 1's beside pass 2's.
        self.grams = make_session(artifacts.path_of(entry[first + suffix]["file"]), placement)
        self.train = make_session(artifacts.path_of(entry[second + suffix]["file"]), placement)
        self.kept_names = ([o.name for o in self.grams.get_outputs() if o.name.startswith("kept.")]
                           + [o.name for o in self.grams.get_outputs() if o.name.startswith("feature.")])

    def features_name(self, layer: str) -> str:
        """Pass 1's output of a content layer's features in this family."""
        return f"feature.{layer}" if self.keeps else contract.content_feature(layer)

    def run(self, sess: ort.InferenceSession, outputs, feeds: dict, what: str):
        try:
            return sess.run(outputs, feeds)
        except Exception as e:  # noqa: BLE001
            raise run_error(e, what) from None


def graph_family(entry: dict, placement: Placement, variant: str | None = None,
                 keep_graphs: bool = True) -> tuple[bool, bool]:
    """(Winograd graphs, keep graphs) a placement runs from a "tiling" entry. variant None: as
    Artifacts.train_graph_path, the Winograd graphs on the CPU provider unless NST_ORT_TRAIN_GRAPH=train
    (comparisons); no fp16 tile graphs (--precision fp16 runs the fp32 ones). The keep graphs where
    asked for and the folder has them (older folders: pass 2 runs the forward again)."""
    if variant is None:
        cpu = (placement.train_variant == "cpu" and "train_cpu" in entry
               and os.environ.get("NST_ORT_TRAIN_GRAPH") != "train")
    else:
        cpu = variant == "cpu"
    suffix = "_cpu" if cpu else ""
    keeps = (keep_graphs and f"grams_keep{suffix}" in entry and f"train_kept{suffix}" in entry
             and "kept_bytes_per_pixel" in entry)
    return cpu, keeps


def kept_bytes(artifacts: Artifacts, placement: Placement) -> float:
    """Bytes per crop pixel pass 1 keeps for pass 2 on this placement (0: the keep graphs are not used)."""
    entry = tiling_entry(artifacts)
    return float(entry["kept_bytes_per_pixel"]) if entry and graph_family(entry, placement)[1] else 0.0


def tiling_entry(artifacts: Artifacts) -> dict | None:
    entry = artifacts.manifest.get("tiling")
    return entry if isinstance(entry, dict) and entry.get("format") == 1 else None


def no_tiling_reason(artifacts: Artifacts) -> str:
    return (f"--tile: {artifacts.path} has no tiled graphs (manifest.json has no \"tiling\" entry); add them with "
            "python -m nst_ort_export.tiled MODEL (VGG-like models only), or leave --tile out")


# --- the training step ------------------------------------------------------------------------------


def tv_term(x: np.ndarray, weight: float) -> tuple[float, np.ndarray]:
    """(tv, weight * dtv/dx) on the whole image, as manual_grad.tv_term (local, so not tiled)."""
    dx = x[:, :, :, 1:] - x[:, :, :, :-1]
    dy = x[:, :, 1:, :] - x[:, :, :-1, :]
    tv = float((dx * dx).mean(dtype=np.float64) + (dy * dy).mean(dtype=np.float64))
    gx = dx * np.float32(weight * 2.0 / dx.size)
    gy = dy * np.float32(weight * 2.0 / dy.size)
    g = np.zeros_like(x)
    g[:, :, :, 1:] += gx
    g[:, :, :, :-1] -= gx
    g[:, :, 1:, :] += gy
    g[:, :, :-1, :] -= gy
    return tv, g


class _LayerMasks:
    """Each layer's masks at the whole image's layer size (resized from the image-size masks once)."""

    def __init__(self, masks: np.ndarray, strides: dict[str, int], layers: list[str]):
        H, W = masks.shape[2:]
        self.full = {n: resize_bilinear(masks, (H // strides[n], W // strides[n])) for n in layers}
        self.area = {n: np.maximum(m.sum(axis=(1, 2, 3), dtype=np.float64), _AREA_MIN) for n, m in self.full.items()}


def _crop_feed(full: np.ndarray, tile: Tile, stride: int, H: int, W: int) -> np.ndarray:
    """A whole-image layer array [.., h, w] cut to the tile's crop, zero outside the tile's own positions."""
    r0, r1, c0, c1 = tile.crop
    cy = _layer_span((r0, r1), stride, H)
    cx = _layer_span((c0, c1), stride, W)
    oy = _layer_span(tile.own[:2], stride, H)
    ox = _layer_span(tile.own[2:], stride, W)
    out = np.zeros(full.shape[:-2] + (cy.stop - cy.start, cx.stop - cx.start), np.float32)
    out[..., oy.start - cy.start:oy.stop - cy.start, ox.start - cx.start:ox.stop - cx.start] = full[..., oy, ox]
    return out


def _crop(full: np.ndarray, tile: Tile, stride: int, H: int, W: int) -> np.ndarray:
    r0, r1, c0, c1 = tile.crop
    return np.ascontiguousarray(full[..., _layer_span((r0, r1), stride, H), _layer_span((c0, c1), stride, W)])


class TiledTrainStep:
    """TrainStep's interface (session.py) on the tile graphs: x [1, 3, H, W] -> (loss, content_losses,
    style_losses, tv_loss, image_grad), from the untiled training graph's feeds.

    keep: with the keep family (TiledGraphs.keeps), how many tiles keep pass 1's outputs for pass 2
    (the last ones of pass 1, whose pass 2 runs first; None: all): the others run pass 1's graph
    again in pass 2. The memory plan (memory.plan_tiling) says how many fit."""

    def __init__(self, tiled: TiledGraphs, feeds: dict[str, np.ndarray], shape: tuple[int, ...], tile: int,
                 keep: int | None = None):
        a = tiled.artifacts
        self.tiled, self.shape = tiled, tuple(shape)
        H, W = self.shape[2:]
        self.layout = Layout.of(H, W, tile, tiled.align, tiled.halo)
        n = len(self.layout.tiles)
        self.keep = 0 if not tiled.keeps else n if keep is None else max(0, min(n, keep))
        self.content, self.style = list(a.content_layers), list(a.style_layers)
        self.clw = np.asarray(feeds[contract.CONTENT_LAYER_WEIGHTS], np.float64)
        self.slw = np.asarray(feeds[contract.STYLE_LAYER_WEIGHTS], np.float64)
        self.sw = np.asarray(feeds[contract.STYLE_WEIGHTS], np.float64)
        self.tw = np.asarray(feeds[contract.TERM_WEIGHTS], np.float64)
        self.ctargets = {n: feeds[contract.content_target(n)] for n in self.content}
        self.stargets = {n: np.asarray(feeds[contract.style_target(n)], np.float64) for n in self.style}
        self.masks = _LayerMasks(feeds[contract.STYLE_MASKS], tiled.strides, self.style)
        self.content_weights = (self.tw[0] * self.clw).astype(np.float32)
        self.content_norms = np.array([1.0 / self.ctargets[n].size for n in self.content], np.float32)
        self.cfull = {n: np.ones((1, 1) + self.ctargets[n].shape[2:], np.float32) for n in self.content}

    def _style_masks(self, tile: Tile) -> dict[str, np.ndarray]:
        H, W = self.shape[2:]
        return {f"style_mask.{n}": _crop_feed(self.masks.full[n], tile, self.tiled.strides[n], H, W) for n in self.style}

    def _style_grads(self, parts: dict[str, np.ndarray]) -> tuple[np.ndarray, dict[str, np.ndarray]]:
        """Style losses [ns] and E = sym(dL/dG) / area per layer, from the summed Gram parts
        (manual_grad.style_terms' arithmetic on the whole image's Grams)."""
        losses, grads = [], {}
        for j, n in enumerate(self.style):
            area = self.masks.area[n][:, None, None]
            diff = parts[n] / area - self.stargets[n]
            c = diff.shape[1]
            losses.append(float(((diff * diff).mean(axis=(1, 2)) * self.sw).sum()))
            e = diff * (self.sw * (self.tw[1] * self.slw[j] * 2.0 / (c * c)))[:, None, None]
            grads[n] = ((e + e.transpose(0, 2, 1)) / area).astype(np.float32)
        return np.array(losses), grads

    def _terms(self, tile: Tile, sgrads: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        """Pass 2's feeds besides the crop (or what pass 1 kept of it)."""
        H, W = self.shape[2:]
        feeds = {**self._style_masks(tile), "content_weights": self.content_weights,
                 "content_norms": self.content_norms}
        for n in self.content:
            s = self.tiled.strides[n]
            feeds[f"content_mask.{n}"] = _crop_feed(self.cfull[n], tile, s, H, W)
            feeds[contract.content_target(n)] = _crop(self.ctargets[n], tile, s, H, W)
        for n in self.style:
            feeds[f"style_grad.{n}"] = sgrads[n]
        return feeds

    def __call__(self, x: np.ndarray) -> tuple:
        x = np.ascontiguousarray(x, dtype=np.float32)
        t, tiles = self.tiled, self.layout.tiles
        first_kept = len(tiles) - self.keep
        parts = {n: 0.0 for n in self.style}
        names = [f"gram_part.{n}" for n in self.style]
        kept: dict[int, dict[str, np.ndarray]] = {}
        for i, tile in enumerate(tiles):  # pass 1: the whole image's Grams, part by part
            r0, r1, c0, c1 = tile.crop
            feeds = {contract.IMAGE: np.ascontiguousarray(x[:, :, r0:r1, c0:c1]), **self._style_masks(tile)}
            want = names + t.kept_names if i >= first_kept else names
            outs = t.run(t.grams, want, feeds, f"tile graph (Grams) at {c1 - c0}x{r1 - r0}")
            for n, p in zip(self.style, outs):
                parts[n] = parts[n] + p.astype(np.float64)
            if i >= first_kept:
                kept[i] = dict(zip(t.kept_names, outs[len(names):]))
        sloss, sgrads = self._style_grads(parts)
        closs = np.zeros(len(self.content))
        grad = np.zeros_like(x)
        # pass 2: content terms and the backward, given dL/dG; the kept tiles first (the last of pass 1
        # first), each tile's kept arrays freed after its run
        for i in [*range(len(tiles) - 1, first_kept - 1, -1), *range(first_kept)]:
            tile = tiles[i]
            r0, r1, c0, c1 = tile.crop
            feeds = self._terms(tile, sgrads)
            crop = np.ascontiguousarray(x[:, :, r0:r1, c0:c1])
            if not t.keeps:
                feeds[contract.IMAGE] = crop
            elif i in kept:
                feeds.update(kept.pop(i))
            else:  # not kept: pass 1's graph again for this crop
                again = {contract.IMAGE: crop, **self._style_masks(tile)}
                outs = t.run(t.grams, t.kept_names, again, f"tile graph (Grams) at {c1 - c0}x{r1 - r0}")
                feeds.update(zip(t.kept_names, outs))
            cl, g = t.run(t.train, ["content_losses", "image_grad"], feeds, f"tile graph (training) at {c1 - c0}x{r1 - r0}")
            del feeds
            closs += cl
            grad[:, :, r0:r1, c0:c1] += g  # halos overlap: each tile adds its positions' share
        tv, tv_grad = tv_term(x, float(self.tw[2]))
        grad += tv_grad
        total = float(self.tw[0] * (closs * self.clw).sum() + self.tw[1] * (sloss * self.slw).sum() + self.tw[2] * tv)
        return total, closs, sloss, tv, grad


def tiled_features(tiled: TiledGraphs, image: np.ndarray, tile: int, keep: set[str] | None = None) -> dict[str, np.ndarray]:
    """Graphs.features (the eval graph's outputs) computed tile by tile: image [H, W, 3] ->
    {'content.<layer>': [1, C, h, w], 'gram.<layer>': [C, C]} (a print-size style image fits).
    keep: the content layers to assemble (None: all); the others come back as zeros that take no
    memory (a layer of content weight 0 at 8192x6144 would hold 2 GB)."""
    a = tiled.artifacts
    x = np.ascontiguousarray(image.transpose(2, 0, 1)[None], dtype=np.float32)
    H, W = x.shape[2:]
    layout = Layout.of(H, W, tile, tiled.align, tiled.halo)
    content, style = list(a.content_layers), list(a.style_layers)
    out: dict[str, np.ndarray] = {}
    parts = {n: 0.0 for n in style}
    names = [tiled.features_name(n) for n in content] + [f"gram_part.{n}" for n in style]
    for tile in layout.tiles:
        r0, r1, c0, c1 = tile.crop
        feeds = {contract.IMAGE: np.ascontiguousarray(x[:, :, r0:r1, c0:c1])}
        for n in style:
            s = tiled.strides[n]
            ones = np.ones((1, 1, H // s, W // s), np.float32)
            feeds[f"style_mask.{n}"] = _crop_feed(ones, tile, s, H, W)
        outs = tiled.run(tiled.grams, names, feeds, f"tile graph (features) at {c1 - c0}x{r1 - r0}")
        for n, f in zip(content, outs[:len(content)]):
            s = tiled.strides[n]
            if keep is not None and n not in keep:
                continue
            if contract.content_feature(n) not in out:
                out[contract.content_feature(n)] = np.zeros((1, f.shape[1], H // s, W // s), np.float32)
            cy, cx = _layer_span(tile.crop[:2], s, H), _layer_span(tile.crop[2:], s, W)
            oy, ox = _layer_span(tile.own[:2], s, H), _layer_span(tile.own[2:], s, W)
            out[contract.content_feature(n)][..., oy, ox] = f[..., oy.start - cy.start:oy.stop - cy.start,
                                                             ox.start - cx.start:ox.stop - cx.start]
        for n, p in zip(style, outs[len(content):]):
            parts[n] = parts[n] + p[0].astype(np.float64)
    for n in content:
        if keep is not None and n not in keep:
            s, c = tiled.strides[n], int(a.layer_info[n]["channels"])
            out[contract.content_feature(n)] = np.broadcast_to(np.float32(0), (1, c, H // s, W // s))
    for n in style:
        s = tiled.strides[n]
        out[contract.gram(n)] = (parts[n] / max((H // s) * (W // s), _AREA_MIN)).astype(np.float32)
    return out
