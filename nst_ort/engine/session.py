"""ONNX Runtime sessions over an artifact folder: the eval, training and optimizer graphs, and the
training graph bound for one scale.

The training graph binds its inputs and outputs once (IOBinding): targets and weights stay on the
device for the whole scale; per run only the image goes in, the gradient comes out (into a buffer
that stays on the device in the device loop) and the loss terms come to the host.
"""
from __future__ import annotations

import ctypes
import sys
import warnings
from pathlib import Path

import numpy as np
import onnxruntime as ort

from ..base.errors import ArtifactError, DeviceError, OutOfMemory
from . import contract, ortcache
from .artifacts import Artifacts
from .contract import Losses
from .providers import Placement


def make_session(path, placement: Placement, arena: bool = True,
                 cache_key: tuple[str, dict[str, str]] | None = None) -> ort.InferenceSession:
    """arena=False: the CPU allocations of this session go straight to malloc (and back to the OS
    when freed) instead of an arena that keeps its peak for the session's life.
    cache_key: (the graph's sha256, its weights files' sha256) from the verified manifest: on the CPU
    provider the optimized graph is then taken from (or put in) the cache (ortcache.py)."""
    def options() -> ort.SessionOptions:
        so = placement.session_options()
        if not arena:
            so.enable_cpu_mem_arena = False
        return so

    def create(where: str, so: ort.SessionOptions) -> ort.InferenceSession:
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")  # ORT's provider warnings: get_providers() is checked below
                # enable_fallback=0: ORT would otherwise print a banner on stdout and quietly use the CPU.
                return ort.InferenceSession(where, so, providers=placement.ort_providers(), enable_fallback=0)
        except Exception as e:  # noqa: BLE001 - ORT raises bare RuntimeErrors/Fail
            msg = str(e).splitlines()[0] if str(e) else type(e).__name__
            if isinstance(e, MemoryError) or "bad_alloc" in msg or "alloc" in msg.lower() and "memory" in msg.lower():
                raise OutOfMemory(f"{path}: out of memory while loading this graph ({msg[:200]})") from None
            if "CUDA" in msg or "cuda" in msg:
                raise DeviceError(f"{path}: cannot create a session on {placement.providers[0]} ({msg})") from None
            raise ArtifactError(f"{path}: onnxruntime cannot load this graph ({msg})") from None

    if cache_key is not None and list(placement.providers) == ["CPUExecutionProvider"]:
        sess, make_session.last = ortcache.session(Path(path), cache_key[0], cache_key[1], options,
                                                   placement.ort_providers(), create)
    else:
        sess, make_session.last = create(str(path), options()), "off"
    if placement.providers[0] not in sess.get_providers():
        # onnxruntime drops a provider that fails to initialize and runs everything on the next one.
        why = "check the driver, CUDA and cuDNN" if placement.device == "cuda" else "check its --provider-option values"
        raise DeviceError(f"{path}: {placement.providers[0]} is installed but could not be used (onnxruntime "
                          f"placed the graph on {sess.get_providers()[0]}; {why})")
    return sess


make_session.last = "off"  # how the last session was made: "hit", "miss" (cache filled) or "off"


def run_error(e: Exception, what: str) -> Exception:
    msg = str(e)
    if isinstance(e, MemoryError) or "alloc" in msg.lower() or "memory" in msg.lower():
        return OutOfMemory(f"{what}: out of memory ({msg.splitlines()[0][:200]}); try a smaller --size")
    return DeviceError(f"{what}: onnxruntime failed ({msg.splitlines()[0][:200] if msg else type(e).__name__})")


def _release_freed_memory() -> None:
    """Give the heap that session creation freed back to the OS (glibc only). Constant folding
    (fp16 -> fp32 weights, flipped kernels, Winograd transforms) leaves hundreds of MB freed but
    resident: measured 442 -> 219 MB (VGG19, train.onnx) and 1029 -> 514 MB (train_cpu.onnx)."""
    if not sys.platform.startswith("linux"):
        return
    try:
        ctypes.CDLL("libc.so.6").malloc_trim(0)
    except (OSError, AttributeError):
        pass


class Graphs:
    """The sessions of one artifact folder on one placement: eval and training graphs, and the
    optimizer graphs once asked for."""

    def __init__(self, artifacts: Artifacts, placement: Placement):
        self.artifacts, self.placement = artifacts, placement
        self._train: ort.InferenceSession | None = None
        self._optimizers: dict[str, dict | None] = {}
        self.cache: dict[str, str] = {}  # role -> "hit" | "miss" | "off" (ortcache.py)
        try:
            self._open(placement)
        except DeviceError as e:
            if not placement.fallback:
                raise
            if placement.warn is not None:
                placement.warn(f"{e}; running on the CPU")
            self.placement = placement = placement.on_cpu()
            self._open(placement)
        _release_freed_memory()
        expected = set(artifacts.content_layers) | set(artifacts.style_layers)
        outs = {contract.layer_of(o.name) for o in self.eval.get_outputs()}
        if outs != expected:
            raise ArtifactError(f"{artifacts.graph_path('eval')}: outputs name layers {sorted(outs)}, "
                                f"manifest.json says {sorted(expected)} (graph from another backbone?)")
        train_in = {i.name: i for i in self.train.get_inputs()}
        for n in artifacts.style_layers:
            if contract.style_target(n) not in train_in:
                raise ArtifactError(f"{artifacts.graph_path('train')}: no input {contract.style_target(n)} "
                                    "although manifest.json lists that layer (graph from another backbone?)")
            c = train_in[contract.style_target(n)].shape[1]
            if c != artifacts.layer_info[n]["channels"]:
                raise ArtifactError(f"{artifacts.graph_path('train')}: layer {n} has {c} channels, manifest.json "
                                    f"says {artifacts.layer_info[n]['channels']} (graph from another backbone?)")

    def _cache_key(self, path: Path) -> tuple[str, dict[str, str]] | None:
        """The graph's sha256 and its weights' (the manifest's, verified when the folder was read)."""
        files = self.artifacts.manifest["files"]
        info = files.get(path.name)
        if not isinstance(info, dict) or not self.artifacts.verified:
            return None
        data = {n: f["sha256"] for n, f in files.items() if not n.endswith((".onnx", ".json", ".md"))}
        return info["sha256"], data

    def _open(self, placement: Placement) -> None:
        eval_path = self.artifacts.graph_path("eval")
        self.eval = make_session(eval_path, placement, arena=False, cache_key=self._cache_key(eval_path))
        self.cache["eval"] = make_session.last
        self.train_path = self.artifacts.train_graph_path(placement.train_variant)
        self._train = make_session(self.train_path, placement, cache_key=self._cache_key(self.train_path))
        self.cache["train"] = make_session.last

    @property
    def train(self) -> ort.InferenceSession:
        """The whole-image training session (made again after drop_train)."""
        if self._train is None:
            self._train = make_session(self.train_path, self.placement, cache_key=self._cache_key(self.train_path))
        return self._train

    def drop_train(self) -> None:
        """Let the whole-image training session go, and with it its CPU arena, which holds the
        largest untiled scale's activations for the session's life: a tiled scale (which does not use
        it) would otherwise sit beside them (a 512..4096 px print planned at 18.8 GiB went past 24 GiB).
        Measured: benchmarks/RESULTS.md, "Tiling"."""
        if self._train is not None:
            self._train = None
            _release_freed_memory()

    @property
    def train_open(self) -> bool:
        return self._train is not None

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
            outs = self.eval.run(None, {contract.IMAGE: x}, opts)
        except Exception as e:  # noqa: BLE001
            raise run_error(e, "eval graph") from None
        return {o.name: v for o, v in zip(self.eval.get_outputs(), outs)}

    def optimizer_sessions(self, kind: str) -> dict[str, ort.InferenceSession] | None:
        """role -> session of the model's optimizer graphs for `kind` (made once); None if it has none."""
        if kind not in self._optimizers:
            paths = self.artifacts.optimizer_graphs(kind)
            self._optimizers[kind] = (None if paths is None else
                                      {role: make_session(p, self.placement) for role, p in paths.items()})
        return self._optimizers[kind]


class TrainingGraph:
    """The training graph with one scale's targets and weights uploaded once (onnxruntime training's
    Module): `binding(image, grad)` binds an image and a gradient buffer, `run(binding)` evaluates."""

    def __init__(self, graphs: Graphs, feeds: dict[str, np.ndarray], shape: tuple[int, ...]):
        self.sess, self.device, self.shape = graphs.train, graphs.placement.device, tuple(shape)
        # OrtValues must outlive the bindings
        self.values = {name: ort.OrtValue.ortvalue_from_numpy(np.ascontiguousarray(arr, dtype=np.float32),
                                                              self.device, 0) for name, arr in feeds.items()}

    def binding(self, image, grad) -> ort.IOBinding:
        """image, grad: OrtValues or device pointers of [1, 3, H, W] float32 buffers."""
        b = self.sess.io_binding()
        for name, v in self.values.items():
            b.bind_ortvalue_input(name, v)
        if isinstance(image, int):
            b.bind_input(contract.IMAGE, self.device, 0, np.float32, list(self.shape), image)
        else:
            b.bind_ortvalue_input(contract.IMAGE, image)
        # get_outputs() follows binding order: the small loss outputs first, then the gradient.
        for name in contract.LOSS_OUTPUTS:
            b.bind_output(name, "cpu")
        if isinstance(grad, int):
            b.bind_output(contract.GRADIENT_OUTPUT, self.device, 0, np.float32, list(self.shape), grad)
        else:
            b.bind_ortvalue_output(contract.GRADIENT_OUTPUT, grad)
        return b

    def run(self, binding: ort.IOBinding) -> Losses:
        try:
            self.sess.run_with_iobinding(binding)
        except Exception as e:  # noqa: BLE001
            raise run_error(e, f"training graph at {self.shape[3]}x{self.shape[2]}") from None
        outs = binding.get_outputs()
        return Losses.from_outputs([outs[i].numpy() for i in range(len(contract.LOSS_OUTPUTS))])


class TrainStep:
    """The host loop's evaluation: an image from numpy in, its loss terms and gradient out."""

    def __init__(self, graphs: Graphs, feeds: dict[str, np.ndarray], shape: tuple[int, ...]):
        self.graph = TrainingGraph(graphs, feeds, shape)
        device = graphs.placement.device
        self.image = ort.OrtValue.ortvalue_from_numpy(np.zeros(shape, np.float32), device, 0)
        self.grad = ort.OrtValue.ortvalue_from_shape_and_type(list(shape), np.float32, device, 0)
        self.binding = self.graph.binding(self.image, self.grad)

    def __call__(self, x: np.ndarray) -> tuple:
        """x [1, 3, H, W] -> the graph's outputs in TRAIN_OUTPUTS order: (loss, content_losses,
        style_losses, tv_loss, image_grad); extra terms are the loop's (Losses.terms), not the graph's."""
        self.image.update_inplace(np.ascontiguousarray(x, dtype=np.float32))
        losses = self.graph.run(self.binding)
        return (*losses[:len(contract.LOSS_OUTPUTS)], self.grad.numpy())


