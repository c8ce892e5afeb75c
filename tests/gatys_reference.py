"""The Gatys loss and its image gradient in float64 torch, built from an artifact folder alone.

Written from the paper (Gatys, Ecker and Bethge, CVPR 2016) with the README's normalization, and
deliberately independent of the build step (nothing from nst_ort_export is imported): the network
is rebuilt from what the folder stores, the convolution weights as stored (the initializers of the
ONNX graph, read with the `onnx` package), the preprocessing and layers from manifest.json, the pool
kind from the eval graph's ops. So a mistake in the exporter cannot hide in the reference too.

- network: VGG blocks `conv<b>_<i>` (3x3, pad 1) + ReLU, 2x2 / stride 2 pooling after each block,
  up to the deepest tapped layer; input = (RGB in [0, 1], reordered to the manifest's channel order)
  * scale - mean, / std.
- Gram G = F F^T / M (M = h*w positions); with masks (Gatys et al. 2017) each style k uses the mask
  m_k resized bilinearly to the layer: G_k = (F m_k)(F m_k)^T / sum(m_k).
- content_l = mean((F_l - P_l)^2); style_l = sum_k w_k mean((G_l,k - A_l,k)^2);
  tv = mean(dx^2) + mean(dy^2) of the [0, 1] RGB image (dx, dy: neighbour differences).
- total = a sum_l c_l content_l + b sum_l w_l style_l + t tv, with term_weights = (a, b, t).
"""
from __future__ import annotations

import json
import re
from pathlib import Path

import numpy as np

CONV = re.compile(r"^body\.conv(\d+)_(\d+)\.(weight|bias)(\.fp16)?$")


class GatysReference:
    """Float64 torch reference for one artifact folder (plain conv / ReLU / 2x2-pool stacks)."""

    def __init__(self, folder: str | Path):
        import onnx
        import torch
        from onnx import numpy_helper

        self.folder = Path(folder)
        self._memo: dict[str, dict] = {}
        self.manifest = m = json.loads((self.folder / "manifest.json").read_text())
        self.content_layers = list(m["content_layers"])
        self.style_layers = list(m["style_layers"])
        self.defaults = m["defaults"]
        taps = {layer["name"]: layer for layer in m["layers"]}

        # Weights as stored (fp16 on disk for the default model), exactly, in float64.
        graph = onnx.load(str(self.folder / m["graphs"]["train"]["file"]))
        convs: dict[tuple[int, int], dict[str, torch.Tensor]] = {}
        for t in graph.graph.initializer:
            match = CONV.match(t.name)
            if match:
                key = (int(match[1]), int(match[2]))
                convs.setdefault(key, {})[match[3]] = torch.from_numpy(
                    numpy_helper.to_array(t).astype(np.float64))
        if not convs:
            raise ValueError(f"{self.folder}: no VGG convolutions (body.conv<b>_<i>) among the initializers; "
                             "this reference knows plain conv/ReLU/pool stacks only")
        eval_ops = {n.op_type for n in onnx.load(str(self.folder / m["graphs"]["eval"]["file"]),
                                                  load_external_data=False).graph.node}
        self.pool = "avg" if "AveragePool" in eval_ops else "max"
        assert ("MaxPool" in eval_ops) != (self.pool == "avg"), eval_ops

        # The stack: block after block, each conv + ReLU, a pool between blocks.
        self.steps: list[tuple[str, str, tuple | None]] = []  # (layer name, kind, conv (w, b))
        blocks = sorted({b for b, _ in convs})
        assert blocks == list(range(1, len(blocks) + 1)), blocks
        for b in blocks:
            if b > 1:
                self.steps.append((f"pool{b - 1}", "pool", None))
            for i in sorted(i for bb, i in convs if bb == b):
                w = convs[(b, i)]
                self.steps.append((f"conv{b}_{i}", "conv", (w["weight"], w["bias"])))
                self.steps.append((f"relu{b}_{i}", "relu", None))
        names = [s[0] for s in self.steps]
        missing = [t for t in taps if t not in names]
        assert not missing, f"tapped layers {missing} are not in the rebuilt stack {names}"
        for step in self.steps:  # channels and strides as the manifest says
            if step[0] in taps:
                b = int(re.match(r"\D+(\d+)", step[0])[1])
                assert taps[step[0]]["stride"] == 2 ** (b - 1), step[0]
                if step[2] is not None:
                    assert taps[step[0]]["channels"] == step[2][0].shape[0]

        p = m["preprocess"]
        self.order = [2, 1, 0] if p["order"] == "BGR" else [0, 1, 2]
        self.scale = float(p["scale"])
        self.mean = torch.tensor(p["mean"], dtype=torch.float64).reshape(1, 3, 1, 1)
        self.std = torch.tensor(p["std"], dtype=torch.float64).reshape(1, 3, 1, 1)

    # --- the network ---------------------------------------------------------------------------------

    def features(self, image):
        """image [1, 3, H, W] RGB in [0, 1] (float64 tensor) -> {tapped layer: features}."""
        import torch.nn.functional as F

        wanted = set(self.content_layers) | set(self.style_layers)
        h = (image[:, self.order] * self.scale - self.mean) / self.std
        out = {}
        for name, kind, conv in self.steps:
            if kind == "conv":
                h = F.conv2d(h, conv[0], conv[1], padding=1)
            elif kind == "relu":
                h = F.relu(h)
            else:
                h = F.max_pool2d(h, 2, 2) if self.pool == "max" else F.avg_pool2d(h, 2, 2)
            if name in wanted:
                out[name] = h
                if len(out) == len(wanted):
                    break
        return out

    # --- the loss --------------------------------------------------------------------------------------

    @staticmethod
    def grams(features, masks):
        """features [1, C, h, w], masks [K, 1, H, W] -> [K, C, C]."""
        import torch.nn.functional as F

        c, h, w = features.shape[1:]
        m = F.interpolate(masks, size=(h, w), mode="bilinear", align_corners=False).reshape(-1, 1, h * w)
        fm = features.reshape(1, c, h * w) * m
        return fm @ fm.transpose(1, 2) / m.sum(dim=2, keepdim=True)

    def targets(self, content, style, styles: int = 1) -> dict[str, np.ndarray]:
        """Feeds content_target.* and style_target.* (float32) from RGB images [H, W, 3] in [0, 1]."""
        import torch

        with torch.no_grad():
            fc = self.features(torch.from_numpy(content.transpose(2, 0, 1)[None].astype(np.float64)))
            fs = self.features(torch.from_numpy(style.transpose(2, 0, 1)[None].astype(np.float64)))
        feeds = {f"content_target.{n}": fc[n].numpy().astype(np.float32) for n in self.content_layers}
        for n in self.style_layers:
            g = self.grams(fs[n], torch.ones(1, 1, *style.shape[:2], dtype=torch.float64))
            feeds[f"style_target.{n}"] = np.repeat(g.numpy().astype(np.float32), styles, 0)
        return feeds

    def terms(self, feeds: dict[str, np.ndarray], image: np.ndarray) -> dict:
        """Each term at term weight 1 (its layer weights applied): {"content" | "style" | "tv": (value,
        image gradient)}, plus the per-layer losses; float64 numpy. Remembers the last few inputs."""
        import hashlib

        import torch

        key = hashlib.sha256(np.ascontiguousarray(image, np.float32).tobytes())
        for k in sorted(feeds):
            if k != "term_weights":
                key.update(k.encode() + np.ascontiguousarray(feeds[k], np.float32).tobytes())
        key = key.hexdigest()
        if key in self._memo:
            return self._memo[key]
        t = {k: torch.from_numpy(np.asarray(v, np.float64)) for k, v in feeds.items()}
        x = torch.from_numpy(np.asarray(image, np.float64)).requires_grad_(True)
        f = self.features(x)
        content = torch.stack([((f[n] - t[f"content_target.{n}"]) ** 2).mean() for n in self.content_layers])
        style = torch.stack([
            (((self.grams(f[n], t["style_masks"]) - t[f"style_target.{n}"]) ** 2).mean(dim=(1, 2))
             * t["style_weights"]).sum() for n in self.style_layers])
        dx = x[:, :, :, 1:] - x[:, :, :, :-1]
        dy = x[:, :, 1:, :] - x[:, :, :-1, :]
        tv = (dx**2).mean() + (dy**2).mean()
        out = {"content_losses": content.detach().numpy(), "style_losses": style.detach().numpy(),
               "tv_loss": float(tv.detach())}
        weighted = {"content": (content * t["content_layer_weights"]).sum(),
                    "style": (style * t["style_layer_weights"]).sum(), "tv": tv}
        for name, value in weighted.items():
            (grad,) = torch.autograd.grad(value, x, retain_graph=name != "tv")
            out[name] = (float(value.detach()), grad.numpy())
        self._memo = {**dict(list(self._memo.items())[-3:]), key: out}
        return out

    def loss(self, feeds: dict[str, np.ndarray], image: np.ndarray):
        """(total, content_losses [nc], style_losses [ns], tv, image gradient [1, 3, H, W]), float64 numpy:
        total = a * content + b * style + t * tv for term_weights (a, b, t)."""
        r = self.terms(feeds, image)
        weights = dict(zip(("content", "style", "tv"), np.asarray(feeds["term_weights"], np.float64)))
        total = sum(weights[n] * r[n][0] for n in weights)
        grad = sum(weights[n] * r[n][1] for n in weights)
        return total, r["content_losses"], r["style_losses"], r["tv_loss"], grad

    # --- feeds at the model's defaults ---------------------------------------------------------------

    def default_feeds(self, h: int, w: int, seed: int = 0) -> tuple[dict[str, np.ndarray], np.ndarray]:
        """(feeds without term_weights, image [1, 3, h, w]) at the manifest's layer weights, one style."""
        d = self.defaults
        return self.feeds(h, w, [d["content_layer_weights"][n] for n in self.content_layers],
                          [d["style_layer_weights"][n] for n in self.style_layers], seed=seed)

    def feeds(self, h: int, w: int, content_layer_weights, style_layer_weights, styles: int = 1,
              seed: int = 0) -> tuple[dict[str, np.ndarray], np.ndarray]:
        """(feeds without term_weights, image [1, 3, h, w]): targets from two random images, all-ones masks."""
        rng = np.random.default_rng(seed)
        content = rng.random((h, w, 3))
        style = rng.random((h + 6, w - 4, 3))  # another size: Grams do not depend on it
        image = rng.random((1, 3, h, w), dtype=np.float32)
        feeds = {
            "style_masks": np.ones((styles, 1, h, w), np.float32),
            "content_layer_weights": np.asarray(content_layer_weights, np.float32),
            "style_layer_weights": np.asarray(style_layer_weights, np.float32),
            "style_weights": np.ones(styles, np.float32),
            **self.targets(content, style, styles),
        }
        return feeds, image


def rel_l2(a: np.ndarray, ref: np.ndarray) -> float:
    a, ref = np.asarray(a, np.float64), np.asarray(ref, np.float64)
    return float(np.linalg.norm(a - ref) / np.linalg.norm(ref))
