"""A checkpoint and a report written by an earlier version of the runtime (before the modules moved
into subpackages, issue 22) still work: the checkpoint resumes, the report's records are today's.

tests/data/legacy_checkpoint.npz and legacy_report.json were written by the flat-folder runtime with:
    nst-ort examples/tuebingen_neckarfront.jpg examples/starry_night.jpg -o /tmp/lay/out.png \
        --size 32 --iterations 3 --checkpoint /tmp/lay/legacy.npz --report /tmp/lay/legacy_report.json
(run from the repository root: the checkpoint's fingerprint holds the image paths as typed).
"""
from __future__ import annotations

import json
import shutil

import numpy as np
import pytest

from conftest import ROOT, run_cli
from nst_ort import IterationRecord

DATA = ROOT / "tests" / "data"
IMAGES = ["examples/tuebingen_neckarfront.jpg", "examples/starry_night.jpg"]
FAST = ["--size", "32"]


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    d = tmp_path_factory.mktemp("legacy")
    shutil.copy(DATA / "legacy_checkpoint.npz", d / "ck.npz")  # a resumed run may rewrite it
    resumed = run_cli([*IMAGES, "-o", d / "resumed.png", *FAST, "--iterations", "5", "--resume", d / "ck.npz",
                       "--report", d / "resumed.json"])
    straight = run_cli([*IMAGES, "-o", d / "straight.png", *FAST, "--iterations", "5", "--report", d / "straight.json"])
    return d, resumed, straight


def test_legacy_checkpoint_resumes_where_it_stopped(runs):
    d, resumed, straight = runs
    assert resumed.returncode == 0, resumed.stderr
    assert straight.returncode == 0, straight.stderr
    records = json.loads((d / "resumed.json").read_text())["records"]
    assert [r["step"] for r in records] == [4, 5]
    # the same iterates as a run that never stopped: the checkpoint's image and optimizer state were used
    whole = {r["step"]: r["loss"] for r in json.loads((d / "straight.json").read_text())["records"]}
    np.testing.assert_allclose([r["loss"] for r in records], [whole[4], whole[5]], rtol=1e-4)


def test_legacy_report_has_todays_fields(runs):
    d, resumed, _ = runs
    assert resumed.returncode == 0, resumed.stderr
    old = json.loads((DATA / "legacy_report.json").read_text())
    new = json.loads((d / "resumed.json").read_text())
    assert old["status"] == "done" and len(old["records"]) == 3
    assert old.keys() == new.keys()
    assert old["settings"].keys() == new["settings"].keys()
    assert old["records"][0].keys() == new["records"][0].keys()
    assert old["summary"].keys() == new["summary"].keys()
    assert old["runtime"].keys() == new["runtime"].keys()
    # today's record type reads the old records back
    assert [IterationRecord(**r).as_dict() for r in old["records"]] == old["records"]
