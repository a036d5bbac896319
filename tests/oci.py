"""OCI image layouts written by the tests (single-platform images and a multi-arch index), pushed and pulled with
Debian's skopeo: a real client, independent of our registry code."""

from __future__ import annotations

import gzip
import hashlib
import io
import json
import shutil
import subprocess
import tarfile
from pathlib import Path

OCI_MANIFEST = "application/vnd.oci.image.manifest.v1+json"
OCI_INDEX = "application/vnd.oci.image.index.v1+json"


class Layout:
    """One OCI image layout directory holding any number of tagged images."""

    def __init__(self, path: Path):
        self.path = Path(path)
        (self.path / "blobs/sha256").mkdir(parents=True, exist_ok=True)
        (self.path / "oci-layout").write_text(json.dumps({"imageLayoutVersion": "1.0.0"}))
        self.refs: list[dict] = []

    def blob(self, content: bytes, media_type: str) -> dict:
        digest = hashlib.sha256(content).hexdigest()
        (self.path / "blobs/sha256" / digest).write_bytes(content)
        return {"mediaType": media_type, "digest": f"sha256:{digest}", "size": len(content)}

    def manifest(self, name: str, arch: str) -> dict:
        """An image for one platform: a real gzipped tar layer and its config; returns its descriptor."""
        tar_bytes = io.BytesIO()
        with tarfile.open(fileobj=tar_bytes, mode="w") as tar:
            data = f"{name} on {arch}\n".encode() * 50
            info = tarfile.TarInfo(f"etc/{name.replace('/', '-')}-{arch}")
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
        raw = tar_bytes.getvalue()
        layer = self.blob(gzip.compress(raw, mtime=0), "application/vnd.oci.image.layer.v1.tar+gzip")
        config = self.blob(json.dumps({
            "architecture": arch, "os": "linux",
            "rootfs": {"type": "layers", "diff_ids": ["sha256:" + hashlib.sha256(raw).hexdigest()]},
        }).encode(), "application/vnd.oci.image.config.v1+json")
        manifest = json.dumps({"schemaVersion": 2, "mediaType": OCI_MANIFEST, "config": config, "layers": [layer]})
        return self.blob(manifest.encode(), OCI_MANIFEST) | {"platform": {"architecture": arch, "os": "linux"}}

    def image(self, tag: str, name: str) -> None:
        self._ref(tag, {k: v for k, v in self.manifest(name, "amd64").items() if k != "platform"})

    def multi_arch(self, tag: str, name: str) -> None:
        children = [self.manifest(name, arch) for arch in ("amd64", "arm64")]
        index = json.dumps({"schemaVersion": 2, "mediaType": OCI_INDEX, "manifests": children}).encode()
        self._ref(tag, self.blob(index, OCI_INDEX))

    def _ref(self, tag: str, descriptor: dict) -> None:
        self.refs.append(dict(descriptor, annotations={"org.opencontainers.image.ref.name": tag}))
        (self.path / "index.json").write_text(json.dumps({"schemaVersion": 2, "manifests": self.refs}))

    def digest(self, tag: str) -> str:
        return next(ref["digest"] for ref in self.refs if ref["annotations"]["org.opencontainers.image.ref.name"] == tag)


def skopeo(*args: str, timeout: float = 120) -> subprocess.CompletedProcess:
    if not shutil.which("skopeo"):
        raise AssertionError("skopeo is not installed: run 'apt-get install -y skopeo' (scripts/setup.sh does)")
    return subprocess.run(["skopeo", "--insecure-policy", *args], capture_output=True, text=True, timeout=timeout,
                          stdin=subprocess.DEVNULL)


def push(layout: Layout, tag: str, registry: str, reference: str) -> None:
    done = skopeo("copy", "--all", "--dest-tls-verify=false", f"oci:{layout.path}:{tag}", f"docker://{registry}/{reference}")
    assert done.returncode == 0, done.stderr


def pull(registry: str, reference: str, into: Path) -> str:
    """Copy every platform of an image out of the registry (every blob fetched and digest-checked by skopeo);
    returns the digest of the manifest the registry served."""
    raw = skopeo("inspect", "--raw", "--tls-verify=false", f"docker://{registry}/{reference}")
    assert raw.returncode == 0, f"{reference}: {raw.stderr}"
    copied = skopeo("copy", "--all", "--src-tls-verify=false", f"docker://{registry}/{reference}", f"oci:{into}:pulled")
    assert copied.returncode == 0, f"{reference}: {copied.stderr}"
    return "sha256:" + hashlib.sha256(raw.stdout.encode()).hexdigest()
