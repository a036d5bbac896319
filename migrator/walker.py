"""Walk one shard of the source tree as a stream of files in key order, skipping ``_uploads``.

Symbolic links are followed, as the registry's filesystem driver follows them (and ``aws s3 sync`` does): a
repository directory or a blob's ``data`` that is a link is copied as what it points to, wherever that is.
What is reached through a link is flagged ``via_link``: its directory is never sealed, and the change feed
(which reports a write under the target's own path) cannot vouch for it. A link to a directory that contains
it (a loop) stops the walk with ``SymlinkLoop`` naming the link; a link to nothing is reported and skipped,
as the registry cannot serve it either. A name that is not UTF-8 (S3 keys are; the registry never writes one) is
skipped with a warning naming it, once per process.
"""

from __future__ import annotations

import logging
import os
import stat
import threading
import time
from pathlib import Path
from typing import Iterator, Literal, NamedTuple, Optional, Union, overload

from migrator.errors import StoppedSafely
from migrator.layout import UPLOADS_DIR, Shard, is_digest_dir, is_uploads, shards

log = logging.getLogger(__name__)

MAX_CHAIN = 64  # directories followed down by ``branching``
RACY_NS = 3_000_000_000  # a stat this close to when it was taken is not trusted later (git's "racy" rule)


class SourceFile(NamedTuple):
    """One regular file of the source tree and the stat it had when walked."""

    rel: str
    size: int
    mtime_ns: int
    ctime_ns: int
    ino: int
    seen_ns: int  # wall clock just before the stat: what a later stat is compared against
    via_link: bool = False  # reached through a symbolic link (the file itself or a directory above it)


class SymlinkLoop(StoppedSafely):
    """A link to a directory that contains it: the walk would never end."""


_NOT_UTF8_SAID: set[str] = set()


def _is_utf8(name: str) -> bool:
    """Whether a name read from the filesystem is UTF-8 (else Python holds its bytes as surrogates)."""
    try:
        name.encode("utf-8")
    except UnicodeEncodeError:
        return False
    return True


def _skip_not_utf8(name: str, path: str, is_dir: bool) -> bool:
    """True (and a warning naming ``path``, once) when ``name`` is not UTF-8."""
    if _is_utf8(name):
        return False
    if path not in _NOT_UTF8_SAID:
        _NOT_UTF8_SAID.add(path)
        log.warning("%r: the name is not UTF-8, so it cannot be an S3 key (and the registry never writes such a "
                    "name): skipped%s. Rename or remove it to have it copied", os.fsencode(path),
                    " with everything under it" if is_dir else "")
    return True


def _sorted_entries(directory: str) -> list[tuple[str, os.DirEntry]]:
    """Entries of one directory, ordered so a depth-first walk yields keys in byte order (names that are not
    UTF-8 left out, see the module docstring).

    A directory sorts as ``name/``: ``a-b`` comes before ``a/x`` just as the keys do.
    """
    try:
        with os.scandir(directory) as it:
            entries = [(e.name + "/" if e.is_dir() else e.name, e) for e in it
                       if not _skip_not_utf8(e.name, e.path, e.is_dir())]
    except (FileNotFoundError, NotADirectoryError):
        return []
    if len(entries) > 1:  # most registry directories hold a single entry
        entries.sort(key=_first)
    return entries


def _first(pair: tuple) -> str:
    return pair[0]


class DigestDir(NamedTuple):
    """A digest-named directory (``.../sha256/<hex>/``), stat'ed before it is listed.

    The registry fixes its files' content by its name (a blob's ``data``, a ``link`` holding
    ``sha256:<hex>``), so adding or removing one changes the directory's own stat and nothing else can
    change: an unchanged stat means its files are as they were.
    """

    rel: str  # ends with "/"
    path: str
    stat: tuple[int, int, int]  # (mtime_ns, ctime_ns, inode)
    seen_ns: int
    nlink: int  # 2 when it has no subdirectory (a change in one would not show in its own stat)
    via_link: bool = False  # reached through a symbolic link: its own stat cannot vouch for what it points to
    real: str = ""  # its real path, for the loop guard of links inside it

    @property
    def sealable(self) -> bool:
        """Its stat can vouch for its files: not reached through a link, no subdirectory (filesystems that do not
        count them never seal) and not changed too close to when it was stat'ed (a change in that clock tick
        could leave it as it was)."""
        return not self.via_link and self.nlink == 2 and max(self.stat[0], self.stat[1]) < self.seen_ns - RACY_NS

    def files(self) -> Iterator[SourceFile]:
        """Its files in key order."""
        return _walk(self.path, self.rel, "", (), False, self.via_link, [self.real])


@overload
def walk_shard(source: Path, shard: Shard, digest_dirs: Literal[False] = False) -> Iterator[SourceFile]: ...
@overload
def walk_shard(source: Path, shard: Shard, digest_dirs: bool) -> Iterator[Union[SourceFile, DigestDir]]: ...
def walk_shard(source: Path, shard: Shard, digest_dirs: bool = False) -> Iterator[Union[SourceFile, DigestDir]]:
    """Yield the shard's files in key order. Memory holds one directory listing per tree level.

    With ``digest_dirs``, a digest-named directory is yielded as a ``DigestDir`` instead of its files:
    the caller decides whether it needs listing.
    """
    base_rel, _, name_start = shard.prefix.rpartition("/")
    base_rel += "/"
    path = os.path.join(str(source), base_rel)
    real = os.path.realpath(path)
    via_link = real != os.path.join(os.path.realpath(source), base_rel).rstrip("/")  # e.g. blobs/ itself a link
    return _walk(path, base_rel, name_start, shard.excludes, digest_dirs, via_link, [real])


def branching(source: Path, shard: Shard) -> tuple[str, list[str]]:
    """Where the shard's files branch in the source, from directory listings only: the common prefix of their keys
    (a chain of single directories followed down) and the characters that come next (``layout.split``)."""
    prefix = shard.prefix
    for _ in range(MAX_CHAIN):
        base_rel, _, name_start = prefix.rpartition("/")
        base_rel += "/"
        names = [name for name, _ in _sorted_entries(os.path.join(str(source), base_rel)) if name.startswith(name_start)
                 and not (base_rel + name).startswith(shard.excludes) and not is_uploads(base_rel + name)]
        common = os.path.commonprefix(names)
        if len(names) == 1 and common.endswith("/"):
            prefix = base_rel + common
            continue
        return base_rel + common, [name[len(common)] for name in names if len(name) > len(common)]
    return shard.prefix, []  # deeper than any registry path (a loop of links): the walk will say


def walk_path(source: Path, rel: str, digest_dirs: bool = False) -> Iterator[Union[SourceFile, DigestDir]]:
    """Like ``walk_shard`` for one path: the file itself, or everything under it if it is a directory."""
    path = os.path.join(str(source), rel)
    if is_uploads(rel) or _skip_not_utf8(rel, path, os.path.isdir(path)):
        return iter(())
    seen_ns = time.time_ns()
    try:
        st = os.stat(path)
    except FileNotFoundError:
        return iter(())
    via_link = os.path.realpath(path) != os.path.join(os.path.realpath(source), rel)
    if stat.S_ISDIR(st.st_mode):
        return _walk(path, rel + "/", "", (), digest_dirs, via_link, [os.path.realpath(path)])
    if stat.S_ISREG(st.st_mode):
        return iter([SourceFile(rel, st.st_size, st.st_mtime_ns, st.st_ctime_ns, st.st_ino, seen_ns, via_link)])
    return iter(())


def _enter_link(entry: os.DirEntry, rel: str, reals: list[str]) -> str:
    """The real path of a linked directory about to be walked; a loop (it contains a directory on the walk's
    path) stops the run, naming the link."""
    target = os.path.realpath(entry.path)
    if any(real == target or real.startswith(target + "/") for real in reals):
        raise SymlinkLoop(f"{entry.path} is a symbolic link to {target}, which contains it: the tree would never end. "
                          f"Replace the link at {rel} with the directory it should hold, then re-run")
    return target


@overload
def _walk(path: str, base_rel: str, name_start: str, excludes: tuple[str, ...], digest_dirs: Literal[False],
          via_link: bool, reals: list[str]) -> Iterator[SourceFile]: ...
@overload
def _walk(path: str, base_rel: str, name_start: str, excludes: tuple[str, ...], digest_dirs: bool,
          via_link: bool, reals: list[str]) -> Iterator[Union[SourceFile, DigestDir]]: ...
def _walk(path: str, base_rel: str, name_start: str, excludes: tuple[str, ...], digest_dirs: bool,
          via_link: bool, reals: list[str]) -> Iterator[Union[SourceFile, DigestDir]]:
    """Depth-first in key order. ``reals`` holds the real path of each directory on the walk's path (for the loop
    guard); ``via_link`` says whether the directory being walked was reached through a link."""
    stack = [iter(_sorted_entries(path))]
    rels = [base_rel]
    linked = [via_link]
    while stack:
        pair = next(stack[-1], None)
        if pair is None:
            stack.pop()
            rels.pop()
            linked.pop()
            reals.pop()
            continue
        sort_name, entry = pair
        rel = rels[-1] + sort_name
        if len(stack) == 1 and not sort_name.startswith(name_start):
            continue
        if rel.startswith(excludes):
            continue
        is_link = entry.is_symlink()
        if sort_name.endswith("/"):
            if entry.name == UPLOADS_DIR and is_uploads(rel):
                continue
            real = _enter_link(entry, rel, reals) if is_link else f"{reals[-1]}/{entry.name}"
            inside_link = linked[-1] or is_link
            if digest_dirs and len(sort_name) == 65 and is_digest_dir(rel):
                seen_ns = time.time_ns()
                try:
                    st = os.stat(entry.path)
                except FileNotFoundError:
                    continue
                yield DigestDir(rel, entry.path, (st.st_mtime_ns, st.st_ctime_ns, st.st_ino), seen_ns, st.st_nlink,
                                inside_link, real)
                continue
            stack.append(iter(_sorted_entries(entry.path)))
            rels.append(rel)
            linked.append(inside_link)
            reals.append(real)
            continue
        if not entry.is_file():
            if is_link and not os.path.exists(entry.path):
                log.warning("%s is a symbolic link to nothing: skipped (the registry cannot serve it either)", entry.path)
            continue
        seen_ns = time.time_ns()
        try:
            st = entry.stat()
        except FileNotFoundError:
            continue  # removed while we walked: it is simply not part of this pass
        yield SourceFile(rel, st.st_size, st.st_mtime_ns, st.st_ctime_ns, st.st_ino, seen_ns, linked[-1] or is_link)


def source_totals(source: Path, stop: threading.Event) -> Optional[tuple[int, int]]:
    """The files and bytes a whole pass walks, walked the same way; None once ``stop`` is set."""
    files = nbytes = 0
    for shard in shards():
        for found in walk_shard(source, shard):
            if stop.is_set():
                return None
            files += 1
            nbytes += found.size
    return files, nbytes


def read_bytes(source: Path, rel: str) -> bytes:
    """The current content of a source file."""
    with open(os.path.join(source, rel), "rb") as handle:
        return handle.read()
