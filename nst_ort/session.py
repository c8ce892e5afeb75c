"""ONNX Runtime sessions over an artifact folder: the eval graph and the training step.

The training step binds its inputs and outputs once (IOBinding): targets and weights stay on the
device for the whole scale; per call only the image goes in and the gradient comes out.
"""
from __future__ import annotations

import warnings

import numpy as np
import onnxruntime as ort

from .artifacts import Artifacts
from .errors import ArtifactError, DeviceError, OutOfMemory
from .providers import Placement


def _session(path, placement: Placement, arena: bool = True) -> ort.InferenceSession:
    """arena=False: the CPU allocations of this session go straight to malloc (and back to the OS
    when freed) instead of an arena that keeps its peak for the session's life."""
    so = placement.session_options()
    if not arena:
        so.enable_cpu_mem_arena = False
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # ORT's provider warnings: get_providers() is checked below
            # enable_fallback=0: ORT would otherwise print a banner on stdout and quietly use the CPU.
            sess = ort.InferenceSession(str(path), so, providers=placement.ort_providers(),
                                        enable_fallback=0)
    except Exception as e:  # noqa: BLE001 - ORT raises bare RuntimeErrors/Fail
        msg = str(e).splitlines()[0] if str(e) else type(e).__name__
        if isinstance(e, MemoryError) or "bad_alloc" in msg or "alloc" in msg.lower() and "memory" in msg.lower():
            raise OutOfMemory(f"{path}: out of memory while loading this graph ({msg[:200]})") from None
        if "CUDA" in msg or "cuda" in msg:
            raise DeviceError(f"{path}: cannot create a session on {placement.providers[0]} ({msg})") from None
        raise ArtifactError(f"{path}: onnxruntime cannot load this graph ({msg})") from None
    if placement.providers[0] not in sess.get_providers():
        # onnxruntime drops a provider that fails to initialize and runs everything on the next one.
        why = "check the driver, CUDA and cuDNN" if placement.device == "cuda" else "check its --provider-option values"
        raise DeviceError(f"{path}: {placement.providers[0]} is installed but could not be used (onnxruntime "
                          f"placed the graph on {sess.get_providers()[0]}; {why})")
    return sess


def _run_error(e: Exception, what: str) -> Exception:
    msg = str(e)
    if isinstance(e, MemoryError) or "alloc" in msg.lower() or "memory" in msg.lower():
        return OutOfMemory(f"{what}: out of memory ({msg.splitlines()[0][:200]}); try a smaller --size")
    return DeviceError(f"{what}: onnxruntime failed ({msg.splitlines()[0][:200] if msg else type(e).__name__})")


def _release_freed_memory() -> None:
    """Give the heap that session creation freed back to the OS (glibc only). Constant folding
    (fp16 -> fp32 weights, flipped kernels, Winograd transforms) leaves hundreds of MB freed but
    resident: measured 442 -> 219 MB (VGG19, train.onnx) and 1029 -> 514 MB (train_cpu.onnx)."""
    import sys

    if not sys.platform.startswith("linux"):
        return
    try:
        import ctypes

        ctypes.CDLL("libc.so.6").malloc_trim(0)
    except (OSError, AttributeError):
        pass


class Graphs:
    """The two sessions of one artifact folder on one placement."""

    def __init__(self, artifacts: Artifacts, placement: Placement):
        self.artifacts, self.placement = artifacts, placement
        try:
            self.eval = _session(artifacts.graph_path("eval"), placement, arena=False)
            self.train_path = artifacts.train_graph_path(placement.train_variant)
            self.train = _session(self.train_path, placement)
        except DeviceError as e:
            if not placement.fallback:
                raise
            if placement.warn is not None:
                placement.warn(f"{e}; running on the CPU")
            self.placement = placement = placement.on_cpu()
            self.eval = _session(artifacts.graph_path("eval"), placement, arena=False)
            self.train_path = artifacts.train_graph_path(placement.train_variant)
            self.train = _session(self.train_path, placement)
        _release_freed_memory()
        expected = set(artifacts.content_layers) | set(artifacts.style_layers)
        outs = {o.name.split(".", 1)[1] for o in self.eval.get_outputs()}
        if outs != expected:
            raise ArtifactError(f"{artifacts.graph_path('eval')}: outputs name layers {sorted(outs)}, "
                                f"manifest.json says {sorted(expected)} (graph from another backbone?)")
        train_in = {i.name for i in self.train.get_inputs()}
        for n in artifacts.style_layers:
            if f"style_target.{n}" not in train_in:
                raise ArtifactError(f"{artifacts.graph_path('train')}: no input style_target.{n} "
                                    "although manifest.json lists that layer (graph from another backbone?)")
            c = self.train.get_inputs()[[i.name for i in self.train.get_inputs()].index(f"style_target.{n}")].shape[1]
            if c != artifacts.layer_info[n]["channels"]:
                raise ArtifactError(f"{artifacts.graph_path('train')}: layer {n} has {c} channels, manifest.json "
                                    f"says {artifacts.layer_info[n]['channels']} (graph from another backbone?)")

    def features(self, image: np.ndarray) -> dict[str, np.ndarray]:
        """image [H, W, 3] -> {'content.<layer>': [1, C, h, w], 'gram.<layer>': [C, C]}."""
        x = np.ascontiguousarray(image.transpose(2, 0, 1)[None], dtype=np.float32)
        # The eval graph runs a few times per scale; its session has no CPU arena (see Graphs) and
        # on CUDA the arena is shrunk after each run, so that its activations do not stay resident
        # beside the training step's (measured ~0.4 GB at 768 px, VGG19, CPU).
        opts = ort.RunOptions()
        if self.placement.device == "cuda":
            opts.add_run_config_entry("memory.enable_memory_arena_shrinkage", "gpu:0")
        try:
            outs = self.eval.run(None, {"image": x}, opts)
        except Exception as e:  # noqa: BLE001
            raise _run_error(e, "eval graph") from None
        return {o.name: v for o, v in zip(self.eval.get_outputs(), outs)}


class TrainStep:
    """One loss-and-gradient evaluation with everything but the image bound once."""

    SCALARS = ("loss", "content_losses", "style_losses", "tv_loss")

    def __init__(self, graphs: Graphs, feeds: dict[str, np.ndarray], shape: tuple[int, ...]):
        self.sess = graphs.train
        device = graphs.placement.device
        self.binding = self.sess.io_binding()
        self._keep = []  # OrtValues must outlive the binding
        for name, arr in feeds.items():
            v = ort.OrtValue.ortvalue_from_numpy(np.ascontiguousarray(arr, dtype=np.float32), device, 0)
            self._keep.append(v)
            self.binding.bind_ortvalue_input(name, v)
        self.image = ort.OrtValue.ortvalue_from_numpy(np.zeros(shape, np.float32), device, 0)
        self.binding.bind_ortvalue_input("image", self.image)
        # get_outputs() follows binding order: the four small outputs first, then the gradient.
        for name in self.SCALARS:
            self.binding.bind_output(name, "cpu")
        self.grad = ort.OrtValue.ortvalue_from_shape_and_type(list(shape), np.float32, device, 0)
        self.binding.bind_ortvalue_output("image_grad", self.grad)

    def __call__(self, x: np.ndarray):
        """x [1, 3, H, W] -> (total, content_losses [nc], style_losses [ns], tv, grad [1, 3, H, W])."""
        self.image.update_inplace(np.ascontiguousarray(x, dtype=np.float32))
        try:
            self.sess.run_with_iobinding(self.binding)
        except Exception as e:  # noqa: BLE001
            raise _run_error(e, f"training graph at {x.shape[3]}x{x.shape[2]}") from None
        outs = self.binding.get_outputs()
        total, closs, sloss, tv = (outs[i].numpy() for i in range(4))
        return float(total), closs.astype(np.float64), sloss.astype(np.float64), float(tv), self.grad.numpy()
