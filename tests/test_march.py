"""The one decision function and the sorted walk it depends on."""

from __future__ import annotations

import os
import sqlite3
import time

from migrator.journal import Journal, JournalRow
from migrator.layout import Shard, is_digest_dir, shards
from migrator.march import Action, decide, march, md5_of
from migrator.testing.synthetic import RegistryTree
from migrator.walker import SourceFile, walk_shard

LINK = "docker/registry/v2/repositories/app/_manifests/tags/latest/current/link"
BLOB = "docker/registry/v2/blobs/sha256/ab/" + "ab" * 32 + "/data"
OLD = 1_000_000_000_000_000_000  # 2001


def src(rel, size=71, mtime=OLD, ctime=OLD, ino=7, seen=OLD + 10**12):
    return SourceFile(rel, size, mtime, ctime, ino, seen)


def row(rel, size=71, md5="m", mtime=OLD, ctime=OLD, ino=7, recorded=OLD + 10**12, confirmed=True):
    return JournalRow(rel, size, md5, mtime, ctime, ino, recorded, confirmed)


def never_read(rel):
    raise AssertionError(f"{rel} should not have been read")


def test_source_only_is_uploaded_and_destination_only_is_a_delete_candidate():
    assert decide(src(LINK), None, never_read).action is Action.UPLOAD
    assert decide(None, row(LINK), never_read).action is Action.DELETE


def test_blob_renamed_into_place_with_an_old_mtime_is_uploaded():
    # a finished upload is renamed into blobs/: new key, old mtime: it must be copied anyway
    decision = decide(src(BLOB, size=5000, mtime=OLD - 10**15), None, never_read)
    assert decision.action is Action.UPLOAD


def test_blob_decided_by_size_only_never_by_mtime():
    assert decide(src(BLOB, size=10, mtime=OLD + 5, ino=9), row(BLOB, size=10, md5=None), never_read).action is Action.KEEP
    assert decide(src(BLOB, size=11), row(BLOB, size=10, md5=None), never_read).action is Action.UPLOAD


def test_same_size_in_place_link_rewrite_is_caught_by_content():
    # truncate + write: same size, new ctime/mtime; the content decides
    changed = src(LINK, mtime=OLD + 10**9, ctime=OLD + 10**9)
    assert decide(changed, row(LINK, md5=md5_of(b"old")), lambda rel: md5_of(b"new")).action is Action.UPLOAD
    assert decide(changed, row(LINK, md5=md5_of(b"same")), lambda rel: md5_of(b"same")).action is Action.REFRESH


def test_identical_old_stat_is_trusted_without_reading():
    assert decide(src(LINK), row(LINK), never_read).action is Action.KEEP


def test_racy_stat_is_not_trusted():
    # recorded within the same clock tick as the file's change: a later write could leave the stat as it was
    now = time.time_ns()
    racy_src = src(LINK, mtime=now, ctime=now, seen=now)
    racy_row = row(LINK, mtime=now, ctime=now, recorded=now, md5=md5_of(b"old"))
    assert decide(racy_src, racy_row, lambda rel: md5_of(b"new")).action is Action.UPLOAD


def test_unconfirmed_rows_are_never_trusted():
    assert decide(src(BLOB, size=10), row(BLOB, size=10, confirmed=False), never_read).action is Action.UPLOAD


def test_march_pairs_sorted_streams():
    a = [src("a"), src("b"), src("d")]
    b = [row("b"), row("c"), row("d")]
    pairs = [(s and s.rel, r and r.rel) for s, r in march(iter(a), iter(b))]
    assert pairs == [("a", None), ("b", "b"), (None, "c"), ("d", "d")]


def test_walk_yields_byte_order_and_skips_uploads(tmp_path):
    tree = RegistryTree(tmp_path)
    base = "docker/registry/v2/repositories/"
    for rel in ["a/x", "a-b/y", "a.c/z", "ab/w", "a/_uploads/u/data", "a/_layers/l"]:
        (tmp_path / base / rel).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / base / rel).write_text("x")
    tree.upload_in_progress("zz", "uuid", b"partial")
    rels = [f.rel for shard in shards() for f in walk_shard(tmp_path, shard)]
    ours = [r[len(base):] for r in rels if r.startswith(base)]
    assert ours == sorted(ours)
    assert set(ours) == {"a/x", "a-b/y", "a.c/z", "ab/w", "a/_layers/l"}


def test_shards_partition_the_keyspace(tmp_path):
    tree = RegistryTree(tmp_path)
    tree.image("library/alpine", "3", [b"layer"])
    (tmp_path / "docker/registry/lockfiles").mkdir(parents=True)
    (tmp_path / "docker/registry/lockfiles/lock").write_text("x")
    (tmp_path / "docker/registry/v2/repositories/Upper/file").parent.mkdir(parents=True)
    (tmp_path / "docker/registry/v2/repositories/Upper/file").write_text("x")
    seen = [f.rel for shard in shards() for f in walk_shard(tmp_path, shard)]
    on_disk = [str(p.relative_to(tmp_path)) for p in tmp_path.rglob("*") if p.is_file()]
    assert sorted(seen) == sorted(on_disk)  # every file exactly once
    assert all(sum(s.contains(rel) for s in shards()) == 1 for rel in on_disk)


def test_shard_ranges_skip_excluded_prefixes():
    shard = Shard("rest", "docker/", ("docker/b/", "docker/d/"))
    assert list(shard.ranges()) == [("docker/", "docker/b/"), ("docker/b0", "docker/d/"), ("docker/d0", "docker0")]


def test_walk_tolerates_files_vanishing(tmp_path):
    tree = RegistryTree(tmp_path)
    digest = tree.blob(b"x" * 100)
    walker = walk_shard(tmp_path, Shard("b", f"docker/registry/v2/blobs/sha256/{digest[7:9]}/"))
    os.remove(tmp_path / f"docker/registry/v2/blobs/sha256/{digest[7:9]}/{digest[7:]}/data")
    assert list(walker) == []


def test_only_the_registrys_digest_directories_can_be_sealed():
    hexdigest = "ab" * 32
    v2 = "docker/registry/v2/"
    for rel in [f"{v2}blobs/sha256/ab/{hexdigest}/", f"{v2}repositories/a/b/_layers/sha256/{hexdigest}/",
                f"{v2}repositories/a/_manifests/revisions/sha256/{hexdigest}/",
                f"{v2}repositories/a/_manifests/tags/v1/index/sha256/{hexdigest}/"]:
        assert is_digest_dir(rel), rel
    for rel in [f"{v2}repositories/a/sha256/{hexdigest}/",  # a repository may be named like that
                f"{v2}repositories/a/_manifests/tags/v1/current/", f"{v2}blobs/sha256/ab/",
                f"{v2}repositories/a/_uploads/sha256/{hexdigest}/"]:
        assert not is_digest_dir(rel), rel


def test_a_journal_written_before_seals_gains_their_columns(tmp_path):
    db = tmp_path / "journal.sqlite"
    with sqlite3.connect(db) as conn:
        conn.execute("CREATE TABLE objects (rel TEXT PRIMARY KEY, size INTEGER NOT NULL, md5 TEXT, mtime_ns INTEGER, "
                     "ctime_ns INTEGER, ino INTEGER, recorded_ns INTEGER, confirmed INTEGER NOT NULL) WITHOUT ROWID")
        conn.execute("INSERT INTO objects VALUES (?, 71, 'm', 1, 1, 7, 1, 1)", (LINK,))
    journal = Journal(db)
    assert [(r.rel, r.dir_stat) for r in journal.rows(Shard("all", "docker/"))] == [(LINK, None)]
    journal.record([row(LINK)._replace(dir_stat=(1, 2, 3))])
    assert [r.dir_stat for r in journal.rows(Shard("all", "docker/"))] == [(1, 2, 3)]
