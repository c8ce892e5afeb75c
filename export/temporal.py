"""The short-term temporal term of Ruder et al. 2016 as a small graph in standard ONNX ops.

`temporal.onnx` adds the term to a loss already evaluated by the training graph, so that every
runtime and provider (the device loop and the browser included) gets it without a new training graph:

    inputs:  image [1, 3, H, W]          the image being optimized (RGB in [0, 1])
             image_grad_in [1, 3, H, W]  the training graph's gradient (content + style + tv)
             target [1, 3, H, W]         the previous stylized frame warped onto this frame
             mask [1, 1, H, W]           Ruder et al.'s per-pixel weight c in [0, 1]
             weight []                   lambda_t
    outputs: temporal_loss []            lambda_t * mean(c * (image - target)^2)
             image_grad_out [1, 3, H, W] image_grad_in + 2 lambda_t c (image - target) / (3 H W)

The mean is over all 3*H*W values (c broadcast over the channels), as the authors' WeightedContentLoss
(an MSECriterion over sqrt(c)-weighted pixels). Deviation: their pixels are caffe-preprocessed
(RGB times 256, mean subtracted), ours are in [0, 1]: their temporal weight w pulls as 256^2 w does
here (the mean cancels in the difference; their content and style weights scale differently, see
README "Loss normalization").

H and W are dynamic: one graph serves every size. The runtime has no `onnx` package, so the graph is
written at export time (export/artifacts.py) and listed in manifest.json under "terms" with its
sha256. Existing model folders get it in place, without re-exporting the network:

    python -m nst_ort_export.temporal MODEL_FOLDER
"""
from __future__ import annotations

from pathlib import Path

import onnx
from onnx import TensorProto, helper

OPSET = 18
FILE = "temporal.onnx"
INPUTS = ["image", "image_grad_in", "target", "mask", "weight"]
OUTPUTS = ["temporal_loss", "image_grad_out"]


def temporal(elem_type: int = TensorProto.FLOAT) -> onnx.ModelProto:
    """The graph; elem_type DOUBLE builds the same graph in float64 (tests use it as a reference)."""
    n = helper.make_node
    nodes = [
        n("Sub", ["image", "target"], ["diff"]),
        n("Mul", ["mask", "diff"], ["cdiff"]),  # [1, 1, H, W] * [1, 3, H, W]
        n("Mul", ["cdiff", "diff"], ["sq"]),
        n("ReduceMean", ["sq"], ["mean"], keepdims=0),  # no axes: over all 3*H*W values
        n("Mul", ["weight", "mean"], ["temporal_loss"]),
        # d/dx of mean(c (x - t)^2) = 2 c (x - t) / N, N = 3*H*W = Size(image).
        n("Size", ["image"], ["count_i"]),
        n("Cast", ["count_i"], ["count"], to=elem_type),
        n("Add", ["weight", "weight"], ["two_w"]),
        n("Div", ["two_w", "count"], ["scale"]),
        n("Mul", ["cdiff", "scale"], ["grad"]),
        n("Add", ["image_grad_in", "grad"], ["image_grad_out"]),
    ]
    image = lambda name: helper.make_tensor_value_info(name, elem_type, [1, 3, "H", "W"])  # noqa: E731
    graph = helper.make_graph(
        nodes, "temporal",
        [image("image"), image("image_grad_in"), image("target"),
         helper.make_tensor_value_info("mask", elem_type, [1, 1, "H", "W"]),
         helper.make_tensor_value_info("weight", elem_type, [])],
        [helper.make_tensor_value_info("temporal_loss", elem_type, []), image("image_grad_out")])
    graph.doc_string = ("temporal_loss = weight * mean(mask * (image - target)^2); "
                        "image_grad_out = image_grad_in + d temporal_loss / d image (Ruder et al. 2016)")
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", OPSET)], producer_name="nst-ort-export")
    model.ir_version = 8
    onnx.checker.check_model(model, full_check=True)
    return model


def write_term_graphs(folder: str | Path) -> dict:
    """Write the term graphs into `folder`; returns the manifest's "terms" entry."""
    onnx.save(temporal(), str(Path(folder) / FILE))
    return {"format": 1, "temporal": {"file": FILE, "inputs": INPUTS, "outputs": OUTPUTS,
                                      "loss": "weight * mean(mask * (image - target)^2) over 3*H*W"}}


def add_to_folder(folder: str | Path) -> dict:
    """Add (or refresh) temporal.onnx in an existing artifact folder, in place: manifest.json gets the
    "terms" entry and the file's sha256. The manifest is replaced atomically."""
    from .in_place import update_manifest

    folder = Path(folder)
    terms = write_term_graphs(folder)
    update_manifest(folder, [FILE], lambda m: m.__setitem__("terms", terms))
    return terms


if __name__ == "__main__":
    import sys

    from .in_place import main

    sys.exit(main("nst_ort_export.temporal", "temporal.onnx (the video temporal term)", add_to_folder))
