"""The temporal term at run time: the model's `temporal.onnx` (export/temporal.py) as a session.

    temporal = TemporalTerm(graphs)                   # graphs: session.Graphs (artifact + placement), once
    stylizer.set_terms([temporal.term(target, mask, weight)])    # per frame: a terms.Term
    loss, grad = temporal(x, grad, target, mask, weight)  # or directly, host arrays

Per iteration the loop runs it right after the training graph (terms.py): the gradient goes in, the
gradient with the temporal term added comes out, and the temporal loss is one more scalar for the
record. The device loop binds the same graph by pointer; it never needs a host copy, which is why
the term is a graph and not numpy.
"""
from __future__ import annotations

import numpy as np

from ..base.errors import ArtifactError
from .session import make_session, run_error
from .terms import Term

INPUTS = ("image", "image_grad_in", "target", "mask", "weight")
OUTPUTS = ("temporal_loss", "image_grad_out")


def temporal_graph_path(artifacts):
    """The model's temporal.onnx (listed with a sha256), or an ArtifactError saying how to add it."""
    terms = artifacts.manifest.get("terms")
    entry = terms.get("temporal") if isinstance(terms, dict) else None
    name = entry.get("file") if isinstance(entry, dict) else None
    if not isinstance(name, str):
        raise ArtifactError(f"{artifacts.path}: this model has no temporal term graph (re-export it, or add it in "
                            f"place: python -m nst_ort_export.temporal {artifacts.path})")
    if name not in artifacts.manifest["files"]:
        raise ArtifactError(f"{artifacts.path / 'manifest.json'}: term graph {name!r} has no sha256 entry")
    return artifacts.path_of(name)


class TemporalTerm:
    def __init__(self, graphs):
        self.path = temporal_graph_path(graphs.artifacts)
        self.sess = make_session(self.path, graphs.placement)
        names = ([i.name for i in self.sess.get_inputs()], [o.name for o in self.sess.get_outputs()])
        if names != (list(INPUTS), list(OUTPUTS)):
            raise ArtifactError(f"{self.path}: inputs/outputs {names}, expected {list(INPUTS)} -> {list(OUTPUTS)}")

    def term(self, target: np.ndarray, mask: np.ndarray, weight: float) -> Term:
        """The term for one frame: target [1, 3, H, W] or [H, W, 3] (the warped previous stylized frame),
        mask [H, W] or [1, 1, H, W] (c), weight (lambda_t)."""
        target = np.asarray(target, np.float32)
        if target.ndim == 3:
            target = target.transpose(2, 0, 1)[None]
        mask = np.asarray(mask, np.float32)
        if mask.ndim == 2:
            mask = mask[None, None]
        return Term("temporal", self.sess, {"target": np.ascontiguousarray(target), "mask": np.ascontiguousarray(mask),
                                            "weight": np.array(weight, np.float32)})

    def __call__(self, image: np.ndarray, image_grad: np.ndarray, target: np.ndarray, mask: np.ndarray,
                 weight: float) -> tuple[float, np.ndarray]:
        """image, image_grad, target [1, 3, H, W]; mask [1, 1, H, W] or [H, W] -> (loss, gradient)."""
        f32 = lambda a: np.ascontiguousarray(a, dtype=np.float32)  # noqa: E731
        mask = np.asarray(mask)
        if mask.ndim == 2:
            mask = mask[None, None]
        feeds = {"image": f32(image), "image_grad_in": f32(image_grad), "target": f32(target), "mask": f32(mask),
                 "weight": np.array(weight, np.float32)}
        try:
            loss, grad = self.sess.run(list(OUTPUTS), feeds)
        except Exception as e:  # noqa: BLE001
            raise run_error(e, f"temporal graph at {image.shape[3]}x{image.shape[2]}") from None
        return float(loss), grad
