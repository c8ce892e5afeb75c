"""Write an artifact folder: eval.onnx, train.onnx, one shared weights file, manifest.json."""
from __future__ import annotations

import datetime
import json
import os
import platform
import tempfile
from pathlib import Path

import numpy as np
import onnx
import torch
from onnx import TensorProto, helper

from .gradient import OPSET, ExportedGraphs, export_graphs
from .network import Backbone
from .optim_graphs import write_optimizer_graphs
from .spec import graph_tensors
from .temporal import write_term_graphs
from .weights import sha256

SCHEMA_VERSION = 1
WEIGHTS_FILE = "weights.bin"
FILES = {"eval": "eval.onnx", "train": "train.onnx", "train_cpu": "train_cpu.onnx"}
_ALIGN = 64


def stored_dtypes(backbone: Backbone, dtype: str) -> dict[str, str]:
    """Parameters in `dtype`; buffers (preprocessing constants) always fp32, they are tiny and exact."""
    names = {n for n, _ in backbone.module.named_parameters()}
    return {n: (dtype if n in names else "fp32") for n in graph_tensors(backbone)}


def write_weights(params: dict[str, torch.Tensor], path: Path, dtypes: dict[str, str]) -> dict[str, tuple[int, int]]:
    """One raw file holding every tensor once; returns name -> (offset, length)."""
    layout, offset = {}, 0
    with open(path, "wb") as f:
        for name, t in params.items():
            np_dtype = np.float16 if dtypes[name] == "fp16" else np.float32
            data = t.detach().cpu().numpy().astype(np_dtype).tobytes()
            pad = (-offset) % _ALIGN
            f.write(b"\0" * pad)
            offset += pad
            f.write(data)
            layout[name] = (offset, len(data))
            offset += len(data)
    return layout


def bind_weights(model: onnx.ModelProto, params: dict[str, torch.Tensor], layout, dtypes: dict[str, str]) -> onnx.ModelProto:
    """Turn the weight inputs into external initializers (stored as `dtype`, computed in fp32)."""
    graph = model.graph
    keep = [i for i in graph.input if i.name not in params]
    del graph.input[:]
    graph.input.extend(keep)
    casts = []
    for name, t in params.items():
        dtype = dtypes[name]
        stored = name if dtype == "fp32" else f"{name}.{dtype}"
        init = TensorProto(name=stored, data_type=TensorProto.FLOAT16 if dtype == "fp16" else TensorProto.FLOAT,
                           dims=list(t.shape))
        init.data_location = TensorProto.EXTERNAL
        offset, length = layout[name]
        for k, v in (("location", WEIGHTS_FILE), ("offset", str(offset)), ("length", str(length))):
            init.external_data.add(key=k, value=v)
        graph.initializer.append(init)
        if dtype != "fp32":
            # Stored in fp16 to halve the repo and every transfer; ORT folds this Cast at load time.
            casts.append(helper.make_node("Cast", [stored], [name], to=TensorProto.FLOAT, name=f"cast/{name}"))
    nodes = casts + list(graph.node)
    del graph.node[:]
    graph.node.extend(nodes)
    return model


def _io(model: onnx.ModelProto) -> dict:
    def desc(v):
        dims = [d.dim_value if d.HasField("dim_value") else (d.dim_param or "?") for d in v.type.tensor_type.shape.dim]
        return {"name": v.name, "shape": dims}

    return {"inputs": [desc(v) for v in model.graph.input], "outputs": [desc(v) for v in model.graph.output]}


def write_artifacts(backbone: Backbone, out: str | Path, weights_dtype: str = "fp16", command: str = "",
                    gradient: str = "auto", cpu_variant: bool = True, tiled: bool = False) -> Path:
    """Export both graphs and write the folder atomically (a temp folder renamed into place).
    tiled: also the tile graphs (export/tiled.py; manual-gradient networks only), as nst-ort-export does."""
    out = Path(out)
    exported = export_graphs(backbone, gradient=gradient, cpu_variant=cpu_variant)
    params = graph_tensors(backbone)
    dtypes = stored_dtypes(backbone, weights_dtype)
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{out.name}.", dir=out.parent))
    tmp.chmod(0o755)
    layout = write_weights(params, tmp / WEIGHTS_FILE, dtypes)
    graphs = {}
    # train_cpu is optional (schema 1): the training graph the CPU provider runs (Winograd convolutions).
    for role, proto in exported.roles().items():
        bind_weights(proto, params, layout, dtypes)
        onnx.save(proto, str(tmp / FILES[role]))
        onnx.checker.check_model(str(tmp / FILES[role]))
        graphs[role] = _io(proto)
    manifest = build_manifest(backbone, exported, graphs, weights_dtype, command)
    # Optional (schema 1): optimizer update graphs, so the runtime can keep its loop on the device.
    manifest["optimizers"] = write_optimizer_graphs(tmp)
    # Optional (schema 1): loss-term graphs added after the training graph (video: temporal.onnx).
    manifest["terms"] = write_term_graphs(tmp)
    if tiled and exported.gradient == "manual":
        # Optional (schema 1): the exact tiled loss and gradient's graphs (docs/tiling.md).
        from .tiled import FILES as TILE_FILES, export_tiled

        tile_graphs, entry = export_tiled(backbone, cpu_variant=exported.train_cpu is not None)
        for role, proto in tile_graphs.items():
            bind_weights(proto, params, layout, dtypes)
            onnx.save(proto, str(tmp / TILE_FILES[role]))
            onnx.checker.check_model(str(tmp / TILE_FILES[role]))
            entry[role] = {"file": TILE_FILES[role], **_io(proto)}
        manifest["tiling"] = entry
    manifest["files"] = {p.name: {"sha256": sha256(p), "bytes": p.stat().st_size} for p in sorted(tmp.iterdir())}
    (tmp / "manifest.json").write_text(json.dumps(manifest, indent=2) + "\n")
    (tmp / "MODEL_CARD.md").write_text(model_card(manifest))
    if out.exists():
        backup = out.with_name(f".{out.name}.old")
        os.replace(out, backup)
        os.replace(tmp, out)
        import shutil

        shutil.rmtree(backup)
    else:
        os.replace(tmp, out)
    return out


def build_manifest(backbone: Backbone, exported: ExportedGraphs, graphs: dict, weights_dtype: str, command: str) -> dict:
    import onnxscript

    spec = exported.spec
    return {
        "schema_version": SCHEMA_VERSION,
        "backbone": backbone.name,
        "weights": {**backbone.weights, "stored_as": weights_dtype, "file": WEIGHTS_FILE},
        "input": {"layout": "NCHW", "channels": "RGB", "range": [0.0, 1.0]},
        "preprocess": {**backbone.preprocess.as_dict(), "where": "inside the graphs"},
        "layers": [{"name": layer.name, "channels": layer.channels, "stride": layer.stride} for layer in backbone.layers],
        "content_layers": spec.content,
        "style_layers": spec.style,
        "defaults": backbone.defaults,
        "graphs": {role: {"file": FILES[role], **graphs[role]} for role in graphs},
        "opset": OPSET,
        "loss": {
            "normalization": "content: mean((F-P)^2); gram: F F^T / positions; style: mean((G-A)^2) "
            "(= 4 E_l of Gatys et al.); tv: mean squared neighbour differences of the [0,1] image",
        },
        "exporter": {
            "command": command,
            "torch": torch.__version__,
            "onnx": onnx.__version__,
            "onnxscript": onnxscript.__version__,
            "python": platform.python_version(),
            "date": datetime.date.today().isoformat(),
        },
        "gradient": exported.gradient,  # how train.onnx's backward was made
    }


def model_card(m: dict) -> str:
    """A human-readable card beside the manifest (not checksummed: documentation only)."""
    layers = ", ".join(f"{x['name']} ({x['channels']} ch, stride {x['stride']})" for x in m["layers"])
    files = "\n".join(f"| {name} | {info['bytes']} | `{info['sha256'][:16]}...` |" for name, info in m["files"].items())
    p = m["preprocess"]
    return f"""# Model card: {m['backbone']}

nst-ort artifact folder (schema {m['schema_version']}): an eval graph (image -> content features and
style Grams) and a training graph (image, targets, weights -> loss terms and the gradient with respect
to the image), standard ONNX ops only (opset {m['opset']}), for `onnxruntime` / `onnxruntime-gpu`.

## Weights
- Source: {m['weights']['source']}
- License: {m['weights']['license']}
- Stored as {m['weights']['stored_as']} in `{m['weights']['file']}` (once, shared by both graphs); computed in fp32.
- VGG: K. Simonyan and A. Zisserman, "Very Deep Convolutional Networks for Large-Scale Image
  Recognition", ICLR 2015; the released weights are under CC BY 4.0.

## Input and preprocessing
The graphs take RGB in [0, 1], NCHW, any height and width (at least the largest stride). Inside the
graphs: channel order {p['order']}, times {p['scale']}, minus mean {list(p['mean'])}, divided by std {list(p['std'])}.

## Layers
Tapped: {layers}.
Content layers: {', '.join(m['content_layers'])}. Style layers: {', '.join(m['style_layers'])}.
Default weights (`nst-ort --info`): {json.dumps(m['defaults'])}

## Loss
{m['loss']['normalization']}.

## Rebuild
    {m['exporter']['command']}

Exported with torch {m['exporter']['torch']}, onnx {m['exporter']['onnx']}, onnxscript {m['exporter']['onnxscript']}.

## Files
| file | bytes | sha256 |
| --- | --- | --- |
{files}
"""
