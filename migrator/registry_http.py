"""The registry's HTTP API: health, read-only and read probes, and push/pull for drills and tests.

Auth: when the registry answers 401 and MIGRATOR_PROBE_USER / MIGRATOR_PROBE_PASSWORD are set, a Basic
challenge (htpasswd) is answered with those credentials, and a Bearer challenge (token auth) with a token
fetched from its realm for the challenge's service and scope.
"""

from __future__ import annotations

import base64
import hashlib
import json
import os
import re
import ssl
import time
import urllib.error
import urllib.parse
import urllib.request
from dataclasses import dataclass
from email.message import Message
from pathlib import Path
from typing import IO, Callable, Optional

MANIFEST_V2 = "application/vnd.docker.distribution.manifest.v2+json"
ACCEPT = ", ".join([
    MANIFEST_V2,
    "application/vnd.oci.image.manifest.v1+json",
    "application/vnd.docker.distribution.manifest.list.v2+json",
    "application/vnd.oci.image.index.v1+json",
])


@dataclass
class Response:
    status: int
    headers: dict
    body: bytes


class RegistryClient:
    """A small Docker Registry HTTP API v2 client on urllib (redirects followed, e.g. 307 to the bucket)."""

    def __init__(self, url: str, timeout: float = 30.0, ca_bundle: Optional[Path] = None):
        """``ca_bundle``: certificates to trust besides the system's, e.g. the bucket's, which blob pulls are
        redirected to."""
        self.url = url.rstrip("/")
        self.timeout = timeout
        handlers = []
        if ca_bundle:
            context = ssl.create_default_context()
            context.load_verify_locations(cafile=str(ca_bundle))
            handlers.append(urllib.request.HTTPSHandler(context=context))
        self._follow = urllib.request.build_opener(*handlers)
        self._keep = urllib.request.build_opener(*handlers, _KeepRedirects)
        self.user = os.environ.get("MIGRATOR_PROBE_USER")
        self.password = os.environ.get("MIGRATOR_PROBE_PASSWORD")

    def request(self, method: str, path: str, body: Optional[bytes] = None, headers: Optional[dict] = None,
                follow: bool = True) -> Response:
        """One request; a 401 challenge (Basic or Bearer) is answered once when probe credentials are set. Without
        ``follow``, a redirect comes back as the response."""
        response = self._send(method, path, body, headers or {}, follow)
        if response.status == 401 and self.user:
            authorization = self._authorization(response.headers.get("www-authenticate", ""))
            if authorization:
                response = self._send(method, path, body, dict(headers or {}, Authorization=authorization), follow)
        return response

    def _basic(self) -> str:
        return "Basic " + base64.b64encode(f"{self.user}:{self.password or ''}".encode()).decode()

    def _authorization(self, challenge: str) -> Optional[str]:
        """The Authorization header answering a WWW-Authenticate challenge, or None."""
        scheme = challenge.split(" ", 1)[0].lower()
        if scheme == "basic":
            return self._basic()
        if scheme == "bearer":
            token = self._token(challenge)
            return f"Bearer {token}" if token else None
        return None

    def _send(self, method: str, path: str, body: Optional[bytes], headers: dict, follow: bool = True) -> Response:
        url = path if path.startswith("http") else self.url + path
        req = urllib.request.Request(url, data=body, method=method, headers=headers)
        opener = self._follow.open if follow else self._keep.open
        try:
            with opener(req, timeout=self.timeout) as resp:
                return Response(resp.status, {k.lower(): v for k, v in resp.headers.items()}, resp.read())
        except urllib.error.HTTPError as err:
            return Response(err.code, {k.lower(): v for k, v in err.headers.items()}, err.read())
        except OSError as err:  # URLError, timeouts: the error names the request (redirects, e.g. to the bucket, followed)
            err.add_note(f"{method} {url}" + (" and the redirects it was answered with" if follow else ""))
            raise

    def _token(self, challenge: str) -> Optional[str]:
        params = dict(re.findall(r'(\w+)="([^"]*)"', challenge))
        query = urllib.parse.urlencode({k: v for k, v in params.items() if k in ("service", "scope")})
        req = urllib.request.Request(f"{params.get('realm', '')}?{query}", headers={"Authorization": self._basic()})
        try:
            with self._follow.open(req, timeout=self.timeout) as resp:
                data = json.loads(resp.read())
        except (urllib.error.URLError, ValueError):
            return None
        return data.get("token") or data.get("access_token")

    # --- health and probes -------------------------------------------------------------------

    def health(self) -> Optional[int]:
        """The status of GET /v2/, or None when nothing answers."""
        try:
            return self.request("GET", "/v2/").status
        except (urllib.error.URLError, OSError):
            return None

    def wait_healthy(self, timeout: float, gone: Callable[[], bool] = lambda: False) -> bool:
        """Wait until GET /v2/ answers 200 or 401 (auth on: the registry itself is up); False at ``timeout``, or at
        once when ``gone()`` says the process that would answer has exited."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.health() in (200, 401):
                return True
            if gone():
                return False
            time.sleep(0.25)
        return False

    def write_probe(self, repository: str) -> int:
        """Start a blob upload and cancel it: 202 when writable, 405 when read-only."""
        response = self.request("POST", f"/v2/{repository}/blobs/uploads/")
        if response.status == 202 and response.headers.get("location"):
            self.request("DELETE", response.headers["location"])
        return response.status

    def manifest_digest(self, repository: str, reference: str) -> Optional[str]:
        """The digest a manifest is served with, or None when it is not found."""
        response = self.request("GET", f"/v2/{repository}/manifests/{reference}", headers={"Accept": ACCEPT})
        if response.status != 200:
            return None
        return response.headers.get("docker-content-digest") or "sha256:" + hashlib.sha256(response.body).hexdigest()

    def manifest(self, repository: str, reference: str) -> Optional[bytes]:
        """A manifest's bytes, or None when it is not served."""
        response = self.request("GET", f"/v2/{repository}/manifests/{reference}", headers={"Accept": ACCEPT})
        return response.body if response.status == 200 else None

    def head_blob(self, repository: str, digest: str) -> int:
        """HEAD a blob as a client would: a redirect (307 to the bucket, when the registry is on s3) is followed
        with HEAD and without the registry's credentials; returns the final status."""
        path = f"/v2/{repository}/blobs/{digest}"
        response = self.request("HEAD", path, follow=False)
        for _ in range(5):
            if response.status not in (301, 302, 303, 307, 308) or "location" not in response.headers:
                break
            location = urllib.parse.urljoin(self.url + path, response.headers["location"])
            response = self._send("HEAD", location, None, {}, follow=False)
        return response.status

    # --- push and pull (drills, demo, tests) ---------------------------------------------------

    def push_blob(self, repository: str, content: bytes) -> str:
        digest = "sha256:" + hashlib.sha256(content).hexdigest()
        if self.request("HEAD", f"/v2/{repository}/blobs/{digest}").status == 200:
            return digest
        start = self.request("POST", f"/v2/{repository}/blobs/uploads/")
        if start.status != 202:
            raise RegistryError(start.status, f"start upload to {repository}")
        location = start.headers["location"]
        separator = "&" if "?" in location else "?"
        done = self.request("PUT", f"{location}{separator}digest={digest}", body=content,
                            headers={"Content-Type": "application/octet-stream"})
        if done.status != 201:
            raise RegistryError(done.status, f"finish upload of {digest}")
        return digest

    def push_image(self, repository: str, tag: str, layers: list[bytes]) -> str:
        """Push layers, a config and a schema-2 manifest under ``tag``; returns the manifest digest."""
        config = json.dumps({"architecture": "amd64", "os": "linux", "rootfs": {"type": "layers"},
                             "created": "2026-01-01T00:00:00Z", "config": {"Labels": {"ref": f"{repository}:{tag}"}}}
                            ).encode()
        config_digest = self.push_blob(repository, config)
        layer_digests = [self.push_blob(repository, layer) for layer in layers]
        manifest = json.dumps({
            "schemaVersion": 2,
            "mediaType": MANIFEST_V2,
            "config": {"mediaType": "application/vnd.docker.container.image.v1+json", "size": len(config),
                       "digest": config_digest},
            "layers": [{"mediaType": "application/vnd.docker.image.rootfs.diff.tar.gzip", "size": len(layer),
                        "digest": digest} for layer, digest in zip(layers, layer_digests)],
        }).encode()
        response = self.request("PUT", f"/v2/{repository}/manifests/{tag}", body=manifest,
                                headers={"Content-Type": MANIFEST_V2})
        if response.status != 201:
            raise RegistryError(response.status, f"put manifest {repository}:{tag}")
        return "sha256:" + hashlib.sha256(manifest).hexdigest()

    def pull_image(self, repository: str, reference: str) -> str:
        """Fetch a manifest and every blob it names, checking each digest; returns the manifest digest."""
        response = self.request("GET", f"/v2/{repository}/manifests/{reference}", headers={"Accept": ACCEPT})
        if response.status != 200:
            raise RegistryError(response.status, f"get manifest {repository}:{reference}")
        manifest = json.loads(response.body)
        for descriptor in [manifest["config"]] + manifest.get("layers", []):
            blob = self.request("GET", f"/v2/{repository}/blobs/{descriptor['digest']}")
            if blob.status != 200:
                raise RegistryError(blob.status, f"get blob {descriptor['digest']}")
            if "sha256:" + hashlib.sha256(blob.body).hexdigest() != descriptor["digest"]:
                raise RegistryError(blob.status, f"blob {descriptor['digest']} has other bytes")
        return "sha256:" + hashlib.sha256(response.body).hexdigest()


class _KeepRedirects(urllib.request.HTTPRedirectHandler):
    """Redirects come back as responses (urllib would turn a HEAD into a GET and forward credentials)."""

    def redirect_request(self, req: urllib.request.Request, fp: IO[bytes], code: int, msg: str, headers: Message,
                         newurl: str) -> Optional[urllib.request.Request]:
        return None


class RegistryError(Exception):
    def __init__(self, status: int, what: str):
        super().__init__(f"{what}: HTTP {status}")
        self.status = status
