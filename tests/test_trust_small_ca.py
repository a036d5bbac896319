"""A CA given the AWS way (AWS_CA_BUNDLE, no bucket.ca_bundle) is trusted by every client: boto3, obstore and the
registry client following the 307 to the https bucket (issue 21 item 8); a PUT path that cannot use the certificate
is given up once for the run and said once. Oracles: skopeo pulls, the gateway read back with the test's client."""

from __future__ import annotations

import logging
import os
import urllib.parse

import pytest
from conftest import UPLOADS, bucket_contents, run_cli, source_files
from oci import Layout, pull, push

from migrator.direct_put import GIVE_UP_AFTER, FallbackPut
from migrator.testing.local import LocalRegistry


@pytest.mark.slow
def test_run_over_https_trusts_the_ca_from_aws_ca_bundle(tmp_path, rgw):
    bucket = f"test-ca-{os.getpid()}"
    rgw.client().create_bucket(Bucket=bucket)
    registry = LocalRegistry(tmp_path / "registry", rgw.https_endpoint, bucket, prefix="reg").start()
    try:
        host = urllib.parse.urlparse(registry.url).netloc
        layout = Layout(tmp_path / "images")
        layout.multi_arch("latest", "multi")
        push(layout, "latest", host, "multi/arch:latest")
        plan = registry.write_plan(
            bucket={"name": bucket, "prefix": "reg", "region": "us-east-1", "endpoint": rgw.https_endpoint},
            registry={"config": str(registry.config), "restart": registry.restart_command, "url": registry.url,
                      "health_timeout_seconds": 30, "storage": {"skipverify": True}})
        result = run_cli("-v", "run", "--yes", plan, env=dict(os.environ, AWS_CA_BUNDLE=str(rgw.certificate)))
        assert result.returncode == 0, result.stdout + result.stderr
        assert "for the rest of the run" not in result.stderr, result.stderr  # obstore trusted it too
        assert pull(host, "multi/arch:latest", tmp_path / "after") == layout.digest("latest")
        copied = {rel: data for rel, data in bucket_contents(rgw.client(), bucket, "reg/").items()
                  if not UPLOADS.match(rel)}
        assert copied == source_files(registry.root)
    finally:
        registry.stop()


class CertificateRefused(FallbackPut):
    """A PUT path whose every request fails on the endpoint's certificate."""

    sent = 0

    def _send(self, key: str, body: bytes):
        self.sent += 1
        self.problem = "error sending request: invalid peer certificate: UnknownIssuer"
        return None


def test_a_put_path_refusing_the_certificate_is_given_up_once_and_said_once(caplog):
    put = CertificateRefused()
    with caplog.at_level(logging.WARNING, logger="migrator"):
        assert [put.put(f"key{n}", b"x") for n in range(GIVE_UP_AFTER * 3)] == [None] * (GIVE_UP_AFTER * 3)
    assert put.sent == 1 and put.given_up
    said = [record.getMessage() for record in caplog.records]
    assert len(said) == 1 and "UnknownIssuer" in said[0] and "rest of the run" in said[0], said
