"""Scale-out over a local Ray (the [ray] extra) through the real CLI: a seeded batch gives the same bytes
as the sequential batch even with a worker killed mid-task (the task is retried); workers killed more
often than the retries, or the raylet killed, end in exit 9 naming what did not finish; nothing of
Ray is left running after a batch or after kill -9 of nst-ort; bad flags and clashing paths are
refused before Ray starts. A video in shards writes every frame, its first shard the same bytes as
the sequential run, the seams marked and measured in the report, no worse than 2x the clip's median.
Each test that runs Ray starts its own local Ray (its own temporary folder, never a running one) with
2 workers, at 64 px and a few iterations."""
from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import time
from pathlib import Path

import pytest

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


def _alive(pid: int) -> bool:
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] != "Z"
    except OSError:
        return False


def _wait_gone(pids, seconds: float) -> list[int]:
    """The pids still alive after up to `seconds`."""
    end = time.time() + seconds
    while time.time() < end and any(_alive(p) for p in pids):
        time.sleep(0.2)
    return [p for p in pids if _alive(p)]


def _ray_folders(pids) -> set[str]:
    """The local Ray session folders (nst-ort's own, /tmp/nst-ort-ray-*) that these processes name."""
    import re

    return {m for p in pids for m in re.findall(r"/tmp/nst-ort-ray-[A-Za-z0-9_]+", _cmdline(p))}


def _wait_task(proc, task: str, timeout: float = 300) -> None:
    """Until a worker process below proc runs `task`."""
    end = time.time() + timeout
    while time.time() < end and proc.poll() is None:
        if any(_cmdline(p).startswith(f"ray::{task}") for p in _descendants(proc.pid)):
            return
        time.sleep(0.1)
    raise AssertionError(f"no worker ran {task}: {proc.poll()}")


def _kill_one_task(proc, task: str, timeout: float = 600) -> int:
    """SIGKILL the first worker process (below proc) seen running `task` twice 0.2 s apart; its pid.
    (A wait of a second missed every task of a quiet AVX-512 machine: 15 iterations at 64 px took less.)"""
    end = time.time() + timeout
    while time.time() < end and proc.poll() is None:
        busy = [p for p in _descendants(proc.pid) if _cmdline(p).startswith(f"ray::{task}")]
        if busy:
            time.sleep(0.2)
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
    # 60 iterations: each image's task lasts long enough (a few seconds) to be caught and killed mid-task
    flags = ["--size", "64", "--iterations", "60", "--threads", "1", "--init", "noise", "--seed", "3"]
    seq, par = tmp_path / "seq", tmp_path / "par"
    seq.mkdir()
    par.mkdir()
    done = run_cli([photos, STYLE, "-o", seq, *flags, "-q"])
    assert done.returncode == 0, done.stderr
    proc = subprocess.Popen(cli_command([photos, STYLE, "-o", par, *flags, "--workers", "2"]), env=cli_env(),
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    killed = _kill_one_task(proc, "stylize_image")
    ray_processes = _descendants(proc.pid)
    folders = _ray_folders(ray_processes)
    _, err = proc.communicate(timeout=900)
    assert proc.returncode == 0, err
    assert "3/3 images done on 2 Ray worker(s)" in err and "Traceback" not in err
    assert "Token authentication" not in err  # Ray's own banner is not nst-ort's to print
    assert killed not in _descendants(proc.pid)
    assert len(ray_processes) > 4 and _wait_gone(ray_processes, 10) == []  # nothing of Ray left running
    assert len(folders) == 1 and not any(Path(f).exists() for f in folders)
    names = sorted(p.name for p in seq.iterdir())
    assert names == ["chelsea_cat.png", "coffee.png", "great_wave.png"] == sorted(p.name for p in par.iterdir())
    for n in names:  # the retried image included
        assert (par / n).read_bytes() == (seq / n).read_bytes(), n


@pytest.mark.parametrize("tile", [None, 16], ids=["whole", "tiled"])
def test_video_shards_through_ray(tmp_path, temporal_model, tile):
    """5 frames in shards of 3 with 1 overlap frame on 2 workers (temporal mode): all frames written in
    order, shard 0 byte-identical to the sequential run; frame 4 is stylized again by the seam pass
    (continuing frame 3, blended halfway into shard 1's own frame 4) and frame 5 measured against it:
    both marked as seam frames; progress counts frames across workers. With `--tile 16` (12 tiles a
    frame, crops clipped at every border) each worker stylizes its frames, the seam pass's included,
    in tiles as the sequential tiled run does, and the report says so."""
    seq_in = write_folder(tmp_path / "seq", frames((64, 48), 5))
    flags = ["--size", "64", "--iterations", "6", "--threads", "1", "--model", temporal_model,
             *(["--tile", str(tile)] if tile else [])]
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
        (1, 0, False), (2, 0, False), (3, 0, False), (4, 1, True), (5, 1, True)]
    f4 = r["frames"][3]
    assert f4["seam_alpha"] == 0.5 and f4["seam_term"] > 0 and f4["init"] == "warped previous"
    assert r["settings"]["shards"] == {"shard_frames": 3, "overlap": 1, "seams": 2}
    seams = [f["warping_error"] for f in r["frames"][3:]]
    assert r["summary"]["warping_error_seams"] == sum(seams) / 2 and min(seams) > 0
    assert r["summary"]["warping_error_inside_shards"] > 0
    assert [f["tile"] for f in r["frames"]] == [tile] * 5 and r["settings"].get("tile") == tile


def test_video_seam_no_worse_than_twice_the_median(tmp_path, temporal_model):
    """Issue 21: the frames where two shards meet jumped (warping error 9.4e-3 against 1.1e-3 for the
    rest of a 12-frame clip). The synthetic clip (known motion), 8 frames in shards of 4 on 2 workers
    with the default overlap (2): every seam frame's warping error (5 and 6 from the seam pass, 7
    after it; true flow, as benchmarks/video_scaleout.py measures it) is within 2x the clip's median.
    Without the seam pass (--overlap 0) this setting gave 10x (the report's warping error, estimated
    flow), and the benchmark 4.7x at 20 iterations (docs/video.md): not repeated here, to keep the
    test near a minute."""
    from nst_ort.media import flow as F
    from nst_ort.media.images import load_image
    from nst_ort.media.video_synthetic import camera_clip

    clip = camera_clip(load_image(EXAMPLES / "tuebingen_neckarfront.jpg"), (64, 48), frames=8, pan=(2.0, 1.0),
                       zoom=1.01, obj=load_image(EXAMPLES / "chelsea_cat.jpg"), obj_size=12)
    seq_in = write_folder(tmp_path / "clip", clip.frames)
    out = tmp_path / "sharded"
    done = run_cli(["video", seq_in, STYLE, "-o", out, "--size", "64", "--iterations", "10", "--first-iterations",
                    "20", "--threads", "1", "--model", temporal_model, "--workers", "2", "--shard-frames", "4", "-q"])
    assert done.returncode == 0, done.stderr
    outs = [load_image(out / f"{i:06d}.png") for i in range(1, 9)]
    werr = {t + 1: F.warping_error(outs[t], outs[t - 1], clip.backward[t], clip.visible[t]) for t in range(1, 8)}
    median = sorted(werr.values())[3]
    worst = max(werr[t] for t in (5, 6, 7))
    assert worst <= 2 * median, (worst / median, werr)


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


def _photos(tmp_path, names=("chelsea_cat.jpg", "great_wave.jpg", "coffee.jpg")) -> Path:
    photos = tmp_path / "photos"
    photos.mkdir()
    for name in names:
        shutil.copy(EXAMPLES / name, photos / name)
    return photos


def test_ray_batch_names_what_did_not_finish(tmp_path):
    """A worker killed more often than the retries (NST_ORT_RAY_RETRIES=0: once) and an image that is
    damaged past its header: both named by the user's path (not the worker's copy), the third image
    written, exit 9. Then the raylet killed mid-batch: Ray ends its driver process, nst-ort does not
    end with it: exit 9 naming the images not done."""
    photos = _photos(tmp_path)
    data = (EXAMPLES / "great_wave.jpg").read_bytes()
    (photos / "great_wave.jpg").write_bytes(data[:len(data) // 3])  # its header is whole: fails on the worker
    out = tmp_path / "out"
    out.mkdir()
    flags = ["--size", "64", "--iterations", "60", "--threads", "1", "--workers", "2"]
    env = cli_env({"NST_ORT_RAY_RETRIES": "0"})
    proc = subprocess.Popen(cli_command([photos, STYLE, "-o", out, *flags]), env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    _kill_one_task(proc, "stylize_image", timeout=300)
    _, err = proc.communicate(timeout=600)
    assert proc.returncode == 9, err
    lines = [line for line in err.splitlines() if line.startswith("nst-ort: error:")]
    assert len(lines) == 2 and all(line.endswith("(skipped)") for line in lines), err
    assert any(f"{photos / 'great_wave.jpg'}: " in line for line in lines), err
    assert any("its Ray worker died 1 time(s)" in line and str(photos) in line for line in lines), err
    assert "nst-ort-inputs" not in err and "Traceback" not in err
    assert "2 of 3 image(s) failed" in err and len(list(out.iterdir())) == 1

    out2 = tmp_path / "out2"
    out2.mkdir()
    proc = subprocess.Popen(cli_command([photos, STYLE, "-o", out2, *flags]), env=cli_env(),
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    _wait_task(proc, "stylize_image")
    raylet = [p for p in _descendants(proc.pid) if _cmdline(p).split(" ")[0].endswith("/raylet")]
    assert raylet, [_cmdline(p)[:60] for p in _descendants(proc.pid)]
    ray_processes = _descendants(proc.pid)
    os.kill(raylet[0], signal.SIGKILL)
    _, err = proc.communicate(timeout=300)
    assert proc.returncode == 9, err
    assert "the Ray cluster stopped; not done: " in err and "Traceback" not in err, err
    assert "of 3 image(s) failed" in err
    assert _wait_gone(ray_processes, 15) == []


def test_kill_9_of_nst_ort_leaves_no_ray_process(tmp_path):
    """kill -9 of nst-ort mid-batch: every process of its local Ray (GCS, raylet, its agents, the
    workers, the process holding the connection) is gone within seconds, and so is its folder."""
    photos = _photos(tmp_path, ("chelsea_cat.jpg",))
    out = tmp_path / "out"
    out.mkdir()
    proc = subprocess.Popen(cli_command([photos, STYLE, "-o", out, "--size", "64", "--iterations", "1000",
                                         "--threads", "1", "--workers", "1"]),
                            env=cli_env(), stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    _wait_task(proc, "stylize_image")
    ray_processes = _descendants(proc.pid)
    names = " ".join(_cmdline(p) for p in ray_processes)
    assert "ray::DashboardAgent" in names and "ray::stylize_image" in names, names
    folders = _ray_folders(ray_processes)
    assert len(folders) == 1 and all(Path(f).is_dir() for f in folders), names
    os.kill(proc.pid, signal.SIGKILL)
    proc.communicate(timeout=60)
    assert _wait_gone(ray_processes, 20) == [], [_cmdline(p)[:60] for p in ray_processes if _alive(p)]
    end = time.time() + 10
    while time.time() < end and any(Path(f).exists() for f in folders):
        time.sleep(0.2)
    assert not any(Path(f).exists() for f in folders), folders


def test_ray_flags_and_paths_refused_before_ray_starts(tmp_path):
    """--workers 0 at parse time (exit 2); an unreachable --ray-address within seconds (exit 2, one
    line); a batch whose output folder is its input folder, and two inputs whose results would share
    a name, refused before any work (exit 8), as the sequential batch refuses them. None of these
    starts a Ray."""
    photos = _photos(tmp_path, ("chelsea_cat.jpg",))
    out = tmp_path / "out"
    out.mkdir()
    base = [STYLE, "--size", "64", "--iterations", "2"]
    r = run_cli([photos, *base, "-o", out, "--workers", "0"])
    assert r.returncode == 2 and "--workers" in r.stderr and len(r.stderr.strip().splitlines()) <= 3, r.stderr
    r = run_cli(["video", photos, *base, "-o", out, "--workers", "0"])
    assert r.returncode == 2 and "--workers" in r.stderr, r.stderr
    t0 = time.time()
    r = run_cli([photos, *base, "-o", out, "--ray-address", "127.0.0.1:1"])
    assert r.returncode == 2 and r.stderr.startswith("nst-ort: error: --ray-address: cannot reach Ray at 127.0.0.1:1")
    assert len(r.stderr.strip().splitlines()) == 1 and time.time() - t0 < 30, r.stderr
    # a port that takes the connection but is no Ray (nothing ever answers): Ray's own init waits
    # minutes; nst-ort gives it 10 s once Ray is imported
    import socket

    with socket.socket() as silent:
        silent.bind(("127.0.0.1", 0))
        silent.listen(8)
        address = f"127.0.0.1:{silent.getsockname()[1]}"
        t0 = time.time()
        r = run_cli([photos, *base, "-o", out, "--ray-address", address], timeout=120)
    assert r.returncode == 2 and r.stderr == f"nst-ort: error: --ray-address: Ray at {address} did not answer within 10 s\n"
    assert time.time() - t0 < 60, time.time() - t0
    # the input folder as the output folder: chelsea_cat.png would replace a content image
    shutil.copy(EXAMPLES / "chelsea_cat.jpg", photos / "chelsea_cat.png")
    before_bytes = {p.name: p.read_bytes() for p in photos.iterdir()}
    (photos / "x.png").write_bytes((photos / "chelsea_cat.png").read_bytes())
    r = run_cli([photos, *base, "-o", photos, "--workers", "2"])
    assert r.returncode == 8 and "would be written there" not in r.stderr, r.stderr
    # x.png, x.jpg, x-jpg.png: x.jpg and x-jpg.png both give x-jpg.png
    (photos / "x.jpg").write_bytes((photos / "chelsea_cat.jpg").read_bytes())
    (photos / "x-jpg.png").write_bytes((photos / "chelsea_cat.png").read_bytes())
    r = run_cli([photos, *base, "-o", out, "--workers", "2"])
    assert r.returncode == 8, r.stderr
    assert f"{out / 'x-jpg.png'}: both {photos / 'x-jpg.png'} and {photos / 'x.jpg'}" in r.stderr or \
        f"{out / 'x-jpg.png'}: both {photos / 'x.jpg'} and {photos / 'x-jpg.png'}" in r.stderr, r.stderr
    for name, data in before_bytes.items():
        assert (photos / name).read_bytes() == data, name
    assert list(out.iterdir()) == [] and "Ray worker" not in r.stderr


def test_video_shard_killed_past_the_retries_ends_in_exit_9_and_resumes(tmp_path, temporal_model):
    """A shard's worker killed with no retries left (NST_ORT_RAY_RETRIES=0): the frames before that
    shard are written, the line names the frames not done and says how to resume, exit 9; the same
    command run again finishes the video."""
    seq_in = write_folder(tmp_path / "seq", frames((64, 48), 5))
    out = tmp_path / "sharded"
    args = ["video", seq_in, STYLE, "-o", out, "--size", "64", "--iterations", "12", "--threads", "1",
            "--model", temporal_model, "--workers", "2", "--shard-frames", "3", "--overlap", "1"]
    proc = subprocess.Popen(cli_command(args), env=cli_env({"NST_ORT_RAY_RETRIES": "0"}),
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    _kill_one_task(proc, "stylize_shard", timeout=300)
    _, err = proc.communicate(timeout=600)
    assert proc.returncode == 9, err
    line = [x for x in err.splitlines() if x.startswith("nst-ort: error:")]
    assert len(line) == 1 and "not done" in line[0] and "its Ray worker died 1 time(s)" in line[0], err
    assert "run the same command again to resume" in line[0] and "Traceback" not in err
    written = sorted(p.name for p in out.glob("0*.png")) if out.exists() else []
    assert written in ([], [f"{i:06d}.png" for i in range(1, 4)]), written  # shard 1 or shard 2 was killed
    done = run_cli([*args, "-q"])
    assert done.returncode == 0, done.stderr
    assert sorted(p.name for p in out.glob("0*.png")) == [f"{i:06d}.png" for i in range(1, 6)]
