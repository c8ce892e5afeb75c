"""Consumers of iteration records: the progress line and the JSON report."""
from __future__ import annotations

import json
import sys
import time
from pathlib import Path

from .atomic import atomic_write
from .stylize import IterationRecord


class Progress:
    """One line on stderr, rewritten in place: scale, iteration, loss terms, iterations/s."""

    def __init__(self, stream=sys.stderr, every: float = 0.2, enabled: bool = True):
        self.stream, self.every, self.enabled = stream, every, enabled
        self.last = 0.0
        self.t_start = time.perf_counter()
        self.t_scale = self.t_start
        self.scale = -1
        self.tty = hasattr(stream, "isatty") and stream.isatty()

    def __call__(self, r: IterationRecord) -> None:
        if not self.enabled:
            return
        now = time.perf_counter()
        if r.scale != self.scale:
            self.scale, self.t_scale = r.scale, now - r.seconds
        done = r.iteration == r.iterations
        if not done and now - self.last < self.every:
            return
        self.last = now
        rate = r.iteration / max(now - self.t_scale, 1e-9)
        bar_w = 20
        filled = int(bar_w * r.iteration / max(r.iterations, 1))
        line = (f"[{'#' * filled}{'.' * (bar_w - filled)}] scale {r.scale + 1} {r.width}x{r.height} "
                f"it {r.iteration}/{r.iterations} loss {r.loss:.4g} (content {r.content:.3g} style {r.style:.3g} "
                f"tv {r.tv:.3g}{''.join(f' {k} {v:.3g}' for k, v in r.terms.items())}) {rate:.2f} it/s")
        if self.tty:
            self.stream.write("\r" + line + ("\n" if done else ""))
        elif done or r.iteration % 50 == 0 or r.iteration == 1:
            self.stream.write(line + "\n")
        self.stream.flush()


def write_json_atomic(path: str | Path, data: dict) -> None:
    def write(f):
        json.dump(data, f, indent=1, default=str)
        f.write("\n")

    atomic_write(path, write, mode="w")


class Report:
    """Settings, every record, timings; written with --report as JSON."""

    def __init__(self, settings: dict):
        self.settings = settings
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
        write_json_atomic(path, {"status": status, "settings": self.settings, "runtime": self.runtime,
                                 "summary": self.summary(), "records": self.records})
