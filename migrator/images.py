"""The image-level proof: what pulling every image needs, read from the registry's own metadata, checked
against the bucket and through the registry itself.

It does not share the copy's blind spots: the source is read here with its own directory reading (every
repository's tags, revisions and ``_layers``, and each manifest's content: schema 2, OCI, manifest lists and
OCI indexes with their children, schema 1), not with the sync walker or its filters, and the answers come
from the bucket (its listing, HEAD and GET) or from the registry (its API, following the 307 to the bucket).
A key this graph needs that the bucket lacks, after the key-by-key verification passed, is a bug.
"""

from __future__ import annotations

import json
import logging
import os
import random
import sqlite3
import tempfile
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Callable, Iterable, Iterator, Optional

from migrator.march import md5_of
from migrator.registry_http import RegistryClient
from migrator.s3 import Bucket, list_pages
from migrator.sync import Progress

log = logging.getLogger(__name__)

V2 = "docker/registry/v2/"
FIRST = 20
INDEX_TYPES = {"application/vnd.docker.distribution.manifest.list.v2+json", "application/vnd.oci.image.index.v1+json"}
FOREIGN_LAYER = "application/vnd.docker.image.rootfs.foreign.diff.tar.gzip"


def blob_rel(digest: str) -> str:
    hexdigest = digest.split(":", 1)[1]
    return f"{V2}blobs/sha256/{hexdigest[:2]}/{hexdigest}/data"


def repository_rel(repository: str) -> str:
    return f"{V2}repositories/{repository}/"


def references(manifest: bytes) -> tuple[list[str], list[str]]:
    """(child manifests, blobs) a manifest names: an index's children; a manifest's config and layers (foreign
    layers, served from elsewhere, left out); a schema 1 manifest's fsLayers."""
    document = json.loads(manifest)
    if document.get("mediaType") in INDEX_TYPES or ("manifests" in document and "layers" not in document):
        return [child["digest"] for child in document.get("manifests", [])], []
    if document.get("schemaVersion") == 1:
        return [], [layer["blobSum"] for layer in document.get("fsLayers", [])]
    blobs = [document["config"]["digest"]] if "config" in document else []
    blobs += [layer["digest"] for layer in document.get("layers", [])
              if layer.get("mediaType") != FOREIGN_LAYER and not layer.get("urls")]
    return [], blobs


def tag_needs(source: Path, digest: str) -> tuple[set[str], set[str]]:
    """(manifest digests, blob digests) pulling the image ``digest`` names needs, read from the source: the
    manifest, an index's children (recursively), and every config and layer they name. What the source lacks or
    cannot parse is left out (the image check reports it)."""
    manifests: set[str] = set()
    blobs: set[str] = set()
    pending = [digest]
    while pending:
        manifest = pending.pop()
        if manifest in manifests:
            continue
        manifests.add(manifest)
        try:
            children, named = references((Path(source) / blob_rel(manifest)).read_bytes())
        except (OSError, ValueError, KeyError, TypeError, AttributeError):
            continue
        pending.extend(children)
        blobs.update(named)
    return manifests, blobs


@dataclass
class ImageResult:
    """What the proof counted; ``missing`` counts keys the bucket lacks or holds with another size or content."""

    tags: int = 0
    manifests: int = 0
    blobs: int = 0
    missing: int = 0
    in_flight: int = 0  # online only: changed since the last pass began (the window re-checks them)
    answered: int = 0  # window only: proven by the bucket's answers already given (its replies, its online listing)
    heads: int = 0  # window only: proven by a HEAD (and a GET for links whose ETag is no MD5)
    source_broken: int = 0  # the source itself lacks what an image names: the registry cannot serve it either
    missing_keys: list = field(default_factory=list)
    source_broken_keys: list = field(default_factory=list)
    in_flight_keys: list = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return self.missing == 0

    def note(self, kind: str, what: str) -> None:
        setattr(self, kind, getattr(self, kind) + 1)
        keys = getattr(self, kind + "_keys")
        if kind == "in_flight" or len(keys) < FIRST:
            keys.append(what)

    def to_json(self) -> dict:
        data = asdict(self)
        data["in_flight_keys"] = self.in_flight_keys[:FIRST]
        return data | {"ok": self.ok}


class ImageGraph:
    """The objects pulling the source's images needs, kept sorted in a scratch sqlite file (bounded memory)."""

    def __init__(self, source: Path, scratch_dir: Path, progress: Optional[Progress] = None):
        self.progress = progress or Progress()
        self.source = Path(source)
        self.root = os.path.join(self.source, V2, "repositories")
        handle, self.scratch = tempfile.mkstemp(prefix="images-", suffix=".sqlite", dir=scratch_dir)
        os.close(handle)  # one file per check: a verify beside a run never shares it
        self.db = sqlite3.connect(self.scratch, isolation_level=None)
        self.db.execute("PRAGMA journal_mode=OFF")
        self.db.execute("PRAGMA synchronous=OFF")
        self.db.execute("CREATE TABLE needs (rel TEXT PRIMARY KEY, size INTEGER, content TEXT) WITHOUT ROWID")
        self.db.execute("CREATE TABLE manifests (repository TEXT, digest TEXT, PRIMARY KEY (repository, digest)) WITHOUT ROWID")
        self.db.execute("CREATE TABLE blobs (digest TEXT PRIMARY KEY) WITHOUT ROWID")
        self.db.execute("BEGIN")
        self.result = ImageResult()
        self.tags: list[tuple[str, str, str]] = []  # (repository, tag, digest): all, or a sample (``sample_tags``)

    # --- reading the source -----------------------------------------------------------------

    def repositories(self) -> Iterator[str]:
        """Every repository name: a directory holding ``_manifests`` or ``_layers``. Links are followed, as the
        registry follows them; a link back up the tree is not walked twice."""
        seen: set[str] = set()
        pending = [""]
        while pending:
            name = pending.pop()
            path = os.path.join(self.root, name)
            real = os.path.realpath(path)
            if real in seen:
                continue
            seen.add(real)
            try:
                entries = sorted(entry.name for entry in os.scandir(path) if entry.is_dir())
            except OSError:
                continue
            if "_manifests" in entries or "_layers" in entries:
                yield name
            pending.extend(f"{name}/{child}" if name else child for child in reversed(entries)
                           if not child.startswith("_"))

    def _link(self, rel: str) -> Optional[str]:
        """The digest a link file holds, or None when it is missing or not a digest."""
        try:
            with open(os.path.join(self.source, rel), "rb") as handle:
                text = handle.read(72)
        except OSError:
            return None
        return text.decode() if len(text) == 71 and text.startswith(b"sha256:") and text[7:].isalnum() else None

    def _listdir(self, rel: str) -> list[str]:
        try:
            return sorted(os.listdir(self.source / rel))
        except OSError:
            return []

    def add_repository(self, repository: str, tags: Optional[Iterable[str]] = None, manifests: Iterable[str] = (),
                       layers: Iterable[str] = ()) -> None:
        """Everything pulling from ``repository`` needs: by default all its tags, revisions and layers; or only
        the given tags, manifest digests and layer digests (the window's changes)."""
        base = repository_rel(repository)
        if tags is None:
            tags = self._listdir(base + "_manifests/tags")
            manifests = ["sha256:" + hexdigest for hexdigest in self._listdir(base + "_manifests/revisions/sha256")]
            layers = ["sha256:" + hexdigest for hexdigest in self._listdir(base + "_layers/sha256")]
        for tag in tags:
            rel = f"{base}_manifests/tags/{tag}/current/link"
            digest = self._link(rel)
            if not (self.source / rel).is_file():
                continue  # a tag deleted through the API keeps its directory without current/link
            self.result.tags += 1
            if digest is None:
                self.result.note("source_broken", rel)
                continue
            self.tags.append((repository, tag, digest))
            self._add_need(rel, len(digest), digest)  # just read from the source
            self.add_manifest(repository, digest)
        for digest in manifests:
            self.add_manifest(repository, digest)
        for digest in layers:
            self._need_blob(repository, digest)

    def add_manifest(self, repository: str, digest: str) -> None:
        """A manifest pullable by digest: its revision link, its blob, and what it names (recursively)."""
        if self.db.execute("INSERT OR IGNORE INTO manifests VALUES (?, ?)", (repository, digest)).rowcount == 0:
            return
        self.result.manifests += 1
        self._need(f"{repository_rel(repository)}_manifests/revisions/sha256/{digest[7:]}/link", digest)
        content = self._need_data(digest)
        if content is None:
            return
        try:
            children, blobs = references(content)
        except (ValueError, KeyError, TypeError, AttributeError):
            self.result.note("source_broken", f"{blob_rel(digest)} (not a manifest)")
            return
        for child in children:
            self.add_manifest(repository, child)
        for blob in blobs:
            self._need_blob(repository, blob)

    def _need_blob(self, repository: str, digest: str) -> None:
        self._need(f"{repository_rel(repository)}_layers/sha256/{digest[7:]}/link", digest)
        self._need_data(digest, read=False)

    def _need_data(self, digest: str, read: bool = True) -> Optional[bytes]:
        """Need a blob's data (its size from the source); returns its content when ``read``."""
        rel = blob_rel(digest)
        path = self.source / rel
        try:
            size = path.stat().st_size
            content = path.read_bytes() if read else None
        except OSError:
            self.result.note("source_broken", rel)
            return None
        if self.db.execute("INSERT OR IGNORE INTO blobs VALUES (?)", (digest,)).rowcount:
            self.result.blobs += 1
            self._add_need(rel, size, None)
        return content

    def _need(self, rel: str, content: str) -> None:
        """A link file that must hold ``content`` (and the source must hold it too)."""
        if self._link(rel) != content:
            self.result.note("source_broken", rel)
            return
        self._add_need(rel, len(content), content)

    def add_everything(self) -> None:
        for repository in self.repositories():
            self.add_repository(repository)

    def add_window_changes(self, rels: Iterable[str]) -> None:
        """The tags, manifests and layers whose files the read-only window changed."""
        changed: dict[str, tuple[set, set, set]] = {}
        for rel in rels:
            head, marker, tail = rel.partition("/_manifests/tags/")
            if not marker:
                head, marker, tail = rel.partition("/_manifests/revisions/sha256/")
            if not marker:
                head, marker, tail = rel.partition("/_layers/sha256/")
            if not marker or not head.startswith(V2 + "repositories/"):
                continue
            tags, manifests, layers = changed.setdefault(head[len(V2 + "repositories/"):], (set(), set(), set()))
            name = tail.split("/", 1)[0]
            if marker == "/_manifests/tags/":
                tags.add(name)
            elif len(name) == 64:
                (manifests if "revisions" in marker else layers).add("sha256:" + name)
        for repository, (tags, manifests, layers) in sorted(changed.items()):
            self.add_repository(repository, sorted(tags), sorted(manifests), sorted(layers))

    def tag_links(self) -> Iterator[tuple[str, str, str, str]]:
        """(repository, tag, rel of its ``current/link``, digest) for every tag of the source whose link holds one."""
        for repository in self.repositories():
            for tag in self._listdir(repository_rel(repository) + "_manifests/tags"):
                rel = f"{repository_rel(repository)}_manifests/tags/{tag}/current/link"
                digest = self._link(rel)
                if digest is not None:
                    yield repository, tag, rel, digest

    def _add_need(self, rel: str, size: int, content: Optional[str]) -> None:
        self.db.execute("INSERT OR IGNORE INTO needs VALUES (?, ?, ?)", (rel, size, content))

    def add_every_tag_link(self) -> None:
        """Every tag's ``current/link`` as the frozen source holds it (not what it names): the cheap check, in the
        window, that no tag move escaped the final pass (the change feed or the walk) that found the window's changes."""
        for _, _, rel, digest in self.tag_links():
            self._add_need(rel, len(digest), digest)

    def sample_tags(self, size: int, seed: int) -> list[tuple[str, str, str]]:
        """A seeded random sample of every tag of the source (reservoir sampling: one pass, bounded memory)."""
        rng = random.Random(seed)
        sample: list[tuple[str, str, str]] = []
        for seen, (repository, tag, _, digest) in enumerate(self.tag_links(), 1):
            if len(sample) < size:
                sample.append((repository, tag, digest))
            elif (slot := rng.randrange(seen)) < size:
                sample[slot] = (repository, tag, digest)
        return sample

    def needs(self) -> Iterator[tuple[str, int, Optional[str]]]:
        """(rel, size, link content or None) in key order; progress counts them as checked."""
        self.db.execute("COMMIT")
        for count, need in enumerate(self.db.execute("SELECT rel, size, content FROM needs ORDER BY rel"), 1):
            if count % 1000 == 0:
                self.progress.checked(1000)
            yield need

    def close(self) -> None:
        self.db.close()
        os.unlink(self.scratch)

    # --- checking the bucket ----------------------------------------------------------------

    def check_listing(self, bucket: Bucket, changed_since_ns: Optional[int] = None) -> ImageResult:
        """Every needed key against the bucket's listing (one ordered listing of ``docker/registry/v2/``).

        Online (``changed_since_ns``), a key whose source file changed since the last pass began is in flight,
        not missing: the final pass copies it and the window re-checks it."""
        listed = _listing(bucket)
        item = next(listed, None)
        for rel, size, content in self.needs():
            while item is not None and item[0] < rel:
                item = next(listed, None)
            held = item if item is not None and item[0] == rel else None
            if held is not None and held[1] == size and (
                    content is None or bucket.content_md5(rel, held[2]) == md5_of(content.encode())):
                continue
            self._missing(rel, changed_since_ns)
        return self.result

    def check_answers(self, bucket: Bucket, answered: Callable[[str], Optional[tuple[int, Optional[str]]]]) -> ImageResult:
        """Every needed key against what the bucket already answered for it, ``answered(rel)`` → (size, md5 or
        None), or None when it did not: then by HEAD (and its content for links). Inside the window, the bucket's
        answers are its replies to the window's own writes and deletes, and its online listing for the rest."""
        for rel, size, content in self.needs():
            known = answered(rel)
            if known is not None and known[0] == size and (content is None or known[1] == md5_of(content.encode())):
                self.result.answered += 1
                continue
            self.result.heads += 1
            head = bucket.head(rel)
            if head is not None and head["ContentLength"] == size and (
                    content is None or bucket.head_md5(rel, head) == md5_of(content.encode())):
                continue
            self._missing(rel, None)
        return self.result

    def _missing(self, rel: str, changed_since_ns: Optional[int]) -> None:
        if changed_since_ns is not None:
            try:
                st = (self.source / rel).stat()
            except OSError:
                st = None
            if st is None or max(st.st_mtime_ns, st.st_ctime_ns) >= changed_since_ns:
                self.result.note("in_flight", rel)
                return
        self.result.note("missing", rel)


def _listing(bucket: Bucket) -> Iterator[tuple[str, int, str]]:
    """(rel, size, ETag) of every object under ``docker/registry/v2/``, in key order, as the bucket lists them."""
    for page in list_pages(bucket, V2):
        for item in page.get("Contents", ()):
            yield bucket.rel(item["Key"]), item["Size"], item["ETag"]


@dataclass
class RegistryResult:
    """Tags asked of the registry itself, and what failed (``repository:tag: why``)."""

    tags: int = 0
    manifests: int = 0
    blobs: int = 0
    failed: list = field(default_factory=list)
    failed_tags: list = field(default_factory=list)  # (repository, tag, digest) of each failure
    in_flight: int = 0  # failures excused: the tag changed in the source since the last pass began
    broken_in_source: list = field(default_factory=list)  # {image, problem}: fails on the filesystem too

    @property
    def ok(self) -> bool:
        return not self.failed

    def excuse(self, changed: Callable[[str, str, str], bool]) -> None:
        """Drop the failures of tags ``changed`` says moved since the bucket was proven (asked again later)."""
        kept = [(problem, tag) for problem, tag in zip(self.failed, self.failed_tags) if not changed(*tag)]
        self.in_flight += len(self.failed) - len(kept)
        self.failed = [problem for problem, _ in kept]
        self.failed_tags = [tag for _, tag in kept]

    def set_aside_broken_in_source(self, on_filesystem: Callable[[str, str, str], Optional[str]]) -> None:
        """Move the failures the source itself has to ``broken_in_source``: ``on_filesystem(repository, tag, digest)``
        says what the same pull meets on the filesystem (None: it pulls there), so the bucket is not blamed."""
        kept = []
        for problem, tag in zip(self.failed, self.failed_tags):
            there = on_filesystem(*tag)
            if there is None:
                kept.append((problem, tag))
            else:
                self.broken_in_source.append({"image": f"{tag[0]}:{tag[1]}", "problem": there})
        self.failed = [problem for problem, _ in kept]
        self.failed_tags = [tag for _, tag in kept]

    def to_json(self) -> dict:
        data = asdict(self)
        data.pop("failed_tags")
        return data | {"failed": self.failed[:FIRST], "failures": len(self.failed), "ok": self.ok}


def check_through_registry(client: RegistryClient, tags: list[tuple[str, str, str]],
                           workers: int = 16) -> RegistryResult:
    """Ask the registry, as a client pulls: each tag resolves to the source's digest, the manifest GETs by digest
    (an index's children too), and every blob it names answers HEAD (following the redirect to the bucket). Tags
    are asked ``workers`` at a time: this runs inside the read-only window."""
    result = RegistryResult()
    with ThreadPoolExecutor(workers, thread_name_prefix="pull-check") as pool:
        for tag, (counts, problem) in zip(tags, pool.map(lambda tag: _pull_tag(client, *tag), tags)):
            result.tags += 1
            result.manifests += counts[0]
            result.blobs += counts[1]
            if problem:
                result.failed.append(problem)
                result.failed_tags.append(tuple(tag))
    return result


def pull_problem(client: RegistryClient, repository: str, tag: str, digest: str) -> Optional[str]:
    """What pulling one tag from ``client`` meets (None: it pulls)."""
    return _pull_tag(client, repository, tag, digest)[1]


def _pull_tag(client: RegistryClient, repository: str, tag: str, digest: str) -> tuple[list[int], Optional[str]]:
    """([manifests, blobs] checked, what failed or None) for one tag."""
    counts = [0, 0]
    served = client.manifest_digest(repository, tag)
    if served != digest:
        return counts, f"{repository}:{tag}: served {served or 'nothing'}, the source has {digest}"
    problem = _pull_manifest(client, repository, digest, counts)
    return counts, f"{repository}:{tag}: {problem}" if problem else None


def _pull_manifest(client: RegistryClient, repository: str, digest: str, counts: list[int]) -> Optional[str]:
    content = client.manifest(repository, digest)
    if content is None:
        return f"manifest {digest} does not GET by digest"
    counts[0] += 1
    children, blobs = references(content)
    for child in children:
        problem = _pull_manifest(client, repository, child, counts)
        if problem:
            return problem
    for blob in blobs:
        status = client.head_blob(repository, blob)
        if status != 200:
            return f"blob {blob} answers HEAD with {status}"
        counts[1] += 1
    return None
