"""The progress line as a terminal shows it (a pty of 80 and 40 columns, replayed on a small screen
model: carriage returns, line feeds, wraps, erase sequences), and the plain lines off a terminal."""
from __future__ import annotations

import fcntl
import os
import pty
import re
import select
import struct
import subprocess
import termios
import time

import pytest

from conftest import EXAMPLES, cli_command, cli_env, run_cli

ARGS = [EXAMPLES / "chelsea_cat.jpg", EXAMPLES / "starry_night.jpg", "--scales", "48,64", "--scale-iterations", "6,3",
        "--threads", "1"]


def _in_pty(args: list, columns: int) -> bytes:
    master, slave = pty.openpty()
    fcntl.ioctl(slave, termios.TIOCSWINSZ, struct.pack("HHHH", 24, columns, 0, 0))
    p = subprocess.Popen(cli_command(args), stdin=slave, stdout=slave, stderr=slave, env=cli_env(), close_fds=True)
    os.close(slave)
    out, t0 = b"", time.monotonic()
    while time.monotonic() - t0 < 300:
        ready, _, _ = select.select([master], [], [], 0.2)
        if ready:
            try:
                data = os.read(master, 65536)
            except OSError:  # the child closed the pty
                break
            if not data:
                break
            out += data
        elif p.poll() is not None:
            break
    p.wait(timeout=60)
    os.close(master)
    assert p.returncode == 0, out.decode(errors="replace")
    return out


class Screen:
    """Enough of a terminal to see what a user sees: a wrap (text reaching past the last column)
    is recorded, as is every line's final content."""

    def __init__(self, columns: int):
        self.columns, self.lines, self.row, self.col, self.wrapped = columns, [[]], 0, 0, False

    def feed(self, text: str) -> None:
        i = 0
        while i < len(text):
            ch = text[i]
            if ch == "\x1b":  # CSI: ESC [ params letter
                m = re.match(r"\x1b\[([0-9;]*)([A-Za-z])", text[i:])
                if m and m.group(2) == "K":
                    del self.lines[self.row][self.col:]
                elif m and m.group(2) == "A":
                    self.row = max(0, self.row - int(m.group(1) or 1))
                i += m.end() if m else 1
                continue
            if ch == "\r":
                self.col = 0
            elif ch == "\n":
                self.row += 1
                self.col = 0
                while len(self.lines) <= self.row:
                    self.lines.append([])
            else:
                if self.col >= self.columns:
                    self.wrapped = True
                    self.feed("\n")
                line = self.lines[self.row]
                line.extend(" " * (self.col - len(line) + 1))
                line[self.col] = ch
                self.col += 1
            i += 1

    def text(self) -> list[str]:
        return ["".join(line).rstrip() for line in self.lines]


@pytest.mark.parametrize("columns", [80, 40])
def test_progress_on_a_terminal(tmp_path, columns):
    raw = _in_pty([*ARGS, "-o", tmp_path / "out.png"], columns).decode()
    progress, wrote = raw.rsplit("wrote ", 1)
    assert wrote.strip() == str(tmp_path / "out.png")  # the last line (as long as the path: it may wrap)
    screen = Screen(columns)
    screen.feed(progress)
    assert not screen.wrapped, [(len(f), f) for f in raw.split("\r")]  # nothing reached past the last column
    bar = [line for line in screen.text() if line][-1]
    frames = [f for f in re.split(r"[\r\n]+", progress) if f.strip()]
    assert bar == frames[-1].rstrip()  # what the screen shows is the last frame: no characters left over
    assert frames[0].startswith("scale 1/2 48x32 it 1/6 loss ")  # at most 5 frames a second: first and last are sure
    if columns == 80:
        assert re.match(r"scale 2/2 64x43 it 3/3 loss \S+ +100%\|.*\| \d\d:\d\d<00:00$", bar), bar
    else:  # too narrow for the bar: trimmed to the width, never wrapped
        assert bar.startswith("scale 2/2 64x43 it 3/3 loss ")
    assert all(len(f) <= columns for f in frames), [f for f in frames if len(f) > columns]


def test_plain_lines_off_a_terminal(tmp_path):
    r = run_cli([*ARGS, "-o", tmp_path / "out.png"], env={"NST_ORT_PROGRESS_SECONDS": "1000"}, timeout=300)
    assert r.returncode == 0, r.stderr
    lines = r.stderr.strip().splitlines()
    assert "\r" not in r.stderr
    assert [re.match(r"nst-ort: scale (\d)/2 \d+x\d+ it (\d)/\d", line).groups() for line in lines[:-1]] == [
        ("1", "1"), ("1", "6"), ("2", "1"), ("2", "3")]  # each scale's first and last (and every N s between)
    assert all(re.search(r"\(content \S+, style \S+, tv \S+\); \d\d:\d\d elapsed, \d\d:\d\d left$", line)
               for line in lines[:-1]), lines
    assert lines[-1] == f"wrote {tmp_path / 'out.png'}"
