"""The on-disk state of a video run, so that a killed run resumes at the next frame.

A frames folder holds the stylized frames as they finish (000001.png, 000002.png, ..., each written
atomically) and `nst-ort-video.json` (written atomically after each frame):

    {"format": 1, "fingerprint": sha256 of the inputs' bytes and the settings,
     "input": ..., "fps": "30000/1001", "size": [w, h], "done": 3, "total": 10,
     "frames": [{"frame": 1, "loss": ..., "content": ..., "style": ..., "tv": ..., "iterations": ...,
                 "seconds": ..., "warping_error": ...}, ...]}

`done` counts the frames 1..done whose PNG is complete; the JSON is written after the PNG, so a kill
between the two only repeats one frame. Output to a video file: the folder is OUT.frames beside it
and is removed once the video is written and read back (unless --keep-frames). Output to a folder:
the folder itself, and the frames stay.
"""
from __future__ import annotations

import hashlib
import json
import shutil
from pathlib import Path

from .artifacts import sha256_file
from .atomic import atomic_write
from .errors import OutputError, UsageError

STATE = "nst-ort-video.json"
FORMAT = 1


def frame_name(index: int) -> str:
    """1-based file name of a frame."""
    return f"{index:06d}.png"


def fingerprint(inputs: list[Path], settings: dict) -> str:
    """The bytes of every input (a folder: each frame's) and the settings that shape the frames."""
    h = hashlib.sha256()
    for p in inputs:
        files = sorted(q for q in p.iterdir() if q.is_file()) if p.is_dir() else [p]
        for q in files:
            h.update(q.name.encode() + b"\0" + sha256_file(q).encode())
    h.update(json.dumps(settings, sort_keys=True, default=str).encode())
    return h.hexdigest()


class Job:
    def __init__(self, folder: Path, fp: str, meta: dict, restart: bool = False):
        """Open or start the state in `folder` (created if missing). A folder holding a run with
        another fingerprint is refused, and so is one holding files that are not ours."""
        self.folder, self.fingerprint = folder, fp
        self.state_path = folder / STATE
        self.state = {"format": FORMAT, "fingerprint": fp, **meta, "done": 0, "frames": []}
        self.created = False  # made by this run (removed again if it fails before any frame)
        if folder.exists() and not folder.is_dir():
            raise OutputError(f"{folder}: exists and is not a folder")
        if not folder.exists():
            if not folder.parent.is_dir():
                raise OutputError(f"{folder}: its folder {folder.parent} does not exist")
            try:
                folder.mkdir()
            except OSError as e:
                raise OutputError(f"{folder}: cannot create ({e.strerror or e})") from None
            self.created = True
            return
        if self.state_path.is_file():
            try:
                old = json.loads(self.state_path.read_text())
            except (OSError, ValueError) as e:
                raise OutputError(f"{self.state_path}: unreadable ({e}); delete the folder to start over") from None
            if restart:
                self._clear()
            elif not isinstance(old, dict) or old.get("fingerprint") != fp or old.get("format") != FORMAT:
                raise UsageError(f"{folder}: holds frames of another run (other inputs or settings); give "
                                 "another -o, delete the folder, or add --restart")
            else:
                self.state = old
                self._check_frames()
            return
        others = [p for p in folder.iterdir() if not p.name.startswith(".")]
        if others:
            raise OutputError(f"{folder}: exists and holds other files ({others[0].name}, ...); "
                              "give a new or empty folder")

    def _clear(self) -> None:
        for p in self.folder.iterdir():
            if p.name == STATE or (p.suffix == ".png" and p.stem.isdigit()):
                p.unlink()

    def _check_frames(self) -> None:
        """Every frame the state counts as done is there; a missing one is redone from there on."""
        done = int(self.state.get("done", 0))
        for i in range(1, done + 1):
            if not (self.folder / frame_name(i)).is_file():
                done = i - 1
                break
        self.state["done"] = done
        self.state["frames"] = [r for r in self.state.get("frames", []) if r.get("frame", 0) <= done]

    @property
    def done(self) -> int:
        return int(self.state["done"])

    def frame_path(self, index: int) -> Path:
        return self.folder / frame_name(index)

    def frame_paths(self) -> list[Path]:
        return [self.frame_path(i) for i in range(1, self.done + 1)]

    def finish_frame(self, index: int, record: dict) -> None:
        """Frame `index` (1-based) is on disk: count it and its record."""
        if index != self.done + 1:
            raise ValueError(f"frame {index} finished after {self.done}")
        self.state["done"] = index
        self.state["frames"].append({"frame": index, **record})
        self.save()

    def save(self) -> None:
        text = json.dumps(self.state, indent=1) + "\n"
        try:
            atomic_write(self.state_path, lambda f: f.write(text), mode="w")
        except OSError as e:
            raise OutputError(f"{self.state_path}: cannot write ({e.strerror or e})") from None

    def remove(self) -> None:
        shutil.rmtree(self.folder, ignore_errors=True)
