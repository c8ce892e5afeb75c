"""The one place that chooses execution providers, their options and session options."""
from __future__ import annotations

import dataclasses
import json
import os
import re
import sys
import tempfile
from typing import Callable

import onnxruntime as ort

from ..base.errors import DeviceError, UsageError
from ..base.extras import installed_runtimes
from .threads import SPIN_STOP, default_threads

ALIASES = {"cpu": "CPUExecutionProvider", "cuda": "CUDAExecutionProvider"}
CPU = "CPUExecutionProvider"
CUDA = "CUDAExecutionProvider"
TENSORRT = "TensorrtExecutionProvider"
OPENVINO = "OpenVINOExecutionProvider"
# Providers whose buffers live in CUDA memory (IOBinding device "cuda"); every other provider named
# here (OpenVINO on any of its devices, ...) is bound through host memory.
CUDA_MEMORY = (CUDA, TENSORRT)

PRECISIONS = ("fp32", "tf32", "fp16")


@dataclasses.dataclass(frozen=True)
class Placement:
    providers: list  # for InferenceSession(providers=...)
    device: str  # "cpu" or "cuda": where IOBinding puts buffers
    threads: int | None = None
    # `auto` picked CUDA: if sessions cannot use it after all (no driver, missing cuDNN), session.py
    # falls back to the CPU and says so once through `warn`, instead of failing.
    fallback: bool = False
    warn: Callable[[str], None] | None = dataclasses.field(default=None, compare=False, repr=False)
    # Options for providers[0], sorted (key, value) string pairs: ours for the precision (use_tf32 on
    # CUDA, OpenVINO's inference precision), then NST_ORT_CUDA_OPTIONS, then --provider-option.
    options: tuple = ()
    precision: str = "fp32"

    def ort_providers(self) -> list:
        """`providers` as InferenceSession takes them: options attached to the first provider."""
        if not self.options:
            return list(self.providers)
        return [(self.providers[0], dict(self.options))] + list(self.providers[1:])

    @property
    def provider(self) -> str:
        return self.providers[0]

    @property
    def train_variant(self) -> str:
        """Which training graph to run (Artifacts.train_graph_path): "fp16" (convolutions in fp16) for
        --precision fp16; "cpu" only when the CPU provider itself runs it (train_cpu.onnx's Winograd
        convolutions are written for its kernels: on OpenVINO, whose own convolutions are better,
        train.onnx was 1.4x faster at 256 px); otherwise the plain graph."""
        if self.precision == "fp16":
            return "fp16"
        return "cpu" if self.provider == CPU else "default"

    def on_cpu(self) -> "Placement":
        return Placement([CPU], "cpu", self.threads or default_threads(CPU))

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
        # optimizer graphs take turns every iteration) gets the cores (nst_ort/engine/threads.py).
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


def parse_options(items, flag: str = "--provider-option") -> dict[str, str]:
    """["KEY=VALUE", ...] -> {KEY: VALUE}; a malformed item is a UsageError naming the flag."""
    out: dict[str, str] = {}
    for item in items or ():
        key, eq, value = str(item).partition("=")
        if not eq or not key.strip():
            raise UsageError(f"{flag}: expected KEY=VALUE, got {item!r}")
        out[key.strip()] = value
    return out


def _env_cuda_options() -> dict[str, str]:
    """NST_ORT_CUDA_OPTIONS: a JSON object of CUDA provider options, e.g. '{"prefer_nhwc": "1",
    "gpu_mem_limit": "8589934592", "arena_extend_strategy": "kSameAsRequested"}' (kept for scripts
    that set it; --provider-option is the flag)."""
    extra = os.environ.get("NST_ORT_CUDA_OPTIONS")
    if not extra:
        return {}
    try:
        return {str(k): str(v) for k, v in json.loads(extra).items()}
    except (ValueError, AttributeError):
        raise DeviceError(f"NST_ORT_CUDA_OPTIONS is not a JSON object of provider options: {extra!r}") from None


def _openvino_devices(options: dict) -> list[str]:
    """The OpenVINO devices of a device_type option: "CPU" (the default), "GPU.0", "HETERO:GPU,CPU"."""
    dt = options.get("device_type", "CPU")
    return [d for d in dt.split(":", 1)[-1].split(",") if d] or ["CPU"]


def precision_options(provider: str, precision: str, user: dict | None = None) -> dict[str, str]:
    """The provider options that give `precision` on `provider` (fp32 unless asked otherwise).

    CUDA: use_tf32 0 for fp32 and fp16 (onnxruntime turns TF32 on by default on Ampere and later,
    which makes fp32 convolutions ~10-bit-mantissa accurate), 1 for tf32. OpenVINO: its inference
    precision hint f32 for each device: OpenVINO otherwise picks bf16 on CPUs with AMX and f16 on
    GPUs. (Measured here, a CPU without AMX: f32 already; asking for bf16 moved the loss by 3e-4 at
    the first evaluation and 21% after 20 L-BFGS iterations; f16 overflowed to NaN.) A load_config
    given by the user replaces ours. Unmeasured here: CUDA, TensorRT, OpenVINO GPU/NPU."""
    user = user or {}
    if provider == CUDA:
        return {"use_tf32": "1" if precision == "tf32" else "0"}
    if provider == OPENVINO and not {"load_config", "precision"} & set(user) and precision in ("fp32", "fp16"):
        # fp16 too: the mixed graph's fp16 convolutions are explicit; the rest must stay f32.
        return _openvino_f32(tuple(_openvino_devices(user)))
    return {}


_ov_f32: dict = {}


def _openvino_f32(devices: tuple) -> dict[str, str]:
    """load_config with INFERENCE_PRECISION_HINT f32 (onnxruntime-openvino 1.23+ reads it as JSON;
    1.18 refused it and dropped the provider: there precision=FP32, deprecated since 1.23)."""
    if devices not in _ov_f32:
        opts = {"load_config": json.dumps({d: {"INFERENCE_PRECISION_HINT": "f32"} for d in devices})}
        try:
            check_options(OPENVINO, opts)
        except UsageError:
            opts = {"precision": "FP32"}
        _ov_f32[devices] = opts
    return dict(_ov_f32[devices])


# A 74-byte ONNX model (x [1] -> Relu -> y, opset 13), for checking provider options without an
# artifact folder (the runtime has no `onnx` package; tests/test_providers.py rebuilds it with onnx).
PROBE_MODEL = (b'\x08\x07\x12\x07nst-ort:7\n\x0c\n\x01x\x12\x01y"\x04Relu\x12\x05probeZ\x0f\n\x01x\x12\n\n\x08\x08'
               b'\x01\x12\x04\n\x02\x08\x01b\x0f\n\x01y\x12\n\n\x08\x08\x01\x12\x04\n\x02\x08\x01B\x04\n\x00\x10\r')


def check_options(provider: str, options: dict, shown: dict | None = None, flag: str = "--provider-option") -> None:
    """Create a session on PROBE_MODEL with these options: a provider that refuses them (an unknown
    key, a bad value) or drops out silently (onnxruntime then keeps only the CPU provider: OpenVINO
    does this for precision=FP16 on a CPU, an unavailable device_type or a load_config that is not
    JSON) is a UsageError naming the flag and the options in `shown`, before any work."""
    so = ort.SessionOptions()
    so.log_severity_level = 4
    shown = " ".join(f"{k}={v}" for k, v in (options if shown is None else shown).items())
    with _stderr_captured() as log:
        try:
            sess = ort.InferenceSession(PROBE_MODEL, so, providers=[(provider, dict(options)), CPU], enable_fallback=0)
            error = None if provider in sess.get_providers() else "onnxruntime dropped the provider"
        except Exception as e:  # noqa: BLE001 - ORT raises RuntimeError/Fail/InvalidArgument
            error = str(e).strip().splitlines()[-1] if str(e).strip() else type(e).__name__
    if error is not None:
        # The provider's own reason, when it gave one, is only in onnxruntime's log (on stderr).
        reasons = [line.split("] ", 1)[-1].strip() for line in log() if "[E:" in line or "[ERROR]" in line]
        reason = _reason(next((r for r in reversed(reasons) if r), error))
        raise UsageError(f"{flag}: {provider} did not accept {shown} ({reason[:300]})")


def _reason(text: str) -> str:
    """onnxruntime's message without its C++ location ("file.cc:123 signature(...) [ERROR] message")."""
    m = re.match(r"^\S+\.(?:cc|cpp|h):\d+ ", text)
    if not m:
        return text
    rest = text[m.end():]
    cut = max(rest.rfind("] "), rest.rfind(") "), rest.rfind("> "))
    return rest[cut + 2:].strip() if cut >= 0 and rest[cut + 2:].strip() else rest


class _stderr_captured:
    """Collect what native code writes to file descriptor 2 (onnxruntime's default logger) meanwhile."""

    def __enter__(self):
        self._file = tempfile.TemporaryFile(mode="w+b")
        try:
            sys.stderr.flush()
            self._saved = os.dup(2)
            os.dup2(self._file.fileno(), 2)
        except (OSError, ValueError):  # no fd 2 (embedded interpreters): nothing to capture
            self._saved = None
        return self.lines

    def __exit__(self, *exc):
        if self._saved is not None:
            os.dup2(self._saved, 2)
            os.close(self._saved)
        return False

    def lines(self) -> list[str]:
        self._file.seek(0)
        text = self._file.read().decode("utf-8", "replace")

        return [re.sub(r"\x1b\[[0-9;]*m", "", line) for line in text.splitlines()]


def choose(device: str = "auto", provider: str | None = None, threads: int | None = None, warn=None,
           precision: str = "fp32", options: dict | None = None) -> Placement:
    """device: auto | cpu | cuda; provider: any ORT provider name, overrides device.
    precision: fp32 | tf32 (CUDA) | fp16 (the model's mixed-precision training graph, see
    Artifacts.train_graph_path). options: provider options for the chosen provider
    (--provider-option), checked here (check_options) when given.
    threads: intra-op threads; None: the provider's default (nst_ort/engine/threads.py, measured there)."""
    if precision not in PRECISIONS:
        raise DeviceError(f"unknown precision {precision!r}: use {', '.join(PRECISIONS)}")
    placement = _choose(device, provider, threads, warn)
    if placement.threads is None:
        placement = dataclasses.replace(placement, threads=default_threads(placement.provider))
    user = dict(_env_cuda_options()) if placement.provider == CUDA else {}
    user.update(options or {})
    if options:
        if placement.provider == CPU and provider is None:
            raise UsageError("--provider-option: options apply to the provider chosen by --provider or --device "
                             "cuda, and this run uses the CPU provider; name it: --provider CPUExecutionProvider")
        check_options(placement.provider, {**precision_options(placement.provider, precision, user), **user}, options)
    if precision == "tf32" and placement.provider != CUDA and warn is not None:
        warn(f"precision tf32 applies to the CUDA provider; {placement.provider} computes in fp32")
    opts = {**precision_options(placement.provider, precision, user), **user}
    return dataclasses.replace(placement, options=tuple(sorted(opts.items())), precision=precision)


def _choose(device: str, provider: str | None, threads: int | None, warn) -> Placement:
    global _warned
    available = ort.get_available_providers()
    if provider:
        provider = ALIASES.get(provider, provider)
        if provider not in available:
            raise DeviceError(f"provider {provider} is not available in this onnxruntime "
                              f"({ort.__version__}; available: {', '.join(available)})")
        if provider in CUDA_MEMORY:
            _preload_cuda()
        dev = "cuda" if provider in CUDA_MEMORY else "cpu"
        providers = [provider] + ([CUDA] if provider == TENSORRT else [])
        return Placement(providers + ([CPU] if provider != CPU else []), dev, threads)
    if device not in ("auto", "cpu", "cuda"):
        raise DeviceError(f"unknown device {device!r}: use auto, cpu or cuda (or --provider NAME)")
    if device in ("auto", "cuda") and CUDA in available:
        _preload_cuda()
        return Placement([CUDA, CPU], "cuda", threads, fallback=device == "auto", warn=warn)
    if device == "cuda":
        raise DeviceError("CUDA was asked for but this onnxruntime has no CUDAExecutionProvider "
                          f"(installed: onnxruntime {ort.__version__}; pip install onnxruntime-gpu)")
    if device == "auto" and not _warned and warn is not None and _gpu_present():
        warn("a GPU seems present but onnxruntime has no CUDA provider; running on the CPU")
        _warned = True
    return Placement([CPU], "cpu", threads)


def info() -> dict:
    """What this onnxruntime build offers (for --info and `nst-ort check`)."""
    return {"onnxruntime": ort.__version__, "providers": ort.get_available_providers(),
            "package": ", ".join(installed_runtimes()) or None}


def _gpu_present() -> bool:
    """An NVIDIA driver is loaded (Linux): then a CPU-only run is worth one warning."""
    return sys.platform.startswith("linux") and (os.path.exists("/dev/nvidia0") or os.path.exists("/dev/nvidiactl"))
