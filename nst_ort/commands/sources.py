"""The files a one-image run reads (its images, masks, --init image, --resume checkpoint and the
model's files): what every path it writes is checked against, by the CLI and by the Ray batch alike."""
from __future__ import annotations

from pathlib import Path

from ..engine.artifacts import Artifacts
from ..engine.config import Config
from ..media.outputs import Source


def run_sources(cfg: Config, artifacts: Artifacts, resume: Path | None) -> list[Source]:
    """What the run reads, each named for check_writes' messages."""
    out = []
    if cfg.content is not None:
        out.append(Source(cfg.content, "content image"))
    for st in cfg.styles:
        out.append(Source(st.path, "style image"))
        if st.mask is not None:
            out.append(Source(st.mask, "style mask"))
    if cfg.init not in ("content", "noise"):
        out.append(Source(Path(cfg.init), "--init image"))
    if resume is not None:
        out.append(Source(resume, "--resume checkpoint"))
    model = artifacts.path
    out.append(Source(model / "manifest.json", "model file"))
    out += [Source(model / name, "model file") for name in artifacts.manifest["files"]]
    return out
