"""Synthetic registry trees for benchmarks: the real layout, real sha256 digests, a target object count and size."""

from __future__ import annotations

import hashlib
import json
import math
import os
import random
import shutil
import sys
import time
from pathlib import Path

import yaml

from migrator.layout import BLOBS, REPOSITORIES
from migrator.testing.synthetic import RegistryTree

OBJECTS_PER_IMAGE = 10  # ~2 layers + config + manifest blobs, ~6 links (shared layers dedupe)


def _log_uniform_max(low: float, mean: float) -> float:
    """The upper bound b of a log-uniform [low, b] distribution whose mean is ``mean``."""
    lo, hi = low * 1.01, 1e12
    for _ in range(200):
        mid = math.sqrt(lo * hi)
        if (mid - low) / math.log(mid / low) < mean:
            lo = mid
        else:
            hi = mid
    return lo


def generate(root: Path, objects: int, total_bytes: int, seed: int = 0) -> dict:
    """Write a tree of about ``objects`` files and ``total_bytes`` bytes; returns its description."""
    if root.exists():
        shutil.rmtree(root)
    rng = random.Random(seed)
    tree = RegistryTree(root)
    images = max(1, objects // OBJECTS_PER_IMAGE)
    layers_per_image = 2
    low = 300
    high = _log_uniform_max(low, max(low * 1.5, total_bytes / (images * layers_per_image)))
    started = time.monotonic()
    for index in range(images):
        repository = f"group{index % 40}/project{index % 23}/image{index % 7}"
        count = rng.choice([1, 2, 3])
        layers = [rng.randbytes(int(math.exp(rng.uniform(math.log(low), math.log(high))))) for _ in range(count)]
        tree.image(repository, f"v{index}", layers)
    for index in range(5):
        tree.upload_in_progress(f"group{index}/project{index}/image{index}", f"bench-upload-{index}", rng.randbytes(50_000))
    return {**describe(root), "images": images, "seconds": time.monotonic() - started}


def add_layers(root: Path, sizes_mib: list[int], seed: int = 0) -> dict:
    """Large layers (one repository each, linked from its ``_layers``), written in 64 MiB blocks and hashed on the way:
    a bytes-heavy registry's ML and CI images. Returns the tree's description with the layers'."""
    rng = random.Random(seed)
    tree = RegistryTree(root)
    started = time.monotonic()
    for index, size in enumerate(sizes_mib):
        scratch = root / f"layer-{index}.tmp"
        digest = hashlib.sha256()
        with open(scratch, "wb") as handle:
            for _ in range(size // 64):
                block = rng.randbytes(64 * 2**20)
                digest.update(block)
                handle.write(block)
            block = rng.randbytes(size % 64 * 2**20)
            digest.update(block)
            handle.write(block)
        hexdigest = digest.hexdigest()
        target = root / f"{BLOBS}{hexdigest[:2]}/{hexdigest}/data"
        target.parent.mkdir(parents=True, exist_ok=True)
        scratch.rename(target)
        repository = f"bytes/layer{index}"
        tree.image(repository, "v1", [rng.randbytes(2000)])
        tree.link(f"{REPOSITORIES}{repository}/_layers/sha256/{hexdigest}/link", f"sha256:{hexdigest}")
    return {**describe(root), "layers_mib": sizes_mib, "seconds": time.monotonic() - started}


def describe(root: Path) -> dict:
    """The tree's files and bytes, as every tool copies them (``_uploads`` left out)."""
    files = size = 0
    for dirpath, dirnames, filenames in os.walk(root / "docker"):
        dirnames[:] = [d for d in dirnames if d != "_uploads"]
        for name in filenames:
            files += 1
            size += os.path.getsize(os.path.join(dirpath, name))
    return {"root": str(root), "files": files, "bytes": size}


def churn(root: Path, changes: int, seed: int = 1) -> dict:
    """Registry churn: tag moves rewritten in place (same size), new images, deleted tags (a third each)."""
    rng = random.Random(seed)
    tree = RegistryTree(root)
    base = root / "docker/registry/v2/repositories"
    tags = sorted(base.glob("*/*/*/_manifests/tags/*"))
    moved = deleted = added = 0
    for tag in rng.sample(tags, min(len(tags), changes // 3 * 2)):
        if moved < changes // 3:  # to another manifest of the same repository (one it has a revision link for)
            revisions = sorted(tag.parent.parent.glob("revisions/sha256/*/link"))
            link = tag / "current/link"
            link.write_bytes(rng.choice(revisions).read_bytes())  # truncate + write: 71 bytes either way
            moved += 1
        else:
            shutil.rmtree(tag)
            deleted += 1
    for index in range(changes - moved - deleted):
        tree.image(f"churn/new{index % 5}", f"c{index}-{seed}", [rng.randbytes(rng.randint(1000, 200_000))])
        added += 1
    return {"tag_moves": moved, "deleted_tags": deleted, "new_images": added}


def churn_before_read_only(config: Path, marker: Path, root: Path, changes: int, seed: int) -> None:
    """``churn`` once (``marker`` records it), when the registry config just written says read-only: the last pushes
    that land before the read-only restart takes effect, for the final pass to catch."""
    storage = yaml.safe_load(config.read_text())["storage"]
    if marker.exists() or not ((storage.get("maintenance") or {}).get("readonly") or {}).get("enabled"):
        return
    marker.write_text(json.dumps(churn(root, changes, seed)))


if __name__ == "__main__":  # python -m bench.tree CONFIG MARKER ROOT CHANGES SEED: a restart command's prefix
    config, marker, root, changes, seed = sys.argv[1:]
    churn_before_read_only(Path(config), Path(marker), Path(root), int(changes), int(seed))
