"""Scale-out over a local Ray (the [ray] extra) through the real CLI: a seeded batch gives the same bytes
as the sequential batch even with a worker killed mid-task (the task is retried), and a video in
shards writes every frame, its first shard the same bytes as the sequential run, the seams marked
and measured in the report. Each test starts its own local Ray with 2 workers."""
from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import time
from pathlib import Path


from conftest import EXAMPLES, cli_command, cli_env, run_cli
from video_clips import frames, needs, temporal_model, write_folder  # noqa: F401

needs("ray")

STYLE = EXAMPLES / "starry_night.jpg"


def _descendants(pid: int) -> list[int]:
    """Processes below `pid` (this test's own child and what it started), from /proc."""
    children: dict[int, list[int]] = {}
    for d in Path("/proc").iterdir():
        if d.name.isdigit():
            try:
                ppid = int((d / "stat").read_text().rsplit(")", 1)[1].split()[1])
            except (OSError, IndexError, ValueError):
                continue
            children.setdefault(ppid, []).append(int(d.name))
    out, todo = [], [pid]
    while todo:
        for c in children.get(todo.pop(), []):
            out.append(c)
            todo.append(c)
    return out


def _cmdline(pid: int) -> str:
    try:
        return Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
    except OSError:
        return ""


def _kill_one_task(proc, task: str, timeout: float = 600) -> int:
    """SIGKILL the first worker process (below proc) seen running `task` for a second; its pid."""
    end = time.time() + timeout
    while time.time() < end and proc.poll() is None:
        busy = [p for p in _descendants(proc.pid) if _cmdline(p).startswith(f"ray::{task}")]
        if busy:
            time.sleep(1.0)
            if _cmdline(busy[0]).startswith(f"ray::{task}"):  # still in the task
                os.kill(busy[0], signal.SIGKILL)
                return busy[0]
        time.sleep(0.1)
    raise AssertionError(f"no worker ran {task}: {proc.poll()}")


def test_batch_through_ray_equals_sequential_with_a_worker_killed(tmp_path):
    photos = tmp_path / "photos"
    photos.mkdir()
    for name in ("chelsea_cat.jpg", "great_wave.jpg", "coffee.jpg"):
        shutil.copy(EXAMPLES / name, photos / name)
    flags = ["--size", "64", "--iterations", "15", "--threads", "1", "--init", "noise", "--seed", "3"]
    seq, par = tmp_path / "seq", tmp_path / "par"
    seq.mkdir()
    par.mkdir()
    done = run_cli([photos, STYLE, "-o", seq, *flags, "-q"])
    assert done.returncode == 0, done.stderr
    proc = subprocess.Popen(cli_command([photos, STYLE, "-o", par, *flags, "--workers", "2"]), env=cli_env(),
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    killed = _kill_one_task(proc, "stylize_image")
    _, err = proc.communicate(timeout=900)
    assert proc.returncode == 0, err
    assert "3/3 images done on 2 Ray worker(s)" in err and "Traceback" not in err
    assert killed not in _descendants(proc.pid)
    names = sorted(p.name for p in seq.iterdir())
    assert names == ["chelsea_cat.png", "coffee.png", "great_wave.png"] == sorted(p.name for p in par.iterdir())
    for n in names:  # the retried image included
        assert (par / n).read_bytes() == (seq / n).read_bytes(), n


def test_video_shards_through_ray(tmp_path, temporal_model):
    """5 frames in shards of 3 with 1 overlap frame on 2 workers (temporal mode): all frames written in
    order, shard 0 byte-identical to the sequential run, frame 4 marked as a seam and its warping error
    measured against frame 3 as written by the other shard; progress counts frames across workers."""
    seq_in = write_folder(tmp_path / "seq", frames((64, 48), 5))
    flags = ["--size", "64", "--iterations", "6", "--threads", "1", "--model", temporal_model]
    straight = tmp_path / "straight"
    done = run_cli(["video", seq_in, STYLE, "-o", straight, "--frames", "3", *flags, "-q"])
    assert done.returncode == 0, done.stderr
    out, report = tmp_path / "sharded", tmp_path / "sharded.json"
    done = run_cli(["video", seq_in, STYLE, "-o", out, *flags, "--workers", "2", "--shard-frames", "3",
                    "--overlap", "1", "--report", report])
    assert done.returncode == 0, done.stderr
    assert "5/5 frames done on 2 Ray worker(s) (2 shards)" in done.stderr
    assert sorted(p.name for p in out.glob("0*.png")) == [f"{i:06d}.png" for i in range(1, 6)]
    for i in range(1, 4):
        assert (out / f"{i:06d}.png").read_bytes() == (straight / f"{i:06d}.png").read_bytes(), i
    r = json.loads(report.read_text())
    assert [(f["frame"], f["shard"], f["seam"]) for f in r["frames"]] == [
        (1, 0, False), (2, 0, False), (3, 0, False), (4, 1, True), (5, 1, False)]
    assert r["settings"]["shards"] == {"shard_frames": 3, "overlap": 1}
    assert r["summary"]["warping_error_seams"] == r["frames"][3]["warping_error"] > 0
    assert r["summary"]["warping_error_inside_shards"] > 0


def test_ray_batch_refuses_sequential_flags_and_dry_runs_per_image(tmp_path):
    """--report/--checkpoint/--resume/--save-every name one run's files: refused with --workers (exit 2,
    naming the flag, nothing written); --dry-run checks each image as the sequential batch does."""
    photos, out = tmp_path / "photos", tmp_path / "out"
    photos.mkdir()
    out.mkdir()
    shutil.copyfile(EXAMPLES / "chelsea_cat.jpg", photos / "cat.jpg")
    base = [photos, EXAMPLES / "starry_night.jpg", "-o", out, "--size", "64", "--iterations", "2", "--workers", "2"]
    for flag, value in (("--report", tmp_path / "r"), ("--checkpoint", tmp_path / "c"), ("--save-every", "1")):
        r = run_cli([*base, flag, value])
        assert r.returncode == 2 and r.stderr.startswith(f"nst-ort: error: {flag}: not with --workers"), r.stderr
    r = run_cli([*base, "--dry-run"])
    assert r.returncode == 0, r.stderr
    assert "cat.jpg" in r.stdout + r.stderr
    assert sorted(os.listdir(out)) == [] and sorted(os.listdir(tmp_path)) == ["out", "photos"]
