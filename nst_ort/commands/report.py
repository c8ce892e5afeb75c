"""Consumers of iteration records: the progress line and the JSON report."""
from __future__ import annotations

import json
import math
import os
import sys
import time
from pathlib import Path

from ..base.atomic import atomic_write
from ..engine.stylize import IterationRecord

PROGRESS_SECONDS = 10.0
_warned: set[str] = set()


def _seconds_from_env(text: str | None) -> float:
    """NST_ORT_PROGRESS_SECONDS: a display setting, so a bad value is one warning and the default
    (it used to end the run as an internal error)."""
    if text is None:
        return PROGRESS_SECONDS
    try:
        value = float(text)
    except ValueError:
        value = math.nan
    if not math.isfinite(value) or value < 0:
        if text in _warned:  # once: a batch or a video makes a Progress per image
            return PROGRESS_SECONDS
        _warned.add(text)
        print(f"nst-ort: warning: NST_ORT_PROGRESS_SECONDS={text!r} is not a number of seconds >= 0; "
              f"using {PROGRESS_SECONDS:g}", file=sys.stderr)
        return PROGRESS_SECONDS
    return value


def _clock(seconds: float) -> str:
    seconds = int(max(0, seconds))
    h, rest = divmod(seconds, 3600)
    return f"{h}:{rest // 60:02d}:{rest % 60:02d}" if h else f"{rest // 60:02d}:{rest % 60:02d}"


class Progress:
    """Where the run is, on stderr. On a terminal one tqdm line rewritten in place (it fits the
    terminal's width, clears what the previous line left, and shows scale k of n, the iteration,
    the loss, elapsed time and an ETA); elsewhere (a log file, a pipe) a plain line at each scale's
    first and last iteration and at most every `every` seconds between.

    The ETA counts work in pixel-iterations, not iterations: in a multi-scale run an iteration at
    twice the size costs about four times as long, so an iteration count would promise too early."""

    def __init__(self, schedule: list[tuple[int, int, int]], stream=None, enabled: bool = True,
                 every: float | None = None, label: str = "", start: tuple[int, int] = (0, 0)):
        """schedule: (width, height, iterations) per scale; start: (scale, iteration) already done."""
        self.stream = stream if stream is not None else sys.stderr
        self.enabled, self.label = enabled, label
        self.every = every if every is not None else _seconds_from_env(os.environ.get("NST_ORT_PROGRESS_SECONDS"))
        self.schedule = schedule
        self.total = sum(w * h * n for w, h, n in schedule)
        s0, i0 = start
        self.initial = sum(w * h * n for w, h, n in schedule[:s0]) + (
            schedule[s0][0] * schedule[s0][1] * min(i0, schedule[s0][2]) if s0 < len(schedule) else 0)
        self.done = self.initial
        self.t0 = time.perf_counter()
        self.last = -1e9
        self.tty = hasattr(self.stream, "isatty") and self.stream.isatty()
        self.bar = None

    def _start(self, r: IterationRecord) -> None:
        """The clock starts at the first iteration (session start-up is not part of the rate)."""
        from tqdm import tqdm  # start-up: ~30 ms, paid only when a bar starts

        self.t0 = time.perf_counter()
        self.bar = tqdm(total=self.total, initial=self.done, file=self.stream, dynamic_ncols=True, leave=True,
                        mininterval=0.2, smoothing=0.1, desc=self.describe(r),
                        bar_format="{desc} {percentage:3.0f}%|{bar}| {elapsed}<{remaining}")

    def describe(self, r: IterationRecord) -> str:
        n = len(self.schedule)
        where = f"scale {r.scale + 1}/{n} " if n > 1 else ""
        return f"{self.label}{where}{r.width}x{r.height} it {r.iteration}/{r.iterations} loss {r.loss:.4g}"

    def __call__(self, r: IterationRecord) -> None:
        if not self.enabled:
            return
        if self.tty:
            if self.bar is None:
                self._start(r)
            self.done += r.width * r.height
            self.bar.set_description_str(self.describe(r), refresh=False)
            self.bar.update(r.width * r.height)
            return
        if self.done == self.initial:
            self.t0 = time.perf_counter() - r.seconds
        self.done += r.width * r.height
        now = time.perf_counter()
        if r.iteration not in (1, r.iterations) and now - self.last < self.every:
            return
        self.last = now
        elapsed = now - self.t0
        rate = (self.done - self.initial) / elapsed if elapsed > 0 else 0.0
        eta = _clock((self.total - self.done) / rate) if rate > 0 else "?"
        self.stream.write(f"nst-ort: {self.describe(r)} (content {r.content:.3g}, style {r.style:.3g}, tv {r.tv:.3g}"
                          f"{''.join(f', {k} {v:.3g}' for k, v in r.terms.items())}); "
                          f"{_clock(elapsed)} elapsed, {eta} left\n")
        self.stream.flush()

    def close(self) -> None:
        """End the line (before any other message is printed)."""
        if self.bar is not None:
            self.bar.close()
            self.bar = None


def write_json_atomic(path: str | Path, data: dict) -> None:
    def write(f):
        json.dump(data, f, indent=1, default=str)
        f.write("\n")

    atomic_write(path, write, mode="w")


class Report:
    """Settings, the weights used, what ran, every record, timings; written with --report as JSON."""

    def __init__(self, settings: dict, weights: dict | None = None):
        self.settings = settings
        self.weights = weights or {}  # the loss weights actually used (flags left unset: the model's)
        self.records: list[dict] = []
        self.runtime: dict = {}  # what actually ran (providers, training graph, loop): flags say "auto"
        self.t0 = time.perf_counter()

    def __call__(self, r: IterationRecord) -> None:
        self.records.append(r.as_dict())

    def summary(self) -> dict:
        secs = sorted(r["seconds"] for r in self.records)
        out = {
            "iterations": len(self.records),
            "wall_seconds": time.perf_counter() - self.t0,
            "median_iteration_seconds": secs[len(secs) // 2] if secs else None,
        }
        if self.records:
            out["final"] = {k: self.records[-1][k] for k in ("loss", "content", "style", "tv")}
            out["first"] = {k: self.records[0][k] for k in ("loss", "content", "style", "tv")}
        return out

    def write(self, path: str | Path, status: str = "done") -> None:
        write_json_atomic(path, {"status": status, "settings": self.settings, "weights": self.weights,
                                 "runtime": self.runtime, "summary": self.summary(), "records": self.records})
