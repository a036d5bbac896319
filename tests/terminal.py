"""A pseudo-terminal for the tests: the real ``migrator`` command under pexpect, its output fed to a terminal
emulator (pyte), so a test reads the screen an operator would see, not the bytes."""

from __future__ import annotations

import os
import re
import sys
import time
from pathlib import Path

import pexpect
import pyte

ROOT = Path(__file__).resolve().parents[1]


class Terminal:
    """``migrator ARGS`` on a ``rows`` × ``cols`` pseudo-terminal; ``frames`` keeps every screen it showed."""

    def __init__(self, *args: str, rows: int = 40, cols: int = 160, env: dict | None = None):
        self.screen = pyte.Screen(cols, rows)
        self.stream = pyte.ByteStream(self.screen)
        environment = dict(os.environ if env is None else env, PYTHONPATH=str(ROOT), TERM="xterm-256color")
        self.child = pexpect.spawn(sys.executable, ["-m", "migrator", *map(str, args)], env=environment,
                                   dimensions=(rows, cols), cwd=str(ROOT))
        self.frames: list[str] = []

    def text(self) -> str:
        """The screen now, one line a printed line: rows the terminal wrapped are joined again, trailing blanks
        removed."""
        rows = self.screen.display
        return "".join(row if len(row.rstrip()) == len(row) else row.rstrip() + "\n" for row in rows).rstrip()

    def _pump(self, timeout: float) -> bool:
        """Feed what the command printed within ``timeout`` to the screen; False once it closed the terminal."""
        try:
            self.stream.feed(self.child.read_nonblocking(65536, timeout=timeout))
        except pexpect.TIMEOUT:
            return True
        except pexpect.EOF:
            return False
        self.frames.append(self.text())
        return True

    def wait_for(self, pattern: str, timeout: float = 180) -> re.Match:
        """Until the screen shows ``pattern`` (a regex); fails with the screen if it never does."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            found = re.search(pattern, self.text())
            if found:
                return found
            if not self._pump(0.2):
                found = re.search(pattern, self.text())
                if found:
                    return found
                raise AssertionError(f"the command ended without showing {pattern!r}; screen:\n{self.text()}")
        raise AssertionError(f"{pattern!r} not on the screen after {timeout}s; screen:\n{self.text()}")

    def send(self, keys: str) -> None:
        self.child.send(keys)

    def interrupt(self) -> None:
        """Ctrl-C, as typed."""
        self.child.sendintr()

    def exit_code(self, timeout: float = 300) -> int:
        """Read to the end; the command's exit code (128 + N for a signal)."""
        deadline = time.monotonic() + timeout
        while self._pump(0.5):
            if time.monotonic() > deadline:
                self.child.kill(9)
                raise AssertionError(f"still running after {timeout}s; screen:\n{self.text()}")
        self.child.close()
        return self.child.exitstatus if self.child.exitstatus is not None else 128 + self.child.signalstatus

    def saw(self, pattern: str) -> list[str]:
        """The screens that showed ``pattern``."""
        return [frame for frame in self.frames if re.search(pattern, frame)]
