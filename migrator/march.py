"""Two sorted listings walked in lock step, and the one place where the sync decision is made.

Like rclone's march: every key is source-only, destination-only or a match; ``decide`` turns each
into an action. The rules follow the registry's layout:

* blob ``data`` files are content-addressed and written once: upload when absent or the size
  differs; mtime never matters (a finished upload is renamed into place with its old mtime);
* link files and everything else: upload when the size or the content differs. A tag move rewrites
  ``current/link`` in place at the same size, so the content is compared whenever the file's stat
  (mtime, ctime, inode) is not exactly the one recorded, or is too recent to be trusted ("racy", as
  git calls it: a write in the same clock tick as our stat would leave the stat unchanged);
* destination-only keys are delete candidates; only the delete step acts on them;
* a digest-named directory (a blob's, or a ``_layers``/``revisions``/tag ``index`` link's) holds files
  whose content its name fixes: once every file in it is settled, its rows are *sealed* with the
  directory's stat, and while that stat is unchanged later passes keep them without listing it. Only
  ``tags/*/current/link`` and files outside such directories are stat'ed on every pass.
"""

from __future__ import annotations

import enum
import hashlib
from dataclasses import dataclass
from typing import Callable, Iterator, Optional, Protocol, TypeVar, Union

from migrator.journal import JournalRow
from migrator.layout import is_blob_data
from migrator.walker import RACY_NS, DigestDir, SourceFile


class Action(enum.Enum):
    UPLOAD = "upload"
    DELETE = "delete"
    REFRESH = "refresh"  # content unchanged, only the recorded stat is new
    KEEP = "keep"


@dataclass(frozen=True)
class Decision:
    action: Action
    rel: str
    source: Optional[SourceFile]
    row: Optional[JournalRow]
    reason: str
    md5: Optional[str] = None  # content hash computed while deciding, when there was one

    @property
    def file(self) -> SourceFile:
        """The source file: every action but DELETE has one."""
        assert self.source is not None, f"{self.action.value} {self.rel}: no source file"
        return self.source

    @property
    def recorded(self) -> JournalRow:
        """The journal's row: DELETE, KEEP and REFRESH have one (an UPLOAD only when the key was recorded)."""
        assert self.row is not None, f"{self.action.value} {self.rel}: not in the journal"
        return self.row


class Keyed(Protocol):
    @property
    def rel(self) -> str: ...


Left = TypeVar("Left", bound=Keyed)
Right = TypeVar("Right", bound=Keyed)


def march(sources: Iterator[Left], rows: Iterator[Right]) -> Iterator[tuple[Optional[Left], Optional[Right]]]:
    """Pair two key-ordered streams: (source, None), (None, row) or (source, row)."""
    src = next(sources, None)
    dst = next(rows, None)
    while src is not None or dst is not None:
        if dst is None or (src is not None and src.rel < dst.rel):
            yield src, None
            src = next(sources, None)
        elif src is None or dst.rel < src.rel:
            yield None, dst
            dst = next(rows, None)
        else:
            yield src, dst
            src = next(sources, None)
            dst = next(rows, None)


@dataclass
class Unit:
    """What ``march_units`` yields: pairs of one file or of a listed digest directory, or a sealed directory's rows."""

    pairs: list[tuple[Optional[SourceFile], Optional[JournalRow]]]
    directory: Optional[DigestDir] = None
    sealed: Optional[list[JournalRow]] = None  # the directory is unchanged since its rows were sealed: keep them


def march_units(
    items: Iterator[Union[SourceFile, DigestDir]], rows: Iterator[JournalRow]
) -> Iterator[Unit]:
    """Like ``march``, with digest directories: one whose stat equals the seal on every row under it is not
    listed (its rows are kept as they are); any other is listed and paired file by file."""
    row = next(rows, None)
    for item in items:
        while row is not None and row.rel < item.rel:
            yield Unit([(None, row)])
            row = next(rows, None)
        if isinstance(item, SourceFile):
            if row is not None and row.rel == item.rel:
                yield Unit([(item, row)])
                row = next(rows, None)
            else:
                yield Unit([(item, None)])
            continue
        inside = []
        while row is not None and row.rel.startswith(item.rel):
            inside.append(row)
            row = next(rows, None)
        if inside and all(r.sealed_by(item.stat) for r in inside):
            yield Unit([], item, sealed=inside)
        else:
            yield Unit(list(march(item.files(), iter(inside))), item)
    while row is not None:
        yield Unit([(None, row)])
        row = next(rows, None)


def md5_of(data: Union[bytes, bytearray]) -> str:
    return hashlib.md5(data, usedforsecurity=False).hexdigest()


def _stat_trusted(src: SourceFile, row: JournalRow) -> bool:
    same = (row.mtime_ns, row.ctime_ns, row.ino) == (src.mtime_ns, src.ctime_ns, src.ino)
    racy = row.recorded_ns is None or max(src.mtime_ns, src.ctime_ns) >= row.recorded_ns - RACY_NS
    return same and not racy


def decide(
    src: Optional[SourceFile], row: Optional[JournalRow], content_md5: Callable[[str], str]
) -> Decision:
    """The sync decision for one key. ``content_md5(rel)`` reads the source file when needed."""
    if src is None:
        assert row is not None
        return Decision(Action.DELETE, row.rel, None, row, "not in source")
    if row is None:
        return Decision(Action.UPLOAD, src.rel, src, None, "new")
    if not row.confirmed:
        return Decision(Action.UPLOAD, src.rel, src, row, "unconfirmed")
    if row.size != src.size:
        return Decision(Action.UPLOAD, src.rel, src, row, "size differs")
    if is_blob_data(src.rel):
        return Decision(Action.KEEP, src.rel, src, row, "blob present")
    if _stat_trusted(src, row):
        return Decision(Action.KEEP, src.rel, src, row, "unchanged")
    md5 = content_md5(src.rel)
    if md5 != row.md5:
        return Decision(Action.UPLOAD, src.rel, src, row, "content differs", md5)
    return Decision(Action.REFRESH, src.rel, src, row, "content unchanged", md5)
