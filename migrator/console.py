"""What the operator sees: logging (console + rotating file), the progress block, secret redaction."""

from __future__ import annotations

import logging
import os
import shutil
import sys
import threading
from contextlib import contextmanager
from pathlib import Path
from typing import Iterator, Optional

from concurrent_log_handler import ConcurrentRotatingFileHandler
from tqdm import tqdm

from migrator.live import Counts
from migrator.registry_config import redact
from migrator.sync import Progress

SECRET_ENV = ("AWS_SECRET_ACCESS_KEY", "AWS_SESSION_TOKEN", "MIGRATOR_PROBE_PASSWORD")


class RedactSecrets(logging.Filter):
    """Replaces the values of secret environment variables, and of any config key naming a secret
    (``registry_config.redact``), wherever they would be logged."""

    def filter(self, record: logging.LogRecord) -> bool:
        record.msg, record.args = self.redacted(record.getMessage()), None
        if record.exc_info and not record.exc_text:  # a traceback's messages too (the formatter keeps exc_text)
            record.exc_text = logging.Formatter().formatException(record.exc_info)
        if record.exc_text:
            record.exc_text = self.redacted(record.exc_text)
        return True

    @staticmethod
    def redacted(text: str) -> str:
        text = redact(text)
        for name in SECRET_ENV:
            if len(os.environ.get(name, "")) >= 4:
                text = text.replace(os.environ[name], "<redacted>")
        return text


def setup_logging(log_file: Optional[Path], verbose: bool, quiet: bool) -> None:
    root = logging.getLogger()
    for handler in list(root.handlers):
        root.removeHandler(handler)
        handler.close()
    root.setLevel(logging.DEBUG)
    redact = RedactSecrets()
    console = TqdmHandler(sys.stderr)
    console.setLevel(logging.DEBUG if verbose else logging.WARNING if quiet else logging.INFO)
    console.setFormatter(logging.Formatter("%(message)s"))
    console.addFilter(redact)
    root.addHandler(console)
    if log_file is not None:
        log_file.parent.mkdir(parents=True, exist_ok=True)
        handler = ConcurrentRotatingFileHandler(str(log_file), maxBytes=20 * 1024 * 1024, backupCount=5)
        handler.setLevel(logging.DEBUG)
        handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(threadName)s %(name)s: %(message)s"))
        handler.addFilter(redact)
        root.addHandler(handler)
    for noisy in ("botocore", "boto3", "s3transfer", "urllib3"):
        logging.getLogger(noisy).setLevel(logging.INFO if verbose else logging.WARNING)


def human_bytes(count: float) -> str:
    """Bytes in binary units, one decimal: '512 B', '1.5 KiB', '120.3 MiB'."""
    for unit in ("B", "KiB", "MiB", "GiB"):
        if count < 1024:
            return f"{count:.0f} {unit}" if unit == "B" else f"{count:.1f} {unit}"
        count /= 1024
    return f"{count:.1f} TiB"


def human_seconds(seconds: float) -> str:
    """'41 s', '3 min 05 s', '2 h 04 min'."""
    seconds = round(seconds)
    if seconds < 60:
        return f"{seconds} s"
    if seconds < 3600:
        return f"{seconds // 60} min {seconds % 60:02d} s"
    return f"{seconds // 3600} h {seconds % 3600 // 60:02d} min"


def progress_lines(data: dict) -> list[str]:
    """The progress block's two lines from a ``Counts.snapshot()``: the pass (files walked of the total with %,
    objects and bytes uploaded, rates, ETA) or the phase's elapsed time, then where the registry is."""
    phase = data.get("phase") or "starting"
    elapsed = human_seconds(max(data["updated_at"] - (data.get("phase_started_at") or data["started_at"]), 0))
    parts = [f"{phase}"]
    if data.get("pass") and data.get("pass_phase") == data.get("phase"):
        parts[0] += f" (pass {data['pass']})"
        expected, walked = data.get("expected_objects"), data["walked"]
        if expected:
            parts.append(f"{walked:,} of {expected:,} files ({min(walked / expected, 1):.0%})")
        else:
            parts.append(f"{walked:,} files")
        uploaded = f"uploaded {data['uploaded_objects']:,} objects, {human_bytes(data['uploaded_bytes'])}"
        if data.get("expected_bytes"):
            uploaded += (f" of ~{human_bytes(data['expected_bytes'])} "
                         f"({min(data['uploaded_bytes'] / data['expected_bytes'], 1):.0%})")
        parts.append(uploaded)
        parts.append(f"{data['rate_objects_per_second'] or 0:,.0f} files/s, "
                     f"{human_bytes(data['rate_bytes_per_second'] or 0)}/s")
        if data.get("eta_seconds") is not None:
            parts.append(f"ETA {human_seconds(data['eta_seconds'])}")
    elif data["listed"] or data["checked"]:
        parts.append(f"listed {data['listed']:,} keys, checked {data['checked']:,}")
    parts.append(elapsed)
    return [" | ".join(parts), f"registry: {data['registry']}"]


class ProgressBlock(Progress):
    """The terminal's progress block (stderr, a TTY only): passes every report on to ``counts`` and redraws
    ``progress_lines`` twice a second; log lines print above it (``TqdmHandler``), prompts hide it (``hidden``)."""

    REFRESH_SECONDS = 0.5

    def __init__(self, counts: Counts, enabled: bool):
        self.counts = counts
        self.enabled = enabled and sys.stderr.isatty()
        self._lines: list[tqdm] = []
        self._stop = threading.Event()
        self._thread: Optional[threading.Thread] = None
        self._draw_lock = threading.Lock()

    def phase_started(self, name: str) -> None:
        self.counts.phase_started(name)
        self._start()

    def pass_started(self, number: int, expected_objects: Optional[int]) -> None:
        self.counts.pass_started(number, expected_objects)
        self._start()

    def totals(self, number: int, files: int, upload_bytes: int) -> None:
        self.counts.totals(number, files, upload_bytes)

    def walked(self, count: int) -> None:
        self.counts.walked(count)

    def listed(self, count: int) -> None:
        self.counts.listed(count)

    def uploaded(self, count: int, nbytes: int) -> None:
        self.counts.uploaded(count, nbytes)

    def checked(self, count: int) -> None:
        self.counts.checked(count)

    def close(self) -> None:
        self._hide()
        self.counts.close()

    def __enter__(self) -> ProgressBlock:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    @contextmanager
    def hidden(self) -> Iterator[None]:
        """The block off the screen (for a prompt), and back afterwards."""
        shown = self._thread is not None
        self._hide()
        try:
            yield
        finally:
            if shown:
                self._start()

    def _start(self) -> None:
        if not self.enabled or self._thread is not None:
            return
        self._stop.clear()
        self._thread = threading.Thread(target=self._redraw, name="progress-block", daemon=True)
        self._thread.start()

    def _hide(self) -> None:
        if self._thread is None:
            return
        self._stop.set()
        self._thread.join()
        self._thread = None
        with self._draw_lock:
            for line in self._lines:
                line.close()
            self._lines = []
            sys.stderr.write("\r")  # a closed line leaves the cursor where its text ended
            sys.stderr.flush()

    def _redraw(self) -> None:
        while True:
            self._draw()
            if self._stop.wait(self.REFRESH_SECONDS):
                return

    def _draw(self) -> None:
        width = shutil.get_terminal_size().columns - 1
        lines = progress_lines(self.counts.snapshot())
        with self._draw_lock:
            while len(self._lines) < len(lines):
                self._lines.append(tqdm(file=sys.stderr, bar_format="{desc}", position=len(self._lines), leave=False))
            for bar, text in zip(self._lines, lines):
                bar.set_description_str(text[:width])


class TqdmHandler(logging.StreamHandler):
    """Console log lines written with ``tqdm.write``: above the progress block, never inside it."""

    def emit(self, record: logging.LogRecord) -> None:
        try:
            tqdm.write(self.format(record), file=self.stream)
        except Exception:  # logging must never stop the run
            self.handleError(record)
