"""An unexpected error names what failed (file, key, URL) and says whether re-running can help (issue 21 item
12): a certificate, a name's encoding or a permission are not fixed by a re-run; a timeout or a dropped
connection are. The certificate case is a real TLS server our registry client does not trust."""

from __future__ import annotations

import errno
import http.server
import os
import ssl
import subprocess
import threading

import pytest

from migrator.errors import describe_unexpected
from migrator.registry_http import RegistryClient


@pytest.fixture
def untrusted_https(tmp_path):
    """An https server whose self-signed certificate nobody trusts; yields its URL."""
    subprocess.run(["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "1", "-subj", "/CN=127.0.0.1",
                    "-keyout", str(tmp_path / "key.pem"), "-out", str(tmp_path / "cert.pem")], check=True,
                   capture_output=True)
    server = http.server.HTTPServer(("127.0.0.1", 0), http.server.BaseHTTPRequestHandler)
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.load_cert_chain(tmp_path / "cert.pem", tmp_path / "key.pem")
    server.socket = context.wrap_socket(server.socket, server_side=True)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield f"https://127.0.0.1:{server.server_address[1]}"
    server.shutdown()


def test_a_certificate_failure_names_the_url_and_says_a_rerun_does_not_help(untrusted_https):
    with pytest.raises(Exception) as raised:
        RegistryClient(untrusted_https, timeout=5).request("GET", "/v2/")
    message = describe_unexpected(raised.value)
    assert f"{untrusted_https}/v2/" in message, message
    assert "re-running will not help" in message and "AWS_CA_BUNDLE" in message, message


def test_a_name_that_is_not_utf8_is_named_and_a_rerun_does_not_help():
    key = "reg/docker/registry/v2/repositories/caf\udce9-notes.txt"
    try:
        key.encode("utf-8")
    except UnicodeEncodeError as exc:
        message = describe_unexpected(exc)
    assert repr(os.fsencode(key)) in message and "re-running will not help" in message and "rename" in message, message


@pytest.mark.parametrize("exc, fix", [
    (PermissionError(errno.EACCES, "Permission denied", "/srv/registry/docker/x"), "read access"),
    (OSError(errno.ENOSPC, "No space left on device", "/var/lib/migrator/journal"), "free space"),
])
def test_file_errors_name_the_file_and_what_to_fix(exc, fix):
    message = describe_unexpected(exc)
    assert exc.filename in message and fix in message and "re-running will not help" in message, message


@pytest.mark.parametrize("exc", [TimeoutError("timed out"), ConnectionResetError(errno.ECONNRESET, "reset")])
def test_network_errors_say_a_rerun_continues(exc):
    assert "re-run the same command to continue" in describe_unexpected(exc)
