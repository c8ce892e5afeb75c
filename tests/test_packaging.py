"""Packaging: which ONNX Runtime each extra installs, what the wheel holds, and what `nst-ort` says
when no ONNX Runtime imports.

onnxruntime, onnxruntime-gpu and onnxruntime-openvino all install the module `onnxruntime`; two of
them in one environment overwrite each other's files. So the base dependencies hold none, and each
runtime extra exactly one. The resolution is checked offline: pip resolves this project against a
folder of stand-in wheels (metadata only) with no index.
"""
from __future__ import annotations

import json
import os
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

from conftest import ROOT

RUNTIMES = {"onnxruntime", "onnxruntime-gpu", "onnxruntime-openvino"}


def _pip_env() -> dict:
    # No configured index, find-links or constraints: only what the test names.
    env = {k: v for k, v in os.environ.items() if not k.startswith("PIP_")}
    return {**env, "PIP_CONFIG_FILE": os.devnull, "PIP_DISABLE_PIP_VERSION_CHECK": "1"}


def _stub_wheel(folder: Path, name: str, version: str, extras: tuple[str, ...] = ()) -> None:
    dist = name.replace("-", "_")
    meta = f"Metadata-Version: 2.1\nName: {name}\nVersion: {version}\n" + "".join(f"Provides-Extra: {e}\n" for e in extras)
    with zipfile.ZipFile(folder / f"{dist}-{version}-py3-none-any.whl", "w") as z:
        z.writestr(f"{dist}-{version}.dist-info/METADATA", meta)
        z.writestr(f"{dist}-{version}.dist-info/WHEEL",
                   "Wheel-Version: 1.0\nGenerator: test\nRoot-Is-Purelib: true\nTag: py3-none-any\n")
        z.writestr(f"{dist}-{version}.dist-info/RECORD", "")


def _setuptools_ok() -> None:
    import importlib.metadata

    have = importlib.metadata.version("setuptools")
    release = tuple(int(p) for p in have.split(".")[:3] if p.isdigit())
    assert release >= (77, 0, 3), f"setuptools {have}: install the [test] extra (setuptools>=77.0.3)"


@pytest.fixture(scope="module")
def source(tmp_path_factory) -> Path:
    """A copy of the project to build from: pip builds in the tree (build/, *.egg-info)."""
    import shutil

    dest = tmp_path_factory.mktemp("src") / "nst-ort"
    shutil.copytree(ROOT, dest, ignore=shutil.ignore_patterns(
        ".git", ".venv*", "build", "*.egg-info", "__pycache__", ".pytest_cache", "node_modules", "out",
        "ort*.wasm", "ort*.mjs"))  # onnxruntime-web's files: git-ignored (`npm run vendor`), as in a clean clone
    return dest


@pytest.fixture(scope="module")
def stubs(tmp_path_factory) -> Path:
    folder = tmp_path_factory.mktemp("wheels")
    for name in ("numpy", "pillow", "tqdm"):
        _stub_wheel(folder, name, "99.0")
    _stub_wheel(folder, "onnxruntime", "1.30.0")
    _stub_wheel(folder, "onnxruntime-gpu", "1.30.0", ("cuda", "cudnn"))
    _stub_wheel(folder, "onnxruntime-openvino", "1.24.1")
    return folder


def _resolve(requirement: str, source: Path, stubs: Path, tmp_path: Path) -> set[str]:
    report = tmp_path / "report.json"
    r = subprocess.run([sys.executable, "-m", "pip", "install", "--dry-run", "--quiet", "--report", str(report),
                        "--ignore-installed", "--no-index", "--find-links", str(stubs), "--no-build-isolation",
                        requirement], capture_output=True, text=True, cwd=source, env=_pip_env(), timeout=300)
    assert r.returncode == 0, r.stderr
    return {item["metadata"]["name"] for item in json.loads(report.read_text())["install"]}


def test_each_runtime_extra_installs_exactly_one_onnxruntime(source, stubs, tmp_path):
    _setuptools_ok()
    expected = {".": set(), ".[cpu]": {"onnxruntime"}, ".[gpu]": {"onnxruntime-gpu"},
                ".[openvino]": {"onnxruntime-openvino"}}
    for requirement, runtime in expected.items():
        names = _resolve(requirement, source, stubs, tmp_path)
        assert names & RUNTIMES == runtime, (requirement, sorted(names))
        assert {"nst-ort", "numpy", "pillow"} <= names, (requirement, sorted(names))


def test_wheel_holds_the_model_and_both_packages_without_warnings(source, tmp_path):
    """No setuptools warning while building (it warned that nst_ort.models.vgg16 was left out)."""
    _setuptools_ok()
    r = subprocess.run([sys.executable, "-m", "pip", "wheel", "-v", "--no-deps", "--no-build-isolation", "--no-index",
                        "-w", str(tmp_path), "."], capture_output=True, text=True, cwd=source, env=_pip_env(), timeout=600)
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-3000:]
    log = r.stdout + r.stderr
    for warning in ("absent from the `packages` configuration", "Package would be ignored", "Warning:",
                    "SetuptoolsDeprecationWarning"):
        assert warning not in log, log[log.find(warning) - 1500: log.find(warning) + 500]
    (wheel,) = tmp_path.glob("nst_ort-*.whl")
    with zipfile.ZipFile(wheel) as z:
        names = set(z.namelist())
        meta = z.read(next(n for n in names if n.endswith(".dist-info/METADATA"))).decode()
        entry_points = z.read(next(n for n in names if n.endswith(".dist-info/entry_points.txt"))).decode()
    model = json.loads((ROOT / "models" / "vgg16" / "manifest.json").read_text())
    for name in [*model["files"], "manifest.json"]:
        assert f"nst_ort/models/vgg16/{name}" in names, name
    assert "nst_ort_export/cli.py" in names and "nst_ort/commands/entry.py" in names
    # the browser app and onnxruntime-web's file list; not the 41 MB it lists (nst-ort web fetches them)
    for name in ("index.html", "app.css", "js/app.js", "js/worker.js", "vendor/onnxruntime-web/SOURCES.json"):
        assert f"nst_ort/webapp/{name}" in names, name
    assert not any(n.endswith(".wasm") for n in names)
    assert not any(n.startswith("export/") for n in names), "a top-level package `export` is installed"
    assert "License-Expression: MIT" in meta
    requires = [line for line in meta.splitlines() if line.startswith("Requires-Dist:")]
    assert not any("onnxruntime" in line and "extra ==" not in line for line in requires), requires
    assert "nst-ort = nst_ort.commands.entry:main" in entry_points and "nst-ort-export = nst_ort_export.cli:main" in entry_points


def _shadowed_onnxruntime(folder: Path, init: str) -> dict:
    """An environment whose `onnxruntime` is a stand-in package with this __init__.py."""
    pkg = folder / "onnxruntime"
    pkg.mkdir(parents=True)
    (pkg / "__init__.py").write_text(init)
    return {**os.environ, "PYTHONPATH": os.pathsep.join([str(folder), str(ROOT)])}


@pytest.mark.parametrize("case", ["missing", "incomplete"])
def test_nst_ort_without_onnxruntime_is_one_line_exit_5(case, tmp_path, examples):
    # incomplete: a module without InferenceSession, as uninstalling one of two distributions that
    # share the module leaves it.
    init = "raise ModuleNotFoundError(\"No module named 'onnxruntime'\", name='onnxruntime')" if case == "missing" else ""
    env = _shadowed_onnxruntime(tmp_path / "site", init)
    # Were the check to miss, this would be a short run, not the default 512 px one.
    args = [examples / "chelsea_cat.jpg", examples / "great_wave.jpg", "-o", tmp_path / "out.png", "--size", "32",
            "--iterations", "1"]
    for argv in ([sys.executable, "-m", "nst_ort", *args], [sys.executable, "-m", "nst_ort", "--help"]):
        r = subprocess.run([str(a) for a in argv], capture_output=True, text=True, cwd=ROOT, env=env, timeout=120)
        assert r.returncode == 5, r.stderr
        assert len(r.stderr.splitlines()) == 1 and "Traceback" not in r.stderr, r.stderr
        assert "nst-ort[cpu]" in r.stderr and "[gpu]" in r.stderr and r.stdout == ""
    assert not (tmp_path / "out.png").exists()
    if case == "incomplete":
        return
    # The library says the same, as an ImportError.
    r = subprocess.run([sys.executable, "-c", "from nst_ort import Stylizer"], capture_output=True, text=True,
                       cwd=ROOT, env=env, timeout=120)
    assert r.returncode == 1 and "ImportError: nst-ort needs an ONNX Runtime: pip install 'nst-ort[cpu]'" in r.stderr
