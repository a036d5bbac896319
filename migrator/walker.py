"""Walk one shard of the source tree as a stream of files in key order, skipping ``_uploads``."""

from __future__ import annotations

import os
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator

from migrator.layout import UPLOADS_DIR, Shard


@dataclass(frozen=True)
class SourceFile:
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


def walk_shard(source: Path, shard: Shard) -> Iterator[SourceFile]:
    """Yield the shard's files in key order. Memory holds one directory listing per tree level."""
    base_rel, _, name_start = shard.prefix.rpartition("/")
    base_rel += "/"
    root = str(source)
    stack = [iter(_sorted_entries(os.path.join(root, base_rel)))]
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
        if rel.startswith(shard.excludes):
            continue
        if sort_name.endswith("/"):
            if entry.name == UPLOADS_DIR:
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
