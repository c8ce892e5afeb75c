"""The iteration as one interface: a Loop runs one scale's optimization from a start image.

    loop = make_loop(kind, graphs, feeds, x0, config.optim, terms=[...])   # kind = choose_loop(...), once
    losses = loop.step()         # evaluate the current image, update it (contract.Losses)
    loop.image(), loop.best()    # the current image, the last one whose loss was finite
    loop.state_dict()            # the optimizer's state, in optim.py's format

Two implementations (onnxruntime training's Module + Optimizer, bound to one image):
- HostLoop: the training graph through session.TrainStep, the optimizer in numpy (optim.py);
- DeviceLoop (device_loop.py): image, gradient and optimizer state in device buffers, the update as
  the model's optimizer graphs; only the loss terms and a few scalars come to the host.
They give the same iterates up to rounding, and their state_dicts move between them (a checkpoint of
one resumes in the other). Stylizer (stylize.py) builds a loop per scale and owns everything around
it: targets, schedule, records, checkpoints, recovery.

A Loop's contract:
- `step() -> Losses`: one evaluation of the training graph at the current image, then of each extra
  term (terms.py: its loss into `Losses.loss` and `Losses.terms`, its gradient added), and one
  optimizer update. If the loss or the gradient is not finite it raises NumericalError and changes nothing, so
  `best()` is still the last image whose loss (and gradient) was finite.
- `image()`: the current image [1, 3, H, W] float32, a host array the caller must not modify.
- `best()`: the image the last successful step evaluated, or None before this loop's first step.
- `state_dict()` / `load_state_dict(state)`: the optimizer's whole state (its "kind" is the
  optimizer's name); the images are not part of it.
"""
from __future__ import annotations

from typing import Protocol

import numpy as np

from ..base.errors import NumericalError, UsageError
from . import optim
from .artifacts import Artifacts
from .config import Config, OptimConfig
from .contract import Losses
from .device_loop import DeviceLoop
from .session import Graphs, TrainStep
from .terms import Term, bind

KINDS = ("host", "device")


class Loop(Protocol):
    kind: str  # "host" or "device"

    def step(self) -> Losses: ...

    def image(self) -> np.ndarray: ...

    def best(self) -> np.ndarray | None: ...

    def state_dict(self) -> dict: ...

    def load_state_dict(self, state: dict) -> None: ...


class HostLoop:
    """Loop with the image and the optimizer in numpy: one training-graph run per step."""

    kind = "host"

    def __init__(self, graphs: Graphs, feeds: dict[str, np.ndarray], x0: np.ndarray, optimizer,
                 terms: list[Term] | None = None, train=None):
        """train: another evaluation with TrainStep's call (tiling.TiledTrainStep); default TrainStep."""
        self.train = train if train is not None else TrainStep(graphs, feeds, x0.shape)
        self.terms = bind(terms, graphs.placement.device, x0.shape)
        self.optimizer = optimizer  # optim.LBFGS or optim.Adam
        self.x = x0
        self._best: np.ndarray | None = None

    def step(self) -> Losses:
        *outputs, grad = self.train(self.x)
        losses = Losses(*outputs)
        if self.terms:
            extra = []
            for term in self.terms:
                value, grad = term(self.x, grad)
                extra.append((term.term.name, value))
            losses = losses._replace(loss=losses.loss + sum(v for _, v in extra), terms=tuple(extra))
        if not (np.isfinite(losses.loss) and np.isfinite(grad).all()):
            raise NumericalError(f"loss became {losses.loss}")
        self._best = self.x
        self.x = self.optimizer.step(self.x.reshape(-1), grad.reshape(-1)).reshape(self.x.shape)
        return losses

    def image(self) -> np.ndarray:
        return self.x

    def best(self) -> np.ndarray | None:
        return self._best

    def state_dict(self) -> dict:
        return self.optimizer.state_dict()

    def load_state_dict(self, state: dict) -> None:
        self.optimizer.load_state_dict(state)


def choose_loop(config: Config, artifacts: Artifacts) -> str:
    """"device" where the model has optimizer graphs for the run's optimizer (config.loop auto or
    device), else "host". Iterate averaging needs the image at every iteration: host. Decided from
    the manifest, before any session is made."""
    if config.loop == "host" or config.optim.average:
        return "host"
    if artifacts.optimizer_graphs(config.optim.name) is None:
        if config.loop == "device":
            raise UsageError(f"{artifacts.path}: this model has no {config.optim.name} optimizer graphs "
                             "(re-export it, or: python -m nst_ort_export.optim_graphs MODEL); use --loop host")
        return "host"
    return "device"


def make_loop(kind: str, graphs: Graphs, feeds: dict[str, np.ndarray], x0: np.ndarray, config: OptimConfig,
              state: dict | None = None, terms: list[Term] | None = None, train=None) -> Loop:
    """A loop of `kind` from x0 [1, 3, H, W] with the training graph fed `feeds` (targets and weights);
    state: an optimizer state_dict to go on from (a checkpoint's, of either kind of loop); terms:
    extra loss terms run after the training graph at every step; train: an evaluation with TrainStep's
    call instead of the training graph (tiling.TiledTrainStep), in either loop."""
    if state is not None and state.get("kind") != config.name:
        raise UsageError(f"the saved optimizer state is {state.get('kind')!r}, this run uses {config.name!r}")
    if kind == "device":
        loop = DeviceLoop(graphs, feeds, x0, config.name, config.learning_rate(), config.history, terms, train)
    else:
        loop = HostLoop(graphs, feeds, x0, optim.make(config.name, x0.size, config.learning_rate(), config.history),
                        terms, train)
    if state is not None:
        loop.load_state_dict(state)
    return loop
