"""The runner and the safety path with fakes (tests/fakes.py): the phase table, resume at every phase, the
failure path inside the window, the strand guard, the estimate, and the one rule for "same as the source"."""

from __future__ import annotations

import dataclasses
import json
import time
from types import SimpleNamespace

import pytest
from fakes import FakeRegistry, context, plan

from migrator import cli, gc
from migrator.cli import _status_lines, status_snapshot
from migrator.doctor import Diagnosis
from migrator.errors import InvalidInput, RestoreFailed, StoppedSafely
from migrator.front import FrontSettings
from migrator.live import LiveStatus, registry_state
from migrator.migration import copy, preflight, runner, safety, window
from migrator.migration.context import Options
from migrator.migration.estimate import WindowEstimate, estimate_window
from migrator.migration.proofs import check_window_changes, tag_moved_on_s3
from migrator.migration.standby import standby_takes_pushes
from migrator.state import RunState, StateStore
from migrator.sync import PassResult
from migrator.verify import Difference, difference

NO_REGISTRY = ["initial_sync", "delta_passes", "online_verification", "final_sync", "verify_window"]
DISTRIBUTION = ["initial_sync", "delta_passes", "online_verification", "prove_on_s3", "readonly_on", "final_sync",
                "verify_window", "cutover", "readonly_off"]


@pytest.mark.parametrize("registry, restart, expected", [
    (None, "true", NO_REGISTRY),
    ("yaml", "true", DISTRIBUTION),
    ("omnibus", "gitlab-ctl reconfigure", DISTRIBUTION),  # slow path: the restart command renders the config
    ("omnibus", None, DISTRIBUTION + ["reconfigure"]),  # fast path: one reconfigure after the window
])
def test_planned_phases_for_every_plan_shape(tmp_path, registry, restart, expected):
    assert runner.planned_phases(plan(tmp_path, registry, restart)) == expected


def test_status_of_a_finished_run_without_a_registry_has_nothing_left(tmp_path):
    """It listed prove_on_s3, readonly_on, cutover and readonly_off as still to do, forever."""
    the_plan = plan(tmp_path, registry=None)
    store = StateStore(the_plan.state_dir)
    store.ensure_directory()
    state = store.load()
    state.done, state.outcome = list(NO_REGISTRY), "done"
    store.save(state)
    assert status_snapshot(the_plan)["phases_left"] == []


def test_status_says_a_run_waits_on_its_operator_and_not_that_a_finished_pass_is_running(tmp_path):
    """A run at its read-only question showed 'running: prove_on_s3 (pass 2): 300 of 300 files, ETA 0s'."""
    the_plan = plan(tmp_path, registry=None)
    StateStore(the_plan.state_dir).ensure_directory()
    live = LiveStatus(the_plan.state_dir, has_registry=False)  # this process: alive, as a run's is
    live.phase_started("prove_on_s3")
    live.asking("Put the registry in read-only mode now?")
    lines = _status_lines(status_snapshot(the_plan))
    assert any(line.startswith("waiting: for an answer in the terminal of the run (pid ") and
               line.endswith("Put the registry in read-only mode now?") for line in lines), lines
    assert not any(line.startswith("running:") for line in lines)
    live.asking(None)
    lines = _status_lines(status_snapshot(the_plan))
    assert any(line.startswith("running: prove_on_s3 since ") and line.endswith("(no copy pass in it yet)")
               for line in lines) and not any("waiting" in line for line in lines)
    live.pass_started(3, expected_objects=300)
    assert "running: prove_on_s3 (pass 3): 0 of 300 files, 0 files/s" in _status_lines(status_snapshot(the_plan))


def test_a_front_reload_that_fails_is_found_before_anything_changes(tmp_path):
    """A trial's 'reload: nginx -s relaod' was met only after the operator's yes, with advice to run rollback (which
    failed the same way): run reloads nginx on its own file once, first."""
    ctx = context(tmp_path)
    ctx.engine = SimpleNamespace(dry_run=False)  # type: ignore[assignment]
    reloads: list[bool] = []
    nginx = SimpleNamespace(settings=SimpleNamespace(reload="true", nginx=tmp_path / "registry.conf"),
                            reload=lambda drain: reloads.append(drain) or "command 'nginx -s relaod' failed")
    front = SimpleNamespace(check=lambda put_back: None, log_offsets=lambda: {}, nginx=nginx)
    with pytest.raises(InvalidInput, match=r"^registry.front.reload does not reload nginx \(command 'nginx -s relaod' "
                                           r"failed\); nothing was changed: fix registry.front.reload"):
        preflight.check_front(ctx, front)  # type: ignore[arg-type]
    assert reloads == [False]
    ctx.engine = SimpleNamespace(dry_run=True)  # type: ignore[assignment]
    preflight.check_front(ctx, front)  # type: ignore[arg-type]  # report changes nothing: no reload
    assert reloads == [False]


def test_a_rollback_lets_the_next_migration_count_the_fronts_requests_from_its_own_start(tmp_path):
    ctx = context(tmp_path)
    ctx.registry.config.backup.parent.mkdir(parents=True, exist_ok=True)
    ctx.registry.config.backup.write_text("storage: {filesystem: {}}\n")
    ctx.state.front_log_offsets = {"/var/log/gitlab/nginx/gitlab_registry_access.log": 4096}
    assert safety.rollback(ctx, force=False)
    assert ctx.state.outcome == "rolled back" and ctx.state.front_log_offsets == {}


def test_advice_names_the_operators_plan():
    assert cli.with_plan("fix it, then run 'migrator rollback PLAN'; see 'migrator status PLAN'", "/etc/m/plan.yml") == (
        "fix it, then run 'migrator rollback /etc/m/plan.yml'; see 'migrator status /etc/m/plan.yml'")


def test_where_the_registry_is_says_read_only_only_once_pushes_are_refused_with_a_front(tmp_path):
    """A trial's status said READ-ONLY since the flip's first step while pushes landed on the front's standby, and
    after a kill before the read-only config was written."""
    state = RunState(readonly_on_at=1000.0)
    assert registry_state(state, True, at=1010.0).startswith("READ-ONLY since")  # no front: the restart refuses
    assert registry_state(state, True, at=1010.0, front=True).startswith(
        "read-write on filesystem: clients are on migrator's standby")
    state.pushes_refused_from = 1004.0
    assert registry_state(state, True, at=1010.0, front=True).endswith("(6 s)")
    state.writes_on_s3_since = 1008.0
    assert registry_state(state, True, front=True).startswith("going read-write on s3 since")
    state.readonly_off_at = 1009.0
    assert registry_state(state, True, front=True) == "read-write on s3"


def test_status_after_a_kill_before_the_read_only_config_was_written_says_read_write(tmp_path, monkeypatch):
    ctx = context(tmp_path)
    state = ctx.store.load()
    state.readonly_on_at = time.time() - 30
    ctx.store.save(state)
    monkeypatch.setattr(cli, "open_config", lambda *args: SimpleNamespace(effective_storage=lambda: {"filesystem": {}}))
    snapshot = status_snapshot(ctx.plan)
    assert snapshot["read_only"] is False
    assert snapshot["registry"].startswith("read-write on filesystem (its config is the original"), snapshot["registry"]


def test_a_rollback_after_the_cut_over_keeps_the_window_that_ended_when_writes_went_on_on_s3(tmp_path):
    """report.html shaded the time from the cut-over to a later rollback as read-only: pushes landed on s3 then."""
    ctx = context(tmp_path)
    ctx.state.readonly_on_at, ctx.state.readonly_off_at = 1000.0, 1002.5
    safety.reset_to_online(ctx)
    assert ctx.state.closed_windows == [{"on": 1000.0, "off": 1002.5}]
    ctx.state.readonly_on_at = 2000.0  # inside the window: it closes now
    safety.reset_to_online(ctx)
    assert ctx.state.closed_windows[-1]["off"] > 2000.0 and ctx.state.readonly_on_at is None


def test_what_survives_a_restore_is_what_the_table_says_an_online_copy_established():
    assert set(safety.KEPT_AFTER_RESTORE) == {p.name for p in runner.PHASES if p.online and not p.proof}


def recording(monkeypatch, ran: list, fail: str = "", error: type = RuntimeError):
    """Every phase replaced by one that records its name (and ``fail`` raising); preflight does nothing."""

    def work_of(name):
        def work(ctx):
            ran.append(name)
            if name == "readonly_on":  # as the real one: the window is open once the backup is taken
                ctx.state.readonly_on_at = time.time()
            if name == fail:
                raise error(f"{name} broke")
            if name == "readonly_off":
                ctx.state.readonly_off_at = time.time()
            return PassResult(uploaded_objects=1) if name == "initial_sync" else None
        return work

    monkeypatch.setattr(runner, "PHASES", tuple(dataclasses.replace(p, work=work_of(p.name)) for p in runner.PHASES))
    monkeypatch.setattr(runner, "preflight", lambda ctx, canary: None)


@pytest.mark.parametrize("registry", [None, "yaml"])
def test_a_run_goes_through_the_planned_phases_and_writes_the_report(tmp_path, monkeypatch, registry):
    ran: list[str] = []
    recording(monkeypatch, ran)
    ctx = context(tmp_path, registry)
    report = runner.run(ctx)
    assert ran == runner.planned_phases(ctx.plan)
    assert [p["name"] for p in report["phases"]] == ran
    assert report["phases"][0]["uploaded_objects"] == 1
    assert json.loads((ctx.plan.state_dir / "report.json").read_text())["outcome"] == "done"
    assert StateStore(ctx.plan.state_dir).load().done == ran


@pytest.mark.parametrize("done", range(len(DISTRIBUTION) + 1))
def test_resume_at_every_phase(tmp_path, monkeypatch, done):
    """A run that stopped after ``done`` phases goes on from there; before the window, what the online phases
    proved is proven again (the registry took writes meanwhile), the copy is kept."""
    ran: list[str] = []
    recording(monkeypatch, ran)
    ctx = context(tmp_path)
    ctx.state.done = DISTRIBUTION[:done]
    in_window = "readonly_on" in ctx.state.done
    if in_window:
        ctx.state.readonly_on_at = time.time()
        ctx.registry.client.write_status = 405  # flipped read-only, and still so
    runner.run(ctx)
    assert ran == (DISTRIBUTION[done:] if in_window else DISTRIBUTION[min(done, 1):])
    assert ctx.state.done == DISTRIBUTION


@pytest.mark.parametrize("on_original", [True, False])
def test_resuming_inside_the_window_with_a_registry_that_takes_writes_starts_the_window_over(
        tmp_path, monkeypatch, on_original):
    """The state says read-only, but a write probe gets 202 (a restore's restart ran before a kill): the flip and
    everything after it are done again, after delta passes; a restart only when the files are not the original."""
    ran: list[str] = []
    recording(monkeypatch, ran)
    ctx = context(tmp_path)
    ctx.registry.on_original = on_original
    ctx.state.done = DISTRIBUTION[:DISTRIBUTION.index("final_sync")]
    ctx.state.readonly_on_at = time.time()
    runner.run(ctx)
    assert ran == DISTRIBUTION[1:]
    assert ctx.registry.restores == (0 if on_original else 1)


def test_resuming_after_an_unproven_restore_finishes_it_first(tmp_path, monkeypatch):
    ran: list[str] = []
    recording(monkeypatch, ran)
    ctx = context(tmp_path)
    ctx.state.done = DISTRIBUTION[:DISTRIBUTION.index("verify_window")]
    ctx.state.readonly_on_at = time.time()
    ctx.state.restore_problem = "its restart (after: x) has not been proven to take writes yet"
    runner.run(ctx)
    assert ctx.registry.restores == 1 and ran == DISTRIBUTION[1:]


@pytest.mark.parametrize("phase", ["readonly_on", "final_sync", "verify_window", "cutover", "readonly_off"])
def test_a_failure_inside_the_window_returns_the_registry_to_the_filesystem(tmp_path, monkeypatch, phase):
    ran: list[str] = []
    recording(monkeypatch, ran, fail=phase)
    ctx = context(tmp_path)
    with pytest.raises(StoppedSafely, match=f"RuntimeError: {phase} broke inside the read-only window.*back on the "
                                            "filesystem"):
        runner.run(ctx)
    assert ctx.registry.restores == 1
    assert ctx.state.done == ["initial_sync"] and ctx.state.readonly_on_at is None  # the window's proofs are gone
    assert len(ctx.state.closed_windows) == 1 and ctx.state.filesystem_proven_at is not None


def test_ctrl_c_inside_the_window_is_named_and_returns_the_registry(tmp_path, monkeypatch):
    recording(monkeypatch, [], fail="final_sync", error=KeyboardInterrupt)
    ctx = context(tmp_path)
    with pytest.raises(StoppedSafely, match=r"^interrupted \(Ctrl-C\) inside the read-only window\. The registry is back"):
        runner.run(ctx)
    assert ctx.registry.restores == 1


def test_the_flip_is_asked_outside_any_phase_and_a_no_changes_nothing(tmp_path, monkeypatch):
    ran: list[str] = []
    recording(monkeypatch, ran)
    asked: list[str] = []
    monkeypatch.setattr(window, "estimate_window", lambda ctx, result, seconds: WindowEstimate(0, 0, True, 0, 2, True,
                                                                                               2, 0, 0))
    ctx = context(tmp_path, options=Options(confirm=lambda question: asked.append(question) is not None))
    with pytest.raises(StoppedSafely, match="read-only flip declined; the registry was not touched"):
        runner.run(ctx)
    assert asked and "Pushes are refused for about 4 s (restarts included)" in asked[0]
    assert ran == DISTRIBUTION[:4] and ctx.registry.restores == 0 and ctx.state.readonly_on_at is None
    monkeypatch.setattr(window, "estimate_window", lambda ctx, result, seconds: WindowEstimate(
        0, 0, True, 0, 2, True, 2, 0, 0, restarts_outside=True))
    with pytest.raises(StoppedSafely):
        runner.run(ctx)
    assert "Pushes are refused for under a second (no restart inside: clients are on registry.front's standby" in asked[1]


def test_a_failure_before_the_window_or_without_a_registry_is_not_turned_into_a_restore(tmp_path, monkeypatch):
    recording(monkeypatch, [], fail="online_verification")
    ctx = context(tmp_path)
    with pytest.raises(RuntimeError, match="online_verification broke"):
        runner.run(ctx)
    assert ctx.registry.restores == 0
    recording(monkeypatch, [], fail="final_sync")
    ctx = context(tmp_path / "no-registry", registry=None)
    with pytest.raises(RuntimeError, match="final_sync broke"):
        runner.run(ctx)


def test_a_failure_after_writes_were_accepted_on_s3_is_not_undone(tmp_path, monkeypatch):
    recording(monkeypatch, [], fail="readonly_off")
    ctx = context(tmp_path)
    ctx.state.done, ctx.state.readonly_on_at, ctx.state.readonly_off_at = DISTRIBUTION[:-1], 1.0, 2.0
    with pytest.raises(RuntimeError, match="readonly_off broke"):
        runner.run(ctx)
    assert ctx.registry.restores == 0


def test_a_restore_that_does_not_take_writes_says_so(tmp_path, monkeypatch):
    recording(monkeypatch, [], fail="cutover")
    ctx = context(tmp_path)
    ctx.registry.client.write_status = 405
    with pytest.raises(RestoreFailed, match="may still refuse pushes"):
        runner.run(ctx)
    assert ctx.state.restore_problem == "a write probe still gets HTTP 405, not 202"


def test_the_strand_guard_keeps_the_registry_on_s3_when_the_bucket_took_a_push(tmp_path):
    ctx = context(tmp_path)
    since = time.time() - 5
    ctx.state.writes_on_s3_since = since
    layer = "docker/registry/v2/repositories/a/_layers/sha256/" + "1" * 64 + "/link"
    (ctx.plan.source / layer).parent.mkdir(parents=True)
    (ctx.plan.source / layer).write_bytes(b"sha256:" + b"1" * 64)
    ctx.bucket.put(layer, b"sha256:" + b"1" * 64)  # our own copy: the same content
    ctx.bucket.put("docker/registry/v2/repositories/a/_uploads/x/data", b"in progress")  # not a push
    ctx.bucket.put("docker/registry/v2/blobs/sha256/00/" + "0" * 64 + "/data", b"old", modified=since - 60)
    assert safety.objects_written_since(ctx, since) == []
    ctx.bucket.put("docker/registry/v2/repositories/a/_manifests/tags/new/current/link", b"sha256:" + b"2" * 64)
    written = safety.objects_written_since(ctx, since)
    assert written == ["docker/registry/v2/repositories/a/_manifests/tags/new/current/link"]
    assert safety.stranded_images(written) == "tags a:new"
    with pytest.raises(StoppedSafely, match="left on s3, read-write"):
        safety.stop_safely(ctx, "the probe failed")
    assert ctx.registry.restores == 0


def test_the_strand_guard_lets_the_registry_go_back_when_the_bucket_took_nothing(tmp_path):
    ctx = context(tmp_path)
    ctx.state.writes_on_s3_since = time.time()
    with pytest.raises(StoppedSafely, match="back on the filesystem"):
        safety.stop_safely(ctx, "the probe failed")
    assert ctx.registry.restores == 1 and ctx.state.writes_on_s3_since is None


def test_the_window_proof_names_each_difference_by_kind(tmp_path):
    ctx = context(tmp_path)
    link = "docker/registry/v2/repositories/a/_manifests/tags/v1/current/link"
    gone = "docker/registry/v2/repositories/a/_manifests/tags/v0/current/link"
    (ctx.plan.source / link).parent.mkdir(parents=True)
    (ctx.plan.source / link).write_bytes(b"sha256:" + b"a" * 64)
    ctx.bucket.put(link, b"sha256:" + b"b" * 64)  # same size, other content
    ctx.bucket.put(gone, b"sha256:" + b"c" * 64)  # deleted from the source, still in the bucket
    ctx.journal.window_changes = lambda: [(link, False, None), (gone, True, None)]
    ctx.state.online_verified_objects, ctx.state.final_source_objects = 1, 1
    check = check_window_changes(ctx)
    assert [(d.rel, d.kind) for d in check.differences] == [(link, Difference.CONTENT), (gone, Difference.EXTRA)]
    assert check.count_problem is None
    assert check.problems() == [f"{link} has other content in the bucket",
                                f"{gone} is still in the bucket but gone from the source"]
    assert ctx.state.verification | {"method": ""} == {"method": "", "source_objects": 1, "bucket_objects": 1,
                                                       "missing": 0, "extra": 1, "mismatched": 1}


@pytest.mark.parametrize("rel, source, bucket, expected", [
    ("docker/x/link", None, None, None),
    ("docker/x/link", b"abc", None, Difference.MISSING),
    ("docker/x/link", None, b"abc", Difference.EXTRA),
    ("docker/x/link", b"abc", b"abcd", Difference.SIZE),
    ("docker/x/link", b"abc", b"abd", Difference.CONTENT),
    ("docker/x/link", b"abc", b"abc", None),
    ("docker/registry/v2/blobs/sha256/ab/" + "ab" * 32 + "/data", b"abc", b"abd", None),  # named by its digest
])
def test_one_rule_decides_same_as_the_source(rel, source, bucket, expected):
    def size(data):
        return None if data is None else len(data)

    assert difference(rel, size(source), size(bucket), lambda: str(source), lambda: str(bucket)) == expected


def test_the_estimate_adds_the_final_pass_proofs_pulls_and_restarts():
    estimate = WindowEstimate(changes=100, seconds_per_object=0.01, change_feed=False, walk_seconds=5.0,
                              seconds_per_restart=3.0, restart_measured=True, restarts=2, tags_pulled=10,
                              tag_pull_seconds=1.5)
    figures = estimate.to_json()
    assert figures["final_pass"] == 6.0 and figures["proofs"] == 1.0 and figures["restarts"] == 6.0
    assert figures["total"] == 14.5
    assert dataclasses.replace(estimate, change_feed=True).to_json()["final_pass"] == 1.0
    assert figures["assumed"] == {"changes_left_for_the_window": 100, "seconds_per_object": 0.01, "change_feed": False,
                                  "seconds_per_restart": 3.0, "restart_measured": True, "tags_pulled": 10}


def test_the_estimate_leaves_out_restarts_a_front_covers_and_says_what_a_front_would_save(tmp_path):
    estimate = WindowEstimate(changes=0, seconds_per_object=0.01, change_feed=True, walk_seconds=0.0,
                              seconds_per_restart=3.0, restart_measured=True, restarts=2, tags_pulled=0,
                              tag_pull_seconds=0.0)
    covered = dataclasses.replace(estimate, restarts_outside=True).to_json()
    assert covered["restarts"] == 0 and covered["total"] == 0 and covered["front_would_save"] is None
    assert dataclasses.replace(estimate, front_would_save=6.0).to_json()["front_would_save"] == 6.0
    registry = FakeRegistry(tmp_path)
    assert standby_takes_pushes(registry)  # upload state signed with the config's http.secret by every process
    registry.config.running = {"http": {"addr": ":5000"}}
    assert not standby_takes_pushes(registry)


def test_the_hints_for_restarts_with_and_without_a_front(tmp_path):
    """Without a front, each restart cuts what is in flight at draintimeout 0; a front drains the registry through
    nginx before it restarts, so the hint would send the operator after a setting that changes nothing."""
    ctx = context(tmp_path)
    ctx.engine = SimpleNamespace(dry_run=True)  # type: ignore[assignment]
    preflight.advise_on_registry_settings(ctx)
    assert any("http.draintimeout is unset" in hint for hint in ctx.hints)
    front = FrontSettings(nginx=tmp_path / "registry.conf", reload="true")
    ctx.plan = dataclasses.replace(ctx.plan, registry=dataclasses.replace(ctx.plan.registry, front=front))
    preflight.advise_on_registry_settings(ctx)
    assert not any("draintimeout" in hint or "no registry.front" in hint for hint in ctx.hints), ctx.hints
    assert not any("http.secret" in hint for hint in ctx.hints), ctx.hints
    ctx.registry.config.running = {"http": {"addr": ":5000"}}  # no secret: the standby can only serve reads
    preflight.advise_on_registry_settings(ctx)
    assert any(hint.startswith("registry.front with no http.secret") for hint in ctx.hints), ctx.hints


def test_the_estimate_uses_what_the_initial_sync_and_the_last_pass_measured(tmp_path):
    ctx = context(tmp_path, registry=None)
    ctx.state.phases = [{"name": "initial_sync", "seconds": 20.0, "uploaded_objects": 1000}]
    ctx.state.last_pass_seconds = 4.0
    result = PassResult(uploaded_objects=500)  # more than sync.delta_stop_below (100): the delta passes cap it
    estimate = estimate_window(ctx, result, pass_seconds=9.0)
    assert (estimate.changes, estimate.seconds_per_object, estimate.walk_seconds) == (100, 0.02, 4.0)
    assert not estimate.change_feed and estimate.restarts == 0 and estimate.tags_pulled == 0


class ScriptedEngine:
    """An engine whose passes find the given numbers of changes, in turn."""

    def __init__(self, changes: list[int]):
        self.changes = list(changes)
        self.passes = 0
        self.guarded: list[PassResult] = []  # the passes the delete guard was asked about

    def run_pass(self) -> PassResult:
        self.passes += 1
        return PassResult(source_objects=10, uploaded_objects=self.changes.pop(0))

    def check_deletes(self, result: PassResult, max_fraction: float, allow: bool) -> None:
        self.guarded.append(result)


@pytest.mark.parametrize("changes, passes", [([500, 120, 99, 5], 3), ([500] * 7, 5), ([0], 1)])
def test_delta_passes_stop_once_a_pass_finds_few_changes_or_after_the_limit(tmp_path, changes, passes):
    ctx = context(tmp_path, registry=None)  # sync.delta_stop_below 100, sync.max_delta_passes 5
    ctx.engine = ScriptedEngine(changes)
    total = copy.delta_passes(ctx)
    assert ctx.engine.passes == passes == ctx.state.passes == len(ctx.state.pass_history)
    assert total.uploaded_objects == sum(changes[:passes])
    assert StateStore(ctx.plan.state_dir).load().last_pass_changes == changes[passes - 1]
    # the delete guard is asked online, about the last pass (issue 21, item 4)
    assert [r.uploaded_objects for r in ctx.engine.guarded] == [changes[passes - 1]]


def test_gc_asks_before_its_read_only_stretch_and_a_no_changes_nothing(tmp_path, monkeypatch):
    """terminal took the question out of readonly_on (run asks before the phase); gc must still ask."""
    asked: list[str] = []
    ctx = context(tmp_path, options=Options(confirm=lambda question: asked.append(question) is not None))
    monkeypatch.setattr(ctx.registry, "binary", lambda: "/usr/bin/registry")
    monkeypatch.setattr(gc, "readonly_on", lambda ctx: pytest.fail("flipped without a yes"))
    with pytest.raises(StoppedSafely, match="read-only flip declined"):
        gc.collect_garbage(ctx, delete_untagged=False)
    assert asked and "Pushes are refused while the garbage is collected" in asked[0]
    assert ctx.state.gc_started_at is None


def test_a_tag_a_client_moved_on_s3_after_writes_were_accepted_is_no_fault_of_the_copy(tmp_path):
    """readonly_off asks production for tags once pushes land on s3: a tag pushed (or deleted) since then no longer
    names the frozen source's digest in the bucket, and is excused (test_drills' live traffic met it)."""
    ctx = context(tmp_path)
    ctx.bucket.put("docker/registry/v2/repositories/team/app/_manifests/tags/v1/current/link", b"sha256:new")
    assert tag_moved_on_s3(ctx, "team/app", "v1", "sha256:old")
    assert not tag_moved_on_s3(ctx, "team/app", "v1", "sha256:new")
    assert tag_moved_on_s3(ctx, "team/app", "deleted", "sha256:old")


def test_a_run_resumed_inside_the_window_asks_doctor_without_the_push_or_the_whole_tree_scans(tmp_path, monkeypatch):
    asked: dict = {}
    monkeypatch.setattr(preflight, "diagnose", lambda *args, **options: (asked.update(options), Diagnosis())[1])
    ctx = dataclasses.replace(context(tmp_path), engine=SimpleNamespace(dry_run=False))
    ctx.state.readonly_on_at = time.time()
    preflight.doctor(ctx, push=True)
    assert asked["push"] is False and asked["scans"] is False
    ctx.state.readonly_on_at = None
    preflight.doctor(ctx, push=True)
    assert asked["push"] is True and asked["scans"] is True


@pytest.mark.parametrize("dry_run", [False, True])
def test_preflight_removes_what_a_killed_doctor_push_left_under_its_scratch_prefix(tmp_path, monkeypatch, dry_run):
    """The crash drill found .migrator-doctor/ keys in the bucket after the final run; a dry run changes nothing."""
    monkeypatch.setattr(preflight, "diagnose", lambda *args, **options: Diagnosis())
    ctx = dataclasses.replace(context(tmp_path), engine=SimpleNamespace(dry_run=dry_run))
    scratch = [".migrator-doctor/0123456789ab/docker/registry/v2/blobs/sha256/ab/data", ".migrator-doctor/x/probe"]
    others = [".migrator-doctor-notes", "docker/registry/v2/repositories/team/app/_layers/sha256/ab/link"]
    for rel in scratch + others:
        ctx.bucket.put(rel, b"bytes")
    preflight.doctor(ctx, push=True)
    assert sorted(ctx.bucket.objects) == sorted(others + (scratch if dry_run else []))
