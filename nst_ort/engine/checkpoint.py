"""CheckpointState: the loop's whole state in one .npz, written atomically; resume continues it.

    checkpoint.save(path, stylizer.state_dict(), fingerprint(config))
    stylizer.load_state_dict(checkpoint.load(path, fingerprint(config)))  # refused for other settings
"""
from __future__ import annotations

import dataclasses
import hashlib
import json
import stat
from pathlib import Path

import numpy as np

from ..base.atomic import atomic_write
from ..base.errors import UsageError
from .artifacts import sha256_file
from .config import Config

FORMAT = 1


def fingerprint(cfg: Config) -> str:
    """Inputs and settings that must match for a resume to be the same run: the config (as its repr)
    and the sha256 of every image it reads. Iteration counts are left out so that a resumed run may go
    on longer than the first."""
    same = dataclasses.replace(cfg, init=cfg.resolved_init(), scale_iterations=None,
                               optim=dataclasses.replace(cfg.optim, iterations=0))
    d = {"cfg": repr(same), "content": sha256_file(cfg.content) if cfg.content else None,
         "styles": [sha256_file(s.path) for s in cfg.styles],
         "masks": [sha256_file(s.mask) if s.mask else None for s in cfg.styles]}
    return hashlib.sha256(json.dumps(d, sort_keys=True, default=str).encode()).hexdigest()


def save(path: str | Path, state: dict, fingerprint: str) -> None:
    path = Path(path)
    arrays, meta = {}, {"format": FORMAT, "fingerprint": fingerprint}
    for key, value in state.items():
        if key == "optimizer":
            for k, v in value.items():
                if isinstance(v, np.ndarray):
                    arrays[f"optimizer.{k}"] = v
                else:
                    meta[f"optimizer.{k}"] = v
        elif isinstance(value, np.ndarray):
            arrays[key] = value
        else:
            meta[key] = value
    blob = np.frombuffer(json.dumps(meta).encode(), dtype=np.uint8)
    atomic_write(path, lambda f: np.savez(f, __meta__=blob, **arrays))


def load(path: str | Path, fingerprint: str) -> dict:
    """The state saved at `path` if it was made with these inputs and settings; any damage (a
    truncated or edited file, a folder, a FIFO) is a UsageError naming the file. Whether the state
    fits the run is Stylizer.load_state_dict's to check."""
    path = Path(path)
    try:
        st = path.stat()
    except OSError as e:
        raise UsageError(f"{path}: cannot read this checkpoint ({e.strerror or e})") from None
    if not stat.S_ISREG(st.st_mode):
        raise UsageError(f"{path}: not a checkpoint file (a folder, FIFO or device)")
    try:
        with np.load(path, allow_pickle=False) as z:
            meta = json.loads(bytes(z["__meta__"]).decode())
            arrays = {k: z[k] for k in z.files if k != "__meta__"}
    except MemoryError:
        raise UsageError(f"{path}: not an nst-ort checkpoint (an array too large to read)") from None
    except Exception as e:  # noqa: BLE001 - a damaged .npz makes zipfile/zlib/numpy raise anything
        msg = (str(e).splitlines() or [type(e).__name__])[0][:200]
        raise UsageError(f"{path}: not an nst-ort checkpoint, or a damaged one ({type(e).__name__}: {msg})") from None
    if not isinstance(meta, dict):
        raise UsageError(f"{path}: not an nst-ort checkpoint (no settings record)")
    if meta.get("format") != FORMAT:
        raise UsageError(f"{path}: checkpoint format {meta.get('format')!r} is not {FORMAT}"[:300])
    if meta.get("fingerprint") != fingerprint:
        raise UsageError(f"{path}: checkpoint was made with other inputs or settings; refusing to resume")
    state: dict = {"optimizer": {}}
    for k, v in {**meta, **arrays}.items():
        if k in ("format", "fingerprint"):
            continue
        if k.startswith("optimizer."):
            state["optimizer"][k.split(".", 1)[1]] = v
        else:
            state[k] = v
    if not state["optimizer"]:
        del state["optimizer"]
    return state
