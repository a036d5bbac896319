"""``migrator doctor``: the bucket and the registry's own access, proven before anything moves.

What operators hit after a cut-over is rarely a lost copy but a registry that cannot work with its bucket: a policy
without the multipart actions, a lifecycle rule that expires layers, Object Lock that stops deletes, a layer too
large for the driver's ``chunksize``, directory-marker keys that break ``_catalog``, a registry release with a known
S3 defect. Each check here returns ``Finding``s (what, why it matters, the fix; whether it blocks) and the lines it
proved. Nothing changes outside a scratch prefix (``<prefix>.migrator-doctor/<id>``), which is removed again.

``diagnose`` is the one entry point: ``migrator doctor``, ``run``'s preflight and ``report`` call it.
"""

from __future__ import annotations

import hashlib
import ipaddress
import json
import logging
import math
import os
import re
import subprocess
import urllib.parse
import uuid
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any, Callable, Iterator, Optional

import botocore.exceptions

from migrator.errors import InvalidInput
from migrator.layout import BLOBS
from migrator.managed import ManagedRegistry, open_registry, registry_environment
from migrator.net import free_port
from migrator.plan import Plan, RegistrySettings
from migrator.registry_config import redact
from migrator.registry_http import ACCEPT, MANIFEST_V2, RegistryClient, Response
from migrator.s3 import BUCKET_ERRORS, Bucket, explain, open_bucket

log = logging.getLogger("migrator")

SCRATCH = ".migrator-doctor"
OWN_PREFIXES = (".migrator-canary/", SCRATCH + "/")  # migrator's own short-lived keys under the prefix
MiB = 1024 * 1024
DEFAULT_CHUNKSIZE = 10 * MiB  # Distribution's s3 driver (and GitLab's s3_v2): 2 × the 5 MiB S3 minimum part
MIN_CHUNKSIZE = 5 * MiB
MAX_PARTS = 10_000
LAYOUT = ("docker/registry/v2/blobs/", "docker/registry/v2/repositories/", "docker/registry/lockfiles/")
DENIED = ("AccessDenied", "403", "Forbidden", "AllAccessDisabled")
SHOWN = 10  # keys named in one finding


@dataclass(frozen=True)
class Finding:
    """One problem: what, why it matters and the fix in ``message``; ``blocks``: the migration must not start."""

    check: str
    blocks: bool
    message: str


@dataclass
class Diagnosis:
    findings: list[Finding] = field(default_factory=list)
    proven: list[str] = field(default_factory=list)  # what was checked and found healthy, one line each

    @property
    def ok(self) -> bool:
        return not any(finding.blocks for finding in self.findings)

    @property
    def blocking(self) -> list[Finding]:
        return [finding for finding in self.findings if finding.blocks]

    def to_json(self) -> dict:
        return {"findings": [asdict(finding) for finding in self.findings], "proven": self.proven, "ok": self.ok}

    def lines(self) -> list[str]:
        """What an operator reads: blocking findings first, then advice, then what was proven."""
        ordered = sorted(self.findings, key=lambda finding: not finding.blocks)
        lines = [f"{'BLOCKS' if f.blocks else 'advice'} [{f.check}] {f.message}" for f in ordered]
        lines += [f"ok     {line}" for line in self.proven]
        blocking = len(self.blocking)
        lines.append(f"doctor: {blocking} blocking, {len(self.findings) - blocking} advice" if self.findings
                     else "doctor: nothing found; the bucket and the registry are ready")
        return lines


def diagnose(plan: Plan, bucket: Bucket, registry: Optional[ManagedRegistry], push: bool = True,
             uses_database: Optional[bool] = None, scans: bool = True) -> Diagnosis:
    """Every check, in order of what hurts most. ``bucket``: the plan's bucket and prefix, with its credentials;
    ``registry``: the plan's registry (None: no registry section); ``push``: try the push by the registry itself
    (it writes under a scratch prefix, removed again; ``report`` leaves it out); ``scans``: the checks that read the
    whole source or list the whole prefix (a run resumed inside the read-only window leaves them out: they were
    made before it, and the window is no time for them)."""
    diagnosis = Diagnosis()
    checks: list[tuple[str, Callable[[], tuple[list[Finding], list[str]]]]] = []
    if registry is not None:
        if push:
            checks.append(("push", lambda: check_push(plan, bucket, registry)))
        checks.append(("registry-version", lambda: check_version(plan, registry, uses_database)))
        checks.append(("redirect", lambda: check_redirect(plan, registry.settings)))
    checks += [("lifecycle", lambda: check_lifecycle(plan, bucket)),
               ("versioning", lambda: check_versioning(plan, bucket))]
    if scans:
        checks += [("blob-size", lambda: check_blob_sizes(plan)), ("keys", lambda: check_keys(plan, bucket))]
    with ThreadPoolExecutor(len(checks), thread_name_prefix="doctor") as pool:  # independent: their requests overlap
        results = [pool.submit(check) for _, check in checks]
    for (name, _), result in zip(checks, results):  # in the checks' order; a check's exception raised here
        found, proven = result.result()
        diagnosis.findings += found
        diagnosis.proven += [f"[{name}] {line}" for line in proven]
    return diagnosis


def examine(plan: Plan) -> Diagnosis:
    """``migrator doctor``: every check, the push included, with the plan's bucket and registry."""
    bucket = open_bucket(plan.bucket, plan.sync, plan.key_prefix, max_attempts=2)
    registry = None
    if plan.registry is not None:
        registry = open_registry(plan.registry, plan.bucket, plan.key_prefix, plan.state_dir / "config-backup")
    try:
        bucket.head_bucket()
    except BUCKET_ERRORS as exc:
        raise InvalidInput(explain(exc, plan.bucket.name)) from None
    return diagnose(plan, bucket, registry, push=True,
                    uses_database=registry.uses_database() if registry is not None else None)


# --- 1. a push by the registry itself ------------------------------------------------------------

def chunksize(plan: Plan) -> int:
    """The driver's ``chunksize``: registry.storage's, else the driver's default."""
    value = (plan.registry.storage if plan.registry else {}).get("chunksize")
    return int(value) if value else DEFAULT_CHUNKSIZE


class PushFailed(Exception):
    def __init__(self, step: str, problem: str):
        super().__init__(f"{step}: {problem}")
        self.step = step
        self.problem = problem


def expect(step: str, statuses: tuple[int, ...], registry: RegistryClient, method: str, path: str,
           body: Optional[bytes] = None, headers: Optional[dict] = None) -> Response:
    """The registry's answer when its status is one of ``statuses``; else PushFailed naming the step (a registry
    that fails a request may answer before it has read the body, and reset the connection)."""
    try:
        response = registry.request(method, path, body, headers)
    except OSError as exc:
        raise PushFailed(step, f"the registry cut the connection ({exc})") from None
    if response.status not in statuses:
        raise PushFailed(step, f"HTTP {response.status} {response.body[:300].decode(errors='replace').strip()}")
    return response


def push_and_pull(registry: RegistryClient, layer: bytes, part: int) -> str:
    """Push a one-layer image as a client does (the layer in PATCHes of ``part`` bytes), pull it by digest with the
    blob's redirect followed, delete it; returns the manifest digest. Raises PushFailed naming the step."""
    repository = "migrator-doctor/probe"
    descriptors = []
    config = json.dumps({"architecture": "amd64", "os": "linux", "rootfs": {"type": "layers"}}).encode()
    for blob in (layer, config):
        digest = "sha256:" + hashlib.sha256(blob).hexdigest()
        location = expect("start an upload (POST)", (202,), registry, "POST",
                          f"/v2/{repository}/blobs/uploads/").headers["location"]
        for offset in range(0, len(blob), part):
            chunk = blob[offset:offset + part]
            span = f"{offset}-{offset + len(chunk) - 1}"
            location = expect(f"upload bytes {span} (PATCH: the driver's multipart upload, resumed)", (202,),
                              registry, "PATCH", location, chunk,
                              {"Content-Type": "application/octet-stream", "Content-Range": span}).headers["location"]
        separator = "&" if "?" in location else "?"
        expect("commit the upload (PUT: complete the multipart upload, then copy it into blobs/)", (201,), registry,
               "PUT", f"{location}{separator}digest={digest}")
        descriptors.append({"size": len(blob), "digest": digest})
    manifest = json.dumps({
        "schemaVersion": 2, "mediaType": MANIFEST_V2,
        "config": dict(descriptors[1], mediaType="application/vnd.docker.container.image.v1+json"),
        "layers": [dict(descriptors[0], mediaType="application/vnd.docker.image.rootfs.diff.tar.gzip")],
    }).encode()
    digest = "sha256:" + hashlib.sha256(manifest).hexdigest()
    expect("put the manifest", (201,), registry, "PUT", f"/v2/{repository}/manifests/doctor", manifest,
           {"Content-Type": MANIFEST_V2})
    expect("pull the manifest by digest", (200,), registry, "GET", f"/v2/{repository}/manifests/{digest}",
           headers={"Accept": ACCEPT})
    pulled = expect("pull the layer (GET, its redirect followed as a client does)", (200,), registry, "GET",
                    f"/v2/{repository}/blobs/{descriptors[0]['digest']}")
    if "sha256:" + hashlib.sha256(pulled.body).hexdigest() != descriptors[0]["digest"]:
        raise PushFailed("pull the layer", "other bytes came back")
    expect("delete the image (DELETE manifest)", (202,), registry, "DELETE", f"/v2/{repository}/manifests/{digest}")
    return digest


CONSEQUENCES = {  # IAM action → what the registry cannot do without it
    "s3:PutObject": "pushes will fail (uploads, links and manifests are all written with PutObject and multipart "
                    "uploads)",
    "s3:ListBucketMultipartUploads": "pushes will fail: the registry finds its multipart upload again at every "
                                     "PATCH and at the commit",
    "s3:ListMultipartUploadParts": "pushes of layers above chunksize will fail: the registry lists its multipart "
                                   "upload's parts to resume it at every PATCH and at the commit",
    "s3:GetObject": "pulls will fail, and so will the commit (the registry reads the upload back to check its digest)",
    "s3:ListBucket": "tag lists, the catalog, deletes and the commit's clean-up will fail",
    "s3:DeleteObject": "the commit will fail (the upload is removed once copied into blobs/), and so will deletes",
    "s3:AbortMultipartUpload": "cancelled uploads leave their parts in the bucket (billed)",
}


def denied_actions(bucket: Bucket, prefix: str) -> list[str]:
    """With the plan's credentials, the S3 calls the registry makes on a push, each under ``prefix`` (a path below the
    bucket prefix): the IAM actions that answered AccessDenied. The multipart upload is the copy's (``Bucket``'s
    calls, with its part checksum: AWS refuses a part whose checksum the upload was not created with); the
    single-object writes are made on the bucket's client as the registry's driver makes them (``Bucket``'s quiet
    DeleteObjects would report a denied key in its answer instead of raising)."""
    denied: list[str] = []
    rel = prefix + "probe"
    client, name, key = bucket.client, bucket.settings.name, bucket.key(rel)

    def attempt(action: str, call: Callable[[], Any]) -> Any:
        try:
            return call()
        except botocore.exceptions.ClientError as exc:
            if exc.response.get("Error", {}).get("Code") in DENIED and action not in denied:
                denied.append(action)
            return None

    upload = attempt("s3:PutObject", lambda: bucket.create_upload(rel, {}))
    if upload:
        part = attempt("s3:PutObject", lambda: bucket.upload_part(rel, upload, 1, b"doctor"))
        attempt("s3:ListBucketMultipartUploads", lambda: client.list_multipart_uploads(Bucket=name, Prefix=key))
        attempt("s3:ListMultipartUploadParts", lambda: client.list_parts(Bucket=name, Key=key, UploadId=upload))
        if part:
            attempt("s3:PutObject", lambda: bucket.complete_upload(rel, upload, {1: part}))
        attempt("s3:AbortMultipartUpload", lambda: client.abort_multipart_upload(Bucket=name, Key=key,
                                                                                  UploadId=upload))
    attempt("s3:PutObject", lambda: client.put_object(Bucket=name, Key=key, Body=b"doctor"))
    attempt("s3:GetObject", lambda: bucket.get_bytes(rel))
    attempt("s3:ListBucket", lambda: bucket.first_keys(prefix))
    attempt("s3:DeleteObject", lambda: client.delete_object(Bucket=name, Key=key))
    return denied


def registry_error(log_path: Path, since: int) -> Optional[str]:
    """The last error the registry logged after byte ``since`` (its storage driver's answer), secrets redacted."""
    try:
        with open(log_path, "rb") as log_file:
            log_file.seek(since)
            text = log_file.read().decode(errors="replace")
    except OSError:
        return None
    found = re.findall(r'err\.detail="((?:[^"\\]|\\.)*)"', text)
    return redact(found[-1].replace("\\n\\t", " ").replace("\\n", " "))[:300] if found else None


def check_push(plan: Plan, bucket: Bucket, registry: ManagedRegistry) -> tuple[list[Finding], list[str]]:
    """The registry binary, with the s3 settings and credentials production will run with, read-write under a
    scratch rootdirectory: a layer above chunksize pushed, pulled by digest, deleted; the prefix removed after."""
    binary = registry.binary()
    if not binary:
        return [Finding("push", False, f"the registry binary {registry.settings.binary or registry.default_binary!r} "
                        "is not on this host, so no push by the registry itself was tried: pushes are first proven "
                        "after the cut-over. Set registry.binary to the registry's executable")], []
    scratch = f"{SCRATCH}/{uuid.uuid4().hex[:12]}/"  # below the bucket prefix
    target = registry.target(on_s3=True, readonly=False)
    target = replace(target, s3=dict(target.s3 or {}, rootdirectory="/" + bucket.key(scratch).rstrip("/")))
    size = chunksize(plan)
    layer = os.urandom(size + MiB)
    log_path = plan.state_dir / "doctor" / "shadow-registry.log"
    logged = log_path.stat().st_size if log_path.exists() else 0
    try:
        with registry.shadow(target, plan.state_dir / "doctor", free_port(), scratch=True) as shadow:
            push_and_pull(shadow, layer, part=size // 2 + MiB)
    except InvalidInput as exc:
        return [Finding("push", True, f"{exc}. Fix the s3 settings (registry.storage, bucket.*) before the window: "
                        "the production registry would fail to start with them the same way")], []
    except PushFailed as exc:
        denied = denied_actions(bucket, scratch)
        said = registry_error(log_path, logged)
        if denied:
            why = "; ".join(f"{action} denied: {CONSEQUENCES[action]}" for action in denied)
            fix = f"grant {', '.join(denied)} on arn:aws:s3:::{plan.bucket.name}/{plan.key_prefix}* to the registry's credentials"
        else:
            why = "no S3 call was denied to the same credentials, so the registry's s3 settings are at fault"
            fix = f"see the registry's log {log_path}"
        return [Finding("push", True, f"a push by the registry itself failed at '{exc.step}' ({exc.problem}"
                        f"{'; the registry said: ' + said if said else ''}): {why}. Fix: {fix}, then re-run "
                        "'migrator doctor'")], []
    finally:
        try:
            bucket.remove_prefix(scratch)
        except BUCKET_ERRORS as exc:
            log.warning("could not remove the scratch prefix %s (%s): remove it by hand", bucket.key(scratch), exc)
    return [], [f"{Path(binary).name} pushed a {(size + MiB) / MiB:.0f} MiB layer (above chunksize "
                f"{size / MiB:.0f} MiB: multipart, then the commit's copy) under {bucket.key(scratch)}, pulled it by digest and "
                "deleted it; the scratch prefix is removed"]


# --- 2, 3. the bucket's rules --------------------------------------------------------------------

def rule_prefix(rule: dict) -> Optional[str]:
    """The key prefix a lifecycle rule applies to; None when it needs object tags (the registry sets none)."""
    if "Prefix" in rule:
        return rule["Prefix"]
    rule_filter = rule.get("Filter") or {}
    if "Tag" in rule_filter or (rule_filter.get("And") or {}).get("Tags"):
        return None
    return rule_filter.get("Prefix", (rule_filter.get("And") or {}).get("Prefix", ""))


def check_lifecycle(plan: Plan, bucket: Bucket) -> tuple[list[Finding], list[str]]:
    """An enabled expiration over the registry's keys blocks; no abort-incomplete-multipart rule is advice."""
    answer, problem = bucket.configuration("get_bucket_lifecycle_configuration", ("NoSuchLifecycleConfiguration",))
    if problem:
        return [Finding("lifecycle", False, f"the bucket's lifecycle rules cannot be read ({problem}): check by hand "
                        "that none expires keys under the prefix (or grant s3:GetLifecycleConfiguration)")], []
    registry_keys = plan.key_prefix + "docker/"
    uploads = registry_keys + "registry/v2/repositories/"
    findings, aborts = [], False
    for rule in (answer or {}).get("Rules", []):
        prefix = rule_prefix(rule)
        if rule.get("Status") != "Enabled" or prefix is None:
            continue
        expiration = rule.get("Expiration") or {}
        if ("Days" in expiration or "Date" in expiration) and (prefix.startswith(registry_keys)
                                                                or registry_keys.startswith(prefix)):
            after = f"{expiration['Days']} days" if "Days" in expiration else f"on {expiration['Date']}"
            findings.append(Finding("lifecycle", True, f"lifecycle rule {rule.get('ID', '(no ID)')!r} expires keys "
                                    f"under {prefix or 'the whole bucket'!r} after {after}: the registry writes a blob "
                                    "once and never again, so layers and tags would vanish and pulls fail. Remove the "
                                    "rule or narrow its prefix so it misses "
                                    f"{registry_keys!r}"))
        if rule.get("AbortIncompleteMultipartUpload") and uploads.startswith(prefix):
            aborts = True
    if not aborts:
        suggested = {"ID": "registry-abandoned-uploads", "Status": "Enabled", "Filter": {"Prefix": registry_keys},
                     "AbortIncompleteMultipartUpload": {"DaysAfterInitiation": 7}}
        findings.append(Finding("lifecycle", False, "no lifecycle rule aborts incomplete multipart uploads: every push "
                                "a client abandons leaves its parts in the bucket, billed and never listed. Add this rule "
                                "to the bucket's lifecycle configuration (keeping its other rules): "
                                f"{json.dumps(suggested)}"))
    return findings, [] if findings else ["no lifecycle rule expires the registry's keys; abandoned uploads are "
                                          "aborted"]


def check_versioning(plan: Plan, bucket: Bucket) -> tuple[list[Finding], list[str]]:
    """Versioning keeps every deleted object (advice); Object Lock with a default retention blocks."""
    findings = []
    versioning, problem = bucket.configuration("get_bucket_versioning")
    if problem:
        findings.append(Finding("versioning", False, f"the bucket's versioning cannot be read ({problem}); grant "
                                "s3:GetBucketVersioning or check it by hand"))
    elif (versioning or {}).get("Status") == "Enabled":
        findings.append(Finding("versioning", False, "versioning is enabled on the bucket: every object the registry "
                                "deletes or overwrites (each upload once committed, each tag link at a push, every blob "
                                "garbage-collect frees) stays as a noncurrent version, billed as storage, so deleting "
                                "frees no space. Add a lifecycle rule with NoncurrentVersionExpiration (e.g. 7 days) "
                                f"for {plan.key_prefix + 'docker/'!r}, or suspend versioning"))
    lock, problem = bucket.configuration("get_object_lock_configuration", ("ObjectLockConfigurationNotFoundError",))
    configuration = (lock or {}).get("ObjectLockConfiguration") or {}
    retention = (configuration.get("Rule") or {}).get("DefaultRetention")
    if problem:
        findings.append(Finding("object-lock", False, f"the bucket's Object Lock configuration cannot be read "
                                f"({problem}); check by hand that no retention applies to the registry's keys"))
    elif retention:
        period = f"{retention.get('Days') or retention.get('Years')} {'days' if 'Days' in retention else 'years'}"
        findings.append(Finding("object-lock", True, f"Object Lock with a default retention ({retention.get('Mode')}, "
                                f"{period}) is on the bucket: every object the registry writes is locked, so neither "
                                "migrator's delete step nor the registry's upload clean-up and garbage-collect can "
                                "remove anything, and PUTs without Content-MD5 are refused. Use a bucket without a "
                                "default retention"))
    elif configuration.get("ObjectLockEnabled") == "Enabled":
        findings.append(Finding("object-lock", False, "Object Lock is enabled on the bucket (no default retention): a "
                                "retention or legal hold set on a registry key by another tool stops its deletion"))
    return findings, [] if findings else ["no versioning, no Object Lock"]


# --- 4, 5. what the source and the bucket hold ---------------------------------------------------

def blob_sizes(source: Path) -> Iterator[tuple[str, int]]:
    """(digest, size) of every blob's data in the source tree."""
    root = source / BLOBS
    for shard in os.scandir(root) if root.is_dir() else ():
        for blob in os.scandir(shard.path) if shard.is_dir() else ():
            try:
                yield blob.name, os.stat(os.path.join(blob.path, "data")).st_size
            except OSError:
                continue


def check_blob_sizes(plan: Plan) -> tuple[list[Finding], list[str]]:
    """Blobs larger than chunksize × 10,000 parts cannot be pushed again with this chunksize."""
    size = chunksize(plan)
    limit = size * MAX_PARTS
    too_large = sorted(((s, d) for d, s in blob_sizes(plan.source) if s > limit), reverse=True)
    if not too_large:
        return [], [f"every blob fits chunksize {size / MiB:.0f} MiB × {MAX_PARTS} parts"]
    fits = max(MIN_CHUNKSIZE, math.ceil(too_large[0][0] / MAX_PARTS / MiB) * MiB)
    named = ", ".join(f"sha256:{digest} ({blob_size / 2**30:.1f} GiB)" for blob_size, digest in too_large[:SHOWN])
    return [Finding("blob-size", False, f"{len(too_large)} blobs are larger than chunksize {size / MiB:.0f} MiB × "
                    f"{MAX_PARTS} parts ({limit / 2**30:.1f} GiB): {named}. They are copied, but a push of a layer that "
                    "large fails at the commit ('part number must be 1..10000', distribution #4572). Set "
                    f"chunksize: {fits} under registry.storage")], []


def check_keys(plan: Plan, bucket: Bucket) -> tuple[list[Finding], list[str]]:
    """Zero-byte ``…/`` keys break the registry's walks (``_catalog``); keys outside the layout are not its own."""
    markers, foreign, count = [], [], 0
    try:
        for stored in bucket.listing(""):
            count += 1
            if stored.rel.startswith(OWN_PREFIXES):
                continue
            if stored.rel.endswith("/") and stored.size == 0:
                markers.append(bucket.key(stored.rel))
            elif not stored.rel.startswith(LAYOUT):
                foreign.append(bucket.key(stored.rel))
    except BUCKET_ERRORS as exc:
        return [Finding("keys", False, f"the keys under the prefix cannot be listed ({exc}); grant s3:ListBucket")], []
    name = plan.bucket.name
    findings = []
    if markers:
        findings.append(Finding("keys", True, f"{len(markers)} zero-byte directory-marker keys under the prefix (left "
                                f"by another tool or console): {', '.join(markers[:SHOWN])}. The registry's walks take "
                                "them for empty path segments, which breaks _catalog and garbage-collect (distribution "
                                f"#2119, #3200). Remove them, e.g. aws s3api delete-object --bucket {name} --key "
                                f"'{markers[0]}'"))
    if foreign:
        findings.append(Finding("keys", False, f"{len(foreign)} keys under the prefix are outside the registry's "
                                f"layout ({', '.join(p.rstrip('/') for p in LAYOUT)}): "
                                f"{', '.join(foreign[:SHOWN])}. The registry never reads them; move them out of "
                                f"{plan.key_prefix or 'the bucket root'!r}, e.g. aws s3 mv s3://{name}/{foreign[0]} "
                                f"s3://{name}/elsewhere/"))
    return findings, [] if findings else [f"{count} keys under the prefix, all in the registry's layout"]


# --- 6. the registry's version -------------------------------------------------------------------

def registry_version(binary: str) -> Optional[str]:
    """``binary --version``'s line, or None when it does not answer."""
    try:
        done = subprocess.run([binary, "--version"], capture_output=True, text=True, timeout=20,
                              stdin=subprocess.DEVNULL, env=registry_environment())
    except (OSError, subprocess.TimeoutExpired):
        return None
    return (done.stdout or done.stderr).strip() or None


def version_findings(answer: str, storage: dict, endpoint: Optional[str]) -> list[Finding]:
    """Known defects of the release ``answer`` names (``binary --version``'s line) with these s3 settings."""
    match = re.search(r"\bv?(\d+)\.(\d+)\.(\d+)", answer)
    if not match or "gitlab" in answer.lower():
        return []
    release = tuple(int(part) for part in match.groups())
    findings = []
    if release[0] == 3 and endpoint and str(storage.get("forcepathstyle", "")).lower() != "true":
        findings.append(Finding("registry-version", True, f"{answer}: Distribution 3 addresses the bucket "
                                "virtual-hosted style (bucket.host) unless told, which an S3-compatible regionendpoint "
                                "does not answer (distribution #4528). Set forcepathstyle: true under registry.storage"))
    if release[:2] == (3, 1) and release[2] <= 1:
        findings.append(Finding("registry-version", True, f"{answer}: Distribution 3.1.0 and 3.1.1 lose tags when "
                                "listing them on S3 (distribution #4891): tag lists come back short after the cut-over. "
                                "Run a release with that fix"))
    return findings


def check_version(plan: Plan, registry: ManagedRegistry, uses_database: Optional[bool]) -> tuple[list[Finding],
                                                                                                  list[str]]:
    """The registry's release against known S3 defects; GitLab's metadata database."""
    findings = []
    if uses_database:
        findings.append(Finding("registry-version", False, "GitLab's registry runs with its metadata database: it "
                                "answers tags and manifests from the database, so the storage is not the inventory. "
                                "migrator copies and proves the storage; the database must keep pointing at the same "
                                "blobs (keep registry['database'] as it is)"))
    binary = registry.binary()
    answer = registry_version(binary) if binary else None
    if answer is None:
        return findings, []
    findings += version_findings(answer, registry.settings.storage, plan.bucket.endpoint)
    return findings, [] if findings else [f"{answer}: no known S3 defect"]


# --- 7. redirects --------------------------------------------------------------------------------

def check_redirect(plan: Plan, settings: RegistrySettings) -> tuple[list[Finding], list[str]]:
    """After the cut-over blob pulls are redirected (307) to the bucket's endpoint unless redirect.disable."""
    if settings.redirect.get("disable"):
        return [], ["redirect disabled: the registry serves blobs itself"]
    endpoint = plan.bucket.endpoint
    host = urllib.parse.urlparse(endpoint).hostname if endpoint else None
    try:
        private = host is not None and (host == "localhost" or ipaddress.ip_address(host).is_private
                                        or ipaddress.ip_address(host).is_loopback)
    except ValueError:
        private = False
    where = endpoint or f"S3 in {plan.bucket.region}"
    if private:
        return [Finding("redirect", False, f"after the cut-over, blob pulls are redirected (307) to {where}, a "
                        "loopback or private address that clients on other hosts may not reach. Set "
                        "registry.redirect: {disable: true} to have the registry serve blobs itself, or use an "
                        "endpoint clients reach")], []
    return [], [f"blob pulls will be redirected (307) to {where}: clients must reach it"]
