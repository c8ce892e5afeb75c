"""Many quick `nst-ort` calls through the real CLI in one subprocess (torch blocked there, as run_cli).

A table row whose call is refused before any computing costs ~0.1 s in a warm process against ~1 s
for a fresh interpreter and onnxruntime import; this keeps the tables of refusals cheap in CI. Each
call gets its own working directory, environment, fresh stdout/stderr and the CLI's once-per-process
warning memory cleared, so that it sees what a separate `nst-ort` process would. Calls that compute
(or need resource limits or stand-in modules) use conftest.run_cli instead.
"""
from __future__ import annotations

import dataclasses
import json
import subprocess
import sys
import tempfile
from pathlib import Path

from conftest import cli_env

CHILD = r"""
import contextlib, io, json, os, signal, sys
sys.modules["torch"] = None
from nst_ort.commands import cli
calls = json.load(open(sys.argv[1]))
results = []
home, env = os.getcwd(), dict(os.environ)
for call in calls:
    os.chdir(call["cwd"] or home)
    os.environ.clear(); os.environ.update(env); os.environ.update(call["env"] or {})
    cli._said.clear()
    if "nst_ort.commands.video_frames" in sys.modules:  # nst-ort video's warn-once memory
        sys.modules["nst_ort.commands.video_frames"]._said.clear()
    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        try:
            code = cli.main(call["argv"])
        except SystemExit as e:  # argparse
            code = e.code if isinstance(e.code, int) else 2
        except BaseException as e:
            code, err = "escaped", io.StringIO(f"{type(e).__name__}: {e}")
    signal.signal(signal.SIGTERM, signal.SIG_DFL)  # main() installs its own handler
    results.append({"code": code, "stdout": out.getvalue(), "stderr": err.getvalue()})
json.dump(results, sys.stdout)
"""


@dataclasses.dataclass
class Result:
    returncode: int | str
    stdout: str
    stderr: str


def run_many(calls: list[tuple[list, Path | None, dict | None]], timeout: int = 900) -> list[Result]:
    """calls: (argv, cwd, extra environment) each; returns one Result per call, in order."""
    with tempfile.NamedTemporaryFile("w", suffix=".json", delete=False) as f:
        json.dump([{"argv": [str(a) for a in argv], "cwd": str(cwd) if cwd else None, "env": env}
                   for argv, cwd, env in calls], f)
    try:
        r = subprocess.run([sys.executable, "-c", CHILD, f.name], capture_output=True, text=True, timeout=timeout,
                           env=cli_env(), cwd=Path(__file__).resolve().parent.parent)
    finally:
        Path(f.name).unlink()
    if r.returncode != 0:
        raise AssertionError(f"the batch of CLI calls failed:\n{r.stderr[-3000:]}")
    return [Result(x["code"], x["stdout"], x["stderr"]) for x in json.loads(r.stdout)]
