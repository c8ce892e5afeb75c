"""A provider whose numbers are off, for testing `nst-ort check` on any CPU (no bf16 needed).

install(provider) makes every float output of that provider's sessions (InferenceSession.run and the
IOBinding runs of the training step and the device loop) come back scaled by 1 + 1e-2 u, u uniform
in [-1, 1] from a fixed seed: errors of the size OpenVINO computing in bf16 gave (features 7.9e-3,
gradient 6.2e-2: nst_ort/commands/check.py's LIMITS comment), on a CPU that has no bf16. On the CPU provider
only the sessions with more than one intra-op thread are perturbed: `check --threads 2` then
perturbs the provider checked and not its 1-thread reference.

Used from a CLI subprocess: run_cli(..., prelude=perturbed_provider.prelude(provider)).
"""
from __future__ import annotations

from pathlib import Path

import numpy as np
import onnxruntime as ort

CPU = "CPUExecutionProvider"
SCALE = 1e-2


def prelude(provider: str) -> str:
    """Python statements installing the perturbation in a fresh interpreter."""
    here = str(Path(__file__).resolve().parent)
    return f"sys.path.insert(0, {here!r}); import perturbed_provider; perturbed_provider.install({provider!r}); "


def install(provider: str) -> None:
    rng = np.random.default_rng(0)

    def perturbed(sess) -> bool:
        if sess.get_providers()[0] != provider:
            return False
        return provider != CPU or sess.get_session_options().intra_op_num_threads != 1

    def off(a):
        a = np.asarray(a)
        if a.dtype != np.float32:
            return a
        return (a * (1 + SCALE * rng.uniform(-1, 1, a.shape))).astype(np.float32)

    run, run_with_iobinding = ort.InferenceSession.run, ort.InferenceSession.run_with_iobinding

    def run_off(self, output_names, input_feed, run_options=None):
        outs = run(self, output_names, input_feed, run_options)
        return [off(o) for o in outs] if perturbed(self) else outs

    def run_with_iobinding_off(self, binding, run_options=None):
        result = run_with_iobinding(self, binding, run_options)
        if perturbed(self):
            for value in binding.get_outputs():
                value.update_inplace(np.ascontiguousarray(off(value.numpy())))
        return result

    ort.InferenceSession.run = run_off
    ort.InferenceSession.run_with_iobinding = run_with_iobinding_off
