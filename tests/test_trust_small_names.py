"""A file name that is not UTF-8 under the source (issue 21 item 11): S3 keys are UTF-8 and the registry never
writes such a name, so sync, verify and run skip it with a warning naming it, and copy everything else. Oracles: a
plain os.walk of the source, the bucket read back with the test's own client."""

from __future__ import annotations

import os

import pytest
from conftest import UPLOADS, bucket_contents, run_cli, source_files
from test_e2e import push_images

from migrator.registry_http import RegistryClient

pytestmark = pytest.mark.slow

STRAY = b"caf\xe9-notes.txt"


def test_a_file_name_that_is_not_utf8_is_skipped_and_named(local_registry, s3, bucket):
    push_images(RegistryClient(local_registry.url), 2, seed=71)
    repositories = os.path.join(os.fsencode(local_registry.root), b"docker/registry/v2/repositories")
    with open(os.path.join(repositories, STRAY), "wb") as handle:
        handle.write(b"an operator's notes\n")
    plan = local_registry.write_plan()
    named = repr(os.path.join(repositories, STRAY))  # the bytes, as the file system holds them

    for command in (("sync", plan), ("verify", plan), ("run", "--yes", plan), ("verify", plan)):
        result = run_cli(*command)
        assert result.returncode == 0, f"{command[0]}: {result.stdout}{result.stderr}"
        assert "UnicodeEncodeError" not in result.stderr and "re-run" not in result.stderr, result.stderr
        if command[0] == "sync":
            assert named in result.stderr and "not UTF-8" in result.stderr, result.stderr

    expected = {rel: data for rel, data in source_files(local_registry.root).items() if "caf" not in rel}
    copied = {rel: data for rel, data in bucket_contents(s3, bucket, "reg/").items() if not UPLOADS.match(rel)}
    assert copied == expected


def test_a_path_the_change_feed_reports_with_a_name_that_is_not_utf8_is_skipped(tmp_path, caplog):
    from migrator.walker import walk_path

    path = os.path.join(os.fsencode(tmp_path), b"docker", STRAY)
    os.makedirs(os.path.dirname(path))
    with open(path, "wb") as handle:
        handle.write(b"x")
    assert list(walk_path(tmp_path, os.fsdecode(b"docker/" + STRAY))) == []
    assert repr(path) in caplog.text
