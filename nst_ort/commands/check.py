"""`nst-ort check`: does this machine's onnxruntime and provider compute what the CPU provider does?

    nst-ort check [--model DIR] [--provider P | --device D] [--provider-option K=V ...] [--precision P]

At a small size and on synthetic images, every graph of the model runs on the chosen provider and on
the reference, onnxruntime's CPU provider (with 1 thread, so that checking the CPU provider itself
still compares two different reduction orders), with the same inputs:

- eval.onnx: the content features and Gram matrices;
- each training graph (train.onnx, train_cpu.onnx; train_fp16.onnx with --precision fp16, against
  the fp32 train.onnx): the loss, each term, and the image gradient;
- the tile graphs (tile_*.onnx, docs/tiling.md): the tiled step and the tiled features, assembled
  from 32 px tiles on the provider, against the untiled training graph and eval.onnx on the
  reference; the same for the keep graphs (tile_grams_keep, tile_train_kept), the tiled step with
  every crop kept and with half of them kept (a model without them: said in a row, not failed);
- each optimizer graph on random vectors; then the device loop (training graph + optimizer graphs
  in IOBinding buffers), three L-BFGS steps and three Adam steps from the same image;

then one iteration is timed at --time-size on both. Differences are relative (LIMITS says to what)
and compared with limits per precision; the table ends with a verdict. Exit 0: every comparison is
within its limit; 10 (CheckFailed): some graph differs or fails to run on the provider. A provider
that is not there is error 5, options it refuses error 2, as for stylizing.
"""
from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from types import SimpleNamespace

import numpy as np

from ..base.atomic import atomic_write
from ..base.errors import EXIT_CHECK_FAILED, OutOfMemory, OutputError, UsageError, exit_for
from ..engine import providers
from ..engine.artifacts import Artifacts
from ..engine.config import max_threads
from ..engine.device_loop import DeviceLoop
from ..engine.loop import HostLoop
from ..engine.optim import make
from ..engine.session import TrainStep, make_session
from ..engine.tiling import Layout, TiledGraphs, TiledTrainStep, graph_family, tiled_features, tiling_entry
from ..media.outputs import Source, Target, check_writes, file_arg
from .flags import Parser, int_flag

# Limits per precision, from measurements at 64x48 (docs/providers.md):
# fp32 - OpenVINO's provider (CPU device; onnxruntime-openvino 1.18, 1.23, 1.24) against the CPU provider
#   gave at most: features 1.7e-6, loss and terms 1.6e-5, gradient 4.8e-7 relative L2, optimizer graphs
#   1.2e-6, loss reached by the loop 9.1e-6; the CPU provider (1.18 and 1.32) against itself with 1
#   thread: 0, and train_cpu.onnx against train.onnx 4.1e-7. A ReLU that flips on a near-tie moved
#   the gradient by 5.6e-4 relative L2 (one unit, 128 px): the gradient limit allows a few. Real
#   faults land far outside: OpenVINO in bf16 gave features 7.9e-3, loss 5.2e-3, gradient 6.2e-2,
#   optimizer graphs 5e-3, loop 0.43; TF32 moves the gradient ~2e-2 (cosine 0.9998 on CUDA).
# tf32 - not measured here (no GPU): the CUDA figures above (gradient ~2e-2) with room; a guess.
# fp16 - the mixed graph against fp32 train.onnx, emulated on the CPU: loss 3e-4, gradient 2.3e-2
#   relative L2 (fp16's 5e-4 rounding flips many ReLU and max-pool near-ties); L-BFGS's first curvature
#   step amplifies that (loss reached after 3 steps: 0.1 of the progress), so in reduced precision only
#   the progress is compared, within 25%. Not measured on a GPU.
LIMITS = {
    "fp32": {"features": 1e-4, "loss": 1e-4, "gradient": 5e-3, "optimizer": 1e-4, "loop": 1e-3},
    "tf32": {"features": 1e-2, "loss": 1e-2, "gradient": 5e-2, "optimizer": 1e-4, "loop": 0.25},
    "fp16": {"features": 1e-2, "loss": 5e-3, "gradient": 5e-2, "optimizer": 1e-4, "loop": 0.25},
}
WHAT = {
    "features": "max |a-b| / max |b| over each output",
    "loss": "|a-b| / |b| of the total and of each term",
    "gradient": "||a-b|| / ||b|| (relative L2)",
    "optimizer": "max |a-b| / max |b| over each output",
    "loop": "|L(a) - L(b)| / |L(x0) - L(b)|: the loss reached after the steps, relative to the progress",
}

def build_parser() -> argparse.ArgumentParser:
    p = Parser(prog="nst-ort check", description="Conformance run: every graph of the model on the chosen provider "
                "against onnxruntime's CPU provider, at a small size; a table and a verdict (exit 0 or 10).")
    p.add_argument("--model", help="artifact folder (default: the embedded VGG16)")
    p.add_argument("--provider", help="execution provider to check (default: what --device picks)")
    p.add_argument("--device", default="auto", help="auto, cpu or cuda (when no --provider is given)")
    p.add_argument("--provider-option", action="append", metavar="KEY=VALUE", help="an option of that provider (repeatable)")
    p.add_argument("--precision", choices=["fp32", "tf32", "fp16"], default="fp32",
                   help="fp16 checks the model's mixed-precision graph against its fp32 train.onnx")
    # Values checked at parse time (exit 2 naming the flag), as the stylizing command's flags.
    p.add_argument("--size", type=int_flag("--size"), default=64,
                   help="long side of the synthetic images compared (default 64)")
    p.add_argument("--time-size", type=int_flag("--time-size", minimum=0), default=256,
                   help="long side at which an iteration is timed (0: no timing)")
    p.add_argument("--time-iterations", type=int_flag("--time-iterations"), default=4,
                   help="iterations timed (median; default 4)")
    p.add_argument("--threads", type=int_flag("threads", maximum=max_threads),
                   help="intra-op threads of the provider's sessions (at most the CPUs this process may use)")
    p.add_argument("--json", help="also write the rows and the verdict to this JSON file")
    p.add_argument("--debug", action="store_true", help="show tracebacks")
    return p


# -- inputs ------------------------------------------------------------------------------------------

def _images(w: int, h: int) -> tuple[np.ndarray, np.ndarray]:
    """A smooth content image with edges and a busy style image, [H, W, 3] in [0, 1], fixed."""
    rng = np.random.default_rng(12)
    yy, xx = np.mgrid[0:h, 0:w].astype(np.float32)
    content = np.stack([xx / w, yy / h, 0.5 + 0.4 * np.sin(xx / 5.0) * np.cos(yy / 7.0)], -1)
    content[(xx - w / 3) ** 2 + (yy - h / 2) ** 2 < (h / 4) ** 2] = (0.9, 0.2, 0.1)
    content = np.clip(content + rng.normal(0, 0.02, content.shape), 0, 1)
    style = 0.5 + 0.5 * np.stack([np.sin(xx / 2.0 + yy / 3.0), np.sin(yy / 1.5), np.cos((xx + yy) / 4.0)], -1)
    style = np.clip(style + rng.normal(0, 0.1, style.shape), 0, 1)
    return content.astype(np.float32), style.astype(np.float32)


def _size(art, long_side: int, flag: str = "--size") -> tuple[int, int]:
    w, h = long_side, max(art.min_size, round(long_side * 3 / 4))
    if min(w, h) < art.min_size:
        raise UsageError(f"{flag} {long_side}: this model needs at least {art.min_size} px on each side")
    return w, h


def _check_json(text: str, art) -> None:
    """--json as any written file (outputs.check_writes), before the check runs: not a model file,
    not a FIFO, device, folder or symlink (stat only: a FIFO is never opened), its folder present
    and writable."""
    path = file_arg(text, "--json")
    sources = [Source(art.path / "manifest.json", "model file")]
    sources += [Source(art.path / name, "model file") for name in art.manifest["files"]]
    check_writes([Target(path, "--json", 1 << 20)], sources)


def _feeds(art, features, w: int, h: int) -> dict[str, np.ndarray]:
    """Training-graph inputs from the reference's features: every term on, weights from the manifest."""
    content, style = _images(w, h)
    fc, fs = features(content), features(style)
    d = art.defaults
    feeds = {f"content_target.{n}": fc[f"content.{n}"] for n in art.content_layers}
    feeds.update({f"style_target.{n}": fs[f"gram.{n}"][None] for n in art.style_layers})
    feeds["style_masks"] = np.ones((1, 1, h, w), np.float32)
    feeds["style_weights"] = np.ones(1, np.float32)
    # Every content layer and style layer on (the defaults leave some at 0): each one's path is checked.
    clw = d.get("content_layer_weights", {})
    feeds["content_layer_weights"] = np.array([clw.get(n) or 0.1 for n in art.content_layers], np.float32)
    slw = d.get("style_layer_weights", {})
    feeds["style_layer_weights"] = np.array([slw.get(n) or 1e-5 for n in art.style_layers], np.float32)
    feeds["term_weights"] = np.array([d["content_weight"], d["style_weight"], d["tv_weight"]], np.float32)
    return feeds


def _start(content: np.ndarray) -> np.ndarray:
    """The point where the gradient is compared: the content image plus noise (every term non-zero)."""
    rng = np.random.default_rng(7)
    x = content.transpose(2, 0, 1)[None] + rng.normal(0, 0.05, (1, 3) + content.shape[:2])
    return np.clip(x, 0, 1).astype(np.float32)


# -- comparisons -------------------------------------------------------------------------------------

def _max_rel(a, b) -> float:
    a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
    return float(np.abs(a - b).max() / max(np.abs(b).max(), 1e-30))


def _rel(a, b) -> float:
    return float(abs(float(a) - float(b)) / max(abs(float(b)), 1e-30))


def _rel_l2(a, b) -> float:
    a, b = np.asarray(a, np.float64).ravel(), np.asarray(b, np.float64).ravel()
    return float(np.linalg.norm(a - b) / max(np.linalg.norm(b), 1e-30))


class Table:
    def __init__(self, limits: dict):
        self.limits, self.rows = limits, []

    def add(self, graph: str, what: str, kind: str | None, value: float | None, note: str = "") -> None:
        """kind: a LIMITS key (compared), or None (information only)."""
        limit = self.limits[kind] if kind else None
        ok = None if kind is None else (value is not None and np.isfinite(value) and value <= limit)
        self.rows.append({"graph": graph, "what": what, "kind": kind, "value": value, "limit": limit, "ok": ok,
                          "note": note})

    def error(self, graph: str, what: str, e: Exception) -> None:
        msg = str(e).splitlines()[0] if str(e) else type(e).__name__
        self.rows.append({"graph": graph, "what": what, "kind": "error", "value": None, "limit": None, "ok": False,
                          "note": msg[:160]})

    @property
    def passed(self) -> bool:
        return all(r["ok"] is not False for r in self.rows)

    def render(self) -> str:
        lines = [f"{'graph':<24} {'what':<34} {'difference':>10} {'limit':>7}  result"]
        for r in self.rows:
            v = "" if r["value"] is None else f"{r['value']:.1e}"
            lim = f"{r['limit']:.0e}" if r["limit"] is not None else ""
            res = {True: "ok", False: "FAIL", None: ""}[r["ok"]]
            if r["kind"] == "error":
                res = f"FAIL: {r['note']}"
            elif r["note"]:
                res = f"{res} ({r['note']})" if res else r["note"]
            lines.append(f"{r['graph']:<24} {r['what']:<34} {v:>10} {lim:>7}  {res}".rstrip())
        return "\n".join(lines)


def _guard(table: Table, graph: str, what: str):
    """Run one comparison; an exception from onnxruntime becomes a FAIL row, not the end of the check."""
    class _G:
        def __enter__(self):
            return self

        def __exit__(self, kind, e, tb):
            if e is None or isinstance(e, (KeyboardInterrupt, UsageError, OutOfMemory, MemoryError)):
                return False  # memory is not the provider's disagreement: the check stops with exit 6
            table.error(graph, what, e)
            return True
    return _G()


# -- the run -----------------------------------------------------------------------------------------

class _Side:
    """One side of the comparison (the provider checked, or the reference) on one placement: each
    graph's session made once (loading train_cpu.onnx folds its Winograd weights: seconds). Quacks
    like session.Graphs where TrainStep, HostLoop and DeviceLoop need it."""

    def __init__(self, art, placement):
        self.artifacts, self.placement, self._sessions = art, placement, {}

    def session(self, path):
        if str(path) not in self._sessions:
            self._sessions[str(path)] = make_session(path, self.placement)
        return self._sessions[str(path)]

    def features(self, image: np.ndarray) -> dict[str, np.ndarray]:
        sess = self.session(self.artifacts.graph_path("eval"))
        x = np.ascontiguousarray(image.transpose(2, 0, 1)[None], dtype=np.float32)
        return dict(zip([o.name for o in sess.get_outputs()], sess.run(None, {"image": x})))

    def optimizer_sessions(self, kind: str):
        paths = self.artifacts.optimizer_graphs(kind)
        return None if paths is None else {role: self.session(p) for role, p in paths.items()}

    def graphs(self, train_path):
        """A Graphs-like view with this training graph."""
        return SimpleNamespace(artifacts=self.artifacts, placement=self.placement, train=self.session(train_path),
                               train_path=train_path, optimizer_sessions=self.optimizer_sessions)

    def step(self, train_path, feeds, x):
        """One evaluation through TrainStep (IOBinding, as the host loop runs it)."""
        return TrainStep(self.graphs(train_path), feeds, x.shape)(x)


def run(args) -> tuple[Table, dict]:
    art = Artifacts(args.model)
    for flag, value in (("--size", args.size), ("--time-size", args.time_size)):
        if value:
            _size(art, value, flag)  # too small for the model: refused now, naming its flag, not in the table
    if args.json:
        _check_json(args.json, art)
    options = providers.parse_options(args.provider_option) or None
    target = _Side(art, providers.choose(args.device, args.provider, args.threads, precision=args.precision,
                                         options=options))
    ref = _Side(art, providers.choose("cpu", threads=1))
    table = Table(LIMITS[args.precision])
    w, h = _size(art, args.size)
    meta = {"model": str(art.path), "backbone": art.backbone, **providers.info(), "provider": target.placement.provider,
            "provider_options": dict(target.placement.options), "precision": args.precision, "size": [w, h],
            "reference": "CPUExecutionProvider, 1 thread"}

    # eval.onnx; the reference's features are every graph's targets
    content, _ = _images(w, h)
    with _guard(table, "eval.onnx", "content features, Gram matrices"):
        a, b = target.features(content), ref.features(content)
        table.add("eval.onnx", "content features, Gram matrices", "features", max(_max_rel(a[k], b[k]) for k in b))
    feeds = _feeds(art, ref.features, w, h)
    x = _start(content)

    # training graphs: each on both sides; fp16 against the fp32 graph on the reference
    if args.precision == "fp16":
        art.train_graph_path("fp16")  # refuses a model without it (exit 2)
        pairs = [("train_fp16", "train")]
    else:
        pairs = [(r, r) for r in ("train", "train_cpu") if r in art.manifest["graphs"]]
    for role, ref_role in pairs:
        name = art.graph_path(role).name
        with _guard(table, name, "loss, gradient"):
            sa = target.step(art.graph_path(role), feeds, x)
            sb = ref.step(art.graph_path(ref_role), feeds, x)
            _compare_steps(table, name, sa, sb, f" vs {ref_role}.onnx" if role != ref_role else "")
    if "train_cpu" in art.manifest["graphs"] and args.precision != "fp16":
        # The CPU provider's own graph against train.onnx, on the reference: the same function.
        with _guard(table, "train_cpu.onnx", "vs train.onnx (both on the CPU)"):
            sa = ref.step(art.graph_path("train_cpu"), feeds, x)
            sb = ref.step(art.graph_path("train"), feeds, x)
            table.add("train_cpu.onnx", "gradient vs train.onnx, both on CPU", "gradient", _rel_l2(sa[4], sb[4]))

    _check_tiles(table, art, target, ref, feeds, x, content)

    # optimizer graphs on random vectors, then the device loop (the target's training graph on both sides)
    n, k = 3 * w * h, 6
    working = []
    for kind in ("adam", "lbfgs"):
        ok = bool(art.optimizer_graphs(kind))
        for path in (art.optimizer_graphs(kind) or {}).values():
            ok = False
            with _guard(table, path.name, "outputs on random vectors"):
                sa, sb = target.session(path), ref.session(path)
                inputs = _optimizer_inputs(sb, n, k)
                oa, ob = _run_plain(sa, inputs), _run_plain(sb, inputs)
                table.add(path.name, "outputs on random vectors", "optimizer", max(_max_rel(oa[o], ob[o]) for o in ob))
                ok = True
            if not ok:
                break
        if ok:
            working.append(kind)
    loop_graph = art.train_graph_path(target.placement.train_variant)
    loop_ref = art.graph_path("train") if args.precision == "fp16" else loop_graph
    for kind in [k for k in ("lbfgs", "adam") if k in working]:
        label = {"lbfgs": "L-BFGS", "adam": "Adam"}[kind]
        with _guard(table, "device loop", f"{label}, 3 steps"):
            xa = _loop(target.graphs(loop_graph), kind, feeds, x, 3)
            xb = _loop(ref.graphs(loop_ref), kind, feeds, x, 3)
            # The progress made, judged by the reference's graph: |L(xa) - L(xb)| / |L(x0) - L(xb)|.
            # (The image itself is information only: Adam's first steps are lr * sign(g) wherever g
            # is small, so any rounding there moves those pixels by a whole step.)
            la, lb, l0 = (ref.step(loop_ref, feeds, v)[0] for v in (xa, xb, x))
            table.add("device loop", f"{label}, 3 steps: loss reached", "loop", abs(la - lb) / max(abs(l0 - lb), 1e-30))
            table.add("device loop", f"{label}, 3 steps: image (max, rel.)", None,
                      float(np.abs(xa - xb).max() / max(np.abs(xb - x).max(), 1e-30)), note="not limited")

    # one iteration, timed, in the loop a run would use, against the CPU provider as it would run
    if args.time_size:
        with _guard(table, "time", f"iteration at {args.time_size} px"):
            tw, th = _size(art, args.time_size)
            tfeeds = _feeds(art, ref.features, tw, th)
            tx = _start(_images(tw, th)[0])
            ta = _time(target.graphs(loop_graph), tfeeds, tx, args.time_iterations)
            if target.placement.provider == providers.CPU:
                tb = ta  # the same thing
            else:
                cpu = _Side(art, providers.choose("cpu", threads=args.threads))
                tb = _time(cpu.graphs(art.train_graph_path(cpu.placement.train_variant)), tfeeds, tx,
                           args.time_iterations)
            meta["seconds_per_iteration"] = {"provider": ta[0], "cpu_provider": tb[0], "size": [tw, th], "loop": ta[1]}
            table.add("time", f"{ta[1]} loop, {tw}x{th}, L-BFGS", None, None,
                      note=f"{ta[0]:.3f} s/iteration (CPU provider {tb[0]:.3f} s); {loop_graph.name}")
    return table, meta


_STEP_ROWS = ("loss and each term", "image gradient (relative L2)", "image gradient (max, relative)")
_TILED_ROWS = ("tiled loss and each term", "tiled gradient (relative L2)", "tiled gradient (max, relative)")


def _compare_steps(table: Table, name: str, sa, sb, suffix: str = "", rows=_STEP_ROWS) -> None:
    """The rows of one training step against the reference's: (loss, content, style, tv, gradient)."""
    terms = max([_rel(sa[0], sb[0])] + [_rel(u, v) for u, v in zip(sa[1], sb[1]) if abs(v) > 0] +
                [_rel(u, v) for u, v in zip(sa[2], sb[2]) if abs(v) > 0] + [_rel(sa[3], sb[3])])
    table.add(name, rows[0] + suffix, "loss", terms)
    table.add(name, rows[1] + suffix, "gradient", _rel_l2(sa[4], sb[4]))
    table.add(name, rows[2] + suffix, None, _max_rel(sa[4], sb[4]),
              note="not limited: a ReLU or max-pool near-tie moves a few pixels")


def _check_tiles(table: Table, art, target: _Side, ref: _Side, feeds, x, content) -> None:
    """The tile graphs (docs/tiling.md) on the provider, assembled as a tiled run assembles them, against
    the untiled graphs on the reference: the tiled step against the training graph of the same
    convolutions, the tiled features against eval.onnx. Tiles of two grid steps: 2x2 tiles and more
    at --size 64, crops clipped at every border (the tiled and untiled functions are the same, so the
    limits are the untiled graphs'). tile_train{,_cpu}.onnx's rows compare with train{,_cpu}.onnx.
    Measured (CPU provider, 64x48): loss 2.7e-5 (relu4_1's style loss, the same with 16, 32 and 48 px
    tiles: the untiled graph's float32 arithmetic against the host's float64), gradient 5e-7,
    features 2e-6."""
    entry = tiling_entry(art)
    if entry is None:
        table.add("tile graphs", "none in this model", None, None,
                  note=f"not checked; python -m nst_ort_export.tiled {art.path} adds them")
        return
    tile = 2 * int(entry["align"])
    for variant, role in (("plain", "train"), ("cpu", "train_cpu")):
        if role not in entry:
            continue
        graph = role if role in art.manifest["graphs"] else "train"
        train_name, grams_name = entry[role]["file"], entry[role.replace("train", "grams")]["file"]
        with _guard(table, train_name, "tiled loss, gradient"):
            tiled = TiledGraphs(art, target.placement, variant)
            sa = TiledTrainStep(tiled, feeds, x.shape, tile)(x)
            sb = ref.step(art.graph_path(graph), feeds, x)
            _compare_steps(table, train_name, sa, sb, rows=_TILED_ROWS)
        with _guard(table, grams_name, "tiled features"):
            _features_row(table, grams_name, tiled, ref, content, tile)
    _check_kept(table, art, entry, target, ref, feeds, x, content, tile)


def _check_kept(table: Table, art, entry: dict, target: _Side, ref: _Side, feeds, x, content, tile: int) -> None:
    """The keep family (tile_grams_keep + tile_train_kept: pass 1 keeps what pass 2's backward needs,
    docs/tiling.md), what a tiled run uses where the folder has it: the tiled step with every crop
    kept and with some kept (the others run pass 1's graph again in pass 2, as when the memory plan
    keeps fewer), and the tiled features from pass 1's graph, against the untiled graphs on the
    reference with the plain family's limits (the same function). A folder exported before the keep
    graphs: one row saying so, not a failure."""
    families = [(variant, role) for variant, role in (("plain", "train"), ("cpu", "train_cpu"))
                if role in entry and graph_family(entry, target.placement, variant)[1]]
    if not families:
        table.add("tile keep graphs", "none in this model", None, None,
                  note=f"not checked; python -m nst_ort_export.tiled {art.path} adds them")
        return
    for variant, role in families:
        graph = role if role in art.manifest["graphs"] else "train"
        suffix = "_cpu" if variant == "cpu" else ""
        train_name, grams_name = entry["train_kept" + suffix]["file"], entry["grams_keep" + suffix]["file"]
        tiled = sb = None
        n = len(Layout.of(*x.shape[2:], tile, int(entry["align"]), int(entry["halo"])).tiles)
        # all kept; then half (none of one crop): pass 2 runs tile_grams_keep again for the others
        for keep, label in ((n, f"all {n} kept"), (n // 2, f"{n // 2} of {n} kept")):
            with _guard(table, train_name, f"{label}: tiled loss, gradient"):
                tiled = tiled or TiledGraphs(art, target.placement, variant, keep_graphs=True)
                sa = TiledTrainStep(tiled, feeds, x.shape, tile, keep)(x)
                sb = sb or ref.step(art.graph_path(graph), feeds, x)
                _compare_steps(table, train_name, sa, sb, rows=_kept_rows(label))
        with _guard(table, grams_name, "tiled features"):
            _features_row(table, grams_name, tiled or TiledGraphs(art, target.placement, variant, keep_graphs=True),
                          ref, content, tile)


def _features_row(table: Table, name: str, tiled: TiledGraphs, ref: _Side, content, tile: int) -> None:
    a, b = tiled_features(tiled, content, tile), ref.features(content)
    table.add(name, "tiled features, Gram matrices", "features", max(_max_rel(a[k], b[k]) for k in b))


def _kept_rows(label: str) -> tuple[str, str, str]:
    return (f"{label}: loss and each term", f"{label}: gradient (rel. L2)", f"{label}: gradient (max, rel.)")


def _optimizer_inputs(sess, n: int, k: int) -> dict[str, np.ndarray]:
    """Random float32 inputs for an optimizer graph: [n] vectors, [k, n] histories, [1, k] coefficients,
    positive scalars (step sizes, Adam's constants)."""
    rng = np.random.default_rng(3)
    out = {}
    for i in sess.get_inputs():
        dims = [n if d == "n" else k if d == "k" else d for d in i.shape]
        if not dims:
            out[i.name] = np.array(rng.uniform(0.1, 0.9), np.float32)
        elif i.name in ("m2",):
            out[i.name] = rng.uniform(0.0, 1.0, dims).astype(np.float32)
        else:
            out[i.name] = rng.standard_normal(dims).astype(np.float32)
    return out


def _run_plain(sess, inputs: dict) -> dict[str, np.ndarray]:
    names = [o.name for o in sess.get_outputs()]
    return dict(zip(names, sess.run(None, inputs)))


def _loop(graphs, kind: str, feeds, x, steps: int) -> np.ndarray:
    loop = DeviceLoop(graphs, feeds, x, kind, 1.0 if kind == "lbfgs" else 0.02, 10)
    for _ in range(steps):
        loop.step()  # a loss that is not finite raises NumericalError: a FAIL row
    return loop.image()


def _time(graphs, feeds, x, iterations: int) -> tuple[float, str]:
    """Median seconds per L-BFGS iteration after one warm-up, in the loop a run would use."""
    if graphs.optimizer_sessions("lbfgs") is not None:
        loop, kind = DeviceLoop(graphs, feeds, x, "lbfgs", 1.0, 100), "device"
    else:
        loop, kind = HostLoop(graphs, feeds, x, make("lbfgs", x.size, 1.0, 100)), "host"
    times = []
    for _ in range(iterations + 1):
        t0 = time.perf_counter()
        loop.step()
        times.append(time.perf_counter() - t0)
    return statistics.median(times[1:]), kind


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(sys.argv[1:] if argv is None else argv)
    try:
        table, meta = run(args)
    except KeyboardInterrupt:
        print("nst-ort check: interrupted", file=sys.stderr)
        return 130
    except Exception as e:  # noqa: BLE001 - MemoryError, NstError, anything else: one line (errors.exit_for)
        return exit_for(e, args.debug, "nst-ort check")
    opts = " ".join(f"{k}={v}" for k, v in meta["provider_options"].items())
    print(f"nst-ort check: {meta['model']} ({meta['backbone']}) on {meta['provider']}"
          f"{' [' + opts + ']' if opts else ''}, precision {meta['precision']}")
    print(f"onnxruntime {meta['onnxruntime']} ({meta['package']}); reference: {meta['reference']}; "
          f"synthetic images {meta['size'][0]}x{meta['size'][1]}")
    print(table.render())
    failed = [r for r in table.rows if r["ok"] is False]
    compared = [r for r in table.rows if r["ok"] is not None]
    verdict = (f"PASS: {len(compared)} comparisons within their limits" if not failed else
               f"FAIL: {len(failed)} of {len(compared)} comparisons outside their limits or not run")
    print(verdict)
    if args.json:
        text = json.dumps({**meta, "rows": table.rows, "passed": table.passed, "verdict": verdict,
                           "limits": LIMITS[args.precision], "what": WHAT}, indent=1) + "\n"
        try:
            atomic_write(args.json, lambda f: f.write(text), mode="w")
        except OSError as e:  # checked before the run; a disk that filled meanwhile
            print(f"nst-ort check: error: {args.json}: cannot write ({e.strerror or e})", file=sys.stderr)
            return OutputError.exit_code
    return 0 if table.passed else EXIT_CHECK_FAILED
