"""The one place that chooses execution providers and session options."""
from __future__ import annotations

import dataclasses
import sys
from typing import Callable

import onnxruntime as ort

from .errors import DeviceError
from .threads import SPIN_STOP, default_threads

ALIASES = {"cpu": "CPUExecutionProvider", "cuda": "CUDAExecutionProvider"}


@dataclasses.dataclass(frozen=True)
class Placement:
    providers: list  # for InferenceSession(providers=...)
    device: str  # "cpu" or "cuda": where IOBinding puts buffers
    threads: int | None = None
    # `auto` picked CUDA: if sessions cannot use it after all (no driver, missing cuDNN), session.py
    # falls back to the CPU and says so once through `warn`, instead of failing.
    fallback: bool = False
    warn: Callable[[str], None] | None = dataclasses.field(default=None, compare=False, repr=False)
    # Provider options for providers[0] on CUDA (use_tf32 from --precision, NST_ORT_CUDA_OPTIONS).
    cuda_options: tuple = ()

    def ort_providers(self) -> list:
        """`providers` as InferenceSession takes them: options attached to the CUDA provider."""
        if not self.cuda_options:
            return list(self.providers)
        return [(p, dict(self.cuda_options)) if p == "CUDAExecutionProvider" else p for p in self.providers]

    def on_cpu(self) -> "Placement":
        return Placement(["CPUExecutionProvider"], "cpu", self.threads or default_threads("CPUExecutionProvider"))

    def session_options(self) -> ort.SessionOptions:
        so = ort.SessionOptions()
        so.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        # The memory pattern (one block per run, planned from the first) kept ~170 MB more resident
        # at 256 px (VGG19 training step) for no measurable speed; the arena alone reuses freed chunks.
        so.enable_mem_pattern = False
        # Fatal only: failures reach the user once, as our one-line error, not also as ORT's log line.
        so.log_severity_level = 4
        if self.threads:
            so.intra_op_num_threads = self.threads
            so.inter_op_num_threads = 1
        # Workers stop spinning when their session's run returns: the next session (the training and
        # optimizer graphs take turns every iteration) gets the cores (nst_ort/threads.py).
        so.add_session_config_entry(*SPIN_STOP)
        # Same inputs + thread count -> same bytes (issue: reproducible runs on the CPU provider).
        so.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
        return so


_warned = False


def _preload_cuda() -> None:
    # onnxruntime-gpu installed with [cuda,cudnn] finds its libraries only after this call.
    preload = getattr(ort, "preload_dlls", None)
    if preload is not None:
        try:
            preload()
        except Exception:  # noqa: BLE001 - missing optional libraries are reported below
            pass


PRECISIONS = ("fp32", "tf32", "fp16")


def cuda_options(precision: str = "fp32") -> tuple:
    """CUDA provider options for a precision, plus NST_ORT_CUDA_OPTIONS (a JSON object of provider
    options, e.g. '{"prefer_nhwc": "1", "gpu_mem_limit": "8589934592",
    "arena_extend_strategy": "kSameAsRequested"}': see benchmarks/gpu_check.py).

    fp32: TF32 off (onnxruntime's CUDA provider turns it on by default on Ampere and later, which
    makes convolutions ~10-bit-mantissa accurate); tf32: on. Unmeasured here (no GPU)."""
    import json
    import os

    if precision not in PRECISIONS:
        raise DeviceError(f"unknown precision {precision!r}: use {', '.join(PRECISIONS)}")
    if precision == "fp16":
        raise DeviceError("precision fp16 needs an fp16 training graph, which this export does not have "
                          "(benchmarks/gpu_check.py converts one to measure it); use fp32 or tf32")
    opts = {"use_tf32": "1" if precision == "tf32" else "0"}
    extra = os.environ.get("NST_ORT_CUDA_OPTIONS")
    if extra:
        try:
            opts.update({str(k): str(v) for k, v in json.loads(extra).items()})
        except (ValueError, AttributeError):
            raise DeviceError(f"NST_ORT_CUDA_OPTIONS is not a JSON object of provider options: {extra!r}") from None
    return tuple(sorted(opts.items()))


def choose(device: str = "auto", provider: str | None = None, threads: int | None = None, warn=None,
           precision: str = "fp32") -> Placement:
    """device: auto | cpu | cuda; provider: any ORT provider name, overrides device.
    precision: fp32 | tf32 (CUDA; the CPU provider always computes in fp32) | fp16 (not yet).
    threads: intra-op threads; None: the provider's default (nst_ort/threads.py, measured there)."""
    placement = _choose(device, provider, threads, warn)
    if placement.threads is None:
        placement = dataclasses.replace(placement, threads=default_threads(placement.providers[0]))
    if placement.device == "cuda" and "CUDAExecutionProvider" in placement.providers:
        return dataclasses.replace(placement, cuda_options=cuda_options(precision))
    if precision not in PRECISIONS:
        raise DeviceError(f"unknown precision {precision!r}: use {', '.join(PRECISIONS)}")
    if precision != "fp32" and warn is not None:
        warn(f"precision {precision} applies to CUDA; the CPU provider computes in fp32")
    return placement


def _choose(device: str, provider: str | None, threads: int | None, warn) -> Placement:
    global _warned
    available = ort.get_available_providers()
    if provider:
        if provider not in available:
            raise DeviceError(f"provider {provider} is not available in this onnxruntime "
                              f"({ort.__version__}; available: {', '.join(available)})")
        dev = "cuda" if provider in ("CUDAExecutionProvider", "TensorrtExecutionProvider") else "cpu"
        providers = [provider] + (["CUDAExecutionProvider"] if provider == "TensorrtExecutionProvider" else [])
        return Placement(providers + ["CPUExecutionProvider"], dev, threads)
    if device not in ("auto", "cpu", "cuda"):
        raise DeviceError(f"unknown device {device!r}: use auto, cpu or cuda (or --provider NAME)")
    if device in ("auto", "cuda") and "CUDAExecutionProvider" in available:
        _preload_cuda()
        return Placement(["CUDAExecutionProvider", "CPUExecutionProvider"], "cuda", threads,
                         fallback=device == "auto", warn=warn)
    if device == "cuda":
        raise DeviceError("CUDA was asked for but this onnxruntime has no CUDAExecutionProvider "
                          f"(installed: onnxruntime {ort.__version__}; pip install onnxruntime-gpu)")
    if device == "auto" and not _warned and warn is not None and _gpu_present():
        warn("a GPU seems present but onnxruntime has no CUDA provider; running on the CPU")
        _warned = True
    return Placement(["CPUExecutionProvider"], "cpu", threads)


def _gpu_present() -> bool:
    """An NVIDIA driver is loaded (Linux): then a CPU-only run is worth one warning."""
    import os

    return sys.platform.startswith("linux") and (os.path.exists("/dev/nvidia0") or os.path.exists("/dev/nvidiactl"))
