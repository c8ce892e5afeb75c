"""The Ray connection of one nst-ort run (distributed.py's batch and video shards run through it).

- Cluster: a local Ray of this run's own (its own session folder, its processes known and killed
  after the run, a watchdog for a kill -9 of nst-ort) or an existing cluster (--ray-address, checked
  to answer within seconds).
- run_driver: the Ray connection lives in a child process. Ray's core worker ends the process that
  holds the connection when its raylet dies (measured: exit 1, no Python exception), so nst-ort
  itself stays out of it: it keeps what came back, names what did not, and exits as documented.
"""
from __future__ import annotations

import ctypes
import logging
import multiprocessing
import os
import select
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import traceback
from pathlib import Path

from ..base.errors import NstError, Terminated, UsageError, on_sigterm
from ..base.extras import require

CONNECT_SECONDS = 5  # an unreachable --ray-address fails after this, not after Ray's own minutes of retries
# A HOST:PORT that accepts the connection but is no Ray (or one that does not answer): measured, Ray's
# init then gave up after 25 s even with its GCS timeouts cut to CONNECT_SECONDS. nst-ort waits this long.
CONNECT_DEADLINE = 10


def check_reachable(address: str, seconds: float = CONNECT_SECONDS) -> None:
    """HOST:PORT must accept a connection within `seconds`: Ray itself retries an unreachable GCS for
    minutes before it gives up. `auto` and ray:// addresses are left to Ray (with its timeouts cut)."""
    if address == "auto" or "://" in address:
        return
    host, _, port = address.rpartition(":")
    if not host or not port.isdigit():
        raise UsageError(f"--ray-address: expected HOST:PORT (e.g. 10.0.0.5:6379) or auto, got {address!r}")
    try:
        socket.create_connection((host.strip("[]"), int(port)), timeout=seconds).close()
    except OSError as e:
        why = f"no answer within {seconds:g} s" if isinstance(e, TimeoutError) else (e.strerror or str(e) or type(e).__name__)
        raise UsageError(f"--ray-address: cannot reach Ray at {address} ({why})") from None


class Cluster:
    """A Ray connection for one run: a local Ray with `workers` CPUs, or an existing cluster.

    A local Ray is this run's own: its session in a temporary folder of its own (never another
    user's or run's Ray), every one of its processes marked by that folder in its environment; after
    ray.shutdown() any of them still alive is killed by pid and the folder removed, and a watchdog
    does the same if nst-ort itself is killed (kill -9 included)."""

    def __init__(self, workers: int | None, address: str | None):
        self.ray = require("ray", "--workers / --ray-address")
        if workers is not None and workers < 1:
            raise UsageError(f"--workers must be at least 1, got {workers}")
        os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")  # no usage report from a local run
        # Ray runs its workers at niceness 15 by default: on a machine where anything else runs they
        # then get a sliver of the CPU (measured: a 4-image batch 3.6x slower on 1 worker than without
        # Ray, on a busy 2-core machine). A local Ray's workers run at nst-ort's own priority.
        if not address:
            os.environ.setdefault("RAY_worker_niceness", "0")
        else:
            check_reachable(address)
            for key in ("RAY_gcs_rpc_server_connect_timeout_s", "RAY_gcs_rpc_server_reconnect_timeout_s"):
                os.environ.setdefault(key, str(CONNECT_SECONDS))

        # Ray's own notices (e.g. "Token authentication is enabled for this Ray cluster", a warning on
        # every local start since Ray 2.5x) go through the "ray" logger, which configure_logging=False
        # leaves at its import-time level: errors only.
        logging.getLogger("ray").setLevel(logging.ERROR)
        kw = dict(include_dashboard=False, log_to_driver=False, logging_level=logging.ERROR, configure_logging=False)
        self.local = not address
        self.temp_dir = self.watchdog = None
        try:
            if address:
                self.ray.init(address=address, **kw)
            else:
                # Short: Ray puts its unix sockets under it (107 bytes at most for a socket path).
                self.temp_dir = tempfile.mkdtemp(prefix="nst-ort-ray-", dir="/tmp" if os.path.isdir("/tmp") else None)
                os.environ[MARK] = self.temp_dir
                self.watchdog = _start_watchdog(self.temp_dir)
                self.ray.init(num_cpus=workers, _temp_dir=self.temp_dir, **kw)
        except Exception as e:  # noqa: BLE001 - Ray raises ConnectionError, RuntimeError, ValueError...
            self.close()
            where = f"Ray at {address}" if address else "a local Ray"
            raise UsageError(f"cannot start {where} ({str(e).splitlines()[0][:200] if str(e) else type(e).__name__})") from None
        cpus = int(self.ray.cluster_resources().get("CPU", 1))
        self.workers = min(workers or cpus, cpus) if address else workers

    def alive(self) -> bool:
        """Whether the cluster still has a live node (a killed raylet or GCS: no)."""
        try:
            return any(n.get("Alive") for n in self.ray.nodes())
        except Exception:  # noqa: BLE001 - the GCS itself gone: Ray raises what it raises
            return False

    def close(self) -> None:
        try:
            self.ray.shutdown()
        except Exception:  # noqa: BLE001 - a cluster already dead: nothing to stop in it
            pass
        if self.temp_dir is not None:
            _kill_all(self.temp_dir)  # what ray.shutdown() left (measured: none so far; cheap to make sure)
            shutil.rmtree(self.temp_dir, ignore_errors=True)
            os.environ.pop(MARK, None)
            self.temp_dir = None
        if self.watchdog is not None:
            os.close(self.watchdog)  # the watchdog finds nothing left and ends
            self.watchdog = None

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()


MARK = "NST_ORT_RAY_SESSION"  # in the environment of every process of a local Ray we start: its folder


def _proc_table() -> dict[int, tuple[int, str, bytes]]:
    """pid -> (parent pid, start time, environment) of every process we can read."""
    out = {}
    for d in Path("/proc").glob("[0-9]*"):
        try:
            stat = (d / "stat").read_text().rsplit(")", 1)[1].split()
            out[int(d.name)] = (int(stat[1]), stat[19], (d / "environ").read_bytes())
        except (OSError, ValueError, IndexError):
            continue
    return out


def _processes_of(temp_dir: str, table=None) -> dict[int, str]:
    """This run's local Ray processes alive now, pid -> start time: every process whose environment
    carries the mark (GCS, raylet, workers: Ray passes the driver's environment down) and their
    descendants. The agents (ray::DashboardAgent, ray::RuntimeEnvAgent) are found only as the
    raylet's children: setproctitle overwrites their environment."""
    mark = f"{MARK}={temp_dir}".encode()
    table = _proc_table() if table is None else table
    me = os.getpid()
    mine = {pid for pid, (_, _, env) in table.items() if pid != me and mark in env.split(b"\0")}
    grew = True
    while grew:
        more = {pid for pid, (ppid, _, _) in table.items() if ppid in mine and pid not in mine and pid != me}
        mine |= more
        grew = bool(more)
    return {pid: table[pid][1] for pid in mine}


def _kill_all(temp_dir: str, seen: dict[int, str] | None = None) -> None:
    """SIGKILL what is left of the local Ray: what _processes_of finds now, and `seen` (found while
    the raylet lived; its agents belong to init once it is gone) where the pid is still the same
    process (its start time)."""
    for _ in range(3):  # a dying raylet may still start a worker: look again
        table = _proc_table()
        pids = set(_processes_of(temp_dir, table))
        pids |= {pid for pid, start in (seen or {}).items() if pid in table and table[pid][1] == start}
        if not pids:
            return
        for pid in pids:
            try:
                os.kill(pid, signal.SIGKILL)
            except OSError:
                pass
        time.sleep(0.2)


def _start_watchdog(temp_dir: str):
    """A small process that outlives a kill -9 of nst-ort: it waits for the end of a pipe whose other
    end only nst-ort holds (the kernel closes it however nst-ort ends), then kills what is left of the
    local Ray and removes its folder. Ray's own fate sharing (PR_SET_PDEATHSIG) covers the GCS and the
    raylet but not the agents the raylet starts: measured, ray::DashboardAgent and ray::RuntimeEnvAgent
    stayed alive after a kill -9 of the driver. Its own session: a Ctrl-C to the terminal's process
    group does not end it before it has done its work."""
    r, w = os.pipe()
    env = {k: v for k, v in os.environ.items() if k != MARK}
    try:
        subprocess.Popen([sys.executable, "-c", "from nst_ort.commands.ray_cluster import _watchdog; _watchdog()", temp_dir],
                         stdin=r, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, env=env,
                         start_new_session=True, close_fds=True)
    finally:
        os.close(r)
    os.set_inheritable(w, False)  # Ray's processes must not hold it open
    return w


def _watchdog() -> None:
    temp_dir, seen = sys.argv[1], {}
    while True:
        if select.select([0], [], [], 1.0)[0] and not os.read(0, 1 << 12):
            break  # nst-ort has ended, however it ended
        seen.update(_processes_of(temp_dir))  # the raylet's agents, while they are still its children
    _kill_all(temp_dir, seen)
    shutil.rmtree(temp_dir, ignore_errors=True)


def run_driver(body, payload, workers: int | None, address: str | None, on_message, debug: bool = False
               ) -> str | None:
    """body(cluster, send, payload) in a child process that holds the Ray connection; each
    send(*message) reaches on_message(*message) here. A raylet or GCS that dies takes Ray's driver
    process with it, so nst-ort itself stays out of it: here it keeps what came back, names what did
    not, and exits as documented. Returns None when body returned, else why the child ended.
    An NstError raised in body is raised here (same message, same exit code)."""
    ctx = multiprocessing.get_context("spawn")  # no fork of a process that may hold onnxruntime's threads
    mine, theirs = ctx.Pipe(duplex=False)
    child = ctx.Process(target=_driver_main, args=(theirs, body, payload, workers, address, debug), name="nst-ort-ray")
    child.start()
    theirs.close()
    deadline = None  # --ray-address: from "connecting" (Ray imported) to "connected"
    try:
        while True:
            if deadline is not None and not mine.poll(max(0.0, deadline - time.monotonic())):
                raise UsageError(f"--ray-address: Ray at {address} did not answer within {CONNECT_DEADLINE:g} s")
            try:
                message = mine.recv()
            except EOFError:
                break
            if message[0] == "connecting":
                deadline = time.monotonic() + CONNECT_DEADLINE if address else None
                continue
            if message[0] == "connected":
                deadline = None
                continue
            if message[0] == "end":
                child.join(60)
                return None
            if message[0] == "error":
                e = NstError(message[2])
                e.exit_code = message[1]
                raise e
            on_message(*message)
    except BaseException:
        if child.is_alive():
            child.terminate()  # SIGTERM: it shuts its Ray down (Cluster.close) and ends
        child.join(60 if deadline is None else 3)
        if child.is_alive():  # stuck connecting to a remote address inside Ray's C++: no local Ray to stop
            child.kill()
            child.join(5)
        raise
    child.join(10)
    return f"the process holding the Ray connection ended (exit {child.exitcode}): the Ray cluster stopped"


def _driver_main(conn, body, payload, workers, address, debug: bool) -> None:
    _die_with_parent()
    if not debug:
        # Ray's banner and its C++ log lines (a lost raylet, a failed push) are not nst-ort's lines:
        # everything this process has to say goes through the pipe. --debug keeps them.
        null = os.open(os.devnull, os.O_WRONLY)
        os.dup2(null, 1)
        os.dup2(null, 2)
    signal.signal(signal.SIGTERM, on_sigterm)
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # Ctrl-C reaches nst-ort, which ends this with SIGTERM
    try:
        require("ray", "--workers / --ray-address")  # seconds under load: not part of the connect deadline
        conn.send(("connecting",))
        with Cluster(workers, address) as cluster:
            conn.send(("connected",))
            body(cluster, lambda *m: conn.send(m), payload)
        conn.send(("end",))
    except NstError as e:
        conn.send(("error", e.exit_code, str(e)))
    except Terminated:
        pass
    except Exception as e:  # noqa: BLE001 - a bug: still one line in nst-ort (errors.exit_for)
        if debug:
            traceback.print_exc()
        conn.send(("error", 1, f"internal error in the Ray driver: {type(e).__name__}: {e} (rerun with --debug)"))


def _die_with_parent() -> None:
    """SIGTERM to this process when nst-ort dies (kill -9 included): prctl(PR_SET_PDEATHSIG)."""
    try:
        ctypes.CDLL(None, use_errno=True).prctl(1, int(signal.SIGTERM), 0, 0, 0)  # 1: PR_SET_PDEATHSIG
    except (OSError, AttributeError):
        pass  # not Linux: the watchdog still cleans the local Ray up when this process ends
    if os.getppid() == 1:
        os.kill(os.getpid(), signal.SIGTERM)  # nst-ort was gone before prctl: the signal was missed
