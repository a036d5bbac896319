"""Walk one shard of the source tree as a stream of files in key order, skipping ``_uploads``."""

from __future__ import annotations

import os
import stat
import time
from pathlib import Path
from typing import Iterator, NamedTuple, Union

from migrator.layout import UPLOADS_DIR, Shard, is_digest_dir

RACY_NS = 3_000_000_000  # a stat this close to when it was taken is not trusted later (git's "racy" rule)


class SourceFile(NamedTuple):
    """One regular file of the source tree and the stat it had when walked."""

    rel: str
    size: int
    mtime_ns: int
    ctime_ns: int
    ino: int
    seen_ns: int  # wall clock just before the stat: what a later stat is compared against


def _sorted_entries(directory: str) -> list[tuple[str, os.DirEntry]]:
    """Entries of one directory, ordered so a depth-first walk yields keys in byte order.

    A directory sorts as ``name/``: ``a-b`` comes before ``a/x`` just as the keys do.
    """
    try:
        with os.scandir(directory) as it:
            entries = [(e.name + "/" if e.is_dir(follow_symlinks=False) else e.name, e) for e in it]
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

    @property
    def sealable(self) -> bool:
        """Its stat can vouch for its files: no subdirectory (filesystems that do not count them never seal)
        and not changed too close to when it was stat'ed (a change in that clock tick could leave it as it was)."""
        return self.nlink == 2 and max(self.stat[0], self.stat[1]) < self.seen_ns - RACY_NS

    def files(self) -> Iterator[SourceFile]:
        """Its files in key order."""
        return _walk(self.path, self.rel, "", (), digest_dirs=False)


def walk_shard(source: Path, shard: Shard, digest_dirs: bool = False) -> Iterator[Union[SourceFile, DigestDir]]:
    """Yield the shard's files in key order. Memory holds one directory listing per tree level.

    With ``digest_dirs``, a digest-named directory is yielded as a ``DigestDir`` instead of its files:
    the caller decides whether it needs listing.
    """
    base_rel, _, name_start = shard.prefix.rpartition("/")
    base_rel += "/"
    return _walk(os.path.join(str(source), base_rel), base_rel, name_start, shard.excludes, digest_dirs)


def walk_path(source: Path, rel: str, digest_dirs: bool = False) -> Iterator[Union[SourceFile, DigestDir]]:
    """Like ``walk_shard`` for one path: the file itself, or everything under it if it is a directory."""
    path = os.path.join(str(source), rel)
    seen_ns = time.time_ns()
    try:
        st = os.lstat(path)
    except FileNotFoundError:
        return iter(())
    if stat.S_ISDIR(st.st_mode):
        return _walk(path, rel + "/", "", (), digest_dirs)
    if stat.S_ISREG(st.st_mode):
        return iter([SourceFile(rel, st.st_size, st.st_mtime_ns, st.st_ctime_ns, st.st_ino, seen_ns)])
    return iter(())


def _walk(path: str, base_rel: str, name_start: str, excludes: tuple[str, ...],
          digest_dirs: bool) -> Iterator[Union[SourceFile, DigestDir]]:
    stack = [iter(_sorted_entries(path))]
    rels = [base_rel]
    while stack:
        pair = next(stack[-1], None)
        if pair is None:
            stack.pop()
            rels.pop()
            continue
        sort_name, entry = pair
        rel = rels[-1] + sort_name
        if len(stack) == 1 and not sort_name.startswith(name_start):
            continue
        if rel.startswith(excludes):
            continue
        if sort_name.endswith("/"):
            if entry.name == UPLOADS_DIR:
                continue
            if digest_dirs and len(sort_name) == 65 and is_digest_dir(rel):
                seen_ns = time.time_ns()
                try:
                    st = os.stat(entry.path)
                except FileNotFoundError:
                    continue
                yield DigestDir(rel, entry.path, (st.st_mtime_ns, st.st_ctime_ns, st.st_ino), seen_ns, st.st_nlink)
                continue
            stack.append(iter(_sorted_entries(entry.path)))
            rels.append(rel)
            continue
        if not entry.is_file(follow_symlinks=False):
            continue
        seen_ns = time.time_ns()
        try:
            st = entry.stat(follow_symlinks=False)
        except FileNotFoundError:
            continue  # removed while we walked: it is simply not part of this pass
        yield SourceFile(rel, st.st_size, st.st_mtime_ns, st.st_ctime_ns, st.st_ino, seen_ns)


def read_bytes(source: Path, rel: str) -> bytes:
    """The current content of a source file."""
    with open(os.path.join(source, rel), "rb") as handle:
        return handle.read()
