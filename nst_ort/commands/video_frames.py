"""FrameStylizer: frames stylized in order, each from the one before, by one Stylizer kept across
frames: what `nst-ort video` (video.py) and each shard of its Ray scale-out (distributed.py) run, so
that both write the same bytes."""
from __future__ import annotations

import dataclasses
import sys
import time
from pathlib import Path

import numpy as np

from ..base.errors import NumericalError
from ..engine import memory
from ..engine.config import Config, LossConfig, OptimConfig, StyleInput
from ..engine.stylize import Stylizer
from ..engine.temporal import TemporalTerm
from ..media import flow as F

_said: set[str] = set()


def warn_once(msg: str) -> None:
    if msg not in _said:  # once: every frame reloads the same style images
        _said.add(msg)
        print(f"nst-ort: warning: {msg}".replace("\n", "\\n"), file=sys.stderr)  # one line, whatever the names


class FrameStylizer:
    """Stylizes frames in order, each from the one before (warm start, temporal term): one Stylizer whose
    sessions and style targets are kept from frame to frame (restart on each new content frame).

    The sequential run and each shard of a distributed run (distributed.py) go through `frame()`, so
    that they write the same bytes."""

    def __init__(self, args, artifacts, size: tuple[int, int], styles: list[Path], weights: list[float],
                 content_path: Path):
        self.args, self.artifacts, self.size = args, artifacts, size
        self.styles, self.weights, self.content_path = styles, weights, content_path
        self.stylizer = None
        self.temporal = None

    def _config(self, iterations: int) -> Config:
        a = self.args
        loss = LossConfig(content_weight=a.content_weight, style_weight=a.style_weight, tv_weight=a.tv_weight)
        return Config(content=self.content_path, styles=[StyleInput(s, w) for s, w in zip(self.styles, self.weights)],
                      size=max(self.size), seed=a.seed, loss=loss,
                      optim=OptimConfig(name=a.optimizer, iterations=iterations, lr=a.lr),
                      model=self.artifacts.path, device=a.device, provider=a.provider, threads=a.threads, loop=a.loop,
                      tile=getattr(a, "tile", None))

    def _start(self, content: np.ndarray, iterations: int):
        if self.stylizer is None:
            self.stylizer = Stylizer(self._config(iterations), artifacts=self.artifacts, warn=warn_once, content=content)
            # As the still-image CLI: --tile auto tiles a frame that does not fit whole (and may lower
            # the L-BFGS history); the plan is made once, every frame has the same size.
            memory.check(self.stylizer.memory_plan(), tiling=self.stylizer.plan_tiling())
            if self.args.mode == "temporal":
                self.temporal = TemporalTerm(self.stylizer.graphs)
        else:
            self.stylizer.restart(content=content, iterations=iterations)
        return self.stylizer

    def frame(self, content: np.ndarray, previous: tuple[np.ndarray, np.ndarray] | None, iterations: int,
              save, blend: tuple[np.ndarray, float] | None = None) -> tuple[dict, np.ndarray]:
        """content: this frame [H, W, 3] at the output size; previous: (its content, its output as
        written) or None for a chain's first frame; save(image) writes the result and returns it as read
        back. Returns the frame's record and the written image.

        blend: (another stylization of this same frame, alpha in (0, 1)): the seam pass of a sharded
        video (distributed.py). The frame starts from (1 - alpha) warp(previous) + alpha other, and
        in temporal mode its temporal term is split: weight (1 - alpha) lambda_t toward the warped
        previous frame, alpha lambda_t toward the other stylization (all pixels: the same frame, no
        flow). Seam frames with alpha rising from one to the next cross from one shard's strokes to
        the next shard's in steps instead of one jump."""
        t0 = time.perf_counter()
        start = term = werr = None
        if previous is not None:
            prev_content, prev_out = previous
            back = F.optical_flow(content, prev_content, self.args.flow)
            fwd = F.optical_flow(prev_content, content, self.args.flow)
            c = F.consistency(back, fwd)
            warped, inside = F.warp(prev_out, back)
            if self.args.mode in ("warm", "temporal"):
                # Deviation: where the flow leaves the frame Ruder et al. start from the VGG mean
                # pixel; here from the frame's own content (what per-frame mode starts from).
                start = np.where(inside[..., None], warped, content).astype(np.float32)
            if self.args.mode == "temporal":
                term = (warped, c * inside, self.args.temporal_weight)
        stylizer = self._start(content, iterations)
        terms = []
        if blend is not None and start is not None:
            other, alpha = blend
            start = ((1.0 - alpha) * start + alpha * other).astype(np.float32)
            if term is not None:
                toward = self.temporal.term(other, np.ones(content.shape[:2], np.float32), alpha * term[2])
                terms.append(dataclasses.replace(toward, name="seam"))
                term = (term[0], term[1], (1.0 - alpha) * term[2])
        if start is not None:
            stylizer.warm_start(start)
        if term is not None:
            stylizer.set_terms([self.temporal.term(*term), *terms])
        record = first = stopped = None
        try:
            for record in stylizer.run():
                first = first or record
        except NumericalError as e:
            # L-BFGS without line search can diverge on a frame; the video goes on rather than losing
            # the run. The frame keeps its last finite image (as the still-image CLI does) unless that
            # is worse than where it started (a diverging run's last finite loss can be 1e22): then
            # its start image (its content, or the warped previous frame).
            if record is None:
                raise
            stopped = str(e)
        result = stylizer.result()
        if stopped and record.loss > first.loss:
            stopped += "; kept the frame's start image instead (the last finite one was worse)"
            result = np.clip(start if start is not None else content, 0.0, 1.0)
        written = save(result)
        if previous is not None:
            werr = F.warping_error(written, prev_out, back, c >= 0.5)
        rec = {"loss": record.loss, "content": record.content, "style": record.style, "tv": record.tv,
               "temporal": record.terms.get("temporal"), "iterations": record.step,
               "seconds": round(time.perf_counter() - t0, 3), "warping_error": werr,
               "init": "warped previous" if start is not None else "content", "tile": stylizer.tile_at(0)}
        if blend is not None and record.terms.get("seam") is not None:
            rec["seam_term"] = record.terms["seam"]
        if stopped:
            rec["stopped"] = stopped
        return rec, written
