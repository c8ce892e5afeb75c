"""nst-ort against a plain PyTorch eager reference of the same Gatys loop, side by side.

    python benchmarks/bench.py --model /tmp/vgg19r --sizes 256 512 --iterations 10 --threads 2
    python benchmarks/bench.py --model models/vgg16 --sizes 256 --iterations 100 --warmup 0   # quality

Each run is a separate process (so that peak memory is each side's own), one after the other, ABAB
when --repeats > 1, with the same thread count. Both sides run the same function: the torch side
builds the artifact's backbone with export/backbones.py and loads the artifact's own (stored) weights
from its ONNX initializers, and uses export/loss.py. Both optimize with L-BFGS as neural-style runs it
(no line search, history 100, one evaluation per iteration): torch.optim.LBFGS on the torch side,
nst_ort.engine.optim.LBFGS on ours (it deviates from torch only on steps without a curvature pair: see
nst_ort/engine/optim.py). An iteration is one loss-and-gradient evaluation plus its update.

Reported per size: time per iteration (median over the iterations after --warmup; torch: intervals
between closure calls), peak host RSS (VmHWM), device memory on CUDA, and the loss at each evaluation
(the last one is "loss after N iterations"). Table on stdout, everything in --json.

The torch side needs the [export] extra (torch, onnx); the ORT side imports no torch.
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
EXAMPLES = ROOT / "examples"
DEFAULT_CONTENT = EXAMPLES / "tuebingen_neckarfront.jpg"
DEFAULT_STYLE = EXAMPLES / "starry_night.jpg"


# --- measurements shared by both children ----------------------------------------------------------


def _status_kib(key: str) -> int | None:
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith(key + ":"):
                    return int(line.split()[1])
    except OSError:
        pass
    return None


def peak_rss_mib() -> float | None:
    kib = _status_kib("VmHWM")
    if kib is None:  # not Linux: ru_maxrss (KiB on Linux, bytes on macOS)
        import resource

        r = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
        return r / (1024 * 1024) if sys.platform == "darwin" else r / 1024
    return kib / 1024


def reset_peak_rss() -> bool:
    """Start VmHWM afresh (Linux >= 4.0), so that the next peak is the loop's, not setup's."""
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
        return True
    except OSError:
        return False


def rss_mib() -> float | None:
    kib = _status_kib("VmRSS")
    return None if kib is None else kib / 1024


def gpu_mem_mib() -> float | None:
    """This process's device memory as nvidia-smi sees it (ORT's arena does not shrink: ~ its peak)."""
    try:
        out = subprocess.run(["nvidia-smi", "--query-compute-apps=pid,used_memory", "--format=csv,noheader,nounits"],
                             capture_output=True, text=True, timeout=20).stdout
    except (OSError, subprocess.SubprocessError):
        return None
    for line in out.splitlines():
        parts = [p.strip() for p in line.split(",")]
        if len(parts) == 2 and parts[0] == str(os.getpid()):
            return float(parts[1])
    return None


def _emit(result: dict) -> None:
    print("RESULT " + json.dumps(result), flush=True)


# --- ORT child: the product's loop (Stylizer) --------------------------------------------------------


def child_ort(spec: dict) -> dict:
    from nst_ort import Config, OptimConfig, StyleInput, Stylizer

    base = rss_mib()
    kw = {"loop": spec.get("loop", "auto")}
    if spec.get("precision"):
        kw["precision"] = spec["precision"]
    cfg = Config(content=Path(spec["content"]), styles=[StyleInput(Path(spec["style"]))], size=spec["size"],
                 init=spec["init"], seed=spec["seed"], model=Path(spec["model"]), device=spec["device"],
                 threads=spec["threads"], optim=OptimConfig(name="lbfgs", iterations=spec["iterations"]), **kw)
    t0 = time.perf_counter()
    st = Stylizer(cfg)
    setup_peak = peak_rss_mib()
    reset = reset_peak_rss()
    records = []
    for r in st.run():
        records.append(r)
        if len(records) == 1:
            setup = time.perf_counter() - t0 - r.seconds
    loop = st.runtime()["loop"]
    return {"side": "ort", "times": [r.seconds for r in records], "losses": [r.loss for r in records],
            "setup_s": setup, "rss_base_mib": base, "setup_peak_rss_mib": setup_peak,
            "loop_peak_rss_mib": peak_rss_mib() if reset else None,
            "peak_rss_mib": max(setup_peak or 0, peak_rss_mib() or 0),
            "gpu_mib": gpu_mem_mib() if spec["device"] == "cuda" else None,
            "providers": st.placement.providers, "loop": loop,
            "shape": [records[-1].height, records[-1].width]}


# --- torch child: plain eager reference ----------------------------------------------------------


def _torch_backbone(model: Path, manifest: dict):
    """The artifact's network in torch, with the artifact's stored weights (fp16-rounded if so stored)."""
    import numpy as np
    import onnx
    import torch
    from onnx import numpy_helper

    sys.path.insert(0, str(ROOT))
    from nst_ort_export.backbones import REGISTRY
    from nst_ort_export.spec import graph_tensors

    name = manifest["backbone"]
    pool = "max"
    if name.endswith("-avgpool"):
        name, pool = name[: -len("-avgpool")], "avg"
    if name not in REGISTRY:
        raise SystemExit(f"bench: backbone {manifest['backbone']!r} is not in export/backbones.py")
    kw = {"weights": "random", "content_layers": manifest["content_layers"], "style_layers": manifest["style_layers"]}
    if pool != "max":
        kw["pool"] = pool
    backbone = REGISTRY[name](**kw)
    proto = onnx.load(str(model / manifest["graphs"]["eval"]["file"]), load_external_data=False)
    onnx.load_external_data_for_model(proto, str(model))
    inits = {}
    for t in proto.graph.initializer:
        a = numpy_helper.to_array(t)
        key = t.name[: -len(".fp16")] if t.name.endswith(".fp16") else t.name
        inits[key] = a.astype(np.float32)
    wanted = graph_tensors(backbone)
    missing = [n for n in wanted if n not in inits]
    if missing:
        raise SystemExit(f"bench: {model} has no initializers for {missing[:3]}... (graph from another backbone?)")
    state = {n: torch.from_numpy(inits[n]).reshape(wanted[n].shape) for n in wanted}
    backbone.module.load_state_dict(state, strict=False)
    # The channel order is not a tensor: take it from the manifest (weights="random" builds RGB).
    from nst_ort_export.network import PreprocessLayer

    for m in backbone.module.modules():
        if isinstance(m, PreprocessLayer):
            m.flip = manifest["preprocess"]["order"] == "BGR"
    return backbone


def child_torch(spec: dict) -> dict:
    import numpy as np
    import torch

    torch.set_num_threads(spec["threads"])
    try:
        torch.set_num_interop_threads(1)
    except RuntimeError:
        pass
    base = rss_mib()
    sys.path.insert(0, str(ROOT))
    from nst_ort_export.loss import content_loss, gram, tv_loss

    dev = torch.device("cuda" if spec["device"] == "cuda" else "cpu")
    precision = spec.get("precision") or "fp32"
    if dev.type == "cuda":
        torch.backends.cuda.matmul.allow_tf32 = precision == "tf32"
        torch.backends.cudnn.allow_tf32 = precision == "tf32"
        torch.backends.cudnn.benchmark = True
    model = Path(spec["model"])
    manifest = json.loads((model / "manifest.json").read_text())
    backbone = _torch_backbone(model, manifest)
    net = backbone.module.to(dev)
    taps = [layer.name for layer in backbone.layers]
    arrays = np.load(spec["arrays"])
    chw = lambda a: torch.from_numpy(np.ascontiguousarray(a.transpose(2, 0, 1)[None])).to(dev)  # noqa: E731
    content, style = chw(arrays["content"]), chw(arrays["style"])

    d = manifest["defaults"]
    cw, sw, tw = d["content_weight"], d["style_weight"], d["tv_weight"]
    clw = {n: w for n, w in d["content_layer_weights"].items() if w}
    slw = {n: w for n, w in d["style_layer_weights"].items() if w}
    autocast = torch.autocast(dev.type, dtype=torch.float16, enabled=precision == "fp16")
    with torch.no_grad(), autocast:
        fc = dict(zip(taps, net(content)))
        fs = dict(zip(taps, net(style)))
        ctarget = {n: fc[n].float() for n in clw}
        starget = {n: gram(fs[n].float()) for n in slw}
    del fc, fs

    setup_peak = peak_rss_mib()
    reset = reset_peak_rss()
    x = torch.from_numpy(arrays["init"]).to(dev).requires_grad_(True)
    opt = torch.optim.LBFGS([x], lr=1.0, max_iter=spec["iterations"], max_eval=10 * spec["iterations"],
                            tolerance_grad=-1, tolerance_change=-1, history_size=100, line_search_fn=None)
    stamps, losses = [], []
    sync = torch.cuda.synchronize if dev.type == "cuda" else (lambda: None)

    def closure():
        sync()
        stamps.append(time.perf_counter())
        opt.zero_grad()
        with autocast:
            f = dict(zip(taps, net(x)))
        loss = 0.0
        for n, w in clw.items():
            loss = loss + cw * w * content_loss(f[n].float(), ctarget[n])
        for n, w in slw.items():
            loss = loss + sw * w * ((gram(f[n].float()) - starget[n]) ** 2).mean()
        if tw:
            loss = loss + tw * tv_loss(x)
        loss.backward()
        losses.append(float(loss))
        return loss

    t0 = time.perf_counter()
    opt.step(closure)
    sync()
    stamps.append(time.perf_counter())  # end of the last update
    times = [b - a for a, b in zip(stamps, stamps[1:])]
    return {"side": "torch", "times": times, "losses": losses, "setup_s": stamps[0] - t0,
            "rss_base_mib": base, "setup_peak_rss_mib": setup_peak,
            "loop_peak_rss_mib": peak_rss_mib() if reset else None,
            "peak_rss_mib": max(setup_peak or 0, peak_rss_mib() or 0),
            "gpu_mib": gpu_mem_mib() if dev.type == "cuda" else None,
            "gpu_alloc_peak_mib": torch.cuda.max_memory_allocated() / 2**20 if dev.type == "cuda" else None,
            "torch": torch.__version__, "shape": list(x.shape[2:])}


# --- parent ----------------------------------------------------------------------------------------


def prepare_arrays(args, size: int, tmp: Path) -> Path:
    """Content, style and initial image exactly as the Stylizer makes them (nst_ort.media.images)."""
    import numpy as np

    from nst_ort.media.images import fit_size, load_image, resize

    content = load_image(args.content)
    style = load_image(args.style)
    w, h = fit_size(content.shape[1], content.shape[0], size)
    c = resize(content, (w, h))
    s = resize(style, fit_size(style.shape[1], style.shape[0], max(1, round(max(w, h) * 1.0))))
    if args.init == "content":
        init = np.ascontiguousarray(c.transpose(2, 0, 1)[None], dtype=np.float32)
    else:  # as Stylizer._initial: rng(seed).uniform
        init = np.random.default_rng(args.seed).uniform(0.0, 1.0, (1, 3, h, w)).astype(np.float32)
    path = tmp / f"arrays_{size}.npz"
    np.savez(path, content=c, style=s, init=init)
    return path


def run_child(side: str, spec: dict, timeout: float) -> dict:
    env = {**os.environ, "PYTHONPATH": str(ROOT) + os.pathsep + os.environ.get("PYTHONPATH", "")}
    env.setdefault("OMP_NUM_THREADS", str(spec["threads"]))
    cmd = [sys.executable, str(Path(__file__).resolve()), "--child", side, "--spec", json.dumps(spec)]
    p = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, env=env, cwd=str(ROOT))
    lines = [line for line in p.stdout.splitlines() if line.startswith("RESULT ")]
    if p.returncode != 0 or not lines:
        return {"side": side, "error": (p.stderr or p.stdout).strip().splitlines()[-5:] or [f"exit {p.returncode}"]}
    return json.loads(lines[-1][len("RESULT "):])


def summarize(runs: list[dict], warmup: int) -> dict:
    ok = [r for r in runs if "error" not in r]
    if not ok:
        return {"error": runs[0].get("error") if runs else "no runs"}
    medians = [statistics.median(r["times"][warmup:] or r["times"]) for r in ok]
    return {
        "s_per_iter": statistics.median(medians),
        "s_per_iter_each_run": medians,
        "peak_rss_mib": max(r["peak_rss_mib"] or 0 for r in ok),
        "loop_peak_rss_mib": max((r.get("loop_peak_rss_mib") or 0) for r in ok) or None,
        "setup_peak_rss_mib": max((r.get("setup_peak_rss_mib") or 0) for r in ok) or None,
        "rss_base_mib": ok[0].get("rss_base_mib"),
        "gpu_mib": max((r.get("gpu_mib") or 0) for r in ok) or None,
        "final_loss": ok[0]["losses"][-1] if ok[0]["losses"] else None,
        "evaluations": len(ok[0]["losses"]),
        "losses": ok[0]["losses"],
        "loop": ok[0].get("loop"),
    }


def fmt(v, spec="{:.3f}"):
    return "-" if v is None else spec.format(v)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--model", type=Path, default=ROOT / "models" / "vgg16", help="artifact folder")
    p.add_argument("--sizes", type=int, nargs="+", default=[256, 512], help="long sides")
    p.add_argument("--iterations", type=int, default=10, help="L-BFGS iterations per run (N)")
    p.add_argument("--warmup", type=int, default=2, help="iterations left out of the time median")
    p.add_argument("--threads", type=int, default=None,
                   help="intra-op threads, both sides (default: nst-ort's default, and torch the same number)")
    p.add_argument("--repeats", type=int, default=1, help="ORT/torch pairs per size, alternating (ABAB)")
    p.add_argument("--device", choices=["cpu", "cuda"], default="cpu")
    p.add_argument("--precision", choices=["fp32", "tf32", "fp16"], default=None,
                   help="CUDA only (fp32 = TF32 off on both sides); the CPU computes in fp32")
    p.add_argument("--content", type=Path, default=DEFAULT_CONTENT)
    p.add_argument("--style", type=Path, default=DEFAULT_STYLE)
    p.add_argument("--init", choices=["content", "noise"], default="content")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--sides", default="ort,torch", help="comma-separated: ort, torch")
    p.add_argument("--loop", choices=["auto", "device", "host"], default="auto",
                   help="ORT side: optimizer on the device (optimizer graphs) or on the host (optim.py)")
    p.add_argument("--timeout", type=float, default=3600, help="seconds per child process")
    p.add_argument("--json", type=Path, help="write all results here")
    p.add_argument("--child", choices=["ort", "torch"], help=argparse.SUPPRESS)
    p.add_argument("--spec", help=argparse.SUPPRESS)
    args = p.parse_args(argv)

    if args.child:
        spec = json.loads(args.spec)
        _emit(child_ort(spec) if args.child == "ort" else child_torch(spec))
        return 0

    sys.path.insert(0, str(ROOT))
    if args.threads is None:  # nst-ort's own default; the torch side gets the same count
        from nst_ort.engine.threads import default_threads

        args.threads = default_threads("CPUExecutionProvider") if args.device == "cpu" else 2
    sides = [s.strip() for s in args.sides.split(",") if s.strip()]
    results = {"conditions": conditions(args), "sizes": {}}
    with tempfile.TemporaryDirectory(prefix="nst-bench-") as tmp:
        for size in args.sizes:
            arrays = prepare_arrays(args, size, Path(tmp))
            spec = {"model": str(args.model.resolve()), "size": size, "iterations": args.iterations,
                    "threads": args.threads, "device": args.device, "precision": args.precision,
                    "content": str(args.content.resolve()), "style": str(args.style.resolve()), "init": args.init,
                    "seed": args.seed, "arrays": str(arrays), "loop": args.loop}
            runs = {s: [] for s in sides}
            for _ in range(args.repeats):
                for s in sides:
                    r = run_child(s, spec, args.timeout)
                    runs[s].append(r)
                    if "error" in r:
                        print(f"bench: {s} at {size}: " + " | ".join(r["error"]), file=sys.stderr)
            entry = {s: summarize(runs[s], args.warmup) for s in sides}
            entry["runs"] = runs
            o, t = entry.get("ort", {}), entry.get("torch", {})
            if o.get("s_per_iter") and t.get("s_per_iter"):
                entry["speedup"] = t["s_per_iter"] / o["s_per_iter"]
                med = lambda r: statistics.median(r["times"][args.warmup:] or r["times"])  # noqa: E731
                entry["speedup_each_pair"] = [med(b) / med(a) for a, b in zip(runs["ort"], runs["torch"])
                                              if "error" not in a and "error" not in b]
            if o.get("final_loss") and t.get("final_loss"):
                entry["loss_rel_diff"] = (o["final_loss"] - t["final_loss"]) / abs(t["final_loss"])
            results["sizes"][str(size)] = entry
            print_row(size, entry, header=size == args.sizes[0])
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(results, indent=1) + "\n")
    return 0


def print_row(size: int, e: dict, header: bool) -> None:
    if header:
        print(f"{'size':>5} | {'ORT s/it':>8} | {'torch s/it':>10} | {'speedup':>7} | {'ORT RSS MiB':>14} | "
              f"{'torch RSS MiB':>14} | {'ORT loss@N':>11} | {'torch loss@N':>12} | {'diff':>7}")
        print(f"{'':>5} | {'':>8} | {'':>10} | {'':>7} | {'peak (loop)':>14} | {'peak (loop)':>14} |")
    o, t = e.get("ort", {}), e.get("torch", {})
    diff = e.get("loss_rel_diff")
    print(f"{size:>5} | {fmt(o.get('s_per_iter')):>8} | {fmt(t.get('s_per_iter')):>10} | "
          f"{fmt(e.get('speedup'), '{:.2f}x'):>7} | {_mem(o):>14} | "
          f"{_mem(t):>14} | {fmt(o.get('final_loss'), '{:.5g}'):>11} | "
          f"{fmt(t.get('final_loss'), '{:.5g}'):>12} | {fmt(None if diff is None else 100 * diff, '{:+.2f}%'):>7}",
          flush=True)


def _mem(side: dict) -> str:
    if side.get("peak_rss_mib") is None:
        return "-"
    loop = side.get("loop_peak_rss_mib")
    return f"{side['peak_rss_mib']:.0f}" + (f" ({loop:.0f})" if loop else "")


def conditions(args) -> dict:
    c = {"python": platform.python_version(), "machine": platform.machine(), "cpus": os.cpu_count(),
         "threads": args.threads, "device": args.device, "precision": args.precision or "fp32",
         "iterations": args.iterations, "warmup": args.warmup, "repeats": args.repeats, "init": args.init,
         "loop": args.loop,
         "model": str(args.model), "content": args.content.name, "style": args.style.name,
         "date": time.strftime("%Y-%m-%d %H:%M"), "loadavg_start": os.getloadavg() if hasattr(os, "getloadavg") else None}
    try:
        import onnxruntime

        c["onnxruntime"] = onnxruntime.__version__
    except ImportError:
        pass
    try:
        with open("/proc/cpuinfo") as f:
            c["cpu"] = next((line.split(":", 1)[1].strip() for line in f if line.startswith("model name")), None)
    except OSError:
        pass
    return c


if __name__ == "__main__":
    sys.exit(main())
