"""The kernel's own record of what changed under the registry root (Linux fanotify), so the final pass inside
the read-only window re-syncs only what changed instead of stat'ing every directory of the tree.

A filesystem-wide fanotify mark reports every create, delete, rename and write on the root's filesystem,
whichever process or mount made it, as (directory handle, name). ``checkpoint`` starts a generation;
``changed_since`` returns the paths changed since a generation began, or None when the feed cannot vouch
for them (events lost, or the feed failed). Only local filesystems are trusted: on a network filesystem
another host's writes never reach this kernel.
"""

from __future__ import annotations

import ctypes
import errno
import logging
import os
import re
import select
import struct
import threading
from pathlib import Path
from typing import Optional

from migrator.layout import covered, is_uploads, outermost

log = logging.getLogger(__name__)

FAN_CLASS_NOTIF = 0x0
FAN_NONBLOCK = 0x2
FAN_UNLIMITED_QUEUE = 0x10
FAN_REPORT_DFID_NAME = 0x400 | 0x800  # FAN_REPORT_DIR_FID | FAN_REPORT_NAME
FAN_MARK_ADD = 0x1
FAN_MARK_FILESYSTEM = 0x100
FAN_MODIFY = 0x2
FAN_MOVED_FROM = 0x40
FAN_MOVED_TO = 0x80
FAN_CREATE = 0x100
FAN_DELETE = 0x200
FAN_Q_OVERFLOW = 0x4000
FAN_ONDIR = 0x40000000
EVENTS = FAN_MODIFY | FAN_MOVED_FROM | FAN_MOVED_TO | FAN_CREATE | FAN_DELETE | FAN_ONDIR
INFO_DFID_NAME = 2
AT_FDCWD = -100

EVENT_HEADER = struct.Struct("IBBHQii")  # event_len, vers, reserved, metadata_len, mask, fd, pid
INFO_HEADER = struct.Struct("BBH")  # info_type, pad, len
HANDLE_HEADER = struct.Struct("Ii")  # handle_bytes, handle_type
FSID_BYTES = 8

# statfs f_type of filesystems whose every change goes through this kernel
LOCAL_FILESYSTEMS = {0xEF53: "ext4", 0x58465342: "xfs", 0x9123683E: "btrfs", 0x01021994: "tmpfs"}


class FeedUnavailable(Exception):
    """Why the feed cannot run here (the final pass then walks the whole tree, as without it)."""


def _libc() -> ctypes.CDLL:
    libc = ctypes.CDLL(None, use_errno=True)
    libc.fanotify_mark.argtypes = [ctypes.c_int, ctypes.c_uint, ctypes.c_uint64, ctypes.c_int, ctypes.c_char_p]
    libc.open_by_handle_at.argtypes = [ctypes.c_int, ctypes.c_char_p, ctypes.c_int]
    return libc


def filesystem_type(path: Path) -> int:
    """statfs(2)'s f_type: the first field of struct statfs."""
    buffer = ctypes.create_string_buffer(256)
    if _libc().statfs(os.fsencode(path), buffer) != 0:
        raise FeedUnavailable(f"statfs {path}: {os.strerror(ctypes.get_errno())}")
    return struct.unpack_from("l", buffer)[0]


_OCTAL_ESCAPE = re.compile(rb"\\([0-7]{3})")


def mount_point(mountinfo_line: bytes) -> str:
    """The mount point field of a /proc/self/mountinfo line. The kernel escapes space, tab, newline and backslash
    as octal (``\\040``) and passes every other byte, UTF-8 included, as is: unescape bytes, then decode as the
    filesystem does."""
    field = mountinfo_line.split()[4]
    return os.fsdecode(_OCTAL_ESCAPE.sub(lambda match: bytes([int(match.group(1), 8)]), field))


def mounts_under(root: str, mountinfo: str = "/proc/self/mountinfo") -> list[str]:
    """Mount points below ``root``: writes there never reach the root's filesystem."""
    try:
        with open(mountinfo, "rb") as handle:
            points = [mount_point(line) for line in handle]
    except OSError as exc:
        raise FeedUnavailable(f"cannot read {mountinfo}: {exc.strerror}") from None
    return sorted(point for point in points if point.startswith(root.rstrip("/") + "/"))


class ChangeFeed:
    """A filesystem-wide fanotify mark read on a background thread; events kept as (directory handle, name)."""

    def __init__(self, root: Path):
        self.root = str(Path(root).resolve())
        kind = filesystem_type(Path(self.root))
        if kind not in LOCAL_FILESYSTEMS:
            raise FeedUnavailable(f"{self.root} is on a filesystem of type {kind:#x}, not a local one this kernel "
                                  f"sees every write to ({', '.join(LOCAL_FILESYSTEMS.values())})")
        nested = mounts_under(self.root)
        if nested:
            raise FeedUnavailable(f"{nested[0]} is a separate mount under {self.root}: one filesystem mark cannot see it")
        self._libc = _libc()
        flags = FAN_CLASS_NOTIF | FAN_NONBLOCK | FAN_UNLIMITED_QUEUE | FAN_REPORT_DFID_NAME
        self.fd = self._libc.fanotify_init(flags, os.O_RDONLY | os.O_CLOEXEC)
        if self.fd < 0:
            raise FeedUnavailable(f"fanotify_init: {os.strerror(ctypes.get_errno())} (needs Linux 5.9+ and root)")
        if self._libc.fanotify_mark(self.fd, FAN_MARK_ADD | FAN_MARK_FILESYSTEM, EVENTS, AT_FDCWD,
                                    os.fsencode(self.root)) != 0:
            reason = os.strerror(ctypes.get_errno())
            os.close(self.fd)
            raise FeedUnavailable(f"fanotify_mark on {self.root}: {reason}")
        self.mount_fd = os.open(self.root, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
        self.generation = 0
        self.lost_in: Optional[int] = None  # the generation in which events were lost
        self.failed = False
        self._events: dict[tuple[bytes, bytes], int] = {}  # (handle, name) → latest generation it changed in
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._read_loop, name="changefeed", daemon=True)
        self._thread.start()

    def checkpoint(self) -> int:
        """Start a new generation and return it; events of generations before the previous one are forgotten."""
        with self._lock:
            self._drain_or_fail()
            self.generation += 1
            keep = self.generation - 1
            self._events = {key: gen for key, gen in self._events.items() if gen >= keep}
            return self.generation

    def changed_since(self, generation: int) -> Optional[set[str]]:
        """Paths (relative to the root, ``_uploads`` left out) created, deleted, renamed or written since
        ``generation`` began; None when the feed cannot vouch for that span."""
        with self._lock:
            self._drain_or_fail()
            if self.failed or (self.lost_in is not None and self.lost_in >= generation - 1):
                return None
            keys = [key for key, gen in self._events.items() if gen >= generation]
        paths: set[str] = set()
        directories: dict[bytes, Optional[str]] = {}
        for handle, name in keys:
            if handle not in directories:
                try:
                    directories[handle] = self._directory_rel(handle)
                except OSError:
                    log.exception("change feed: cannot resolve a changed directory")
                    self.failed = True
                    return None
            directory = directories[handle]
            if directory is None:
                continue  # deleted since (its own deletion is an event in its parent) or outside the root
            rel = os.fsdecode(name) if directory == "" else f"{directory}/{os.fsdecode(name)}"
            if (rel == "docker" or rel.startswith("docker/")) and not is_uploads(rel):
                paths.add(rel)
        return paths

    def close(self) -> None:
        self._stop.set()
        self._thread.join()
        os.close(self.fd)
        os.close(self.mount_fd)

    def _directory_rel(self, handle: bytes) -> Optional[str]:
        """The directory's path relative to the root ("" for the root), or None if gone or outside it."""
        fd = self._libc.open_by_handle_at(self.mount_fd, handle, os.O_PATH)
        if fd < 0:
            if ctypes.get_errno() in (errno.ESTALE, errno.ENOENT):
                return None
            raise OSError(ctypes.get_errno(), f"open_by_handle_at: {os.strerror(ctypes.get_errno())}")
        try:
            path = os.readlink(f"/proc/self/fd/{fd}")
        finally:
            os.close(fd)
        if path.endswith(" (deleted)"):
            return None
        if path == self.root:
            return ""
        return path[len(self.root) + 1:] if path.startswith(self.root + "/") else None

    def _read_loop(self) -> None:
        poller = select.poll()
        poller.register(self.fd, select.POLLIN)
        while not self._stop.is_set() and not self.failed:
            if poller.poll(200):
                with self._lock:
                    self._drain_or_fail()

    def _drain_or_fail(self) -> None:
        """Read every queued event (caller holds the lock); any error marks the feed failed, never quiet."""
        if self.failed:
            return
        try:
            self._drain()
        except Exception:  # noqa: BLE001 - a failed feed must never pass for a quiet one
            log.exception("change feed failed: the read-only window will walk the whole tree")
            self.failed = True

    def _drain(self) -> None:
        while True:
            try:
                buffer = os.read(self.fd, 1 << 18)
            except BlockingIOError:
                return
            self._parse(buffer)

    def _parse(self, buffer: bytes) -> None:
        offset = 0
        while offset + EVENT_HEADER.size <= len(buffer):
            event_len, _, _, metadata_len, mask, _, _ = EVENT_HEADER.unpack_from(buffer, offset)
            if mask & FAN_Q_OVERFLOW:
                self.lost_in = self.generation
            info = offset + metadata_len
            while info < offset + event_len:
                info_type, _, info_len = INFO_HEADER.unpack_from(buffer, info)
                if info_type == INFO_DFID_NAME:
                    start = info + INFO_HEADER.size + FSID_BYTES
                    handle_bytes, _ = HANDLE_HEADER.unpack_from(buffer, start)
                    name_start = start + HANDLE_HEADER.size + handle_bytes
                    name = buffer[name_start : info + info_len].split(b"\0", 1)[0]
                    self._events[(buffer[start:name_start], name)] = self.generation
                info += info_len
            offset += event_len


class PassTracker:
    """What the read-only window's final pass must look at: the paths the feed saw change since the last online
    pass began, plus that pass's delete candidates (online passes never delete). None means walk everything:
    no feed, no online pass under it in this process, or a feed that missed a change the walk found."""

    def __init__(self, root: Path, enabled: bool):
        self.feed: Optional[ChangeFeed] = None
        self.why_not = "sync.change_feed is false"
        if enabled:
            try:
                self.feed = ChangeFeed(root)
            except (FeedUnavailable, OSError, AttributeError) as exc:
                self.why_not = str(exc)
                log.warning("no change feed (%s): the read-only window will walk the whole tree", exc)
        if self.feed is not None:
            self.why_not = "no online pass ran under the change feed in this process"
        self.last_generation: Optional[int] = None  # the generation the last finished online pass began in
        self._starting: Optional[int] = None
        self.pending_deletes: list[str] = []

    def pass_started(self) -> None:
        self._starting = self.feed.checkpoint() if self.feed else None

    def pass_finished(self, changes: list[str], delete_candidates: list[str], first_linked: Optional[str] = None) -> None:
        """Check the feed against the walk: every change this pass found happened after the previous pass looked,
        so the feed must have reported it. One it missed means some writer is invisible to it: not used again.
        Nor is it used once the walk met a symbolic link: a write behind one is reported under the target's path."""
        if self.feed is None:
            return
        if first_linked is not None:
            self.disable(f"the source has files reached through symbolic links ({first_linked}); the change feed "
                         "reports writes under the link target's path")
            return
        if self.last_generation is not None:
            seen = self.feed.changed_since(self.last_generation)
            already = set(self.pending_deletes)
            missed = next((rel for rel in changes if rel not in already and not covered(rel, seen)), None) \
                if seen is not None else "events were lost"
            if missed is not None:
                self.disable(f"the change feed did not report a change the walk found ({missed})")
                return
        self.last_generation = self._starting
        self.pending_deletes = delete_candidates
        self.why_not = ""

    def forget_baseline(self) -> None:
        """The journal was rebuilt from a listing: the next pass's findings are not changes since the last one."""
        self.last_generation = None

    def final_paths(self) -> Optional[list[str]]:
        """The paths to re-sync (none under another), or None (``why_not`` says why) when the whole tree must be walked."""
        if self.feed is None or self.last_generation is None:
            return None
        seen = self.feed.changed_since(self.last_generation)
        if seen is None:
            self.disable("the change feed lost events")
            return None
        return outermost(seen | set(self.pending_deletes))

    def disable(self, reason: str) -> None:
        log.warning("%s: the read-only window will walk the whole tree", reason)
        self.why_not = reason
        self.close()

    def close(self) -> None:
        if self.feed is not None:
            self.feed.close()
            self.feed = None
