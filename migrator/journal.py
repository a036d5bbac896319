"""What the bucket holds as far as we know, on disk (sqlite, WAL), safe against kill -9 at any moment.

Before any upload or delete, the rows it touches are committed as *unconfirmed*; after it succeeds
they are committed with the new facts. A crash in between leaves them unconfirmed, and an
unconfirmed row is never trusted: the next pass uploads (or deletes) it again.
"""

from __future__ import annotations

import sqlite3
import threading
import time
from contextlib import contextmanager
from pathlib import Path
from typing import Iterable, Iterator, NamedTuple, Optional

from migrator.layout import Shard

SCHEMA = """
CREATE TABLE IF NOT EXISTS objects (
    rel TEXT PRIMARY KEY,
    size INTEGER NOT NULL,
    md5 TEXT,
    mtime_ns INTEGER,
    ctime_ns INTEGER,
    ino INTEGER,
    recorded_ns INTEGER,
    confirmed INTEGER NOT NULL,
    dir_mtime_ns INTEGER,
    dir_ctime_ns INTEGER,
    dir_ino INTEGER
) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS seeded_shards (name TEXT PRIMARY KEY) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS window_changes (
    seq INTEGER PRIMARY KEY AUTOINCREMENT, rel TEXT NOT NULL, existed INTEGER NOT NULL
);
CREATE TABLE IF NOT EXISTS window_proofs (
    rel TEXT PRIMARY KEY, present INTEGER NOT NULL, size INTEGER, md5 TEXT
) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS rechecks (rel TEXT PRIMARY KEY) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value TEXT) WITHOUT ROWID;
"""


class JournalRow(NamedTuple):
    """One object the bucket holds: its size, md5 (non-blob files), and the source stat it came from.

    A named tuple, not a dataclass: a pass builds one per object, and this is five times cheaper."""

    rel: str
    size: int
    md5: Optional[str] = None
    mtime_ns: Optional[int] = None
    ctime_ns: Optional[int] = None
    ino: Optional[int] = None
    recorded_ns: Optional[int] = None
    confirmed: bool = True
    dir_stat: Optional[tuple[int, int, int]] = None  # its digest directory's (mtime, ctime, inode) when sealed

    def sealed_by(self, stat: tuple[int, int, int]) -> bool:
        """Confirmed, and sealed with exactly this stat of its directory."""
        return self.confirmed and self.dir_stat == stat


_COLUMNS = "rel, size, md5, mtime_ns, ctime_ns, ino, recorded_ns, confirmed, dir_mtime_ns, dir_ctime_ns, dir_ino"
_SEAL_COLUMNS = ("dir_mtime_ns", "dir_ctime_ns", "dir_ino")


class Journal:
    """One sqlite file; each thread gets its own connection."""

    def __init__(self, path: Path):
        self.path = Path(path)
        self._local = threading.local()
        with self._connect() as conn:
            conn.executescript(SCHEMA)
            known = {column[1] for column in conn.execute("PRAGMA table_info(objects)")}
            for column in _SEAL_COLUMNS:  # journals written before directories were sealed
                if column not in known:
                    conn.execute(f"ALTER TABLE objects ADD COLUMN {column} INTEGER")

    def _connect(self) -> sqlite3.Connection:
        conn = sqlite3.connect(self.path, timeout=120, isolation_level=None, check_same_thread=False)
        conn.execute("PRAGMA journal_mode=WAL")
        conn.execute("PRAGMA synchronous=FULL")
        return conn

    @property
    def _conn(self) -> sqlite3.Connection:
        conn = getattr(self._local, "conn", None)
        if conn is None:
            conn = self._local.conn = self._connect()
        return conn

    @contextmanager
    def _transaction(self) -> Iterator[sqlite3.Connection]:
        """One write transaction: committed (and fsynced) as a whole, or not at all."""
        conn = self._conn
        conn.execute("BEGIN IMMEDIATE")
        try:
            yield conn
            conn.execute("COMMIT")
        except BaseException:
            conn.execute("ROLLBACK")
            raise

    def _write(self, sql: str, rows: Iterable[tuple]) -> None:
        with self._transaction() as conn:
            conn.executemany(sql, rows)

    def rows(self, shard: Shard) -> Iterator[JournalRow]:
        """The shard's rows in key order."""
        return self.rows_in(shard.ranges())

    def rows_in(self, ranges: Iterable[tuple[str, str]]) -> Iterator[JournalRow]:
        """Rows in these ordered [low, high) key ranges, in key order, streamed on a reading connection of their
        own (kept for the next call)."""
        idle = getattr(self._local, "idle_readers", None)
        if idle is None:
            idle = self._local.idle_readers = []
        conn = idle.pop() if idle else self._connect()
        try:
            for low, high in ranges:
                cursor = conn.execute(
                    f"SELECT {_COLUMNS} FROM objects WHERE rel >= ? AND rel < ? ORDER BY rel", (low, high)
                )
                try:
                    for rel, size, md5, mtime, ctime, ino, recorded, confirmed, dir_mtime, dir_ctime, dir_ino in cursor:
                        yield JournalRow(rel, size, md5, mtime, ctime, ino, recorded, bool(confirmed),
                                         None if dir_ino is None else (dir_mtime, dir_ctime, dir_ino))
                finally:
                    cursor.close()  # ends the read snapshot: the next call sees every commit made since
        finally:
            idle.append(conn)

    def mark_unconfirmed(self, rels: Iterable[str]) -> None:
        """Intent: these keys are about to change in the bucket. New keys get a placeholder row.

        Inside the read-only window each key is also logged with whether the bucket held it before,
        so the window's change can be proven key by key afterwards.
        """
        rels = list(rels)
        window_open = self.get_meta("window") == "open"
        with self._transaction() as conn:
            if window_open:
                conn.executemany(
                    "INSERT INTO window_changes (rel, existed) SELECT ?, EXISTS("
                    "SELECT 1 FROM objects WHERE rel = ? AND confirmed = 1 AND size >= 0)",
                    ((rel, rel) for rel in rels),
                )
                conn.executemany("DELETE FROM window_proofs WHERE rel = ?", ((rel,) for rel in rels))
            conn.executemany(
                "INSERT INTO objects (rel, size, confirmed) VALUES (?, -1, 0) "
                "ON CONFLICT(rel) DO UPDATE SET confirmed = 0",
                ((rel,) for rel in rels),
            )

    def confirmed_facts(self, rel: str) -> Optional[tuple[int, Optional[str]]]:
        """(size, md5) of a confirmed object, or None: one indexed lookup."""
        found = self._conn.execute("SELECT size, md5 FROM objects WHERE rel = ? AND confirmed = 1 AND size >= 0",
                                   (rel,)).fetchone()
        return (found[0], found[1]) if found else None

    def unconfirmed(self) -> list[str]:
        """Keys whose state in the bucket is not known: the next pass (the window's too) re-checks each of them."""
        return [rel for (rel,) in self._conn.execute("SELECT rel FROM objects WHERE confirmed = 0 ORDER BY rel")]

    def set_rechecks(self, rels: Iterable[str]) -> None:
        """Keys the next pass must decide from their content, whatever their stat or seal says (what online
        verification excused as in flight): their recorded stat and seal are dropped, what the bucket holds is kept."""
        rels = list(rels)
        with self._transaction() as conn:
            conn.execute("DELETE FROM rechecks")
            conn.executemany("INSERT OR IGNORE INTO rechecks (rel) VALUES (?)", ((rel,) for rel in rels))
            conn.executemany("UPDATE objects SET mtime_ns = NULL, ctime_ns = NULL, ino = NULL, dir_mtime_ns = NULL, "
                             "dir_ctime_ns = NULL, dir_ino = NULL WHERE rel = ?", ((rel,) for rel in rels))

    def rechecks(self) -> list[str]:
        return [rel for (rel,) in self._conn.execute("SELECT rel FROM rechecks ORDER BY rel")]

    def start_window(self) -> None:
        """From now on every change is logged (the bucket was just proven equal to the source)."""
        with self._transaction() as conn:
            conn.execute("DELETE FROM window_changes")
            conn.execute("DELETE FROM window_proofs")
            conn.execute("INSERT OR REPLACE INTO meta (key, value) VALUES ('window', 'open')")

    def close_window(self) -> None:
        self.set_meta("window", "closed")

    def window_changes(self) -> list[tuple[str, bool, Optional[tuple]]]:
        """Each key changed in the window, once: whether the bucket held it before the window, and the bucket's
        own proof of the change when it gave one: (present, size, md5) from a PutObject ETag or DeleteObjects."""
        rows = self._conn.execute(
            "SELECT c.rel, c.existed, p.present, p.size, p.md5 FROM window_changes c "
            "LEFT JOIN window_proofs p ON p.rel = c.rel "
            "WHERE c.seq IN (SELECT MIN(seq) FROM window_changes GROUP BY rel) ORDER BY c.rel"
        ).fetchall()
        return [(rel, bool(existed), None if present is None else (bool(present), size, md5))
                for rel, existed, present, size, md5 in rows]

    def record(self, rows: Iterable[JournalRow], proofs: Iterable[tuple[str, int, str]] = ()) -> None:
        """The bucket now holds these objects with these facts; ``proofs`` (rel, size, md5) are the bucket's own
        word for some of them (an ETag equal to the md5 of the bytes sent)."""
        now = time.time_ns()
        with self._transaction() as conn:
            conn.executemany(
                f"INSERT OR REPLACE INTO objects ({_COLUMNS}) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
                (
                    (r.rel, r.size, r.md5, r.mtime_ns, r.ctime_ns, r.ino,
                     now if r.recorded_ns is None else r.recorded_ns, int(r.confirmed), *(r.dir_stat or (None,) * 3))
                    for r in rows
                ),
            )
            conn.executemany("INSERT OR REPLACE INTO window_proofs (rel, present, size, md5) VALUES (?, 1, ?, ?)", proofs)

    def forget(self, rels: Iterable[str], proven: Iterable[str] = ()) -> None:
        """These keys are gone from the bucket; ``proven`` ones were listed as deleted by DeleteObjects itself."""
        with self._transaction() as conn:
            conn.executemany("DELETE FROM objects WHERE rel = ?", ((rel,) for rel in rels))
            conn.executemany("INSERT OR REPLACE INTO window_proofs (rel, present) VALUES (?, 0)", ((rel,) for rel in proven))

    def is_seeded(self, shard: Shard) -> bool:
        return self._conn.execute("SELECT 1 FROM seeded_shards WHERE name = ?", (shard.name,)).fetchone() is not None

    def mark_seeded(self, *seeded: Shard) -> None:
        """The shards whose objects the journal now holds, in one transaction (one fsync)."""
        self._write("INSERT OR IGNORE INTO seeded_shards (name) VALUES (?)", [(shard.name,) for shard in seeded])

    def count(self) -> int:
        """Objects the bucket holds as far as we know (unconfirmed placeholders excluded)."""
        return self._conn.execute("SELECT COUNT(*) FROM objects WHERE size >= 0").fetchone()[0]

    def total_bytes(self) -> int:
        """Bytes of the objects the bucket holds as far as we know."""
        return self._conn.execute("SELECT COALESCE(SUM(size), 0) FROM objects WHERE size >= 0").fetchone()[0]

    def count_in(self, ranges: Iterable[tuple[str, str]]) -> int:
        """Like ``count``, within these [low, high) key ranges."""
        return sum(self._conn.execute("SELECT COUNT(*) FROM objects WHERE rel >= ? AND rel < ? AND size >= 0",
                                      (low, high)).fetchone()[0] for low, high in ranges)

    def first_in(self, ranges: Iterable[tuple[str, str]], start: str = "") -> Optional[str]:
        """The smallest key at or after ``start`` within these ordered [low, high) key ranges."""
        for low, high in ranges:
            found = self._conn.execute("SELECT MIN(rel) FROM objects WHERE rel >= ? AND rel < ? AND size >= 0",
                                       (max(low, start), high)).fetchone()[0]
            if found is not None:
                return found
        return None

    def last_in(self, ranges: Iterable[tuple[str, str]]) -> Optional[str]:
        """The largest key within these ordered [low, high) key ranges."""
        for low, high in reversed(list(ranges)):
            found = self._conn.execute("SELECT MAX(rel) FROM objects WHERE rel >= ? AND rel < ? AND size >= 0",
                                       (low, high)).fetchone()[0]
            if found is not None:
                return found
        return None

    def get_meta(self, key: str) -> Optional[str]:
        row = self._conn.execute("SELECT value FROM meta WHERE key = ?", (key,)).fetchone()
        return row[0] if row else None

    def set_meta(self, key: str, value: str) -> None:
        self._write("INSERT OR REPLACE INTO meta (key, value) VALUES (?, ?)", [(key, value)])

    def unseed(self) -> None:
        """Forget what the bucket holds: the next pass lists every shard again."""
        with self._transaction() as conn:
            conn.execute("DELETE FROM objects")
            conn.execute("DELETE FROM seeded_shards")
