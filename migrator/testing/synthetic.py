"""Synthetic registry trees with the real layout and real digests, for tests, drills and benchmarks."""

from __future__ import annotations

import hashlib
import json
import random
from pathlib import Path

from migrator.layout import BLOBS, REPOSITORIES


class RegistryTree:
    """Writes blobs, manifests, links and in-progress uploads the way Docker Distribution lays them out."""

    def __init__(self, root: Path):
        self.root = Path(root)
        (self.root / "docker/registry/v2").mkdir(parents=True, exist_ok=True)

    def path(self, rel: str) -> Path:
        return self.root / rel

    def blob(self, content: bytes) -> str:
        """Store a blob; returns its digest ``sha256:<hex>``."""
        hexdigest = hashlib.sha256(content).hexdigest()
        target = self.root / f"{BLOBS}{hexdigest[:2]}/{hexdigest}/data"
        if not target.exists():
            target.parent.mkdir(parents=True, exist_ok=True)
            target.write_bytes(content)
        return f"sha256:{hexdigest}"

    def link(self, rel: str, digest: str) -> Path:
        """Write a link file (71 bytes) in place, as the registry does: truncate and write."""
        target = self.root / rel
        target.parent.mkdir(parents=True, exist_ok=True)
        with open(target, "wb") as handle:
            handle.write(digest.encode())
        return target

    def image(self, repo: str, tag: str, layers: list[bytes]) -> str:
        """An image: layer and config blobs, a manifest, its links and the tag; returns the manifest digest."""
        base = f"{REPOSITORIES}{repo}/"
        layer_digests = [self.blob(layer) for layer in layers]
        config = json.dumps({"architecture": "amd64", "os": "linux", "tag": tag, "repo": repo}).encode()
        config_digest = self.blob(config)
        manifest = json.dumps({
            "schemaVersion": 2,
            "mediaType": "application/vnd.docker.distribution.manifest.v2+json",
            "config": {"mediaType": "application/vnd.docker.container.image.v1+json", "size": len(config),
                       "digest": config_digest},
            "layers": [{"mediaType": "application/vnd.docker.image.rootfs.diff.tar.gzip", "size": len(layer),
                        "digest": digest} for layer, digest in zip(layers, layer_digests)],
        }).encode()
        manifest_digest = self.blob(manifest)
        for digest in layer_digests + [config_digest]:
            self.link(f"{base}_layers/sha256/{digest[7:]}/link", digest)
        self.link(f"{base}_manifests/revisions/sha256/{manifest_digest[7:]}/link", manifest_digest)
        self.tag(repo, tag, manifest_digest)
        return manifest_digest

    def tag(self, repo: str, tag: str, manifest_digest: str) -> None:
        base = f"{REPOSITORIES}{repo}/_manifests/tags/{tag}/"
        self.link(f"{base}current/link", manifest_digest)
        self.link(f"{base}index/sha256/{manifest_digest[7:]}/link", manifest_digest)

    def upload_in_progress(self, repo: str, uuid: str, content: bytes) -> None:
        base = self.root / f"{REPOSITORIES}{repo}/_uploads/{uuid}"
        base.mkdir(parents=True, exist_ok=True)
        (base / "data").write_bytes(content)
        (base / "startedat").write_text("2026-01-01T00:00:00Z")


def populate(tree: RegistryTree, images: int, seed: int = 0, max_layer: int = 4096) -> None:
    """Fill a tree with ``images`` images over a few repositories, sizes drawn from ``seed``."""
    rng = random.Random(seed)
    for index in range(images):
        repo = f"{rng.choice(['group', 'team', 'app', 'base'])}{index % 7}/service{index % 5}"
        layers = [rng.randbytes(rng.randint(100, max_layer)) for _ in range(rng.randint(1, 3))]
        tree.image(repo, f"v{index}", layers)
    tree.upload_in_progress("group0/service0", "6d1e5a0c-0000-4000-8000-000000000001", b"partial upload")
