"""The stumbles of a first hour (issue 21), through the real CLI: style weights and masks that do not
match the styles name their flag; --help lists the subcommands; a typo of a subcommand is answered
with the near one (but a file of that name is still a content image); Ctrl-C says where the
checkpoint went and prints the command that resumes it, which works as printed; a batch makes its
missing --report and --checkpoint folders; a Ray batch prints nothing of Ray's own."""
from __future__ import annotations

import importlib.util
import json
import shlex
import shutil
import signal
import subprocess
import time
from pathlib import Path

import pytest
from PIL import Image

from conftest import EXAMPLES, ROOT, cli_command, cli_env, run_cli

FAST = ["--size", "32", "--iterations", "1", "--threads", "1", "-q"]
STYLES = [EXAMPLES / "starry_night.jpg", EXAMPLES / "great_wave.jpg"]


def _one_line(r) -> str:
    lines = r.stderr.strip().splitlines()
    assert len(lines) == 1 and "Traceback" not in r.stderr, r.stderr
    return lines[0]


def test_style_weights_and_masks_name_the_flag_at_fault(tmp_path):
    mask = tmp_path / "mask.png"
    Image.new("L", (32, 32), 255).save(mask)
    base = [EXAMPLES / "chelsea_cat.jpg", *STYLES, "-o", tmp_path / "o.png", *FAST]
    r = run_cli([*base, "--style-weights", "0.7"])
    assert r.returncode == 2
    line = _one_line(r)
    assert line.startswith("nst-ort: error: --style-weights: 1 weight(s) for 2 style image(s)") and "mask" not in line
    r = run_cli([*base, "--style-masks", str(mask)])
    assert r.returncode == 2
    line = _one_line(r)
    assert line.startswith("nst-ort: error: --style-masks: 1 mask(s) for 2 style image(s)") and "weight" not in line
    assert not (tmp_path / "o.png").exists()


def test_help_lists_every_subcommand():
    from nst_ort.commands.cli import SUBCOMMANDS

    r = run_cli(["--help"])
    assert r.returncode == 0, r.stderr
    text = " ".join(r.stdout.split())  # argparse wraps the epilog
    assert {"check", "video", "web"} <= set(SUBCOMMANDS)
    for name in SUBCOMMANDS:
        assert f"nst-ort {name}:" in text, (name, r.stdout)


@pytest.mark.parametrize("typed,meant", [("chek", "check"), ("vidoe", "video"), ("wbe", "web")])
def test_a_near_subcommand_is_suggested(typed, meant, tmp_path):
    r = run_cli([typed, "x.mp4", "-o", "y"], cwd=tmp_path)
    assert r.returncode == 2
    line = _one_line(r)
    assert line.startswith(f"nst-ort: error: {typed}: no such subcommand or file; did you mean `nst-ort {meant}`?"), line


def test_a_file_named_like_a_subcommand_is_a_content_image(tmp_path):
    shutil.copyfile(EXAMPLES / "chelsea_cat.jpg", tmp_path / "chek")
    r = run_cli(["chek", STYLES[0], "-o", "out.png", *FAST], cwd=tmp_path)
    assert r.returncode == 0, r.stderr
    assert Image.open(tmp_path / "out.png").size == (32, 21)


def test_ctrl_c_names_the_checkpoint_and_the_command_that_resumes(tmp_path):
    """Relative paths, run in the folder: the printed command is run there as printed (shlex) and
    finishes the run from the checkpoint."""
    shutil.copyfile(EXAMPLES / "chelsea_cat.jpg", tmp_path / "content.jpg")
    shutil.copyfile(STYLES[0], tmp_path / "style.jpg")
    args = ["content.jpg", "style.jpg", "-o", "out.png", "--size", "32", "--iterations", "100", "--threads", "1",
            "-q", "--save-every", "10", "--checkpoint", "run.npz", "--report", "r.json"]
    proc = subprocess.Popen(cli_command(args), cwd=tmp_path, env=cli_env(), stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True,
                            preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))
    try:
        t0 = time.monotonic()
        while not (tmp_path / "run.npz").exists():
            assert proc.poll() is None, proc.communicate()[1]
            assert time.monotonic() - t0 < 120, "no checkpoint written"
            time.sleep(0.05)
        proc.send_signal(signal.SIGINT)
        _, err = proc.communicate(timeout=60)
    finally:
        proc.kill()
    assert proc.returncode == 130, err
    line, = err.strip().splitlines()
    assert "wrote the current image to out.png and the checkpoint to run.npz; resume with: nst-ort " in line, line
    command = shlex.split(line.split("resume with: ", 1)[1])
    assert command[0] == "nst-ort" and command[-2:] == ["--resume", "run.npz"]
    stopped = json.loads((tmp_path / "r.json").read_text())["records"][-1]["step"]
    assert 0 < stopped < 100
    r = subprocess.run(cli_command(command[1:]), cwd=tmp_path, env=cli_env(), capture_output=True, text=True,
                       timeout=900)
    assert r.returncode == 0, r.stderr
    records = json.loads((tmp_path / "r.json").read_text())["records"]
    assert records[0]["step"] == stopped + 1 and records[-1]["step"] == 100  # went on, not started over


def test_ctrl_c_without_a_checkpoint_says_a_rerun_starts_over(tmp_path):
    from nst_ort.commands.cli import _interrupted_note

    class Args:
        checkpoint = None
    assert "no --checkpoint given" in _interrupted_note(True, Path("o.png"), Args())


def test_the_resume_command_replaces_an_earlier_resume():
    from nst_ort.commands.cli import resume_command

    assert resume_command(["a b.jpg", "s.jpg", "-o", "o.png", "--resume", "old.npz", "--checkpoint", "new.npz"],
                          "new.npz") == "nst-ort 'a b.jpg' s.jpg -o o.png --checkpoint new.npz --resume new.npz"
    assert resume_command(["c.jpg", "s.jpg", "--resume=old.npz"], "k.npz") == "nst-ort c.jpg s.jpg --resume k.npz"


def _photos(d: Path) -> Path:
    photos = d / "photos"
    photos.mkdir()
    shutil.copyfile(EXAMPLES / "chelsea_cat.jpg", photos / "cat.jpg")
    (d / "out").mkdir()
    return photos


def test_a_batch_makes_its_report_and_checkpoint_folders(tmp_path):
    photos = _photos(tmp_path)
    base = [photos, STYLES[0], "-o", tmp_path / "out", *FAST]
    reports, checkpoints = tmp_path / "runs" / "reports", tmp_path / "checkpoints"
    r = run_cli([*base, "--report", reports, "--checkpoint", checkpoints, "--dry-run"])
    assert r.returncode == 0, r.stderr
    assert "the run will create it" in r.stderr and not reports.exists() and not checkpoints.exists()
    r = run_cli([*base, "--report", reports, "--checkpoint", checkpoints])
    assert r.returncode == 0, r.stderr
    assert json.loads((reports / "cat.json").read_text())["status"] == "done"
    assert (checkpoints / "cat.npz").is_file() and (tmp_path / "out" / "cat.png").is_file()
    # a name with an extension is taken for a mistyped file name, not made a folder
    r = run_cli([*base, "--report", tmp_path / "r.json"])
    assert r.returncode == 2 and "--report: in a batch it names a folder" in _one_line(r)
    assert not (tmp_path / "r.json").exists()


@pytest.mark.skipif(importlib.util.find_spec("ray") is None, reason="needs the [ray] extra")
def test_a_ray_batch_prints_only_its_own_lines(tmp_path):
    """Ray's start-up notices (token authentication, dashboard, usage stats) stay out of stderr; the
    lines left are nst-ort's."""
    photos = _photos(tmp_path)
    r = run_cli([photos, STYLES[0], "-o", tmp_path / "out", "--size", "32", "--iterations", "1", "--workers", "1"],
                timeout=600)
    assert r.returncode == 0, r.stderr
    lines = r.stderr.strip().splitlines()
    assert lines and all(line.startswith(("wrote ", "nst-ort: ")) for line in lines), r.stderr
    assert "1/1 images done on 1 Ray worker(s)" in r.stderr


def test_docs_name_the_default_video_mode_the_code_has():
    import re

    from nst_ort.commands.video import build_parser

    default = build_parser().get_default("mode")
    text = (ROOT / "docs" / "video.md").read_text()
    said = set(re.findall(r"`--mode ([\w-]+)` \(the default\)", text))
    assert said == {default}, said
    assert "will be chosen by measuring" not in text
