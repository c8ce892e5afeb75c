"""Extra loss terms: small graphs that add their loss and gradient to the training graph's.

A term graph takes the image, the gradient so far and its own fixed inputs, and gives its (weighted)
loss and the gradient with its own added (contract.TERM_*). Both loops run every term after the
training graph and before the optimizer update, in the order given:

    HostLoop:   grad = train(x); for t: loss_t, grad = t(x, grad)             numpy in, numpy out
    DeviceLoop: train(x[cur]) -> scratch; t1: scratch -> scratch'; ...; tk: -> g[cur]   device buffers

A term's output never aliases its input (ONNX Runtime does not promise in-place element-wise ops), so
the device loop's training graph writes into scratch buffers and the last term into the buffer the
optimizer reads. The fixed inputs (a video's warped previous frame, its mask, the weight) go to the
device once per loop, like the training graph's targets.

    term = Term("temporal", session, {"target": t, "mask": c, "weight": np.float32(w)})
    stylizer.set_terms([term])        # before a run's first step; IterationRecord.terms has its loss
"""
from __future__ import annotations

import dataclasses

import numpy as np
import onnxruntime as ort

from ..base.errors import ArtifactError
from . import contract
from .session import run_error


@dataclasses.dataclass
class Term:
    """One extra loss term: its graph (a session on the run's placement) and its fixed feeds."""

    name: str  # the IterationRecord.terms key
    session: ort.InferenceSession
    feeds: dict[str, np.ndarray]  # every input but image and image_grad_in, for one image size

    def check(self) -> None:
        ins = [i.name for i in self.session.get_inputs()]
        outs = [o.name for o in self.session.get_outputs()]
        need = {contract.IMAGE, contract.TERM_GRADIENT_IN, *self.feeds}
        if set(ins) != need or len(outs) != 2 or outs[1] != contract.TERM_GRADIENT_OUT:
            raise ArtifactError(f"term {self.name!r}: graph inputs {ins} -> outputs {outs}; expected "
                                f"{sorted(need)} -> [loss, {contract.TERM_GRADIENT_OUT}]")


class BoundTerm:
    """A term bound for one loop: its fixed feeds on the device once, then run per iteration."""

    def __init__(self, term: Term, device: str, shape: tuple[int, ...]):
        term.check()
        self.term, self.device, self.shape = term, device, tuple(shape)
        # np.array, not ascontiguousarray: that makes a 0-d weight 1-d
        self.values = {name: ort.OrtValue.ortvalue_from_numpy(np.array(a, dtype=np.float32, order="C"), device, 0)
                       for name, a in term.feeds.items()}
        self.loss_name = term.session.get_outputs()[0].name

    def __call__(self, x: np.ndarray, grad: np.ndarray) -> tuple[float, np.ndarray]:
        """Host arrays: (this term's loss, grad + its gradient)."""
        b = self.term.session.io_binding()
        b.bind_cpu_input(contract.IMAGE, np.ascontiguousarray(x, np.float32))
        b.bind_cpu_input(contract.TERM_GRADIENT_IN, np.ascontiguousarray(grad, np.float32))
        for name, v in self.values.items():
            b.bind_ortvalue_input(name, v)
        b.bind_output(self.loss_name, "cpu")
        b.bind_output(contract.TERM_GRADIENT_OUT, "cpu")
        self._run(b)
        loss, out = b.get_outputs()
        return float(loss.numpy()), out.numpy()

    def binding(self, image: int, grad_in: int, grad_out: int) -> ort.IOBinding:
        """Device pointers of [1, 3, H, W] float32 buffers; grad_out must not be grad_in."""
        if grad_in == grad_out:
            raise ValueError("a term's gradient output must not alias its input")
        b = self.term.session.io_binding()
        shape = list(self.shape)
        b.bind_input(contract.IMAGE, self.device, 0, np.float32, shape, image)
        b.bind_input(contract.TERM_GRADIENT_IN, self.device, 0, np.float32, shape, grad_in)
        for name, v in self.values.items():
            b.bind_ortvalue_input(name, v)
        b.bind_output(self.loss_name, "cpu")
        b.bind_output(contract.TERM_GRADIENT_OUT, self.device, 0, np.float32, shape, grad_out)
        return b

    def run(self, binding: ort.IOBinding) -> float:
        self._run(binding)
        return float(binding.get_outputs()[0].numpy())

    def _run(self, binding: ort.IOBinding) -> None:
        try:
            self.term.session.run_with_iobinding(binding)
        except Exception as e:  # noqa: BLE001
            raise run_error(e, f"{self.term.name} term graph at {self.shape[3]}x{self.shape[2]}") from None


def bind(terms, device: str, shape: tuple[int, ...]) -> list[BoundTerm]:
    return [BoundTerm(t, device, shape) for t in terms or ()]
