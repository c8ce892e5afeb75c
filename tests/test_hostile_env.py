"""What the tool reads besides images and video, when it is damaged or hostile (issue 20): a model
folder (a graph swapped for another and re-signed, symlink loops, FIFOs, paths that escape, a huge
or deeply nested manifest), a stdout whose reader went away, a tiny address-space limit. Each ends
in one line and a documented exit (docs/errors.md), never a traceback or a hang.
(The start-up cache's cases are in tests/test_cache.py.)"""
from __future__ import annotations

import hashlib
import json
import os
import resource
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from conftest import DEFAULT_MODEL, EXAMPLES, ROOT, cli_env

CONTENT, STYLE = EXAMPLES / "chelsea_cat.jpg", EXAMPLES / "starry_night.jpg"


def nst_ort(args: list, timeout: int = 120, preexec_fn=None, env=None, stdout=subprocess.PIPE):
    """The real command (`python -m nst_ort`: entry.py, as the console script), torch blocked."""
    code = "import sys, runpy; sys.modules['torch'] = None; sys.argv[0] = 'nst-ort'; runpy.run_module('nst_ort', run_name='__main__')"
    return subprocess.run([sys.executable, "-c", code, *map(str, args)], stdout=stdout, stderr=subprocess.PIPE,
                          text=True, timeout=timeout, cwd=ROOT, env=cli_env(env), preexec_fn=preexec_fn)


# -- model folders ------------------------------------------------------------------------------------
def _resign(model: Path) -> None:
    """Fix every listed file's sha256 and size in manifest.json (what a hostile or careless edit does)."""
    mpath = model / "manifest.json"
    m = json.loads(mpath.read_text())
    for name in m["files"]:
        data = (model / name).read_bytes()
        m["files"][name] = {"sha256": hashlib.sha256(data).hexdigest(), "bytes": len(data)}
    mpath.write_text(json.dumps(m, indent=1))


def _swap(target: str, source: str):
    def tamper(model: Path) -> str:
        shutil.copyfile(model / source, model / target)
        _resign(model)
        return target
    return tamper


def _edit(edit, named: str = "manifest.json"):
    def tamper(model: Path) -> str:
        m = json.loads((model / "manifest.json").read_text())
        edit(m)
        (model / "manifest.json").write_text(json.dumps(m))
        return named
    return tamper


def _replace(name: str, make):
    def tamper(model: Path) -> str:
        (model / name).unlink()
        make(model / name)
        return name
    return tamper


def _loop_pair(model: Path) -> str:
    (model / "adam.onnx").unlink()
    (model / "a.onnx").symlink_to("b.onnx")
    (model / "b.onnx").symlink_to("a.onnx")
    (model / "adam.onnx").symlink_to("a.onnx")
    return "adam.onnx"


def _listed_escape(model: Path) -> str:
    outside = model.parent / "outside.onnx"
    shutil.copyfile(model / "adam.onnx", outside)
    (model / "adam.onnx").unlink()
    (model / "adam.onnx").symlink_to(outside)
    return "manifest.json"


def _shape_edit(m: dict) -> None:
    m["graphs"]["train"]["inputs"][2]["shape"] = [7]  # content_layer_weights: the graph says [4]


def _nested(model: Path) -> str:
    text = (model / "manifest.json").read_text().rstrip()
    (model / "manifest.json").write_text(text[:-1] + ', "x": ' + "[" * 100_000 + "]" * 100_000 + "}")
    return "manifest.json"


def _huge(model: Path) -> str:
    text = (model / "manifest.json").read_text().rstrip()
    (model / "manifest.json").write_text(text[:-1] + ', "pad": "' + "x" * (17 << 20) + '"}')
    return "manifest.json"


MODEL_CASES = {
    # a graph swapped for another graph of the folder, its sha256 fixed: named before onnxruntime loads it
    "eval-is-lbfgs-pair": (_swap("eval.onnx", "lbfgs_pair.onnx"), "not the eval graph: inputs g, g_prev, d"),
    "train-cpu-is-eval": (_swap("train_cpu.onnx", "eval.onnx"), "not the train_cpu graph: no inputs style_masks"),
    "train-is-eval": (_swap("train.onnx", "eval.onnx"), "not the train graph"),
    "lbfgs-pair-is-project": (_swap("lbfgs_pair.onnx", "lbfgs_project.onnx"), "not the lbfgs pair graph"),
    "adam-is-lbfgs-direction": (_swap("adam.onnx", "lbfgs_direction.onnx"), "not the adam update graph"),
    "temporal-is-adam": (_swap("temporal.onnx", "adam.onnx"), "not the temporal term graph"),
    "manifest-shape-differs": (_edit(_shape_edit, "train.onnx"), "content_layer_weights has shape \\[4\\], manifest.json says \\[7\\]"),
    # not regular files, loops, escapes
    "symlink-loop-self": (_replace("adam.onnx", lambda p: p.symlink_to(p.name)), "a symlink loop"),
    "symlink-loop-pair": (_loop_pair, "a symlink loop"),
    "listed-fifo": (_replace("adam.onnx", os.mkfifo), "a FIFO, not a regular file"),
    "weights-folder": (_replace("weights.bin", os.mkdir), "a folder, not a regular file"),
    "manifest-fifo": (_replace("manifest.json", os.mkfifo), "a FIFO, not a regular file"),
    "manifest-folder": (_replace("manifest.json", os.mkdir), "a folder, not a regular file"),
    "weights-to-dev-zero": (lambda m: _replace("weights.bin", lambda p: p.symlink_to("/dev/zero"))(m) and "manifest.json",
                            "file 'weights.bin' points outside the model folder"),
    "listed-escapes-by-name": (_edit(lambda m: m["files"].update({"../../etc/hostname": {"sha256": "0" * 64}})),
                               "points outside the model folder"),
    "listed-escapes-by-link": (_listed_escape, "points outside the model folder"),
    "manifest-nested": (_nested, "nested too deeply"),
    "manifest-huge": (_huge, "larger than 16 MiB"),
}


@pytest.fixture(scope="module")
def pristine(tmp_path_factory) -> Path:
    d = tmp_path_factory.mktemp("pristine") / "model"
    shutil.copytree(DEFAULT_MODEL, d)  # real copies: tampering must never reach the repo's model
    return d


# Every case through a run; a sample through `nst-ort check` and `--info` (the same reader, Artifacts).
PAIRS = [(c, "run") for c in MODEL_CASES] + [(c, cmd) for cmd in ("check", "info") for c in
                                            ("eval-is-lbfgs-pair", "listed-fifo", "symlink-loop-pair", "manifest-nested")]


@pytest.mark.parametrize("case,command", PAIRS, ids=[f"{cmd}-{c}" for c, cmd in PAIRS])
def test_a_hostile_model_folder_is_one_line_and_exit_4(case, command, pristine, tmp_path):
    model = tmp_path / "model"
    shutil.copytree(pristine, model, symlinks=True)
    tamper, message = MODEL_CASES[case]
    named = tamper(model)
    args = {"run": [CONTENT, STYLE, "-o", tmp_path / "out.png", "--size", "48", "--iterations", "1", "-q"],
            "check": ["check", "--threads", "1", "--time-size", "32"], "info": ["--info"]}[command]
    r = nst_ort([*args, "--model", model], timeout=120)  # a FIFO opened for reading would hang: the timeout fails it
    assert r.returncode == 4, r.stderr
    lines = r.stderr.strip().splitlines()
    assert len(lines) == 1 and "Traceback" not in r.stderr, r.stderr
    import re

    assert re.search(message, lines[0]) and str(model / named) in lines[0], lines[0]
    assert lines[0].startswith("nst-ort check: error: " if command == "check" else "nst-ort: error: ")
    assert not (tmp_path / "out.png").exists()


def test_a_re_signed_graph_of_the_same_function_is_accepted(pristine, tmp_path):
    """The check compares declared inputs and outputs, so it refuses only what cannot work: train.onnx
    replaced by train_cpu.onnx (the same function, other convolutions) still runs."""
    model = tmp_path / "model"
    shutil.copytree(pristine, model)
    _swap("train.onnx", "train_cpu.onnx")(model)
    from nst_ort.engine.artifacts import Artifacts

    assert Artifacts(model).verified


# -- a stdout whose reader went away ------------------------------------------------------------------
@pytest.mark.parametrize("args", [["--info"], ["--info", "--json"], [CONTENT, STYLE, "-o", "/tmp/nst-ort-unused.png",
                                                                      "--dry-run"],
                                  ["check", "--threads", "1", "--time-size", "32"]], ids=["info", "info-json", "dry-run", "check"])
def test_a_closed_stdout_is_a_quiet_exit_141(args):
    """`nst-ort check | true`: the reader is gone before anything is printed (a pipe whose read end is
    closed); the command stops as a Unix tool under SIGPIPE: no line, no traceback, exit 141."""
    read, write = os.pipe()
    os.close(read)
    try:
        r = nst_ort(args, timeout=300, stdout=write)
    finally:
        os.close(write)
    assert r.returncode == 141, r.stderr
    assert r.stderr == ""


# -- a tiny address-space limit (ulimit -v) -----------------------------------------------------------
def _limit(mib: int):
    def set_limit():
        resource.setrlimit(resource.RLIMIT_AS, (mib << 20, mib << 20))
    return set_limit


@pytest.mark.parametrize("mib", [120, 200, 230, 260, 300, 400, 550])
@pytest.mark.parametrize("memory_check", ["1", "0"])
def test_a_tiny_address_space_is_out_of_memory_in_one_line(mib, memory_check, tmp_path):
    """From a limit below what importing onnxruntime takes (OpenBLAS used to print its own line and
    exit 1, or an import failed as a missing install) to one where a graph does not load or decode:
    always exit 6 and one line saying out of memory, with or without the estimate before the run."""
    r = nst_ort([CONTENT, STYLE, "-o", tmp_path / "out.png", "--size", "64", "--iterations", "1", "-q"],
                preexec_fn=_limit(mib), env={"NST_ORT_MEMORY_CHECK": memory_check,
                                             "NST_ORT_CACHE_DIR": str(tmp_path / "cache")})
    lines = r.stderr.strip().splitlines()
    assert r.returncode == 6 and len(lines) == 1, r.stderr
    assert lines[0].startswith("nst-ort: error: ") and ("out of memory" in lines[0] or "RLIMIT_AS" in lines[0]), lines[0]
    assert "damaged" not in lines[0] and "not installed" not in lines[0]
    assert not (tmp_path / "out.png").exists()


def test_check_under_a_tiny_address_space_is_out_of_memory_not_a_failed_check():
    """A graph that cannot be loaded for lack of memory is not the provider's disagreement (exit 10)."""
    r = nst_ort(["check", "--threads", "1", "--time-size", "32"], preexec_fn=_limit(560), timeout=300)
    lines = r.stderr.strip().splitlines()
    assert r.returncode == 6 and len(lines) == 1, r.stderr
    assert lines[0].startswith("nst-ort check: error: ") and "out of memory" in lines[0]


def test_the_start_up_floor_follows_openblas_threads(monkeypatch):
    from nst_ort.engine import memory

    monkeypatch.setattr(memory, "address_limit", lambda: 230 << 20)
    monkeypatch.setenv("OPENBLAS_NUM_THREADS", "1")
    assert memory.startup_problem() is None  # 176 + 40 MiB
    monkeypatch.setenv("OPENBLAS_NUM_THREADS", "8")
    monkeypatch.setattr(memory.os, "sched_getaffinity", lambda _: set(range(8)))
    assert "ulimit -v" in memory.startup_problem()
    monkeypatch.setattr(memory, "address_limit", lambda: None)
    assert memory.startup_problem() is None


# -- the environment ----------------------------------------------------------------------------------
@pytest.mark.parametrize("value", ["abc", "nan", "-1", "inf"])
def test_a_bad_progress_interval_is_one_warning_and_the_default(value, capsys, monkeypatch):
    """NST_ORT_PROGRESS_SECONDS=abc used to end the run as an internal error."""
    from nst_ort.commands import report

    report._warned.clear()
    monkeypatch.setenv("NST_ORT_PROGRESS_SECONDS", value)
    for _ in range(3):  # a batch makes a Progress per image: one line in all
        assert report.Progress([(64, 48, 2)], stream=sys.stderr).every == report.PROGRESS_SECONDS
    err = capsys.readouterr().err.splitlines()
    assert err == [f"nst-ort: warning: NST_ORT_PROGRESS_SECONDS={value!r} is not a number of seconds >= 0; using 10"]


@pytest.mark.skipif(not os.path.exists("/dev/full"), reason="needs /dev/full (Linux)")
@pytest.mark.parametrize("args", [["--info"], [CONTENT, STYLE, "-o", "/tmp/nst-ort-unused.png", "--dry-run"],
                                  ["check", "--threads", "1", "--time-size", "32"]], ids=["info", "dry-run", "check"])
def test_a_full_stdout_is_one_line_and_exit_8(args):
    """`nst-ort --info > /dev/full`: an internal error or a traceback (check) before; now the output
    exit with one line, whether the write fails mid-run or at the last flush."""
    with open("/dev/full", "w") as full:
        r = nst_ort(args, timeout=300, stdout=full)
    assert r.returncode == 8, r.stderr
    assert r.stderr.strip().splitlines()[-1:] == ["nst-ort: error: stdout: cannot write (No space left on device)"]
    assert len(r.stderr.strip().splitlines()) == 1 and "Traceback" not in r.stderr


@pytest.mark.parametrize("nofile", [6, 7, 8, 10, 16])
def test_few_file_descriptors_is_a_resource_error_never_a_damaged_input(nofile, tmp_path):
    """`ulimit -n` so low that onnxruntime's or a decoder's module cannot be imported: it was a
    traceback (exit 1) or "damaged or unsupported image" (exit 3); now exit 6 naming the limit, or a
    run that works. onnxruntime may print a warning of its own first (its lines are not ours)."""
    def limit():
        resource.setrlimit(resource.RLIMIT_NOFILE, (nofile, nofile))

    r = nst_ort([CONTENT, STYLE, "-o", tmp_path / "out.png", "--size", "48", "--iterations", "1", "-q"],
                preexec_fn=limit, env={"NST_ORT_CACHE_DIR": str(tmp_path / "cache")})
    ours = [line for line in r.stderr.splitlines() if line.startswith("nst-ort")]
    assert "Traceback" not in r.stderr and r.returncode in (0, 6), r.stderr
    if r.returncode == 6:
        assert len(ours) == 1 and f"too many open files (ulimit -n is {nofile})" in ours[0], r.stderr
        assert not (tmp_path / "out.png").exists()
    else:
        assert ours == [] and (tmp_path / "out.png").is_file()
