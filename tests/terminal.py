"""Driving the CLI in a pseudo-terminal, and a small terminal screen to replay what it drew.

`spawn` starts `python -m server.cli ...` on a new pty (its controlling terminal, so Ctrl-C is a
real SIGINT from the line discipline); `Screen` applies the bytes the way a terminal does (\\r,
\\n, cursor up/down, erase line, colours ignored), so a test sees what a person would see.
"""

from __future__ import annotations

import fcntl
import os
import pty
import re
import select
import signal
import struct
import sys
import termios
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
CSI = re.compile(rb"\x1b\[([?0-9;]*)([A-Za-z])|\x1b[()][0-9A-B]|\x1b[=>78]")


class Screen:
    def __init__(self, cols: int = 120):
        self.cols = cols
        self.lines: list[str] = [""]
        self.row = self.col = 0

    def _put(self, ch: str) -> None:
        line = self.lines[self.row].ljust(self.col)
        self.lines[self.row] = line[:self.col] + ch + line[self.col + 1:]
        self.col += 1
        if self.col >= self.cols:  # wrap, as a terminal does
            self.row, self.col = self.row + 1, 0
            while len(self.lines) <= self.row:
                self.lines.append("")

    def feed(self, data: bytes) -> None:
        pos = 0
        text = data
        while pos < len(text):
            m = CSI.match(text, pos)
            if m:
                if m.group(2):
                    self._csi(m.group(1).decode(), m.group(2).decode())
                pos = m.end()
                continue
            b = text[pos:pos + 1]
            pos += 1
            if b == b"\r":
                self.col = 0
            elif b == b"\n":
                self.row += 1
                self.col = 0
                while len(self.lines) <= self.row:
                    self.lines.append("")
            elif b == b"\x08":
                self.col = max(0, self.col - 1)
            elif b >= b" " or b[0] >= 0x80:
                # decode one UTF-8 character
                n = 1
                if b[0] >= 0xF0:
                    n = 4
                elif b[0] >= 0xE0:
                    n = 3
                elif b[0] >= 0xC0:
                    n = 2
                ch = text[pos - 1:pos - 1 + n].decode(errors="replace")
                pos += n - 1
                self._put(ch)

    def _csi(self, params: str, cmd: str) -> None:
        n = int(params) if params.isdigit() else 1
        if cmd == "A":
            self.row = max(0, self.row - n)
        elif cmd == "B":
            self.row += n
            while len(self.lines) <= self.row:
                self.lines.append("")
        elif cmd == "G":
            self.col = n - 1
        elif cmd == "K":
            if params in ("", "0"):
                self.lines[self.row] = self.lines[self.row][:self.col]
            elif params == "2":
                self.lines[self.row] = ""

    def text(self) -> str:
        return "\n".join(line.rstrip() for line in self.lines)


class Term:
    """A CLI process on a pty: read what it draws, type into it, wait for its end."""

    def __init__(self, args: list[str], cwd: Path, cols: int = 120, env: dict | None = None):
        self.screen = Screen(cols)
        self.raw = b""
        pid, fd = pty.fork()
        if pid == 0:  # the child: the pty is its controlling terminal
            try:
                fcntl.ioctl(0, termios.TIOCSWINSZ, struct.pack("HHHH", 40, cols, 0, 0))
                os.chdir(cwd)
                e = {**os.environ, **(env or {}), "PYTHONPATH": str(ROOT), "COLUMNS": str(cols), "TERM": "xterm"}
                os.execve(sys.executable, [sys.executable, "-m", "server.cli", *args], e)
            finally:
                os._exit(127)
        self.pid, self.fd = pid, fd
        self.returncode: int | None = None

    def read(self, timeout: float = 0.2) -> bytes:
        out = b""
        end = time.monotonic() + timeout
        while True:
            left = end - time.monotonic()
            if left <= 0:
                break
            r, _, _ = select.select([self.fd], [], [], left)
            if not r:
                break
            try:
                chunk = os.read(self.fd, 65536)
            except OSError:  # EIO: the child closed the terminal
                chunk = b""
            if not chunk:
                self._reap()
                break
            out += chunk
        self.raw += out
        self.screen.feed(out)
        return out

    def wait_for(self, pattern: str, timeout: float = 60.0) -> re.Match | None:
        end = time.monotonic() + timeout
        while time.monotonic() < end:
            m = re.search(pattern, self.screen.text())
            if m:
                return m
            self.read(0.2)
            if self.returncode is not None:
                return re.search(pattern, self.screen.text())
        return None

    def ctrl_c(self) -> None:
        os.write(self.fd, b"\x03")

    def _reap(self) -> None:
        if self.returncode is None:
            _, status = os.waitpid(self.pid, 0)
            self.returncode = os.waitstatus_to_exitcode(status)

    def finish(self, timeout: float = 120.0) -> int:
        end = time.monotonic() + timeout
        while self.returncode is None and time.monotonic() < end:
            self.read(0.5)
            if self.returncode is None:
                pid, status = os.waitpid(self.pid, os.WNOHANG)
                if pid:
                    self.returncode = os.waitstatus_to_exitcode(status)
                    self.read(0.2)
        if self.returncode is None:
            os.kill(self.pid, signal.SIGKILL)
            self._reap()
            raise TimeoutError(f"the CLI did not end in {timeout}s; screen:\n{self.screen.text()}")
        os.close(self.fd)
        return self.returncode
