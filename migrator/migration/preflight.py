"""Preflight: everything checked before anything changes (any failure: exit 2, nothing changed). The bucket's
canary, the registry's config, restart command, credentials and answers, hints for its settings, and doctor's
checks (``migrator/doctor.py``: a push by the registry itself, the bucket's rules, blob sizes, stray keys).

Reads the plan, the state and the registry; changes only ``state.uses_database`` and ``ctx.hints``, and the
bucket's ``etags_are_md5`` (what the canary found); doctor's push writes under a scratch prefix, removed again."""

from __future__ import annotations

import logging
import os
import uuid
from pathlib import Path

from migrator.doctor import SCRATCH, Diagnosis, diagnose
from migrator.errors import InvalidInput
from migrator.live import ADVICE
from migrator.managed import restart_command_problem
from migrator.march import md5_of
from migrator.migration.context import Context
from migrator.migration.standby import Front, standby_takes_pushes
from migrator.registry_config import S3_DRIVERS, filesystem_root, storage_driver
from migrator.s3 import BUCKET_ERRORS, PART_CHECKSUM, explain, open_bucket

log = logging.getLogger("migrator")

CANARIES = ".migrator-canary/"  # below the bucket prefix: the canary's objects, removed again


def preflight(ctx: Context, canary: bool) -> Diagnosis:
    """Everything checked before anything changes; any failure is exit 2 with nothing changed. Returns doctor's
    findings (``report`` lists them); doctor's push only with ``canary``."""
    with ctx.bucket.counter.phase_scope("preflight"):
        check_bucket(ctx, canary)
    if ctx.plan.registry is not None:
        check_registry(ctx)
    return doctor(ctx, push=canary)


def doctor(ctx: Context, push: bool) -> Diagnosis:
    """Doctor's checks; before the window a blocking finding stops here, nothing changed (exit 2), except on a dry
    run, which lists it. The push by the registry itself and the whole-tree scans only before the window: a run
    resumed inside it skips them."""
    before_window = ctx.state.readonly_on_at is None
    with ctx.bucket.counter.phase_scope("preflight"):
        if not ctx.engine.dry_run:  # a run killed during doctor's push left its scratch keys: not the registry's
            ctx.bucket.remove_prefix(f"{SCRATCH}/")
        diagnosis = diagnose(ctx.plan, ctx.bucket, ctx.registry, push=push and before_window,
                             uses_database=ctx.state.uses_database, scans=before_window)
    for finding in [] if ctx.engine.dry_run else diagnosis.findings:  # a dry run's report prints them itself
        log.warning("%s [%s] %s", "BLOCKS" if finding.blocks else "advice", finding.check, finding.message,
                    extra={ADVICE: not finding.blocks})
    if diagnosis.blocking and before_window and not ctx.engine.dry_run:
        raise InvalidInput(f"'migrator doctor' found {len(diagnosis.blocking)} problems that block the migration "
                           f"(first: [{diagnosis.blocking[0].check}] {diagnosis.blocking[0].message}); "
                           "nothing was changed")
    return diagnosis


def check_bucket(ctx: Context, canary: bool) -> None:
    """The bucket answers with these credentials; the canary proves put/get/list/delete on the prefix."""
    probe = open_bucket(ctx.plan.bucket, ctx.plan.sync, ctx.plan.key_prefix, max_attempts=2)  # fails fast
    name = ctx.plan.bucket.name
    rel = f"{CANARIES}{uuid.uuid4()}"
    try:
        probe.head_bucket()
        ctx.bucket.check_etags(ctx.engine.transfer.extra_args)
        if not canary:
            probe.first_keys("docker/", limit=1)
            return
        body = b"migrator canary " + ctx.bucket.key(rel).encode()
        rels = [rel, rel + "-multipart"]  # the copy's two upload paths, with its headers and checksum setting
        leftovers: list[str] = []  # from a run killed mid-preflight
        try:
            if ctx.engine.transfer.put(rel, body).strip('"') != md5_of(body):
                ctx.bucket.etags_are_md5 = False  # this store's ETags are no MD5s: content is read to prove it
            send_multipart_canary(ctx, rels[1], body)
            for stored in rels:
                if probe.get_bytes(stored) != body:
                    raise InvalidInput(f"bucket {name!r} returned other bytes for the canary object "
                                       f"{probe.key(stored)}; check bucket.endpoint")
            listed = probe.first_keys(CANARIES)
            if not set(rels) <= set(listed):
                raise InvalidInput(f"bucket {name!r} does not list the canary objects it just stored")
            leftovers = [stored for stored in listed if stored not in rels]
        finally:  # DeleteObjects, as the delete step sends it
            probe.delete_keys(rels + leftovers)
    except BUCKET_ERRORS as exc:
        raise InvalidInput(explain(exc, name)) from None


def send_multipart_canary(ctx: Context, rel: str, body: bytes) -> None:
    """The canary through the copy's multipart path. With ``bucket.checksums: auto`` on a store other than AWS it is
    sent with CRC32 part checksums, which the copy keeps if the store stores them, as aws s3 sends them: the store
    checks each part against its checksum (and moto, like AWS, otherwise computes a whole-object CRC64NVME as it
    completes the upload). A store that ignores them (Ceph RGW before Squid) or refuses them (the same over https)
    gets the copy's parts without; one that refused them gets the canary again, without."""
    bucket = ctx.bucket
    probing = ctx.plan.bucket.checksums == "auto" and bucket.part_checksum is None
    if probing:
        bucket.part_checksum = PART_CHECKSUM
    try:
        ctx.engine.transfer.put_multipart(rel, body)
    except BUCKET_ERRORS as exc:
        if not probing:
            raise
        log.info("bucket %r refused a multipart upload with CRC32 checksums (%s): uploads are sent without",
                 ctx.plan.bucket.name, exc)
        bucket.part_checksum = None
        ctx.engine.transfer.put_multipart(rel, body)
        return
    if probing:
        if not bucket.stored_checksum(rel):
            bucket.part_checksum = None
        log.info("bucket %r %s CRC32 checksums: multipart uploads are sent %s", ctx.plan.bucket.name,
                 "keeps" if bucket.part_checksum else "does not keep", "with them" if bucket.part_checksum else "without")


def check_registry(ctx: Context) -> None:
    """The registry's config, restart command, credentials and answers: what every registry change relies on."""
    check_registry_config(ctx)
    if ctx.settings.write_credentials and not (
        os.environ.get("AWS_ACCESS_KEY_ID") and os.environ.get("AWS_SECRET_ACCESS_KEY")
    ):
        raise InvalidInput("registry.write_credentials is true but AWS_ACCESS_KEY_ID/AWS_SECRET_ACCESS_KEY are not set")
    command = ctx.managed.restart_command
    problem = restart_command_problem(command)
    if problem:
        key = "registry.restart" if ctx.settings.restart else "registry.gitlab_ctl"
        raise InvalidInput(f"the restart command {command!r} {problem}; fix {key}")
    advise_on_registry_settings(ctx)
    resuming = bool(ctx.state.done) and ctx.state.outcome is None
    wait = ctx.settings.health_timeout_seconds if resuming else 5  # a crash may have left a restart running
    if not ctx.managed.client.wait_healthy(wait):
        raise InvalidInput(
            f"the registry at {ctx.settings.url} does not answer GET /v2/ with 200 or 401; "
            "check registry.url and that the registry is running"
        )
    if ctx.front is not None:
        check_front(ctx, ctx.front)
    if ctx.state.uses_database is None:
        ctx.state.uses_database = ctx.managed.uses_database()
    if ctx.managed.client.health() == 401:
        given = "rejects MIGRATOR_PROBE_USER's credentials" if ctx.managed.client.user else "asks for credentials"
        raise InvalidInput(
            f"the registry at {ctx.settings.url} {given} (HTTP 401), so its read-only state and the image "
            "pulls after the cut-over cannot be proven: set MIGRATOR_PROBE_USER and MIGRATOR_PROBE_PASSWORD to a "
            "user allowed to push and pull"
        )


def check_front(ctx: Context, front: Front) -> None:
    """registry.front: its file proxies to the registry, which answers through it (a file a killed run left steered
    is put back first), and its reload command works: run once on the operator's own file (not by ``report``)."""
    front.check(put_back=not ctx.engine.dry_run)
    if not ctx.state.front_log_offsets and not ctx.engine.dry_run:  # the migration's requests are counted from here
        ctx.state.front_log_offsets = front.log_offsets()
    reload = front.nginx.settings.reload
    problem = restart_command_problem(reload)
    if problem:
        raise InvalidInput(f"the front's reload command {reload!r} {problem}; fix registry.front.reload")
    if not ctx.engine.dry_run:
        problem = front.nginx.reload(drain=False)
        if problem:
            raise InvalidInput(f"registry.front.reload does not reload nginx ({problem}); nothing was changed: fix "
                               f"registry.front.reload (it must reload the nginx that serves {front.nginx.settings.nginx})")


def check_registry_config(ctx: Context) -> None:
    storage = ctx.managed.config.effective_storage()
    driver, _ = storage_driver(storage)
    if ctx.state.is_done("cutover"):
        return  # resuming after the cut-over: the registry is on s3 by our hand
    if ctx.state.readonly_on_at is not None:  # mid-migration: the file holds our edit, judge the original
        storage = ctx.managed.config.original_storage()
        driver, _ = storage_driver(storage)
    if driver != "filesystem":
        hint = "already migrated? see 'migrator status'" if driver in S3_DRIVERS else "only filesystem storage is migrated"
        raise InvalidInput(f"the registry config {ctx.managed.config.path} uses the {driver} driver, not "
                           f"filesystem ({hint})")
    root = Path(filesystem_root(storage)).resolve()
    if root != ctx.plan.source:
        raise InvalidInput(
            f"registry.config ({ctx.managed.config.running_path}) has storage.filesystem.rootdirectory {root}, "
            f"but the plan's source is {ctx.plan.source}: they must be the same directory. Set 'source' to "
            f"{root}, or registry.config to the config of the registry that serves {ctx.plan.source}"
        )


def advise_on_registry_settings(ctx: Context) -> None:
    """Hints for settings that make restarts or the bucket harder on clients than they need to be (logged, and
    kept for ``report``)."""
    ctx.hints = []
    if ctx.settings.front is None and ctx.managed.draintimeout() is None:  # a front drains the registry first
        ctx.hints.append("http.draintimeout is unset (0) in the registry config, so each restart cuts requests "
                          "in flight; e.g. 'draintimeout: 10s' under http lets them finish (it lengthens a restart)")
    if ctx.settings.front is not None and not standby_takes_pushes(ctx.managed):
        ctx.hints.append("registry.front with no http.secret in the registry config: its standby can only serve "
                          "reads, so pushes are refused across both restarts too, and a push under way at nginx's "
                          "reload fails with 'blob upload invalid' (each process signs uploads with a secret of its "
                          "own). Set http.secret (any long random string) to have the standby take pushes")
    if ctx.settings.front is None:
        ctx.hints.append("no registry.front: clients see the window's restarts (reads unanswered while the port is "
                         "closed, requests in flight cut); naming the nginx in front of the registry lets migrator "
                         "steer it to a standby meanwhile, so that only pushes are refused, and only while the final "
                         "delta is copied (docs/front.md; 'report' says how long)")
    storage = ctx.settings.storage
    gitlab = ctx.settings.format == "omnibus" or ctx.plan.bucket.driver == "s3_v2"
    if gitlab and ctx.plan.bucket.endpoint:
        missing = [key for key in ("pathstyle", "checksum_disabled") if key not in storage]
        if missing:
            ctx.hints.append("an S3-compatible endpoint with GitLab's registry: its s3_v2 driver (GitLab 19 runs "
                              "s3 as s3_v2) sends CRC64NVME checksums and path-style requests unless told; set "
                              f"{' and '.join(f'{k}: true' for k in missing)} under registry.storage if the store "
                              "needs it")
    if ctx.plan.bucket.ca_bundle and "skipverify" not in storage:
        ctx.hints.append("bucket.ca_bundle is set, but the registry's s3 driver takes no CA bundle: it trusts its "
                          "host's CAs. Add the certificate to the registry host's trust store, or set "
                          "skipverify: true under registry.storage (the check on s3 before the window fails "
                          "otherwise)")
    for hint in ctx.hints if not ctx.engine.dry_run else ():  # 'report' lists them itself
        log.info("hint: %s", hint)
    if gitlab and storage.get("v4auth") is False:
        raise InvalidInput("registry.storage.v4auth is false, but GitLab's registry removed SigV2 in 18.0: remove "
                           "v4auth from registry.storage")

