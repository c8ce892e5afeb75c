"""Read and validate an artifact folder: manifest, checksums, paths. The one place that does."""
from __future__ import annotations

import errno
import hashlib
import json
import os
import stat
from functools import cached_property
from pathlib import Path

from ..base.errors import ArtifactError, UsageError
from .contract import IMAGE, OPTIMIZER_IO, OPTIMIZER_ROLES, TRAIN_OUTPUTS
from .onnx_scan import ScanError, external_data, graph_io, graph_signature

SCHEMA_VERSIONS = (1,)
MANIFEST_MAX_BYTES = 16 << 20  # the default model's is 11 KB: a bigger one is refused, not parsed
REQUIRED_KEYS = ("schema_version", "backbone", "graphs", "files", "layers", "content_layers", "style_layers", "defaults")


def default_model_dir() -> Path:
    """The embedded default model: package data when installed, ./models/vgg16 in a checkout."""
    env = os.environ.get("NST_ORT_MODEL")
    if env:
        return Path(env)
    here = Path(__file__).resolve().parent.parent  # nst_ort/
    for candidate in (here / "models" / "vgg16", here.parent / "models" / "vgg16"):
        if (candidate / "manifest.json").is_file():
            return candidate
    raise ArtifactError("no default model found (looked in the installed package and ./models/vgg16); use --model PATH")


def _kind(mode: int) -> str:
    return ("a folder" if stat.S_ISDIR(mode) else "a FIFO" if stat.S_ISFIFO(mode) else "a socket" if stat.S_ISSOCK(mode)
            else "a device" if stat.S_ISCHR(mode) or stat.S_ISBLK(mode) else "not a regular file")


def open_regular(path: str | Path):
    """A regular file opened for reading; ArtifactError naming it otherwise. O_NONBLOCK: opening a FIFO
    for reading would wait for a writer (a hang); it is refused after fstat instead."""
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK | getattr(os, "O_CLOEXEC", 0))
    except FileNotFoundError:
        raise ArtifactError(f"{path}: missing (listed in manifest.json)") from None
    except (OSError, ValueError) as e:  # a symlink loop (ELOOP), permissions, a NUL byte
        raise ArtifactError(f"{path}: cannot read ({getattr(e, 'strerror', None) or e})") from None
    try:
        mode = os.fstat(fd).st_mode
        if not stat.S_ISREG(mode):
            raise ArtifactError(f"{path}: {_kind(mode)}, not a regular file; a model folder holds files")
        os.set_blocking(fd, True)
        return os.fdopen(fd, "rb")
    except BaseException:
        os.close(fd)
        raise


def sha256_file(path: str | Path) -> str:
    """Hex sha256 of a file, read in chunks (weights files are large); regular files only."""
    h = hashlib.sha256()
    with open_regular(path) as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def _read_graph(path: Path) -> bytes:
    with open_regular(path) as f:
        return f.read()


def _graph_io(path: Path) -> tuple[list[str], list[str]]:
    """Input and output names of an ONNX graph, read without the onnx package."""
    try:
        return graph_io(_read_graph(path))
    except ScanError as e:
        raise ArtifactError(f"{path}: not a readable ONNX model ({e})") from None


def _differ(kind: str, got: list[str], want: list[str]) -> str:
    missing = [n for n in want if n not in got]
    extra = [n for n in got if n not in want]
    parts = ([f"{kind} {', '.join(extra[:3])}{' ...' if len(extra) > 3 else ''} that manifest.json does not list"] if extra
             else []) + ([f"no {kind} {', '.join(missing[:3])}{' ...' if len(missing) > 3 else ''}"] if missing else [])
    return "; ".join(parts) or f"{kind} in another order than manifest.json lists"


def _check_signature(path: Path, what: str, want_in: list[str], want_out: list[str], shapes: dict | None = None,
                     ordered: bool = True) -> None:
    """The graph's declared inputs and outputs against what the manifest (or the contract) says: a
    graph swapped for another and re-signed (its sha256 fixed in manifest.json) has other names or
    shapes. Names (in order where the runtime relies on it), ranks and every fixed dimension."""
    if not all(isinstance(n, str) for n in [*want_in, *want_out]):
        raise TypeError(f"{what}: input and output names must be strings")
    try:
        inputs, outputs = graph_signature(_read_graph(path))
    except ScanError as e:
        raise ArtifactError(f"{path}: not a readable ONNX model ({e})") from None
    for kind, have, want in (("inputs", inputs, want_in), ("outputs", outputs, want_out)):
        names = [n for n, _ in have]
        if names != list(want) if ordered else sorted(names) != sorted(want):
            raise ArtifactError(f"{path}: not the {what}: {_differ(kind, names, list(want))} (a graph from another "
                                "backbone or another export, swapped in?); re-export the model")
        for name, dims in have:
            shape = (shapes or {}).get(name)
            if not isinstance(shape, list):
                continue
            fixed = [d if isinstance(d, int) and not isinstance(d, bool) else None for d in shape]
            if len(fixed) != len(dims) or any(a is not None and b is not None and a != b for a, b in zip(fixed, dims)):
                raise ArtifactError(f"{path}: not the {what}: {name} has shape {_shape(dims)}, manifest.json says "
                                    f"{_shape(shape)} (a graph from another backbone or another export, swapped in?); "
                                    "re-export the model")


def _shape(dims: list) -> str:
    return "[" + ", ".join("?" if d is None else str(d) for d in dims) + "]"


def _check_optimizers(manifest: dict, mpath: Path) -> None:
    """The optional "optimizers" entry: kind -> role -> a file listed (with its sha256) in "files"."""
    entry = manifest.get("optimizers")
    if entry is None:
        return
    if not isinstance(entry, dict):
        raise ArtifactError(f"{mpath}: malformed entry (optimizers: expected an object)")
    for kind, roles in OPTIMIZER_ROLES.items():
        files = entry.get(kind)
        if files is None:
            continue
        if not isinstance(files, dict) or any(role not in files for role in roles):
            raise ArtifactError(f"{mpath}: optimizers.{kind} must name the graphs {', '.join(roles)}")
        for name in files.values():
            if not isinstance(name, str) or name not in manifest["files"]:
                raise ArtifactError(f"{mpath}: optimizer graph {name!r} has no sha256 entry")


def _check_layers(layers) -> None:
    """Everything the runtime reads from a layer: name, channels and stride (positive integers)."""
    if not isinstance(layers, list) or not layers:
        raise TypeError("layers: expected a non-empty list")
    for layer in layers:
        if not isinstance(layer.get("name"), str):
            raise TypeError("layers: a layer without a name")
        for key in ("channels", "stride"):
            v = layer.get(key)
            if isinstance(v, bool) or not isinstance(v, int) or v < 1:
                raise ValueError(f"layer {layer['name']}: {key} must be a positive integer, got {v!r}")


def _check_defaults(d) -> None:
    for key in ("content_weight", "style_weight", "tv_weight"):
        if isinstance(d[key], bool) or not isinstance(d[key], (int, float)):
            raise TypeError(f"defaults.{key}: expected a number")
    for key in ("content_layer_weights", "style_layer_weights"):
        weights = d.get(key, {})
        if not isinstance(weights, dict) or not all(
                isinstance(v, (int, float)) and not isinstance(v, bool) for v in weights.values()):
            raise TypeError(f"defaults.{key}: expected layer -> number")


class Artifacts:
    """A validated artifact folder. Sessions are made by `Graphs` (session.py) from these paths."""

    def __init__(self, path: str | Path | None = None, verify: bool = True):
        self.path = Path(path) if path is not None else default_model_dir()
        self.manifest = self._read_manifest()
        self.verified = False  # every file's sha256 checked (the optimized-graph cache keys on them)
        if verify:
            self.verify()
            self.verified = True

    # -- manifest ------------------------------------------------------------------------------
    def _read_manifest(self) -> dict:
        try:
            if not self.path.exists():
                raise ArtifactError(f"{self.path}: model folder does not exist")
            if not self.path.is_dir():
                raise ArtifactError(f"{self.path}: not a folder (a model is a folder with manifest.json)")
            mpath = self.path / "manifest.json"
            if not mpath.exists():
                raise ArtifactError(f"{mpath}: missing; not an nst-ort model folder")
        except (OSError, ValueError) as e:  # a name too long, a NUL byte
            raise ArtifactError(f"{self.path}: not a usable model folder path ({getattr(e, 'strerror', None) or e})") from None
        try:
            with open_regular(mpath) as f:
                data = f.read(MANIFEST_MAX_BYTES + 1)
            if len(data) > MANIFEST_MAX_BYTES:
                raise ArtifactError(f"{mpath}: larger than {MANIFEST_MAX_BYTES >> 20} MiB; not an nst-ort manifest")
            manifest = json.loads(data)
        except (UnicodeDecodeError, json.JSONDecodeError) as e:
            raise ArtifactError(f"{mpath}: not valid JSON ({e})") from None
        except RecursionError:
            raise ArtifactError(f"{mpath}: not valid JSON (nested too deeply)") from None
        except OSError as e:
            raise ArtifactError(f"{mpath}: cannot read ({e.strerror or e})") from None
        if not isinstance(manifest, dict):
            raise ArtifactError(f"{mpath}: expected a JSON object")
        missing = [k for k in REQUIRED_KEYS if k not in manifest]
        if missing:
            raise ArtifactError(f"{mpath}: missing keys {', '.join(missing)}")
        version = manifest["schema_version"]
        if version not in SCHEMA_VERSIONS:
            raise ArtifactError(f"{mpath}: unknown schema_version {version!r} (this nst-ort reads "
                                f"{', '.join(map(str, SCHEMA_VERSIONS))}); upgrade nst-ort or re-export")
        try:
            for role in ("eval", "train"):
                g = manifest["graphs"][role]
                if not isinstance(g["file"], str) or not isinstance(g["inputs"], list):
                    raise TypeError(role)
            outs = [o["name"] for o in manifest["graphs"]["train"]["outputs"]]
            names = [layer["name"] for layer in manifest["layers"]]
            for key in ("content_layers", "style_layers"):
                if not all(isinstance(n, str) and n in names for n in manifest[key]):
                    raise TypeError(key)
            _check_layers(manifest["layers"])
            _check_defaults(manifest["defaults"])
            if not isinstance(manifest["files"], dict) or not all(
                    isinstance(v, dict) and isinstance(v.get("sha256"), str) for v in manifest["files"].values()):
                raise TypeError("files: each entry needs a sha256")
        except (KeyError, TypeError, AttributeError, ValueError) as e:
            raise ArtifactError(f"{mpath}: malformed entry ({e})") from None
        if outs != list(TRAIN_OUTPUTS):
            raise ArtifactError(f"{mpath}: training graph outputs {outs}, expected {list(TRAIN_OUTPUTS)}")
        _check_optimizers(manifest, mpath)
        return manifest

    def path_of(self, name: str) -> Path:
        """A file named by the manifest; it must stay inside the folder."""
        try:
            p = (self.path / name).resolve()
        except RuntimeError:  # a symlink loop (Python before 3.13; later ones raise OSError ELOOP)
            raise ArtifactError(f"{self.path / name}: a symlink loop (listed in manifest.json)") from None
        except (ValueError, OSError) as e:  # a NUL byte, ELOOP
            if getattr(e, "errno", None) == errno.ELOOP:
                raise ArtifactError(f"{self.path / name}: a symlink loop (listed in manifest.json)") from None
            raise ArtifactError(f"{self.path / 'manifest.json'}: bad file name {name!r} ({e})") from None
        root = self.path.resolve()
        if root != p.parent and root not in p.parents:
            raise ArtifactError(f"{self.path / 'manifest.json'}: file {name!r} points outside the model folder")
        return p

    def verify(self) -> None:
        """Every listed file present with its sha256; graphs' external data only inside the folder."""
        for name, info in self.manifest["files"].items():
            p = self.path_of(name)
            digest = sha256_file(p)  # regular files only: a FIFO, a folder, a device is named and refused
            if digest != info.get("sha256"):
                raise ArtifactError(f"{p}: sha256 mismatch (file changed or truncated: "
                                    f"{p.stat().st_size} bytes, manifest says {info.get('bytes')}); re-export or re-download")
        self._check_signatures()
        for role in ("eval", "train") + tuple(r for r in ("train_cpu", "train_fp16") if r in self.manifest["graphs"]):
            name = self.manifest["graphs"][role]["file"]
            if name not in self.manifest["files"]:
                raise ArtifactError(f"{self.path / 'manifest.json'}: graph {name} has no sha256 entry")
            self._check_external_data(self.path_of(name))
        if "train_cpu" in self.manifest["graphs"]:
            # The CPU runs train_cpu.onnx, CUDA train.onnx: they must be the same function's graphs.
            train, cpu = self.graph_path("train"), self.graph_path("train_cpu")
            if _graph_io(train) != _graph_io(cpu):
                raise ArtifactError(f"{train}: its inputs and outputs differ from {cpu.name}'s "
                                    "(graph from another backbone?); re-export the model")
        if "train_fp16" in self.manifest["graphs"]:
            train, fp16 = self.graph_path("train"), self.graph_path("train_fp16")
            if _graph_io(train) != _graph_io(fp16):
                raise ArtifactError(f"{fp16}: its inputs and outputs differ from {train.name}'s "
                                    "(made from another export?); remake it: python -m nst_ort_export.mixed_precision MODEL")

    def _check_signatures(self) -> None:
        """Every graph declares the inputs and outputs the manifest lists for its role (the optimizer
        graphs: the contract's), so that a graph swapped for another one and re-signed is named here,
        before onnxruntime loads it, rather than failing later as an internal error."""
        mpath = self.path / "manifest.json"
        graphs = self.manifest["graphs"]
        content = [f"content.{n}" for n in self.content_layers]
        grams = [f"gram.{n}" for n in self.style_layers]
        try:
            eval_out = [o["name"] for o in graphs["eval"]["outputs"]]
            if [i["name"] for i in graphs["eval"]["inputs"]] != [IMAGE] or sorted(eval_out) != sorted(content + grams):
                raise ArtifactError(f"{mpath}: graphs.eval must take {IMAGE} and give content.LAYER and gram.LAYER "
                                    "for the content_layers and style_layers")
            for role, g in graphs.items():
                if not isinstance(g, dict) or "file" not in g:
                    continue
                names_in = [i["name"] for i in g["inputs"]]
                names_out = [o["name"] for o in g["outputs"]]
                shapes = {v["name"]: v.get("shape") for v in list(g["inputs"]) + list(g["outputs"])}
                if g["file"] in self.manifest["files"]:
                    _check_signature(self.path_of(g["file"]), f"{role} graph", names_in, names_out, shapes)
            for kind, roles in OPTIMIZER_IO.items():
                files = (self.manifest.get("optimizers") or {}).get(kind)
                for role, (ins, outs) in (roles.items() if files else ()):
                    _check_signature(self.path_of(files[role]), f"{kind} {role} graph", list(ins), list(outs),
                                     ordered=False)  # bound by name
            terms = self.manifest.get("terms")
            for name, t in (terms.items() if isinstance(terms, dict) else ()):
                if isinstance(t, dict) and isinstance(t.get("file"), str) and t["file"] in self.manifest["files"] \
                        and isinstance(t.get("inputs"), list) and isinstance(t.get("outputs"), list):
                    _check_signature(self.path_of(t["file"]), f"{name} term graph", t["inputs"], t["outputs"])
        except (KeyError, TypeError, AttributeError) as e:
            raise ArtifactError(f"{mpath}: malformed entry (graphs: {e})") from None

    def _check_external_data(self, graph: Path) -> None:
        try:
            entries = external_data(_read_graph(graph))
        except ScanError as e:
            raise ArtifactError(f"{graph}: not a readable ONNX model ({e})") from None
        except RecursionError:
            raise ArtifactError(f"{graph}: not a readable ONNX model (nested too deeply)") from None
        listed = {self.path_of(name) for name in self.manifest["files"]}  # once, not per tensor
        for entry in entries:
            loc = entry["location"]
            try:
                target = (graph.parent / loc).resolve()
            except (ValueError, OSError):
                raise ArtifactError(f"{graph}: external data {loc!r} is not a usable path; refused") from None
            root = self.path.resolve()
            if os.path.isabs(loc) or (root != target.parent and root not in target.parents):
                raise ArtifactError(f"{graph}: external data {loc!r} points outside the model folder; refused")
            if target not in listed:
                raise ArtifactError(f"{graph}: external data {loc!r} is not listed (with a sha256) in manifest.json")
            self._check_range(graph, target, entry)

    @staticmethod
    def _check_range(graph: Path, target: Path, entry: dict) -> None:
        """Bytes past the end of the weights file: a graph from another export, whose weights differ."""
        try:
            end = int(entry.get("offset", 0)) + int(entry.get("length", 0))
        except ValueError:
            raise ArtifactError(f"{graph}: external data {entry['location']!r} has a bad offset or length") from None
        if end > target.stat().st_size:
            raise ArtifactError(f"{graph}: reads bytes up to {end} of {target.name}, which has "
                                f"{target.stat().st_size} (a graph from another export or backbone?)")

    # -- what the runtime needs ------------------------------------------------------------------
    @property
    def backbone(self) -> str:
        return self.manifest["backbone"]

    @property
    def content_layers(self) -> list[str]:
        return list(self.manifest["content_layers"])

    @property
    def style_layers(self) -> list[str]:
        return list(self.manifest["style_layers"])

    @property
    def defaults(self) -> dict:
        return self.manifest["defaults"]

    @cached_property
    def layer_info(self) -> dict[str, dict]:
        return {layer["name"]: layer for layer in self.manifest["layers"]}

    @property
    def max_stride(self) -> int:
        return max(int(layer["stride"]) for layer in self.manifest["layers"])

    @property
    def min_size(self) -> int:
        """Smallest image side the graphs accept: every tapped layer must keep at least one row."""
        return max(2 * int(layer["stride"]) if layer["name"].startswith("pool") else int(layer["stride"])
                   for layer in self.manifest["layers"])

    def train_graph_path(self, variant: str) -> Path:
        """The training graph for a variant (providers.Placement.train_variant): "cpu" takes the
        optional CPU-provider graph (train_cpu.onnx: Winograd convolutions, same inputs and outputs),
        "fp16" the optional mixed-precision one (train_fp16.onnx: convolutions in fp16) and refuses a
        model without it; anything else train.onnx. NST_ORT_TRAIN_GRAPH=train forces train.onnx
        (comparisons)."""
        if variant == "fp16":
            if "train_fp16" not in self.manifest["graphs"]:
                raise UsageError(f"--precision fp16: {self.path} has no mixed-precision training graph "
                                 "(train_fp16.onnx); add one with: python -m nst_ort_export.mixed_precision MODEL")
            return self.graph_path("train_fp16")
        if variant == "cpu" and "train_cpu" in self.manifest["graphs"] and os.environ.get("NST_ORT_TRAIN_GRAPH") != "train":
            return self.graph_path("train_cpu")
        return self.graph_path("train")

    def graph_path(self, role: str) -> Path:
        return self.path_of(self.manifest["graphs"][role]["file"])

    def optimizer_graphs(self, kind: str) -> dict[str, Path] | None:
        """role -> path of the optimizer graphs for `kind` (lbfgs, adam); None if the model has none
        (then only the host loop runs it). Checked when the manifest was read."""
        files = (self.manifest.get("optimizers") or {}).get(kind)
        return {role: self.path_of(files[role]) for role in OPTIMIZER_ROLES[kind]} if files else None

    def __repr__(self) -> str:
        return f"Artifacts({str(self.path)!r}, backbone={self.backbone!r})"
