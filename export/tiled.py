"""The tiled loss and gradient: two graphs per crop of the image, exact (not an approximation).

Every term of the Gatys loss is a sum over feature positions: content and TV are local, and a Gram
matrix is the sum of each position's outer product. So the loss and its image gradient can be
computed tile by tile, exactly, in two passes (docs/tiling.md has the protocol and host-side math):

    pass 1, tile_grams.onnx:  crop, its style masks  -> content.<layer> (the crop's features),
                              gram_part.<layer> [K, C, C] = sum over OWNED positions of (F m)(F m)^T
    host:                     G = sum of the parts / area; style losses; E = sym(dL/dG) / area
    pass 2, tile_train.onnx:  crop, masks, E, content-target crops, weights, 1/numel
                              -> content_losses [nc] (the crop's share of the means), image_grad [1,3,h,w]
                              (content + style; TV is done on the host, on the whole image)

or, keeping pass 1's activations for pass 2 (where the runtime's memory allows):

    pass 1, tile_grams_keep.onnx:  as tile_grams -> gram parts, kept.* (what manual_grad's backward
                                   keeps from its forward and the features do not give: the masks of
                                   untapped ReLUs, the max pools' hit masks) and feature.<layer> for
                                   every tapped layer
    pass 2, tile_train_kept.onnx:  kept.*, feature.*, and tile_train's inputs but the crop -> its outputs
                                   (the backward alone: no second forward)

A crop is the tile's own pixels [a, b) plus a halo, a and b on the pool grid (`align`: the product of
the pools' strides), clipped at the image's border. Ownership is folded into the masks the runtime
feeds (0 where the tile does not own the position), so each position's terms are counted once.
The halo covers the cone of every owned position through the network (`receptive_halo`), so that the
crop's activations and backward at those positions are the whole image's: zero padding at a clipped
border is the whole image's own, and floor-mode pools see the same windows because crops start on the
pool grid and end on it or at the image's end.

Only for networks `manual_grad.plan` accepts (conv / ReLU / 2x2-pool stacks: every VGG), whose
forward and backward it reuses: a graph for the CUDA-style convolutions (tile_*.onnx) and one with
Winograd convolutions for the CPU provider (tile_*_cpu.onnx), as train.onnx / train_cpu.onnx.

    python -m nst_ort_export.tiled MODEL_FOLDER     # adds the graphs in place (weights.bin reused)
"""
from __future__ import annotations

import math
from pathlib import Path

import onnx
import torch
import torch.nn.functional as F
from torch.export import Dim

from . import manual_grad
from .gradient import lower
from .manual_grad import ManualGradient, Step
from .manual_ops import maxpool2
from .network import Backbone
from .spec import GraphSpec, graph_tensors

FORMAT = 1
FILES = {"grams": "tile_grams.onnx", "train": "tile_train.onnx",
         "grams_cpu": "tile_grams_cpu.onnx", "train_cpu": "tile_train_cpu.onnx",
         "grams_keep": "tile_grams_keep.onnx", "train_kept": "tile_train_kept.onnx",
         "grams_keep_cpu": "tile_grams_keep_cpu.onnx", "train_kept_cpu": "tile_train_kept_cpu.onnx"}


def receptive_halo(steps: list[Step], taps: set[str]) -> tuple[int, int]:
    """(align, halo) for the deepest tapped layer: align = the product of the pools' strides (crops
    start on this grid so that every pool sees the whole image's windows); halo = the largest distance
    from a position's own pixels [i s, (i+1) s) to a pixel in its receptive field, rounded up to align."""
    deepest = max(i for i, s in enumerate(steps) if s.name in taps)
    size, jump, pad = 1, 1, 0  # receptive field size, stride so far, left offset of the field
    for name, kind, m in steps[:deepest + 1]:
        if kind == "conv":
            k, p = m.kernel_size[0], m.padding[0]
            if m.kernel_size[1] != k or m.padding[1] != p:
                raise ValueError(f"{name}: tiling assumes square kernels and padding")
            size += (k - 1) * jump
            pad += p * jump
        elif kind in ("maxpool", "avgpool"):
            size += jump
            jump *= 2
    left = pad  # position i's field starts at i*jump - pad
    right = size - jump - pad  # ... and ends at (i+1)*jump - 1 + right
    halo = math.ceil(max(left, right, 0) / jump) * jump
    return jump, halo


class TiledGradient(ManualGradient):
    """The two tile functions on manual_grad's forward and backward."""

    def _features(self, P, image):
        """Forward only (pass 1 keeps nothing for a backward)."""
        h = (image.flip(1) if self.flip else image) * P["pre.scale"] + P["pre.shift"]
        feats = {}
        last = max(i for i, s in enumerate(self.steps) if s.name in self.taps)
        for name, kind, m in self.steps[:last + 1]:
            if kind == "conv":
                h = self.conv(P, name, m, h)
            elif kind == "relu":
                h = torch.relu(h)
            elif kind == "maxpool":
                h = maxpool2(h)
            else:
                h = F.avg_pool2d(h, 2, 2)
            if name in self.taps:
                feats[name] = h
        return feats

    def grams(self, image, *rest):
        """(image, *style_masks, *params) -> (*content features, *gram parts)."""
        spec = self.spec
        ns = len(spec.style)
        masks, params = rest[:ns], rest[ns:]
        feats = self._features(dict(zip(spec.param_names, params)), image)
        return tuple(feats[n] for n in spec.content) + tuple(self._gram_parts(feats, masks))

    def _gram_parts(self, feats, masks) -> list:
        parts = []
        for name, mask in zip(self.spec.style, masks):
            f = feats[name]
            c, hh, ww = f.shape[1], f.shape[2], f.shape[3]
            fm = f.reshape(1, c, hh * ww) * mask.reshape(mask.shape[0], 1, hh * ww)  # [K, C, M]
            parts.append(torch.bmm(fm, fm.transpose(1, 2)))  # unnormalised: the host divides by the area
        return parts

    def train(self, image, *rest):
        """(image, *style_masks, *content_masks, *content_targets, *style_grads, content_weights,
        content_norms, *params) -> (content_losses [nc], image_grad)."""
        spec = self.spec
        nc, ns = len(spec.content), len(spec.style)
        P = dict(zip(spec.param_names, rest[2 * ns + 2 * nc + 2:]))
        x = image.flip(1) if self.flip else image
        feats, saved = self.forward(P, x * P["pre.scale"] + P["pre.shift"])
        return self._terms_backward(P, feats, saved, rest[:2 * ns + 2 * nc + 2])

    def _terms_backward(self, P, feats, saved, terms):
        """Pass 2 from the crop's features and what its backward needs: content losses and the image
        gradient. terms: (*style_masks, *content_masks, *content_targets, *style_grads, content_weights,
        content_norms)."""
        spec = self.spec
        nc, ns = len(spec.content), len(spec.style)
        smasks, cmasks = terms[:ns], terms[ns:ns + nc]
        ctargets, sgrads = terms[ns + nc:ns + 2 * nc], terms[ns + 2 * nc:2 * ns + 2 * nc]
        cw, cn = terms[2 * ns + 2 * nc], terms[2 * ns + 2 * nc + 1]
        scale = P["pre.scale"]
        grads: dict[str, torch.Tensor] = {}
        losses = []
        for j, (name, target, cm) in enumerate(zip(spec.content, ctargets, cmasks)):
            # the untiled term is mean((F - P)^2) over the whole layer: cn[j] = 1 / its numel
            d = (feats[name] - target) * cm
            losses.append((d * d).sum() * cn[j])
            manual_grad._add(grads, name, d * (cw[j] * 2.0 * cn[j]))
        for name, m, e in zip(spec.style, smasks, sgrads):
            # e [K, C, C]: sym(dL/dG_k) / area_k from the host (weights folded in), as style_terms
            f = feats[name]
            c, hh, ww = f.shape[1], f.shape[2], f.shape[3]
            k = e.shape[0]
            m = m.reshape(k, 1, hh * ww)
            lhs = e.transpose(0, 1).reshape(c, k * c)
            rhs = (f.reshape(1, c, hh * ww) * (m * m)).reshape(k * c, hh * ww)
            manual_grad._add(grads, name, torch.mm(lhs, rhs).reshape(1, c, hh, ww))
        g = self.backward(P, grads, saved) * scale
        if self.flip:
            g = g.flip(1)
        return torch.stack(losses), g

    # --- keeping pass 1's activations for pass 2 (where memory allows) ---------------------------

    def kept(self) -> list[tuple[int, str]]:
        """(step, output name) of what the backward needs from the forward and cannot get from the
        tapped features: the masks of ReLUs that are not tapped (a tapped one's is its feature > 0) and
        the max pools' hit masks (1/count is recomputed from them). An average pool needs only its
        input's size, taken from the ReLU before it (VGG: a pool always follows a ReLU)."""
        out = []
        for i, (name, kind, _m) in enumerate(self.steps):
            if kind == "relu" and i not in self.fused_relu and name not in self.taps:
                out.append((i, f"kept.{name}.mask"))
            elif kind == "maxpool":
                out.append((i, f"kept.{name}.hit"))
            elif kind == "avgpool" and not (i > 0 and self.steps[i - 1].kind == "relu"
                                            and i - 1 not in self.fused_relu):
                raise ValueError(f"{name}: an average pool after no ReLU mask (its input size is not kept)")
        return out

    def grams_keep(self, image, *rest):
        """(image, *style_masks, *params) -> (*gram parts, *kept, *tapped features): pass 1 with what
        pass 2's backward needs, so that pass 2 (train_kept) runs no forward."""
        spec = self.spec
        ns = len(spec.style)
        masks, params = rest[:ns], rest[ns:]
        P = dict(zip(spec.param_names, params))
        x = image.flip(1) if self.flip else image
        feats, saved = self.forward(P, x * P["pre.scale"] + P["pre.shift"])
        parts = self._gram_parts(feats, masks)
        return tuple(parts) + tuple(saved[i][0] for i, _ in self.kept()) + tuple(feats[n] for n in spec.taps)

    def train_kept(self, *rest):
        """(*kept, *tapped features, *style_masks, *content_masks, *content_targets, *style_grads,
        content_weights, content_norms, *params) -> (content_losses [nc], image_grad): pass 2 given
        grams_keep's outputs for the same crop; the backward's saved tuples rebuilt as forward makes them."""
        spec = self.spec
        kept = self.kept()
        nk, nt = len(kept), len(spec.taps)
        nterms = 2 * len(spec.style) + 2 * len(spec.content) + 2
        P = dict(zip(spec.param_names, rest[nk + nt + nterms:]))
        given = {i: t for (i, _n), t in zip(kept, rest[:nk])}
        feats = dict(zip(spec.taps, rest[nk:nk + nt]))
        saved: dict[int, tuple] = {}
        for i, (name, kind, _m) in enumerate(self.steps):
            if kind == "relu" and i not in self.fused_relu:
                saved[i] = (feats[name] > 0,) if name in self.taps else (given[i],)
            elif kind == "maxpool":
                saved[i] = (given[i], manual_grad.pool_share(given[i], feats[spec.taps[0]].dtype))
            elif kind == "avgpool":
                saved[i] = (saved[i - 1][0].shape[2:],)
        return self._terms_backward(P, feats, saved, rest[nk + nt:nk + nt + nterms])

def names(spec: GraphSpec, kept: list[str]) -> dict[str, tuple[list[str], list[str]]]:
    """role -> (inputs, outputs) of the graphs (weights not included); kept: TiledGradient.kept()'s names."""
    sm = [f"style_mask.{n}" for n in spec.style]
    terms = [*sm, *(f"content_mask.{n}" for n in spec.content), *(f"content_target.{n}" for n in spec.content),
             *(f"style_grad.{n}" for n in spec.style), "content_weights", "content_norms"]
    parts = [f"gram_part.{n}" for n in spec.style]
    features = [f"feature.{n}" for n in spec.taps]
    return {
        "grams": (["image", *sm], [f"content.{n}" for n in spec.content] + parts),
        "train": (["image", *terms], ["content_losses", "image_grad"]),
        "grams_keep": (["image", *sm], parts + kept + features),
        "train_kept": ([*kept, *features, *terms], ["content_losses", "image_grad"]),
    }


def example_inputs(backbone: Backbone, spec: GraphSpec) -> tuple[torch.Tensor, list, tuple]:
    """(image, style masks, pass 2's inputs besides the image or the kept arrays) at an odd size
    (67x75: nothing specializes on even ones), two styles, random masks and dL/dG."""
    strides = {layer.name: layer.stride for layer in backbone.layers}
    gen = torch.Generator().manual_seed(0)
    H, W, K = 67, 75, 2
    image = torch.rand(1, 3, H, W, generator=gen)
    with torch.no_grad():
        feats = dict(zip(spec.taps, backbone.module(image)))
    size = {n: (H // strides[n], W // strides[n]) for n in spec.taps}
    smasks = [torch.rand(K, 1, *size[n], generator=gen) for n in spec.style]
    cmasks = [torch.ones(1, 1, *size[n]) for n in spec.content]
    ctargets = [feats[n].clone() for n in spec.content]
    sgrads = [torch.rand(K, feats[n].shape[1], feats[n].shape[1], generator=gen) for n in spec.style]
    nc = len(spec.content)
    return image, smasks, (*smasks, *cmasks, *ctargets, *sgrads, torch.ones(nc), torch.ones(nc))


def export_tiled(backbone: Backbone, cpu_variant: bool = True) -> tuple[dict[str, onnx.ModelProto], dict]:
    """role -> graph (weights still inputs), and the manifest's "tiling" entry less its files."""
    spec = GraphSpec.of(backbone)
    steps = manual_grad.plan(backbone)
    if steps is None:
        raise ValueError(f"{backbone.name}: tiled graphs need the hand-written backward (conv/ReLU/2x2-pool stacks)")
    align, halo = receptive_halo(steps, set(spec.taps))
    strides = {layer.name: layer.stride for layer in backbone.layers}
    image, smasks, terms = example_inputs(backbone, spec)
    params = list(graph_tensors(backbone).values())
    nc = len(spec.content)
    hw, khw = {2: Dim.AUTO, 3: Dim.AUTO}, {0: Dim.AUTO, 2: Dim.AUTO, 3: Dim.AUTO}
    out: dict[str, onnx.ModelProto] = {}
    for suffix, wino in (("", False), ("_cpu", True)) if cpu_variant else (("", False),):
        fn = TiledGradient(backbone, spec, steps, wino)
        io = names(spec, [n for _i, n in fn.kept()])
        g_args = (image, *smasks, *params)
        g_dyn = (hw,) + (khw,) * len(smasks) + (None,) * len(params)
        terms_dyn = ((khw,) * len(smasks) + (hw,) * (2 * nc) + ({0: Dim.AUTO},) * len(spec.style) + (None, None))
        t_args = (image, *terms, *params)
        t_dyn = (hw,) + terms_dyn + (None,) * len(params)
        out["grams" + suffix] = lower(fn.grams, g_args, g_dyn, io["grams"][0] + spec.param_names, io["grams"][1])
        out["train" + suffix] = lower(fn.train, t_args, t_dyn, io["train"][0] + spec.param_names, io["train"][1])
        with torch.no_grad():
            kept = fn.grams_keep(*g_args)[len(spec.style):]
        k_args = (*kept, *terms, *params)
        k_dyn = (hw,) * len(kept) + terms_dyn + (None,) * len(params)
        out["grams_keep" + suffix] = lower(fn.grams_keep, g_args, g_dyn, io["grams_keep"][0] + spec.param_names,
                                           io["grams_keep"][1])
        out["train_kept" + suffix] = lower(fn.train_kept, k_args, k_dyn, io["train_kept"][0] + spec.param_names,
                                           io["train_kept"][1])
    entry = {"format": FORMAT, "align": align, "halo": halo,
             "strides": {n: strides[n] for n in spec.taps},
             "kept_bytes_per_pixel": kept_bytes_per_pixel(TiledGradient(backbone, spec, steps, False), params)}
    return out, entry


def kept_bytes_per_pixel(fn: TiledGradient, params: list[torch.Tensor], side: int = 256) -> float:
    """Bytes grams_keep keeps per crop pixel for pass 2 (masks, 1/counts, tapped features), measured on
    a side x side crop (a multiple of the pool grid, as every crop but those at the image's end)."""
    image = torch.rand(1, 3, side, side, generator=torch.Generator().manual_seed(0))
    P = dict(zip(fn.spec.param_names, params))
    with torch.no_grad():
        feats = fn._features(P, image)
        masks = [torch.ones(1, 1, *feats[n].shape[2:]) for n in fn.spec.style]
        kept = fn.grams_keep(image, *masks, *params)[len(fn.spec.style):]
    return round(sum(t.numel() * t.element_size() for t in kept) / side ** 2, 1)


# --- in place: the folder's backbone rebuilt, the graphs bound to its weights.bin ---------------------


def folder_backbone(manifest: dict) -> Backbone:
    """The folder's network (structure only: the weights are bound to its weights.bin afterwards)."""
    from .backbones import REGISTRY
    from .preprocess import Preprocess

    name = manifest["backbone"]
    pool = "avg" if name.endswith("-avgpool") else "max"
    arch = name.removesuffix("-avgpool")
    if arch not in REGISTRY:
        raise ValueError(f"backbone {name!r} is not a registered one (imported ONNX networks are not tiled)")
    p = {k: v for k, v in manifest["preprocess"].items() if k in ("order", "scale", "mean", "std")}
    pre = Preprocess(p["order"], p["scale"], tuple(p["mean"]), tuple(p["std"]))
    return REGISTRY[arch](weights="random", pool=pool, content_layers=manifest["content_layers"],
                          style_layers=manifest["style_layers"], preprocess=pre)


def _folder_layout(folder: Path, params: dict[str, torch.Tensor]) -> tuple[dict, dict]:
    """(name -> (offset, length), name -> stored dtype) of the weights in the folder's train.onnx."""
    model = onnx.load(str(folder / "train.onnx"), load_external_data=False)
    layout, dtypes = {}, {}
    for init in model.graph.initializer:
        name = init.name.removesuffix(".fp16")
        ext = {e.key: e.value for e in init.external_data}
        if name in params and "offset" in ext:
            layout[name] = (int(ext["offset"]), int(ext["length"]))
            dtypes[name] = "fp16" if init.name.endswith(".fp16") else "fp32"
            if list(init.dims) != list(params[name].shape):
                raise ValueError(f"train.onnx: {name} has shape {list(init.dims)}, the rebuilt network {list(params[name].shape)}")
    missing = [n for n in params if n not in layout]
    if missing:
        raise ValueError(f"train.onnx: no stored weights for {missing[:3]}")
    return layout, dtypes


def add_to_folder(folder: str | Path) -> dict:
    """Write the tiled graphs into an artifact folder, in place: the existing files stay as they are
    (the new graphs use its weights.bin); manifest.json gets the "tiling" entry and the files' sha256."""
    from .artifacts import _io, bind_weights
    from .in_place import update_manifest
    import json

    folder = Path(folder)
    manifest = json.loads((folder / "manifest.json").read_text())
    if manifest.get("gradient") != "manual":
        raise ValueError("tiled graphs need the hand-written backward (manifest gradient: manual)")
    backbone = folder_backbone(manifest)
    params = graph_tensors(backbone)
    layout, dtypes = _folder_layout(folder, params)
    graphs, entry = export_tiled(backbone, cpu_variant="train_cpu" in manifest["graphs"])
    written = []
    for role, proto in graphs.items():
        bind_weights(proto, params, layout, dtypes)
        path = folder / FILES[role]
        onnx.save(proto, str(path))
        onnx.checker.check_model(str(path))
        entry[role] = {"file": FILES[role], **_io(proto)}
        written.append(FILES[role])
    update_manifest(folder, written, lambda m: m.__setitem__("tiling", entry))
    card = folder / "MODEL_CARD.md"
    if card.exists():
        from .artifacts import model_card

        card.write_text(model_card(json.loads((folder / "manifest.json").read_text())))
    return {k: v for k, v in entry.items() if k in ("format", "align", "halo")}


if __name__ == "__main__":
    import sys

    from .in_place import main

    sys.exit(main("nst_ort_export.tiled", "the tiled graphs (tile_grams.onnx, tile_train.onnx, tile_grams_keep.onnx, "
                     "tile_train_kept.onnx)", add_to_folder))
