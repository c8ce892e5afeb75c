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

The state is read as untrusted input: a file that is not JSON, nests too deep, has fields of the
wrong type, or counts frames it has no record of is a StateError (exit 2) naming the file, never a
traceback. On a resume every frame counted done is decoded: a missing or damaged one is redone
(with a warning), and so are the frames after it. Clean-up removes only what the tool made (the
frames, the state, its own temporaries); anything else in the folder stays, and so does the folder.
"""
from __future__ import annotations

import hashlib
import json
import os
import re
from pathlib import Path

from PIL import Image

from ..base.atomic import atomic_write
from ..base.errors import OutputError, UsageError
from ..engine.artifacts import sha256_file

FRAME = re.compile(r"\d{6}\.png")


class StateError(UsageError):
    """A damaged resume state (exit 2, as a damaged --resume checkpoint)."""

STATE = "nst-ort-video.json"
FORMAT = 1


def frame_name(index: int) -> str:
    """1-based file name of a frame."""
    return f"{index:06d}.png"


def fingerprint(inputs: list[Path | list[Path]], settings: dict) -> str:
    """The bytes of every input (a list of paths: a folder's frames, each one's) and the settings
    that shape the frames."""
    h = hashlib.sha256()
    for p in inputs:
        files = p if isinstance(p, list) else sorted(q for q in p.iterdir() if q.is_file()) if p.is_dir() else [p]
        for q in files:
            h.update(q.name.encode() + b"\0" + sha256_file(q).encode())
    h.update(json.dumps(settings, sort_keys=True, default=str).encode())
    return h.hexdigest()


def _number(v) -> bool:
    return v is None or (isinstance(v, (int, float)) and not isinstance(v, bool))


def _int(v) -> bool:
    return isinstance(v, int) and not isinstance(v, bool)


def check_state(path: Path, old) -> dict:
    """The fields of a state file that a resume uses, type-checked; StateError names the file."""
    def bad(why: str) -> StateError:
        return StateError(f"{path}: damaged resume state ({why}); add --restart to redo every frame, or "
                          "delete the file")
    if not isinstance(old, dict):
        raise bad("not a JSON object")
    if not _int(old.get("format")):
        raise bad("format must be an integer")
    if not isinstance(old.get("fingerprint"), str):
        raise bad("fingerprint must be a string")
    done, frames = old.get("done"), old.get("frames")
    if not _int(done) or done < 0:
        raise bad(f"done must be an integer >= 0, got {done!r}"[:160])
    if "total" in old and not (_int(old["total"]) and old["total"] >= 0):
        raise bad("total must be an integer >= 0")
    if not isinstance(frames, list):
        raise bad("frames must be a list")
    for i, r in enumerate(frames, 1):
        if not isinstance(r, dict) or r.get("frame") != i or not _int(r.get("frame")):
            raise bad(f"record {i} of frames is not frame {i}'s")
        for key in ("loss", "content", "style", "tv", "seconds", "warping_error", "temporal"):
            if not _number(r.get(key)):
                raise bad(f"frame {i}: {key} must be a number")
    if len(frames) < done:
        raise bad(f"it counts {done} frames done but has records of {len(frames)}")
    return old


def read_state(path: Path) -> dict:
    try:
        text = path.read_text()
    except OSError as e:
        raise OutputError(f"{path}: cannot read the resume state ({e.strerror or e})") from None
    except ValueError as e:  # not UTF-8
        raise StateError(f"{path}: damaged resume state (not text: {e.__class__.__name__}); add --restart to "
                         "redo every frame, or delete the file") from None
    try:
        old = json.loads(text)
    except (ValueError, RecursionError) as e:
        why = "nested too deeply" if isinstance(e, RecursionError) else f"not JSON: {str(e)[:120]}"
        raise StateError(f"{path}: damaged resume state ({why}); add --restart to redo every frame, or delete "
                         "the file") from None
    return check_state(path, old)


def frame_ok(path: Path) -> str | None:
    """None if a stored frame decodes whole, else what is wrong with it."""
    try:
        if not path.is_file():
            return "missing"
        with Image.open(path) as im:
            im.load()
    except Exception as e:  # noqa: BLE001 - any decoder failure: the frame is redone
        return f"damaged: {str(e).splitlines()[0][:120] if str(e) else type(e).__name__}"
    return None


class Job:
    def __init__(self, folder: Path, fp: str, meta: dict, restart: bool = False, warn=None):
        """Open or start the state in `folder` (created if missing). A folder holding a run with
        another fingerprint is refused, and so is one holding files that are not ours. warn(line):
        told of frames redone and of files left at clean-up."""
        self.folder, self.fingerprint = folder, fp
        self.state_path = folder / STATE
        self.state = {"format": FORMAT, "fingerprint": fp, **meta, "done": 0, "frames": []}
        self.warn = warn or (lambda msg: None)
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
        if self.state_path.exists() or self.state_path.is_symlink():
            if not self.state_path.is_file() or self.state_path.is_symlink():
                raise OutputError(f"{self.state_path}: not a regular file; refusing to read or replace it")
            if restart:  # the old state is not read: a damaged one is what --restart is for
                self._clear()
                return
            old = read_state(self.state_path)
            if old["fingerprint"] != fp or old["format"] != FORMAT:
                raise UsageError(f"{folder}: holds frames of another run (other inputs or settings); give "
                                 "another -o, delete the folder, or add --restart")
            # What describes this run comes from this run; only the progress comes from the file.
            self.state = {**old, **self.state, "done": old["done"], "frames": old["frames"][:old["done"]]}
            self._check_frames()
            return
        others = [p for p in folder.iterdir() if not p.name.startswith(".")]
        if others:
            raise OutputError(f"{folder}: exists and holds other files ({others[0].name}, ...); "
                              "give a new or empty folder")

    def _ours(self) -> list[Path]:
        """The files in the folder that the tool makes: the frames (NNNNNN.png), the state, and
        temporaries of those writes killed midway."""
        out = []
        for p in self.folder.iterdir():
            name = p.name
            if name.startswith(".") and name.endswith(".tmp"):
                name = name[1:].rsplit(".", 2)[0]  # .NAME.XXXX.tmp (atomic.py)
            if (name == STATE or FRAME.fullmatch(name)) and not p.is_dir():
                out.append(p)
        return out

    def _clear(self) -> None:
        for p in self._ours():
            p.unlink()

    def _check_frames(self) -> None:
        """Every frame the state counts as done is there and decodes; from a missing or damaged one
        on, the frames are redone."""
        done = self.done
        for i in range(1, done + 1):
            wrong = frame_ok(self.frame_path(i))
            if wrong is not None:
                self.warn(f"{self.frame_path(i)}: stored frame {wrong}; redoing frames {i} to {done}")
                done = i - 1
                break
        self.state["done"] = done
        self.state["frames"] = self.state["frames"][:done]

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

    def remove(self) -> list[str]:
        """Delete what the tool made here, then the folder if nothing else is left in it. Returns
        the names left (files the tool did not make, kept), after a warning naming them."""
        for p in self._ours():
            try:
                p.unlink()
            except FileNotFoundError:
                pass
            except OSError as e:
                self.warn(f"{p}: cannot remove ({e.strerror or e})")
        try:
            left = sorted(os.listdir(self.folder))
        except OSError:
            return []
        if not left:
            try:
                self.folder.rmdir()
            except OSError:
                pass
            return []
        shown = ", ".join(left[:3]) + (", ..." if len(left) > 3 else "")
        self.warn(f"{self.folder}: kept, it holds files nst-ort did not make ({shown}); its frames were removed")
        return left
