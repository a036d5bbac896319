"""A key online verification excuses as in flight is proven in the window by the bucket's answer, not the journal's
word, whatever the ETag kind (issue 21 item 2, second half). SSE-KMS ETags; the bucket holds another digest under a
tag (a dead task's upload), the source holds the journal's and was rewritten since the last pass began. Oracle: the
bucket read with the test's own client."""

from __future__ import annotations

import boto3
import pytest
import yaml
from conftest import bucket_contents, source_files

from migrator.migration import runner
from migrator.migration.context import open_context
from migrator.plan import load_plan
from migrator.testing.synthetic import RegistryTree, populate
from migrator.verify import Verifier

pytestmark = pytest.mark.slow


def kms_bucket(server, tmp_path) -> tuple:
    """(a client of the test's own, a new bucket whose default encryption is SSE-KMS: ETags are no MD5s)."""
    s3 = boto3.client("s3", endpoint_url=server.endpoint, region_name="us-east-1")
    bucket = "kms-" + tmp_path.name[-20:].lower().replace("_", "-")
    s3.create_bucket(Bucket=bucket)
    s3.put_bucket_encryption(Bucket=bucket, ServerSideEncryptionConfiguration={
        "Rules": [{"ApplyServerSideEncryptionByDefault": {"SSEAlgorithm": "aws:kms", "KMSMasterKeyID": "alias/reg"}}]})
    return s3, bucket


def test_a_key_excused_as_in_flight_is_uploaded_and_proven_in_the_window(tmp_path, kms_moto_server, monkeypatch):
    s3, bucket = kms_bucket(kms_moto_server, tmp_path)
    tree = RegistryTree(tmp_path / "src")
    populate(tree, images=6)
    plan = tmp_path / "kms.yml"
    plan.write_text(yaml.safe_dump({"source": str(tree.root), "sync": {"workers": 4, "shard_workers": 4},
                                    "bucket": {"name": bucket, "endpoint": kms_moto_server.endpoint}}))
    files = source_files(tree.root)
    tag = next(rel for rel in files if rel.endswith("current/link"))
    other = next(data for rel, data in files.items() if "/revisions/" in rel and data != files[tag])
    real_run = Verifier.run
    done = []

    def a_dead_tasks_upload_then_the_tag_back(self):
        if self.journal is not None and not done:  # online verification, the first time
            done.append(True)
            s3.put_object(Bucket=bucket, Key=tag, Body=other)  # what a worker uploaded before it died
            tree.link(tag, files[tag].decode())  # the source is back to the journal's digest, rewritten now
        return real_run(self)

    monkeypatch.setattr(Verifier, "run", a_dead_tasks_upload_then_the_tag_back)
    with open_context(load_plan(plan)) as ctx:  # the run as the library runs it (no registry section: no restarts)
        report = runner.run(ctx)
    assert done and report["verification"]["mismatched"] == 0
    assert s3.get_object(Bucket=bucket, Key=tag)["Body"].read() == files[tag]
    assert bucket_contents(s3, bucket) == source_files(tree.root)
