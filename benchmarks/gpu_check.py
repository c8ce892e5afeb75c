"""GPU checks, prepared and NOT measured on our CPU-only machines: run on a CUDA machine.

    python benchmarks/gpu_check.py --model /tmp/vgg19r --sizes 256 512 1024 --json gpu.json
    python benchmarks/gpu_check.py --model /tmp/vgg19r --device cpu --sizes 64   # smoke test anywhere

1. The training step alone (IOBinding, every buffer on the device, no host traffic) under CUDA
   provider variants: fp32 (use_tf32=0), tf32, NHWC (prefer_nhwc=1), CUDA graphs (enable_cuda_graph=1,
   scalar outputs bound on the device too), and fp16 (the train graph converted with
   onnxconverter-common's float16 converter, inputs/outputs kept fp32) when that package is installed.
   Time per step (median), device memory (nvidia-smi, per process: ORT's arena does not shrink, so
   this is ~ the peak) and the loss / gradient against the fp32 run (precision cost).
2. 8 GB card emulation: gpu_mem_limit = 8 GiB, arena_extend_strategy = kSameAsRequested; the largest
   square size whose training step still runs (the L-BFGS history, 2 x 100 x 12 bytes/pixel, is
   reported beside it: it lives in the same memory in the device loop).
3. The whole loop (benchmarks/bench.py --device cuda): our device loop vs torch eager on CUDA
   (if torch has CUDA), per precision.
4. `nst-ort check` on CUDA (and TensorRT when listed) in fp32, tf32 and fp16, the last on the
   model's mixed-precision graph (train_fp16.onnx: convolutions fp16, Gram/loss fp32, made here by
   nst_ort_export.mixed_precision when the model lacks it) against its fp32 train.onnx on the CPU.

The "mixed" variant of step 1 times that mixed graph; "fp16" is onnxconverter-common's whole-graph
conversion (which overflowed in the Gram on an H200: shared/device/README.md).

Each variant runs in a fresh process (one CUDA context each, and a failure stays contained).
"""
from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

GiB = 1 << 30
VARIANTS = {
    "fp32": {"use_tf32": "0"},
    "tf32": {"use_tf32": "1"},
    "nhwc_tf32": {"use_tf32": "1", "prefer_nhwc": "1"},
    "cudagraph_tf32": {"use_tf32": "1", "enable_cuda_graph": "1"},
    "fp16": {"use_tf32": "0", "_fp16": True},
    "mixed": {"use_tf32": "0", "_mixed": True},
}
MEM8G = {"gpu_mem_limit": str(8 * GiB), "arena_extend_strategy": "kSameAsRequested", "use_tf32": "1"}


def _gpu_mib() -> float | None:
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


def _fp16_model(path: Path, out: Path) -> Path:
    import onnx
    from onnxconverter_common import float16  # pip install onnxconverter-common

    m = onnx.load(str(path))  # with external weights
    m16 = float16.convert_float_to_float16(m, keep_io_types=True, disable_shape_infer=True)
    onnx.save(m16, str(out), save_as_external_data=True, location=out.name + ".data")
    return out


def step_child(spec: dict) -> dict:
    """Time the training step alone with everything bound on the device."""
    import numpy as np
    import onnxruntime as ort

    from nst_ort import Artifacts

    art = Artifacts(spec["model"])
    dev, size, opts = spec["device"], spec["size"], dict(spec["options"])
    fp16 = opts.pop("_fp16", False)
    mixed = opts.pop("_mixed", False)
    train_path = art.graph_path("train")
    if fp16:
        train_path = _fp16_model(train_path, Path(spec["tmp"]) / "train_fp16.onnx")
    if mixed:
        train_path = art.train_graph_path("fp16")
    so = ort.SessionOptions()
    so.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    so.log_severity_level = 3
    providers = [("CUDAExecutionProvider", opts), "CPUExecutionProvider"] if dev == "cuda" else ["CPUExecutionProvider"]
    ev = ort.InferenceSession(str(art.graph_path("eval")), so, providers=providers)
    tr = ort.InferenceSession(str(train_path), so, providers=providers)
    rng = np.random.default_rng(0)
    content = rng.random((1, 3, size, size), dtype=np.float32)
    outs = dict(zip([o.name for o in ev.get_outputs()], ev.run(None, {"image": content})))
    feeds = {"style_masks": np.ones((1, 1, size, size), np.float32),
             "content_layer_weights": np.array([1.0] + [0.0] * (len(art.content_layers) - 1), np.float32),
             "style_layer_weights": np.full(len(art.style_layers), 1.0 / len(art.style_layers), np.float32),
             "style_weights": np.ones(1, np.float32), "term_weights": np.array([1.0, 1.0, 0.0], np.float32)}
    for n in art.content_layers:
        feeds[f"content_target.{n}"] = outs[f"content.{n}"]
    for n in art.style_layers:
        feeds[f"style_target.{n}"] = outs[f"gram.{n}"][None] * 1.5
    feeds["image"] = rng.random((1, 3, size, size), dtype=np.float32)
    b = tr.io_binding()
    keep = [ort.OrtValue.ortvalue_from_numpy(v, dev, 0) for v in feeds.values()]
    for name, v in zip(feeds, keep):
        b.bind_ortvalue_input(name, v)
    out_vals = {}
    shapes = {"loss": [], "content_losses": [len(art.content_layers)], "style_losses": [len(art.style_layers)],
              "tv_loss": [], "image_grad": [1, 3, size, size]}
    for o in tr.get_outputs():  # every output on the device (CUDA graphs need fixed device addresses)
        out_vals[o.name] = ort.OrtValue.ortvalue_from_shape_and_type(shapes[o.name], np.float32, dev, 0)
        b.bind_ortvalue_output(o.name, out_vals[o.name])
    times = []
    t_first = None
    for i in range(spec["runs"] + 2):
        t0 = time.perf_counter()
        tr.run_with_iobinding(b)
        if i == 0:
            t_first = time.perf_counter() - t0
        elif i >= 2:
            times.append(time.perf_counter() - t0)
    loss = float(out_vals["loss"].numpy())
    grad = out_vals["image_grad"].numpy()
    return {"s_per_step": statistics.median(times), "first_s": t_first, "loss": loss,
            "grad_norm": float(np.linalg.norm(grad)), "grad_sample": grad.reshape(-1)[:: max(1, grad.size // 4096)].tolist(),
            "gpu_mib": _gpu_mib() if dev == "cuda" else None, "providers": tr.get_providers()}


def run_child(spec: dict, timeout: float) -> dict:
    cmd = [sys.executable, str(Path(__file__).resolve()), "--child", json.dumps(spec)]
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    try:
        p = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, env=env, cwd=str(ROOT))
    except subprocess.TimeoutExpired:
        return {"error": f"timeout after {timeout} s"}
    lines = [line for line in p.stdout.splitlines() if line.startswith("RESULT ")]
    if p.returncode != 0 or not lines:
        return {"error": (p.stderr or p.stdout).strip().splitlines()[-3:]}
    return json.loads(lines[-1][7:])


def mixed_model(model: Path) -> Path:
    """The model with train_fp16.onnx (a copy with it added, when it has none)."""
    import atexit
    import shutil
    import tempfile

    if (model / "train_fp16.onnx").exists():
        return model
    if model not in _MIXED:
        from nst_ort_export.mixed_precision import add_to_folder

        tmp = tempfile.mkdtemp(prefix="nst_mixed_")
        atexit.register(shutil.rmtree, tmp, True)
        _MIXED[model] = Path(tmp) / model.name
        shutil.copytree(model, _MIXED[model])
        add_to_folder(_MIXED[model])
    return _MIXED[model]


_MIXED: dict = {}


def run_checks(model: Path, providers: list[str], precisions=("fp32", "tf32", "fp16"), size: int = 256,
               time_size: int = 1024) -> dict:
    """`nst-ort check` per provider and precision (exit 0 pass, 10 differs); output kept whole."""
    mixed = mixed_model(model.resolve())
    out = {}
    for provider in providers:
        for precision in precisions:
            cmd = [sys.executable, "-m", "nst_ort", "check", "--provider", provider, "--precision", precision,
                   "--model", str(mixed if precision == "fp16" else model), "--size", str(size),
                   "--time-size", str(time_size)]
            try:
                p = subprocess.run(cmd, capture_output=True, text=True, timeout=1800, cwd=str(ROOT),
                                   env={**os.environ, "PYTHONPATH": str(ROOT)})
                out[f"{provider} {precision}"] = {"exit": p.returncode, "stdout": p.stdout, "stderr": p.stderr[-2000:]}
                print(p.stdout + p.stderr[-500:], flush=True)
            except subprocess.TimeoutExpired:
                out[f"{provider} {precision}"] = {"exit": None, "stderr": "timeout after 1800 s"}
    return out


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description="GPU variants of the training step, 8 GB emulation, whole-loop bench")
    p.add_argument("--model", type=Path, default=ROOT / "models" / "vgg16")
    p.add_argument("--sizes", type=int, nargs="+", default=[256, 512, 1024])
    p.add_argument("--device", choices=["cuda", "cpu"], default="cuda")
    p.add_argument("--runs", type=int, default=10)
    p.add_argument("--variants", default=",".join(VARIANTS))
    p.add_argument("--mem-sizes", type=int, nargs="*", default=[1024, 1536, 2048, 2560, 3072])
    p.add_argument("--skip-bench", action="store_true", help="skip the whole-loop bench.py run")
    p.add_argument("--json", type=Path)
    p.add_argument("--child", help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    if args.child:
        print("RESULT " + json.dumps(step_child(json.loads(args.child))), flush=True)
        return 0

    import tempfile

    results = {"variants": {}, "mem8g": {}}
    try:
        results["nvidia_smi"] = subprocess.run(["nvidia-smi", "--query-gpu=name,memory.total,driver_version",
                                                "--format=csv,noheader"], capture_output=True, text=True,
                                               timeout=20).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        results["nvidia_smi"] = None
    with tempfile.TemporaryDirectory() as tmp:
        base = {"model": str(args.model.resolve()), "device": args.device, "runs": args.runs, "tmp": tmp}
        names = [v for v in args.variants.split(",") if v] if args.device == "cuda" else ["cpu"]
        for size in args.sizes:
            ref = None
            for name in names:
                opts = VARIANTS.get(name, {})
                model = str(mixed_model(args.model.resolve())) if opts.get("_mixed") else base["model"]
                r = run_child({**base, "model": model, "size": size, "options": opts}, timeout=1800)
                if "error" not in r:
                    ref = ref or r
                    s0, s1 = ref["grad_sample"], r.pop("grad_sample")
                    r["grad_rel_diff_vs_first"] = max(abs(a - b) for a, b in zip(s0, s1)) / max(max(abs(a) for a in s0), 1e-30)
                    r["loss_rel_diff_vs_first"] = (r["loss"] - ref["loss"]) / abs(ref["loss"])
                results["variants"].setdefault(str(size), {})[name] = r
                print(f"{size:>5} {name:<16} " + (f"{r['s_per_step']*1e3:8.1f} ms/step  gpu {r['gpu_mib']} MiB  "
                      f"loss diff {r['loss_rel_diff_vs_first']:+.1e}" if "error" not in r else f"FAILED {r['error']}"),
                      flush=True)
        if args.device == "cuda":
            for size in args.mem_sizes:
                r = run_child({**base, "size": size, "runs": 2, "options": MEM8G}, timeout=1800)
                r.pop("grad_sample", None)
                r["lbfgs_history_mib"] = 2 * 100 * 3 * size * size * 4 / 2**20
                results["mem8g"][str(size)] = r
                print(f"8 GB emulation {size:>5}: " + ("fits" if "error" not in r else "does not fit") +
                      f" (history would add {r['lbfgs_history_mib']:.0f} MiB)", flush=True)
                if "error" in r:
                    break
    if args.device == "cuda":
        import onnxruntime as ort

        results["check"] = run_checks(args.model, ["CUDAExecutionProvider"] + [
            p for p in ("TensorrtExecutionProvider",) if p in ort.get_available_providers()])
    else:  # smoke test of the same path on the CPU provider (which runs the fp16 graph in fp32)
        results["check"] = run_checks(args.model, ["CPUExecutionProvider"], ("fp32", "fp16"), 64, 0)
    if not args.skip_bench and args.device == "cuda":
        out = Path(tempfile.gettempdir()) / "nst_gpu_bench.json"
        cmd = [sys.executable, str(ROOT / "benchmarks" / "bench.py"), "--model", str(args.model), "--device", "cuda",
               "--sizes", *map(str, args.sizes), "--iterations", "20", "--warmup", "5", "--json", str(out)]
        for precision in ("fp32", "tf32"):
            subprocess.run(cmd + ["--precision", precision], timeout=7200)
            if out.exists():
                results.setdefault("bench_by_precision", {})[precision] = json.loads(out.read_text())
    if args.json:
        args.json.write_text(json.dumps(results, indent=1) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
