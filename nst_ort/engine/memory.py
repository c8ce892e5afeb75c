"""Estimate the memory a run needs before it starts, and refuse with the size that would fit.

Running out of memory mid-run loses the work (or gets the process killed by the kernel), so the
CLI checks first. The estimate is linear in the pixel count:

    graph     = GRAPH_FACTOR * 4 bytes * H * W * sum(channels / stride^2 over the manifest's layers)
    optimizer = float32 vectors of 3*H*W: L-BFGS keeps 2*history of them, Adam a few
    need      = FIXED + graph + optimizer            (resident memory, compared with MemAvailable)
    address   = FIXED + ADDRESS_EXTRA + 1.5 * graph + optimizer   (compared with RLIMIT_AS, `ulimit -v`)

GRAPH_FACTOR was calibrated with benchmarks/memory_calibrate.py (peak RSS minus the RSS after the
sessions were made, VGG16, CPU provider, onnxruntime 1.32, Adam, 1 thread). It depends on how the
training graph's backward was made (the manifest's "gradient"):
- "manual" (export/manual_grad.py: the backward keeps bool masks, not activations): factors 5.1,
  5.8, 5.5 at 256, 512, 1024 px, and 5.7 for a whole 2048x1536 multi-scale run (peak RSS 9.9 GiB
  with 3 L-BFGS pairs stored); MANUAL_GRAPH_FACTOR = 7 keeps ~20% headroom.
- "autograd" (torch's own backward, traced): factors 6-12.6 at 256-1024 px; GRAPH_FACTOR = 13,
  high by up to ~1.8x where onnxruntime's arena happens to fit tightly.
The address-space figure is larger (measured VmPeak growth: 1.3-1.6x the RSS growth, plus up to
~300 MB at small sizes) because onnxruntime's arena and malloc reserve address space before
touching it.
NST_ORT_MEMORY_CHECK=0 skips the check.
"""
from __future__ import annotations

import dataclasses
import os
from pathlib import Path

try:
    import resource
except ImportError:  # Windows: no RLIMIT_AS
    resource = None

from ..base.errors import OutOfMemory

GRAPH_FACTOR = 13.0  # bytes of activations (forward + backward + arena slack) per tapped float; measured 6-12.6
MANUAL_GRAPH_FACTOR = 7.0  # the same for a manual backward (manifest "gradient": "manual"); measured 5.1-5.8
EVAL_FACTOR = 4.0  # the eval graph (style and content targets) keeps no backward state
FIXED = 64 << 20  # per-run overhead measured at the smallest sizes (targets, bindings, numpy temporaries)
ADDRESS_EXTRA = 256 << 20  # address space reserved but not touched (malloc arenas, thread stacks), measured
# The two tile graphs' sessions beside the whole-image ones (their weights, Winograd-transformed on
# the CPU, and onnxruntime's reservations), measured at 128 px, 32 px tiles, 1 thread: VmHWM +195 MB,
# VmPeak +865 MB over the same run untiled. Without them a size named under ulimit -v did not fit.
TILE_SESSIONS = 256 << 20
TILE_SESSIONS_ADDRESS = 960 << 20
ADDRESS_FACTOR = 1.5  # the arena's reserved/touched ratio for the graph, measured
FLOAT = 4
SUGGEST_SHARE = 0.85  # the size we suggest fits in 85% of what is available now, so that it fits next time


@dataclasses.dataclass(frozen=True)
class Need:
    resident: int  # bytes the run adds to the process's resident memory
    address: int  # bytes of address space it adds (what RLIMIT_AS limits)


def _per_pixel(layers: list[dict]) -> float:
    """Floats per input pixel over the tapped layers: a layer of C channels at stride s holds C/s^2."""
    return sum(float(layer["channels"]) / float(layer["stride"]) ** 2 for layer in layers)


def graph_factor(manifest: dict) -> float:
    """Bytes per tapped float that the training graph needs, by how its backward was made."""
    return MANUAL_GRAPH_FACTOR if manifest.get("gradient") == "manual" else GRAPH_FACTOR


def estimate(layers: list[dict], size: tuple[int, int], optimizer: str = "lbfgs", history: int = 100,
             style_size: tuple[int, int] | None = None, on_host: bool = True,
             factor: float = GRAPH_FACTOR) -> Need:
    """Bytes one scale at size (w, h) adds; style_size: the largest style image fed to the eval graph."""
    w, h = size
    per_px = _per_pixel(layers) * FLOAT
    graph = factor * per_px * w * h
    if style_size is not None:
        graph = max(graph, EVAL_FACTOR * per_px * style_size[0] * style_size[1])
    if not on_host:
        graph = 0.0  # activations live on the device; only the optimizer state stays in host memory
    vectors = 2 * history + 4 if optimizer == "lbfgs" else 5
    opt = vectors * FLOAT * 3 * w * h
    return Need(int(FIXED + graph + opt), int(FIXED + ADDRESS_EXTRA + ADDRESS_FACTOR * graph + opt))


def _status_kib(key: str) -> int | None:
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith(key + ":"):
                return int(line.split()[1])
    except (OSError, ValueError, IndexError):
        pass
    return None


def _mem_available() -> int | None:
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemAvailable:"):
                return int(line.split()[1]) * 1024
    except (OSError, ValueError, IndexError):
        pass
    return None


CGROUP_ROOT = Path("/sys/fs/cgroup")  # tests point this at a stand-in tree


def _read(path: Path) -> str | None:
    try:
        return path.read_text().strip()
    except (OSError, UnicodeDecodeError):
        return None


def _stat_value(text: str | None, key: str) -> int | None:
    for line in (text or "").splitlines():
        name, _, value = line.partition(" ")
        if name == key:
            try:
                return int(value)
            except ValueError:
                return None
    return None


def _own_cgroup(controller: str | None) -> str:
    """This process's cgroup path for a v1 controller (None: the v2 unified hierarchy), from
    /proc/self/cgroup; "/" where unknown. Inside a container the path is often not mounted as such
    (the container sees its own cgroup as the root), so callers fall back to the root."""
    text = _read(Path("/proc/self/cgroup")) or ""
    for line in text.splitlines():
        parts = line.split(":", 2)
        if len(parts) != 3:
            continue
        if (controller is None and parts[0] == "0" and parts[1] == "") or (
                controller is not None and controller in parts[1].split(",")):
            return parts[2] or "/"
    return "/"


def _candidates(base: Path, own: str) -> list[Path]:
    own = own.strip("/")
    return ([base / own] if own and (base / own).is_dir() else []) + [base]


def _cgroup_v2(root: Path) -> int | None:
    """memory.max - memory.current (+ reclaimable page cache), the smallest over this process's
    cgroup and its ancestors (v2: a parent's limit binds its children too)."""
    own = _own_cgroup(None).strip("/")
    folder = root / own if own and (root / own).is_dir() else root
    found: list[int] = []
    while True:
        limit, used = _read(folder / "memory.max"), _read(folder / "memory.current")
        if limit is not None and used is not None and limit != "max":
            try:
                free = int(limit) - int(used)
            except ValueError:
                free = None
            if free is not None:
                # Page cache counts as used but is given back under pressure (docker subtracts it too).
                inactive = _stat_value(_read(folder / "memory.stat"), "inactive_file") or 0
                found.append(max(0, free + inactive))
        if folder == root or root not in folder.parents:
            break
        folder = folder.parent
    return min(found) if found else None


# cgroup v1 reports "no limit" as a huge number (PAGE_COUNTER_MAX pages): anything above this is none.
V1_UNLIMITED = 1 << 60


def _cgroup_v1(root: Path) -> int | None:
    """memory.limit_in_bytes - memory.usage_in_bytes (+ reclaimable page cache) (cgroup v1). The
    limit that binds may be an ancestor's: memory.stat's hierarchical_memory_limit says so."""
    base = root / "memory"
    for folder in _candidates(base, _own_cgroup("memory")):
        limit, used = _read(folder / "memory.limit_in_bytes"), _read(folder / "memory.usage_in_bytes")
        if limit is None or used is None:
            continue
        try:
            limit_b, used_b = int(limit), int(used)
        except ValueError:
            return None
        stat_text = _read(folder / "memory.stat")
        hierarchical = _stat_value(stat_text, "hierarchical_memory_limit")
        if hierarchical is not None:
            limit_b = min(limit_b, hierarchical)
        if limit_b >= V1_UNLIMITED:
            return None
        inactive = _stat_value(stat_text, "total_inactive_file")
        if inactive is None:
            inactive = _stat_value(stat_text, "inactive_file") or 0
        return max(0, limit_b - used_b + inactive)
    return None


def _cgroup_available(root: Path | None = None) -> int | None:
    """A container's memory limit left over (cgroup v2, else v1), which MemAvailable does not show."""
    root = root or CGROUP_ROOT
    v2 = _cgroup_v2(root)
    return v2 if v2 is not None else _cgroup_v1(root)


def _address_space_left() -> int | None:
    if resource is None:
        return None
    soft, _ = resource.getrlimit(resource.RLIMIT_AS)
    if soft == resource.RLIM_INFINITY:
        return None
    used = _status_kib("VmSize")
    return max(0, soft - (used or 0) * 1024)


# Importing onnxruntime (and numpy, and with it OpenBLAS) takes address space before any check can
# run, and below it fails in ways no Python code can catch: OpenBLAS prints "Memory allocation still
# failed after 10 retries, giving up." and exits 1; onnxruntime's import dies in std::bad_alloc.
# Measured (Python 3.11, onnxruntime 1.32, numpy with scipy-openblas 0.3.31, Pillow): the address
# space in use when memory.check runs (every module of a run imported) is ~212 MiB with one OpenBLAS
# thread and ~252 MiB with two; OpenBLAS starts a thread per usable CPU (at most 64). Under ulimit -v
# 200-250 MiB (two threads) a run ended in OpenBLAS's exit 1 or an ImportError ("failed to map
# segment") before this floor; a limit under it cannot run any image.
START_BASE = 176 << 20
START_PER_BLAS_THREAD = 40 << 20


def _blas_threads() -> int:
    try:
        cpus = len(os.sched_getaffinity(0))
    except (AttributeError, OSError):
        cpus = os.cpu_count() or 1
    for var in ("OPENBLAS_NUM_THREADS", "GOTO_NUM_THREADS", "OMP_NUM_THREADS"):
        try:
            n = int(os.environ.get(var, ""))
        except ValueError:
            continue
        if n > 0:
            cpus = min(cpus, n)
            break
    return max(1, min(cpus, 64))


def address_limit() -> int | None:
    """RLIMIT_AS's soft limit in bytes (`ulimit -v`); None when there is none."""
    if resource is None:
        return None
    soft, _ = resource.getrlimit(resource.RLIMIT_AS)
    return None if soft == resource.RLIM_INFINITY else soft


def startup_problem() -> str | None:
    """A line saying that the address-space limit is below what importing the runtime takes, or None.
    Called before onnxruntime or numpy is imported (entry.py)."""
    limit = address_limit()
    if limit is None:
        return None
    threads = _blas_threads()
    need = START_BASE + threads * START_PER_BLAS_THREAD
    if limit >= need:
        return None
    return (f"out of memory: the address-space limit (ulimit -v) is {limit >> 20} MiB, and loading onnxruntime and "
            f"numpy takes more than {need >> 20} MiB here ({threads} OpenBLAS thread(s), ~{START_PER_BLAS_THREAD >> 20}"
            " MiB each; OPENBLAS_NUM_THREADS=1 needs the least); raise the limit")


@dataclasses.dataclass(frozen=True)
class Available:
    resident: int | None  # bytes of memory the run may still use; None: unknown
    address: int | None  # bytes of address space left under RLIMIT_AS; None: no limit
    source: str = "MemAvailable"  # which limit `resident` comes from

    def fits(self, need: Need, share: float = 1.0) -> bool:
        """share < 1 keeps headroom: what is free now varies from run to run by tens of MB."""
        return ((self.resident is None or need.resident <= share * self.resident)
                and (self.address is None or need.address <= share * self.address))

    def binding(self, need: Need) -> tuple[int, int, str]:
        """(bytes needed, bytes available, which limit) for the limit exceeded by more."""
        if self.address is not None and (self.resident is None or need.address - self.address
                                         > need.resident - self.resident):
            return need.address, self.address, "address space left under RLIMIT_AS"
        return need.resident, self.resident or 0, self.source


def available() -> Available:
    host = [(v, name) for v, name in ((_mem_available(), "MemAvailable"),
                                      (_cgroup_available(), "the cgroup's memory limit")) if v is not None]
    resident, source = min(host) if host else (None, "MemAvailable")
    return Available(resident, _address_space_left(), source)


def gib(n: int) -> str:
    return f"{n / (1 << 30):.2f} GiB" if n >= 1 << 30 else f"{n / (1 << 20):.0f} MiB"


def largest_fitting(fits, low: int, high: int) -> int | None:
    """The largest long side in [low, high] for which fits(long_side) holds (monotone); None if none."""
    if not fits(low):
        return None
    while low < high:
        mid = (low + high + 1) // 2
        if fits(mid):
            low = mid
        else:
            high = mid - 1
    return low


# Decoding an image (images.load_image) peaks at 24-39 bytes per declared pixel (measured at 4000x3000:
# 16-bit gray 24, RGB PNG and JPEG 32, RGBA 36, palette with transparency 39: Pillow's buffers, its
# conversions and the float32 result); the float32 RGB result (12 bytes per pixel) stays for the run.
DECODE_BYTES_PER_PIXEL = 48
KEPT_BYTES_PER_PIXEL = 12


@dataclasses.dataclass(frozen=True)
class ImageInput:
    """An input image as its header declares it (images.probe_image), before it is decoded."""

    path: str
    width: int
    height: int
    kept: bool = True  # content, styles, init stay decoded for the run; masks are decoded per scale

    @property
    def pixels(self) -> int:
        return self.width * self.height


@dataclasses.dataclass(frozen=True)
class Plan:
    """What a run will hold in memory: the one input of check() (Stylizer.memory_plan() makes it)."""

    what: str  # named in the error: the content image, or "texture"
    layers: list[dict]  # the manifest's layers (channels, stride)
    sizes: list[tuple[int, int]]  # (w, h) of every scale; the largest counts
    optimizer: str = "lbfgs"
    history: int = 100
    min_side: int = 1  # the network's smallest image side (Artifacts.min_size)
    style_scale: float = 1.0
    on_host: bool = True  # activations in host memory (CPU provider)
    factor: float = GRAPH_FACTOR  # graph_factor(manifest)
    images: tuple[ImageInput, ...] = ()  # the input files, checked before they are decoded
    # Tiling (nst_ort/engine/tiling.py): align and halo from the manifest's "tiling" entry (align 0: the
    # model has no tiled graphs); tile: --tile N, or None for auto.
    align: int = 0
    halo: int = 0
    tile: int | None = None
    content_floats: float = 0.0  # floats per pixel of the content targets a tiled run keeps
    styles: int = 1  # masks kept at each style layer's size (tiled)
    # iterations per scale (schedule order): L-BFGS fills one history row per iteration and its
    # buffers are zero pages until then, so a scale holds at most min(history, iterations) pairs
    iterations: tuple[int, ...] = ()


@dataclasses.dataclass(frozen=True)
class Assessment:
    """check()'s figures: what the run needs at its largest scale, and what is available."""

    need: Need  # the run (largest scale, decoded images included)
    decode: Need  # the peak while decoding the largest input
    available: Available
    size: tuple[int, int]  # the largest scale (w, h)

    def fits(self) -> bool:
        return self.available.fits(self.need) and self.available.fits(self.decode)


def _kept(plan: Plan) -> int:
    return sum(KEPT_BYTES_PER_PIXEL * im.pixels for im in plan.images if im.kept)


# A tiled step's image-sized host arrays besides the optimizer's: the image, the gradient, TV's
# differences and gradient, the crops' copies (float32 [3, H, W] each, counted generously).
TILED_IMAGE_VECTORS = 8


def tiled_estimate(plan: Plan, size: tuple[int, int], tile: int, history: int) -> Need:
    """Bytes a tiled scale at size (w, h) adds: one crop's activations (tile + 2 halo, clipped),
    the image-sized host arrays, the kept targets and masks, the optimizer's vectors."""
    w, h = size
    cw, ch = min(w, tile + 2 * plan.halo), min(h, tile + 2 * plan.halo)
    graph = plan.factor * _per_pixel(plan.layers) * FLOAT * cw * ch if plan.on_host else 0.0
    per_px = (TILED_IMAGE_VECTORS * 3 + plan.content_floats + 1.34 * plan.styles) * FLOAT
    vectors = 2 * history + 4 if plan.optimizer == "lbfgs" else 5
    host = per_px * w * h + vectors * FLOAT * 3 * w * h
    return Need(int(FIXED + TILE_SESSIONS + graph + host),
                int(FIXED + TILE_SESSIONS_ADDRESS + ADDRESS_EXTRA + ADDRESS_FACTOR * graph + host))


def _scaled(plan: Plan, side: int) -> tuple[int, int]:
    w, h = max(plan.sizes, key=lambda s: s[0] * s[1])
    long_side = max(w, h)
    return max(1, round(w * side / long_side)), max(1, round(h * side / long_side))


def _pairs(plan: Plan, history: int, scale: int | None = None) -> int:
    """The L-BFGS pairs a scale touches (the largest scale's when scale is None)."""
    if not plan.iterations:
        return history
    i = _largest_index(plan) if scale is None else scale
    return max(1, min(history, plan.iterations[i]))


def _need_at(plan: Plan, side: int, tile: int | None = None, history: int | None = None) -> Need:
    sw, sh = _scaled(plan, side)
    full = plan.history if history is None else history

    def run_with(pairs: int) -> Need:
        if tile:
            return tiled_estimate(plan, (sw, sh), tile, pairs)
        style = (max(1, round(sw * plan.style_scale)), max(1, round(sh * plan.style_scale)))
        return estimate(plan.layers, (sw, sh), plan.optimizer, pairs, style, plan.on_host, plan.factor)

    # Resident: only the pairs the scale's iterations fill (the rest stay untouched zero pages).
    # Address space: the whole history, which the device loop allocates up front (RLIMIT_AS counts
    # untouched pages too: a size named with the filled pairs alone did not fit under ulimit -v).
    resident, address = run_with(_pairs(plan, full)), run_with(full)
    kept = _kept(plan)
    return Need(resident.resident + kept, address.address + kept)


@dataclasses.dataclass(frozen=True)
class Tiling:
    """The memory plan's decision: a tile per scale (None: untiled) and the L-BFGS history."""

    tiles: tuple[int | None, ...]  # per scale, in schedule order
    history: int
    notes: tuple[str, ...] = ()  # what was decided and why (printed as warnings, --dry-run)


def _largest_tile(plan: Plan, avail: Available, size: tuple[int, int], history: int) -> int | None:
    """The largest tile (a multiple of align, at most the image's long side) whose run fits."""
    top = -(-max(size) // plan.align)
    k = largest_fitting(lambda k: avail.fits(_need_at(plan, max(size), k * plan.align, history), SUGGEST_SHARE), 1, top)
    return None if k is None else k * plan.align


def _scale_need(plan: Plan, size: tuple[int, int], history: int, i: int) -> Need:
    """A smaller scale's need (no decode, no kept inputs): resident with the pairs it fills, address
    space with the whole history (as _need_at)."""
    def run_with(pairs: int) -> Need:
        return estimate(plan.layers, size, plan.optimizer, pairs, None, plan.on_host, plan.factor)

    return Need(run_with(_pairs(plan, history, i)).resident, run_with(history).address)


def plan_tiling(plan: Plan, avail: Available | None = None) -> Tiling:
    """--tile N: that tile at every scale. --tile auto: untiled where the whole image fits, else the
    largest tile that fits; where not even the smallest tile fits with --history, the largest
    history that does (the L-BFGS vectors are image-sized: history 100 at 8192x6144 is 120 GB)."""
    n = len(plan.sizes)
    if plan.tile is not None:
        return Tiling((plan.tile,) * n, plan.history)
    if not plan.align or os.environ.get("NST_ORT_MEMORY_CHECK", "1") == "0":
        return Tiling((None,) * n, plan.history)
    avail = avail or available()
    if avail.resident is None and avail.address is None:
        return Tiling((None,) * n, plan.history)
    history, notes, tiles = plan.history, [], []
    largest = max(plan.sizes, key=lambda s: s[0] * s[1])
    if (plan.optimizer == "lbfgs" and not avail.fits(_need_at(plan, max(largest)))
            and not avail.fits(_need_at(plan, max(largest), plan.align, history), SUGGEST_SHARE)):
        # Prefer tiles of 32 grid steps (512 px for VGG16: the halos add ~55% to the work, small tiles
        # several times that) with a history of at least 5; else the most history small tiles allow.
        def most(tile: int) -> int | None:
            return largest_fitting(lambda h: avail.fits(_need_at(plan, max(largest), tile, h), SUGGEST_SHARE),
                                   1, history)
        best = most(32 * plan.align)
        if best is None or best < min(5, history):
            best = most(4 * plan.align)
        if best is not None and best < history:
            notes.append(f"L-BFGS history {best} instead of {history}: {2 * history} image-sized vectors at "
                         f"{largest[0]}x{largest[1]} do not fit in memory")
            history = best
    for i, size in enumerate(plan.sizes):
        if avail.fits(_need_at(plan, max(size), None, history) if size == largest else
                      _scale_need(plan, size, history, i)):
            tiles.append(None)
            continue
        tile = _largest_tile(plan, avail, size, history)
        tiles.append(tile)
        if tile is not None:
            notes.append(f"{size[0]}x{size[1]} tiled in {tile} px tiles (the whole image does not fit in memory)")
    return Tiling(tuple(tiles), history, tuple(notes))


def _decode_need(plan: Plan) -> tuple[Need, ImageInput | None]:
    if not plan.images:
        return Need(0, 0), None
    big = max(plan.images, key=lambda im: im.pixels)
    extra = (DECODE_BYTES_PER_PIXEL - (KEPT_BYTES_PER_PIXEL if big.kept else 0)) * big.pixels
    kept = _kept(plan)
    return Need(FIXED + kept + extra, FIXED + ADDRESS_EXTRA + kept + extra), big


def _largest_index(plan: Plan) -> int:
    return max(range(len(plan.sizes)), key=lambda i: plan.sizes[i][0] * plan.sizes[i][1])


def assess(plan: Plan, avail: Available | None = None, tiling: Tiling | None = None) -> Assessment:
    """The figures check() decides on (also what --dry-run prints); tiling: plan_tiling's decision."""
    avail = avail or available()
    w, h = max(plan.sizes, key=lambda s: s[0] * s[1])
    tile, history = (tiling.tiles[_largest_index(plan)], tiling.history) if tiling else (None, None)
    return Assessment(_need_at(plan, max(w, h), tile, history), _decode_need(plan)[0], avail, (w, h))


def check(plan: Plan, avail: Available | None = None, tiling: Tiling | None = None) -> None:
    """Raise OutOfMemory if decoding the inputs or the largest scale would not fit (tiled as
    `tiling` says); name the file, and the size or history that would fit."""
    if os.environ.get("NST_ORT_MEMORY_CHECK", "1") == "0":
        return
    avail = avail or available()
    if avail.resident is None and avail.address is None:
        return
    decode, big = _decode_need(plan)
    if big is not None and not avail.fits(decode):
        needed, have, source = avail.binding(decode)
        largest = max(plan.sizes, key=lambda s: s[0] * s[1])
        want = max(largest) * max(1.0, plan.style_scale)
        raise OutOfMemory(f"{big.path}: declares {big.width}x{big.height} pixels ({big.pixels / 1e6:.1f} Mpx), "
                          f"which needs about {gib(needed)} of memory to decode, {gib(have)} is available "
                          f"({source}); this run uses it at most {round(want)} px on its long side: "
                          "scale it down first")
    w, h = max(plan.sizes, key=lambda s: s[0] * s[1])
    long_side = max(w, h)
    if tiling is None and plan.align:  # callers that did not plan (video, distributed): as Stylizer would
        tiling = plan_tiling(plan, avail)
    tile, history = (tiling.tiles[_largest_index(plan)], tiling.history) if tiling else (None, plan.history)
    need = _need_at(plan, long_side, tile, history)
    if avail.fits(need):
        return
    needed, have, source = avail.binding(need)
    if plan.align:  # tiled graphs: only the image-sized vectors limit the size
        small = tile or 4 * plan.align
        if not tile:  # not even the smallest tile fits: say what that needs
            needed, have, source = avail.binding(_need_at(plan, long_side, small, history))
        best = largest_fitting(lambda s: avail.fits(_need_at(plan, s, small, history), SUGGEST_SHARE),
                               max(1, plan.min_side), long_side)
        hist = (largest_fitting(lambda h: avail.fits(_need_at(plan, long_side, small, h), SUGGEST_SHARE), 1, history)
                if plan.optimizer == "lbfgs" else None)
        # Tiles cost their own sessions: under a tight limit a smaller untiled run can fit where no
        # tiled one does (ulimit -v 1400 MB: about 520 px untiled, nothing tiled).
        whole = largest_fitting(lambda s: avail.fits(_need_at(plan, s), SUGGEST_SHARE), max(1, plan.min_side),
                                long_side)
        if whole and (not best or whole >= best):
            advice = f"the largest size that fits is about --size {whole - whole % 8 if whole >= 2 * plan.min_side else whole}"
        elif best:
            advice = f"the largest size that fits is about --size {best - best % 8} (tiled, {small} px tiles)"
        else:
            advice = "not even the smallest size fits"
        if hist:
            advice += f", or --history {hist} at this size"
        raise OutOfMemory(f"{plan.what}: {w}x{h} needs about {gib(needed)} of memory"
                          f"{f' in {tile} px tiles' if tile else f' even in {small} px tiles'}, {gib(have)} is "
                          f"available ({source}); {advice}")
    best = largest_fitting(lambda s: avail.fits(_need_at(plan, s), SUGGEST_SHARE), max(1, plan.min_side), long_side)
    if best and best >= 2 * plan.min_side:
        best -= best % 8  # a round number; the estimate is not that precise anyway
    advice = (f"the largest size that fits is about --size {best}" if best else
              "not even the smallest size the network accepts fits; free memory or use a GPU")
    if plan.optimizer == "lbfgs" and plan.history > 10:
        advice += f" (or lower --history, now {plan.history}: L-BFGS keeps 2 x history copies of the image)"
    raise OutOfMemory(f"{plan.what}: {w}x{h} needs about {gib(needed)} of memory, {gib(have)} is available "
                      f"({source}); {advice}")
