"""The registry's storage layout: which keys are blobs, links or uploads, and how the keyspace is sharded.

Paths here are relative to the registry root (they start with ``docker/``); an S3 key is the bucket
prefix followed by such a path.
"""

from __future__ import annotations

import re
import string
from dataclasses import dataclass
from typing import Iterable, Iterator

V2 = "docker/registry/v2/"
BLOBS = V2 + "blobs/sha256/"
REPOSITORIES = V2 + "repositories/"
UPLOADS_DIR = "_uploads"
FILESYSTEM_IN_USE = "docker/registry/lockfiles/filesystem-in-use"  # GitLab's fork: storage holds metadata

_BLOB_DATA = re.compile(r"^docker/registry/v2/blobs/sha256/[0-9a-f]{2}/([0-9a-f]{64})/data$")
_DIGEST_DIR = re.compile(
    r"^docker/registry/v2/(?:blobs/sha256/[0-9a-f]{2}"
    r"|repositories/.+/(?:_layers|_manifests/revisions|_manifests/tags/[^/]+/index)/sha256)/[0-9a-f]{64}/$"
)


def is_uploads(rel: str) -> bool:
    """In-progress uploads (``repositories/<name>/_uploads/...``, or that directory itself): never copied,
    counted or deleted.

    A repository name's components never start with ``_``, so the first component under ``repositories/`` that
    does is the repository's own ``_layers``, ``_manifests`` or ``_uploads``; a deeper ``_uploads`` (a tag may
    be named so) is ordinary content."""
    if not rel.startswith(REPOSITORIES):
        return False
    for part in rel[len(REPOSITORIES):].split("/"):
        if part.startswith("_"):
            return part == UPLOADS_DIR
    return False


_DIGEST_LINK = re.compile(r"^docker/registry/v2/repositories/.+/sha256/([0-9a-f]{64})/link$")


def canonical_link(rel: str) -> bytes | None:
    """What a link in a digest directory must hold (``sha256:<hex>``, the directory's name), or None for any other
    path. The registry only ever writes that content there, so an in-place rewrite cannot change such a link."""
    match = _DIGEST_LINK.match(rel)
    return b"sha256:" + match.group(1).encode() if match and is_digest_dir(rel[: -len("link")]) else None


def blob_digest(rel: str) -> str | None:
    """The sha256 hex digest a blob's ``data`` path names, or None for any other path."""
    match = _BLOB_DATA.match(rel)
    return match.group(1) if match else None


def is_blob_data(rel: str) -> bool:
    """Content-addressed and written once: size alone decides whether it needs copying."""
    return blob_digest(rel) is not None


def is_digest_dir(rel: str) -> bool:
    """A blob's directory or a link's (``_layers``, ``revisions``, a tag's ``index``): ``.../sha256/<hex>/``."""
    return _DIGEST_DIR.match(rel) is not None


def prefix_upper(prefix: str) -> str:
    """The smallest string greater than every string starting with ``prefix``."""
    return prefix[:-1] + chr(ord(prefix[-1]) + 1)


def path_ranges(rel: str) -> list[tuple[str, str]]:
    """The [low, high) key ranges of one path: the file itself, and everything under it as a directory."""
    return [(rel, rel + "\0"), (rel + "/", rel + "0")]


def covered(rel: str, paths: set[str]) -> bool:
    """``rel`` or a directory above it is among ``paths``."""
    parts = rel.split("/")
    return any("/".join(parts[:depth]) in paths for depth in range(1, len(parts) + 1))


def outermost(rels: Iterable[str]) -> list[str]:
    """The paths in key order, without any that lies under another of them."""
    kept: set[str] = set()
    for rel in sorted(set(rels)):
        if not covered(rel, kept):
            kept.add(rel)
    return sorted(kept, key=lambda rel: rel + "/")


@dataclass(frozen=True)
class Shard:
    """An independent slice of the keyspace: keys starting with ``prefix`` but none of ``excludes``."""

    name: str
    prefix: str
    excludes: tuple[str, ...] = ()

    def contains(self, rel: str) -> bool:
        return rel.startswith(self.prefix) and not rel.startswith(self.excludes)

    def ranges(self) -> Iterator[tuple[str, str]]:
        """Half-open [low, high) key ranges covering the shard, in order (for range scans)."""
        low = self.prefix
        for excluded in sorted(self.excludes):
            if excluded >= low:
                yield low, excluded
                low = max(low, prefix_upper(excluded))
        yield low, prefix_upper(self.prefix)


def shards() -> list[Shard]:
    """The fixed partition of the keyspace: 256 blob shards, 36 repository shards, and the rest."""
    blob_shards = [Shard(f"blobs/{a}{b}", f"{BLOBS}{a}{b}/") for a in "0123456789abcdef" for b in "0123456789abcdef"]
    repo_shards = [
        Shard(f"repositories/{c}", f"{REPOSITORIES}{c}") for c in string.digits + string.ascii_lowercase
    ]
    rest = Shard("rest", "docker/", tuple(s.prefix for s in blob_shards + repo_shards))
    return blob_shards + repo_shards + [rest]


REMAINDER = "*"  # a split shard's child for whatever key is in none of the others


def split(shard: Shard, common: str, chars: Iterable[str]) -> list[Shard]:
    """A shard's children where its keys branch: one for each next character after ``common`` (the keys' common
    prefix, which starts with the shard's), and a remainder with every other key the shard may hold. Together they
    are exactly the parent's keys, each in one child, whatever keys come later. The rest shard and a remainder stay
    whole."""
    if shard.name == "rest" or shard.name.endswith(REMAINDER) or not chars or not common.startswith(shard.prefix):
        return [shard]
    children = [Shard(f"{shard.name}:{common[len(shard.prefix):]}{char}", common + char, shard.excludes)
                for char in sorted(set(chars))]
    return children + [Shard(shard.name + REMAINDER, shard.prefix, shard.excludes + tuple(c.prefix for c in children))]
