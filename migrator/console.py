"""What the operator sees: logging (console + rotating file), progress bars, secret redaction."""

from __future__ import annotations

import logging
import os
import sys
import threading
from pathlib import Path
from typing import Optional

from concurrent_log_handler import ConcurrentRotatingFileHandler
from tqdm import tqdm

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
    console = logging.StreamHandler(sys.stderr)
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


class BarProgress(Progress):
    """tqdm bars for walking, listing and uploading (objects and bytes, with rates); off when not a TTY."""

    def __init__(self, enabled: bool):
        self.enabled = enabled and sys.stderr.isatty()
        self._lock = threading.Lock()
        self._bars: dict = {}
        self.phase = ""

    def _bar(self, name: str, **kwargs) -> Optional[tqdm]:
        if not self.enabled:
            return None
        if name not in self._bars:
            desc = f"{self.phase} {name}".strip()
            self._bars[name] = tqdm(desc=desc, position=len(self._bars), leave=False, dynamic_ncols=True, **kwargs)
        return self._bars[name]

    def walked(self, count: int) -> None:
        with self._lock:
            bar = self._bar("walked", unit=" files", unit_scale=True)
            if bar:
                bar.update(count)

    def listed(self, count: int) -> None:
        with self._lock:
            bar = self._bar("listed", unit=" keys", unit_scale=True)
            if bar:
                bar.update(count)

    def phase_started(self, name: str) -> None:
        self.close()  # a phase's bars start from zero
        with self._lock:
            self.phase = name

    def checked(self, count: int) -> None:
        with self._lock:
            bar = self._bar("checked", unit=" keys", unit_scale=True)
            if bar:
                bar.update(count)

    def uploaded(self, count: int, nbytes: int) -> None:
        with self._lock:
            objects = self._bar("uploaded", unit=" obj", unit_scale=True)
            volume = self._bar("uploaded bytes", unit="B", unit_scale=True, unit_divisor=1024)
            if objects:
                objects.update(count)
                volume.update(nbytes)

    def close(self) -> None:
        with self._lock:
            for bar in self._bars.values():
                bar.close()
            self._bars.clear()
