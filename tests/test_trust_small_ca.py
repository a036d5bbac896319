"""A CA given the AWS way (AWS_CA_BUNDLE, no bucket.ca_bundle) is trusted by every client: boto3, obstore and the
registry client following the 307 to the https bucket (issue 21 item 8); a PUT path that cannot use the certificate
is given up once for the run and said once. Oracles: skopeo pulls, the gateway read back with the test's client."""

from __future__ import annotations

import logging
import os
import sys
import urllib.parse

import pytest
from conftest import UPLOADS, bucket_contents, run_cli, source_files
from oci import Layout, pull, push
from test_e2e import push_images

from migrator.direct_put import GIVE_UP_AFTER, FallbackPut
from migrator.registry_http import RegistryClient
from migrator.testing.local import REGISTRY_BINARY, LocalRegistry


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


@pytest.mark.slow
def test_a_restart_command_starting_the_registry_itself_does_not_pass_it_aws_ca_bundle(local_registry):
    """A restart that starts docker-registry from its own shell hands it the environment migrator runs in; with
    AWS_CA_BUNDLE there (migrator's own way to trust a CA) Distribution 2.8's s3 driver panicked at the cut-over."""
    registry = local_registry
    push_images(RegistryClient(registry.url), 3, seed=8)
    starts_it_itself = (f"{sys.executable} -m migrator.testing.local stop --config {registry.config} "
                        f"--pidfile {registry.pidfile} --url {registry.url}; setsid {REGISTRY_BINARY} serve "
                        f"{registry.config} >> {registry.logfile} 2>&1 < /dev/null & echo $! > {registry.pidfile}")
    plan = registry.write_plan(registry={"config": str(registry.config), "restart": starts_it_itself,
                                         "url": registry.url, "health_timeout_seconds": 30})
    result = run_cli("run", "--yes", plan, env=dict(os.environ, AWS_CA_BUNDLE="/etc/ssl/certs/ca-certificates.crt"))
    assert result.returncode == 0, result.stdout + result.stderr[-3000:]
    assert "LoadCustomCABundleError" not in registry.logfile.read_text()
    assert f"read-write on s3://{registry.bucket}/reg/" in result.stderr + result.stdout
