"""The other commands the README and docs show (tests/test_docs_commands.py runs the `nst-ort` ones):
every `python SCRIPT.py ...`, `python -m MODULE ...` and `nst-ort-export ...` answers --help, and
every flag the docs give it is one its --help lists. Long runs (a 17-minute benchmark, an export)
are not repeated here; `nst-ort-export --list` runs as written."""
from __future__ import annotations

import re
import shlex
import subprocess
import sys

import pytest

from conftest import ROOT, cli_env
from doc_commands import DOCS, _code_spans

_SCRIPT = re.compile(r"^(python|nst-ort-export)\s+(?!-m venv)(.+)$")


def _commands() -> list[tuple[str, list[str]]]:
    found = []
    for doc in DOCS:
        text = doc.read_text()
        for n, code in _code_spans(text):
            code = code.split(" #")[0].strip().rstrip("\\").strip()
            m = _SCRIPT.match(code)
            if m:
                found.append((f"{doc.relative_to(ROOT)}:{n}", [m.group(1), *shlex.split(m.group(2))]))
    return found


COMMANDS = _commands()


def test_the_docs_show_these_commands():
    shown = {" ".join(argv[:2]) if argv[0] == "nst-ort-export" else " ".join(argv[:3] if argv[1] == "-m" else argv[:2])
             for _, argv in COMMANDS}
    assert {"python benchmarks/cli_bench.py", "python -m nst_ort.media.video_synthetic", "nst-ort-export --list",
            "python examples/video_demo.py"} <= shown, shown


def _argv(argv: list[str]) -> list[str]:
    if argv[0] == "nst-ort-export":
        return [sys.executable, "-c", "import sys; from nst_ort_export.cli import main; sys.exit(main())", *argv[1:]]
    return [sys.executable, *argv[1:]]


@pytest.mark.parametrize("where,argv", COMMANDS, ids=[w for w, _ in COMMANDS])
def test_doc_script_takes_its_flags(where, argv):
    """Every flag the docs give the script is one its --help lists, and the script answers --help."""
    cmd = _argv(argv)
    if argv[1:] == ["--list"]:
        done = subprocess.run(cmd, capture_output=True, text=True, cwd=ROOT, env=cli_env(), timeout=300)
        assert done.returncode == 0 and "vgg16" in done.stdout, f"{where}: {done.stderr[-2000:]}"
        return
    head = cmd[:3] if argv[1] == "-m" else cmd[:2] if argv[0] == "python" else cmd[:3]
    done = subprocess.run([*head, "--help"], capture_output=True, text=True, cwd=ROOT, env=cli_env(), timeout=300)
    assert done.returncode == 0, f"{where}: --help exited {done.returncode}: {done.stderr[-2000:]}"
    flags = {a.split("=")[0] for a in argv if a.startswith("--")}
    missing = {f for f in flags if not re.search(rf"(?<![\w-]){re.escape(f)}(?![\w-])", done.stdout)}
    assert not missing, f"{where}: {sorted(missing)} not in its --help"


@pytest.mark.parametrize("module", ["nst_ort_export.temporal", "nst_ort_export.mixed_precision"])
def test_in_place_tools_refuse_a_bad_folder_in_one_line(module, tmp_path):
    (tmp_path / "manifest.json").write_text("{}")
    for folder, why in ((tmp_path / "missing", "not a folder"), (tmp_path, "manifest.json is not an nst-ort artifact manifest")):
        done = subprocess.run([sys.executable, "-m", module, str(folder)], capture_output=True, text=True, cwd=ROOT,
                              env=cli_env(), timeout=300)
        assert done.returncode == 2, done.stderr
        assert done.stderr.strip().splitlines() == [f"{module}: error: {folder}: {why}"]
    assert (tmp_path / "manifest.json").read_text() == "{}"
