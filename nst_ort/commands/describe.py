"""What nst-ort prints for people: --info (the model) and --dry-run (the plan of a run); each with
--json for machines."""
from __future__ import annotations

import json
import re
from pathlib import Path

from ..engine import memory
from ..engine.config import Config, OptimConfig
from ..engine.providers import info as runtime_info
from ..media.outputs import Target
from .presets import PRESETS


def _number(v: float) -> str:
    """A weight as people read it: 100,000 rather than 100000.0 or 1e+05."""
    v = float(v)
    if v == int(v) and abs(v) < 1e9:
        return f"{int(v):,}"
    return f"{v:.4g}"


def _layer_weight(v: float) -> str:
    """Per-layer weights are mostly 1/C^2: say so."""
    if v <= 0:
        return ""
    c = round((1.0 / v) ** 0.5)
    if c > 1 and abs(v * c * c - 1.0) < 1e-6:
        return f"1/{c}^2 = {v:.3g}"
    return _number(v)


def network_order(layers: list[dict]) -> list[dict]:
    """The manifest lists layers in no particular order: sort by depth (stride), then by name with
    its numbers as numbers (relu4_1 before relu4_2 before relu10_1)."""
    def key(layer: dict):
        parts = re.split(r"(\d+)", layer["name"])
        return (int(layer["stride"]), [int(x) if x.isdigit() else x for x in parts])
    return sorted(layers, key=key)


def info(artifacts, as_json: bool) -> int:
    m = artifacts.manifest
    runtime = runtime_info()  # onnxruntime's version, its providers, the package it came from
    layers = network_order(m["layers"])
    if as_json:
        print(json.dumps({"path": str(artifacts.path), "backbone": m["backbone"], "layers": layers,
                          "content_layers": m["content_layers"], "style_layers": m["style_layers"],
                          "defaults": m["defaults"], "weights": m["weights"], "runtime": runtime}, indent=1))
        return 0
    d = m["defaults"]
    clw, slw = d.get("content_layer_weights", {}), d.get("style_layer_weights", {})
    src = m["weights"] if isinstance(m["weights"], dict) else {}
    print(f"model       {artifacts.path}")
    print(f"backbone    {m['backbone']}" + (f"; weights: {src['source']}" if src.get("source") else ""))
    if src.get("license"):
        print(f"license     {src['license']}")
    print("layers      in network order; content and style: the default weight of each layer (0: not used by default)")
    print(f"            {'layer':<10} {'channels':>8} {'stride':>6}  {'content':<8} style")
    for layer in layers:
        n = layer["name"]
        content = ("-" if n not in m["content_layers"] else _number(clw.get(n, 0)))
        style = ("-" if n not in m["style_layers"] else _layer_weight(slw.get(n, 0)) or "0")
        print(f"            {n:<10} {layer['channels']:>8} {layer['stride']:>6}  {content:<8} {style}")
    content_on = [n for n in m["content_layers"] if clw.get(n)]
    print(f"defaults    content weight {_number(d['content_weight'])} (on {', '.join(content_on) or '-'}), "
          f"style weight {_number(d['style_weight'])}, tv weight {_number(d['tv_weight'])}")
    print(f"            size {Config.size} px, {OptimConfig.iterations} iterations, L-BFGS with history "
          f"{OptimConfig.history} (Adam: lr 0.02)")
    print(f"presets     {', '.join(PRESETS)} (--preset; docs/loss.md)")
    package = f" ({runtime['package']})" if runtime.get("package") else ""
    print(f"runtime     onnxruntime {runtime['onnxruntime']}{package}; providers available: {', '.join(runtime['providers'])}")
    return 0


def print_plan(stylizer, cfg: Config, out: Path, targets: list[Target], plan, args, label: str) -> None:
    info = stylizer.plan()
    a = memory.assess(plan, tiling=stylizer.tiling)
    weights = stylizer.weights_used()
    data = {"content": str(cfg.content) if cfg.content else None,
            "styles": [{"path": str(s.path), "weight": s.weight, "mask": str(s.mask) if s.mask else None}
                       for s in cfg.styles],
            "init": cfg.resolved_init(), "output": str(out), **info,
            "total_iterations": cfg.total_iterations(), "optimizer": cfg.optim.name,
            "resume": {"path": args.resume, "step": stylizer.steps} if args.resume else None,
            "weights": weights,
            "memory": {"need_bytes": max(a.need.resident, a.decode.resident), "available_bytes": a.available.resident,
                       "limit": a.available.source if a.available.resident is not None else None,
                       "address_space_left": a.available.address},
            "writes": [{"path": str(t.path), "flag": t.flag} for t in targets]}
    if args.json:
        print(json.dumps(data, indent=1))
        return
    def row(key: str, text: str) -> None:
        print(f"  {key:<9} {text}")

    print(f"nst-ort: {label}dry run: checked, nothing computed or written")
    inputs = stylizer.inputs
    if cfg.content is not None:
        p = inputs[Path(cfg.content)]
        row("content", f"{cfg.content} ({p.width}x{p.height})")
    for st in cfg.styles:
        p = inputs[Path(st.path)]
        extra = f", weight {st.weight:g}" if len(cfg.styles) > 1 else ""
        extra += f", mask {st.mask}" if st.mask else ""
        row("style", f"{st.path} ({p.width}x{p.height}{extra})")
    row("start", {"content": "the content image", "noise": f"noise (seed {cfg.seed})"}.get(
        cfg.resolved_init(), f"{cfg.init}") + (f"; resumes after iteration {stylizer.steps}" if args.resume else ""))
    steps = info["schedule"]
    for k, sc in enumerate(steps):
        row("schedule" if k == 0 else "", f"scale {sc['scale']} of {len(steps)}: {sc['width']}x{sc['height']}, "
            f"{sc['iterations']} iteration{'s' if sc['iterations'] != 1 else ''}")
    opt = f"L-BFGS, history {stylizer.config.optim.history}" if cfg.optim.name == "lbfgs" else "Adam"
    row("", f"{cfg.total_iterations()} in all; {opt}, lr {cfg.optim.learning_rate():g}")
    w = weights
    row("weights", f"content {_number(w['content_weight'])} on {', '.join(w['content_layers']) or '-'}; style "
        f"{_number(w['style_weight'])} on {', '.join(w['style_layers']) or '-'}; tv {_number(w['tv_weight'])}")
    threads = f"{info['threads']} threads" if info["threads"] else "onnxruntime's threads"
    row("runs on", f"{info['providers'][0]} ({info['device']}), {info['train_graph']}, {info['loop']} loop, {threads}")
    need = max(a.need.resident, a.decode.resident)
    have = (f"{memory.gib(a.available.resident)} available ({a.available.source})"
            if a.available.resident is not None else "available memory unknown")
    row("memory", f"about {memory.gib(need)} at {a.size[0]}x{a.size[1]}; {have}")
    t = info["tiling"]
    for k, sc in enumerate(t["scales"]):
        text = sc["layout"] if sc["tile"] else "untiled"
        row("tiling" if k == 0 else "", f"{sc['width']}x{sc['height']}: {text}")
    for note in t["notes"]:
        row("", note)
    row("writes", "; ".join(f"{t.path} ({t.flag})" for t in targets))
