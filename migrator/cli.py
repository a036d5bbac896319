"""The ``migrator`` command: thin click commands over the library (``migrator.migration``: its phases and runner)."""

from __future__ import annotations

import datetime
import json
import logging
import signal
import sys
import textwrap
import threading
import time
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Callable, Iterator, Mapping, Optional

import click

from migrator import __version__
from migrator.console import ProgressBlock, human_bytes, setup_logging
from migrator.doctor import examine
from migrator.errors import EXIT_DIFFERENCES, EXIT_INVALID, EXIT_OK, InvalidInput, MigratorError, describe_unexpected
from migrator.front import MARKER
from migrator.gc import collect_garbage, would_free
from migrator.html_report import write_html
from migrator.live import Counts, LiveStatus, read_live, registry_state
from migrator.migration import preflight, proofs, runner, safety
from migrator.migration.context import Context as MigrationContext
from migrator.migration.context import Options, open_context
from migrator.migration.estimate import dry_run_report
from migrator.migration.report import build_report
from migrator.plan import Plan, load_plan
from migrator.registry_config import is_readonly, open_config
from migrator.state import RunState, StateStore

log = logging.getLogger("migrator")


EXIT_CODES = {
    0: "done, no differences",
    1: "differences found, or stopped safely without finishing (the message says where the registry is)",
    2: "invalid input (plan, paths, credentials, bucket, registry): nothing was changed",
    3: "refused for safety (mass delete, another run migrating the same registry or bucket, ...)",
    130: "interrupted (Ctrl-C); inside the read-only window the registry goes back to the filesystem first",
}

EXAMPLES = {
    "main": ["migrator doctor plan.yml", "migrator report plan.yml", "migrator sync plan.yml", "migrator run plan.yml",
             "migrator status --watch plan.yml", "migrator verify --images plan.yml", "migrator rollback plan.yml"],
    "run": ["migrator run plan.yml              # asks before the read-only flip",
            "migrator run --yes plan.yml        # no question (scripts)",
            "migrator run plan.yml              # again after any stop: continues where it stopped"],
    "report": ["migrator report plan.yml", "migrator report --json report.json plan.yml",
               "migrator report --html report.html plan.yml   # the last run's page"],
    "sync": ["migrator sync plan.yml             # days ahead; again to copy what changed since"],
    "verify": ["migrator verify plan.yml", "migrator verify --deep --sample 100 plan.yml",
               "migrator verify --images --json images.json plan.yml"],
    "status": ["migrator status plan.yml", "migrator status --watch plan.yml   # start it before 'run' to follow it",
               "migrator status --json plan.yml"],
    "gc": ["migrator gc --dry-run plan.yml", "migrator gc --delete-untagged plan.yml"],
    "rollback": ["migrator rollback plan.yml", "migrator rollback --yes plan.yml"],
    "doctor": ["migrator doctor plan.yml             # before anything moves; again after fixing what it names",
               "migrator doctor --json doctor.json plan.yml"],
}


def epilog(command: str, codes: tuple[int, ...] = (0, 1, 2, 3, 130)) -> str:
    """The end of a command's --help: examples and exit codes, kept as written (click's \\b)."""
    examples = "\n".join(f"  {line}" for line in EXAMPLES[command])
    exits = "\n".join(f"  {code:<4}{EXIT_CODES[code]}" for code in codes)
    return f"\b\nExamples:\n{examples}\n\n\b\nExit codes:\n{exits}"


class Context:
    """The global options, wherever they were typed: before or after the subcommand."""

    def __init__(self) -> None:
        self.quiet = False
        self.verbose = False
        self.log_file: Optional[Path] = None


def _set_global(ctx: click.Context, param: click.Parameter, value: Any) -> None:
    if value:
        setattr(ctx.find_root().ensure_object(Context), param.name, Path(value) if param.name == "log_file" else value)


_GLOBAL_OPTIONS = (
    click.option("--quiet", is_flag=True, expose_value=False, callback=_set_global,
                 help="No progress bars; warnings and errors only."),
    click.option("--log-file", type=click.Path(dir_okay=False), expose_value=False, callback=_set_global,
                 help="Log file (default: <state>/migrator.log)."),
    click.option("-v", "--verbose", is_flag=True, expose_value=False, callback=_set_global, help="Debug output."),
)


def global_options(command: Callable) -> Callable:
    """--quiet, --log-file and -v/--verbose: one set, on the group and on every subcommand."""
    for option in reversed(_GLOBAL_OPTIONS):
        command = option(command)
    return command


def _load(ctx: click.Context, plan_path: str) -> Plan:
    """Load the plan and start logging (default log file in the state directory)."""
    options: Context = ctx.obj
    setup_logging(None, options.verbose, options.quiet)
    plan = load_plan(plan_path)
    log_file = options.log_file or plan.state_dir / "migrator.log"
    try:
        setup_logging(log_file, options.verbose, options.quiet)
    except OSError:
        setup_logging(None, options.verbose, options.quiet)
    log.debug("migrator %s, plan %s", __version__, plan.path)
    return plan


@contextmanager
def _on_sigint(handler: Callable[[int, Any], None]) -> Iterator[None]:
    """``handler`` for SIGINT meanwhile (in the main thread only: elsewhere Python cannot set one)."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    previous = signal.signal(signal.SIGINT, handler)
    try:
        yield
    finally:
        signal.signal(signal.SIGINT, previous)


def with_plan(text: str, plan_path: str) -> str:
    """``text`` with the commands it advises ('migrator rollback PLAN') naming the operator's plan."""
    return text.replace(" PLAN'", f" {plan_path}'")


def _interrupted(signum: int, frame: object) -> None:
    """Ctrl-C: say at once why the command does not stop at once (the uploads in flight answer first)."""
    log.warning("stopping (Ctrl-C): the requests in flight answer first, so that the journal records what the bucket "
                "holds (a large layer's last parts can take a while)")
    raise KeyboardInterrupt


def _guarded(work: Callable[[], int], plan_path: str) -> None:
    """Run a command body; operator errors become their message (naming the plan) and exit code."""
    try:
        with _on_sigint(_interrupted):
            code = work()
    except MigratorError as exc:
        log.error("error: %s", with_plan(str(exc), plan_path))
        sys.exit(exc.exit_code)
    except KeyboardInterrupt:
        log.error("interrupted: re-run the same command to continue where it stopped")
        sys.exit(130)
    except Exception as exc:  # a bug: the operator still gets one line, the log file the traceback
        log.debug("unexpected error", exc_info=True)
        log.error("error: %s", describe_unexpected(exc))
        sys.exit(EXIT_DIFFERENCES)
    sys.exit(code)


def _write_json(path: Optional[str], data: dict) -> None:
    if path:
        Path(path).write_text(json.dumps(data, indent=2, default=str) + "\n")


@click.group(epilog=epilog("main"))
@click.version_option(__version__)
@global_options
@click.pass_context
def main(ctx: click.Context) -> None:
    """Move a Docker Distribution / GitLab container registry from filesystem storage to S3 without downtime."""
    ctx.ensure_object(Context)


def _confirm(question: str) -> bool:
    """Ask on the terminal; no terminal (or EOF) means no."""
    try:
        return click.confirm(question, default=False)
    except click.Abort:
        return False


def _progress(ctx: click.Context) -> ProgressBlock:
    """The progress block for a command that changes nothing (no live.json)."""
    return ProgressBlock(Counts(), enabled=not ctx.obj.quiet)


@contextmanager
def _live(ctx: click.Context, plan: Plan) -> Iterator[ProgressBlock]:
    """Progress for a run that changes things: the terminal's block, and live.json for 'status --watch'."""
    live = LiveStatus(plan.state_dir, has_registry=plan.registry is not None,
                      front=plan.front is not None)
    block = ProgressBlock(live, enabled=not ctx.obj.quiet)
    logging.getLogger().addHandler(live.handler)
    try:
        yield block
    finally:
        logging.getLogger().removeHandler(live.handler)
        block.close()


def _asker(block: ProgressBlock) -> Callable[[str], bool]:
    """``_confirm`` with the progress block off the screen while the question waits."""

    def ask(question: str) -> bool:
        block.counts.asking(question)  # 'status' from another terminal says the run waits on its operator
        try:
            with block.hidden():
                return _confirm(question)
        finally:
            block.counts.asking(None)

    return ask


@contextmanager
def _attempt_recorded(job: MigrationContext) -> Iterator[None]:
    """A stopped attempt leaves its reason in the state (for 'status') and its report.json and report.html. A new
    attempt clears the last one's outcome ('rolled back', 'done'): killed, it must not be reported by that."""
    job.state.stopped = None
    job.state.outcome = None
    attempt: dict[str, Any] = {"started_at": time.time(), "ended_at": None, "outcome": None}  # None after a SIGKILL
    job.state.attempts.append(attempt)
    job.store.save(job.state)
    try:
        yield
    except (Exception, KeyboardInterrupt) as exc:
        reason = "interrupted (Ctrl-C)" if isinstance(exc, KeyboardInterrupt) else str(exc) or type(exc).__name__
        code = exc.exit_code if isinstance(exc, MigratorError) else 130 if isinstance(exc, KeyboardInterrupt) else 1
        job.state.stopped = {"at": time.time(), "reason": reason, "exit_code": code}
        attempt.update(ended_at=time.time(), outcome=f"stopped: {reason}")
        _write_reports(job)
        raise
    attempt.update(ended_at=time.time(), outcome=job.state.outcome)
    _write_reports(job)


def _write_reports(job: MigrationContext) -> None:
    job.store.save(job.state)
    report = build_report(job)
    job.store.write_json("report.json", report)
    write_html(job.plan.state_dir / "report.html", report)


def _seconds(value: Optional[float]) -> str:
    return "n/a" if value is None else f"{value:.1f}s"


def front_lines(front: Optional[Mapping[str, int]]) -> list[str]:
    """What nginx answered clients during the run (registry.front), from its own access log."""
    if not front:
        return []
    return [f"front: {front['reads']} reads, {front['reads_failed']} failed; {front['pushes']} push requests, "
            f"{front['pushes_refused']} refused (405), {front['pushes_failed']} failed"]


def summary_lines(result: Mapping[str, Any]) -> list[str]:
    """The end of 'run', in 80 columns."""
    window = result["read_only_window_seconds"]
    lines = [f"done: {result['passes']} passes; read-only window {_seconds(window)} "
             f"(restarts {result['restart_seconds']:.1f}s)",
             f"clients saw: pushes refused {_seconds(result.get('pushes_refused_seconds'))}, "
             f"reads unanswered {_seconds(result.get('reads_refused_seconds'))}",
             *front_lines(result.get("front")),
             f"  {'phase':<20}{'time':>8}{'up':>9}{'bytes':>11}{'del':>6}{'requests':>10}"]
    for phase in result["phases"]:
        lines.append(f"  {phase['name']:<20}{phase['seconds']:>7.1f}s{phase['uploaded_objects']:>9}"
                     f"{human_bytes(phase['uploaded_bytes']):>11}{phase['deleted_objects']:>6}{phase['s3_requests']:>10}")
    final = result["final_pass"]
    if final:
        how = f"{final['paths']} paths re-synced" if "paths" in final else final["why"]
        lines += textwrap.wrap(f"final pass: {final['method']}, {how}", 80, subsequent_indent="  ")
    images = result["images"]
    through = images.get("through_registry") or {}
    lines.append(f"images: {images['tags']} tags, {images['manifests']} manifests, {images['blobs']} blobs, "
                 f"{images['missing']} missing in the bucket")
    sample = images.get("sample_on_s3") or {}
    lines.append(f"pulled from the registry on s3: {sample.get('tags', 0)} tags before the window, "
                 f"{through.get('tags', 0)} in it; {sample.get('failures', 0) + through.get('failures', 0)} failed")
    return lines


@main.command(epilog=epilog("run"))
@global_options
@click.argument("plan_path", metavar="PLAN")
@click.option("--yes", is_flag=True, help="Do not ask before the read-only flip.")
@click.option("--dry-run", is_flag=True, help="Same as 'migrator report'.")
@click.option("--allow-mass-delete", is_flag=True, help="Delete even above sync.max_delete_fraction.")
@click.option("--full-verify", is_flag=True, help="List the whole bucket inside the read-only window.")
@click.pass_context
def run(ctx: click.Context, plan_path: str, yes: bool, dry_run: bool, allow_mass_delete: bool, full_verify: bool) -> None:
    """The whole migration, resumable: re-run the same command after any crash."""
    if dry_run:
        ctx.invoke(report, plan_path=plan_path)
        return

    def work() -> int:
        plan = _load(ctx, plan_path)
        with _live(ctx, plan) as progress:
            options = Options(yes=yes, allow_mass_delete=allow_mass_delete, full_verify=full_verify,
                              confirm=_asker(progress))
            with open_context(plan, progress, options) as job, _attempt_recorded(job):
                result = runner.run(job)
        for line in summary_lines(result):
            click.echo(line)
        click.echo(f"report: {plan.state_dir / 'report.json'}")
        click.echo(f"page:   {plan.state_dir / 'report.html'}")
        if plan.registry is None:
            click.echo("registry: not touched (the plan has no registry: section); the bucket holds a verified copy")
        else:
            click.echo(f"registry: read-write on s3://{plan.bucket.name}/{plan.key_prefix}")
            click.echo(f"undo: migrator rollback {plan_path}")
        return EXIT_OK

    _guarded(work, plan_path)


@main.command(epilog=epilog("report", (0, 2, 130)))
@global_options
@click.argument("plan_path", metavar="PLAN")
@click.option("--json", "json_path", type=click.Path(dir_okay=False), help="Write the report as JSON here.")
@click.option("--allow-mass-delete", is_flag=True, help="Report the delete guard as 'run --allow-mass-delete' would.")
@click.option("--html", "html_path", type=click.Path(dir_okay=False),
              help="Instead: write the last run's report.json as a self-contained page here (report.html).")
@click.pass_context
def report(ctx: click.Context, plan_path: str, json_path: Optional[str] = None, allow_mass_delete: bool = False,
           html_path: Optional[str] = None) -> None:
    """Dry run: what 'run' would upload and delete, the config diff, the estimated read-only window."""

    def work() -> int:
        plan = _load(ctx, plan_path)
        if html_path:
            return _html_report(plan, Path(html_path))
        with _progress(ctx) as progress, open_context(plan, progress, Options(allow_mass_delete=allow_mass_delete),
                                                         dry_run=True) as job:
            result = dry_run_report(job)
        up, down = result["would_upload"], result["would_delete"]
        click.echo(f"source: {result['source_objects']} files, {human_bytes(result['source_bytes'])} (excluding _uploads)")
        click.echo(f"would upload: {up['objects']} objects, {human_bytes(up['bytes'])}")
        for key in up["first_keys"][:10]:
            click.echo(f"  + {key}")
        click.echo(f"would delete: {down['objects']} objects, {human_bytes(down['bytes'])} ({down['guard']})")
        for key in down["first_keys"][:10]:
            click.echo(f"  - {key}")
        estimate = result["estimated_read_only_window_seconds"]
        assumed = estimate["assumed"]
        click.echo(f"estimated read-only window, restarts included: {estimate['total']}s (final pass "
                   f"{estimate['final_pass']}s, proofs {estimate['proofs']}s, tag pulls {estimate['tag_pulls']}s, "
                   f"restarts {estimate['restarts']}s)")
        click.echo(f"  assuming {assumed['changes_left_for_the_window']} changes left for the window, "
                   f"{'the change feed' if assumed['change_feed'] else 'a full walk'}, {assumed['seconds_per_restart']}s "
                   f"a restart ({'measured by the last run' if assumed['restart_measured'] else 'registry.restart_seconds'})")
        if estimate["restarts_outside"]:
            click.echo("  no restart inside: registry.front's standby takes pushes while the registry restarts")
        elif estimate["front_would_save"] is not None:
            click.echo(f"  with registry.front (docs/front.md): reads answered and no request cut at the restarts, "
                       f"pushes refused for about {estimate['total'] - estimate['front_would_save']:.1f}s"
                       + ("" if estimate["front_would_save"] else " (the registry's config has no http.secret: the "
                          "standby could not take pushes while the registry restarts)"))
        for hint in result.get("hints", []):
            click.echo(f"hint: {hint}")
        for finding in result["doctor"]["findings"]:  # issue 24: doctor's checks, the push left to 'migrator doctor'
            click.echo(f"doctor: {'BLOCKS' if finding['blocks'] else 'advice'} [{finding['check']}] {finding['message']}")
        for name, diff in result.get("config_diff", {}).items():
            click.echo(f"config change ({name}):\n{diff}")
        if plan.registry is not None:
            result["garbage_collection"] = _would_free(plan)
        _write_json(json_path, result)
        return EXIT_OK

    _guarded(work, plan_path)


@main.command(epilog=epilog("sync", (0, 2, 3, 130)))
@global_options
@click.argument("plan_path", metavar="PLAN")
@click.pass_context
def sync(ctx: click.Context, plan_path: str) -> None:
    """One online copy pass (initial or delta); the registry is not touched, nothing is deleted."""

    def work() -> int:
        plan = _load(ctx, plan_path)
        with _live(ctx, plan) as progress:
            with open_context(plan, progress) as job:
                result, requests = runner.sync_once(job)
        click.echo(f"synced: {result.uploaded_objects} objects uploaded ({human_bytes(result.uploaded_bytes)}) of "
                   f"{result.source_objects} files; {len(result.delete_candidates)} delete candidates left for 'run'; "
                   f"{requests} S3 requests")
        return EXIT_OK

    _guarded(work, plan_path)


@main.command(epilog=epilog("verify", (0, 1, 2, 130)))
@global_options
@click.argument("plan_path", metavar="PLAN")
@click.option("--deep", is_flag=True, help="Check the sha256 of every blob in the bucket against its path.")
@click.option("--sample", type=click.IntRange(min=1), help="--deep on N random blobs only.")
@click.option("--images", is_flag=True, help="The image-level proof instead: every tag's manifests and blobs are in the "
              "bucket; with the registry on s3, every tag pulled through it.")
@click.option("--json", "json_path", type=click.Path(dir_okay=False), help="Write the result as JSON here.")
@click.pass_context
def verify(ctx: click.Context, plan_path: str, deep: bool, sample: Optional[int], images: bool,
           json_path: Optional[str]) -> None:
    """Verification only: counts, key-by-key diff, and (--deep) blob digests. Changes nothing."""

    def work() -> int:
        plan = _load(ctx, plan_path)
        with _progress(ctx) as progress, open_context(plan, progress, lock=False) as job:
            preflight.check_bucket(job, canary=False)
            if images:
                return _verify_images(job, json_path)
            result = proofs.verify(job, deep=deep, sample=sample)
            graph = proofs.check_images(job)
        rows: list[tuple[str, object]] = [("source objects (excl. _uploads)", result.source_objects),
                ("bucket objects (excl. _uploads)", result.bucket_objects),
                ("missing from bucket", result.missing), ("extra in bucket", result.extra),
                ("size or content mismatch", result.mismatched)]
        if deep or sample:
            rows += [("blobs re-hashed", result.deep_checked), ("blobs with wrong digest", result.deep_failed)]
        rows += [("image tags / manifests / blobs", f"{graph.tags} / {graph.manifests} / {graph.blobs}"),
                 ("image objects missing", graph.missing)]
        for label, value in rows:
            click.echo(f"{label:<34}{value:>12}")
        for kind in ("missing", "extra", "mismatched", "deep_failed"):
            for key in getattr(result, kind + "_keys")[:10]:
                click.echo(f"  {kind}: {key}")
        for key in graph.missing_keys[:10]:
            click.echo(f"  image object missing: {key}")
        ok = result.ok and graph.ok
        click.echo("OK: the bucket matches the source" if ok else "DIFFERENCES FOUND")
        _write_json(json_path, result.to_json() | {"images": graph.to_json(), "ok": ok})
        return EXIT_OK if ok else EXIT_DIFFERENCES

    _guarded(work, plan_path)


def _html_report(plan: Plan, path: Path) -> int:
    try:
        data = json.loads((plan.state_dir / "report.json").read_text())
    except (OSError, ValueError):
        raise InvalidInput(f"no report.json in {plan.state_dir}: 'migrator run' writes it when it finishes") from None
    write_html(path, data)
    click.echo(f"wrote {path}")
    return EXIT_OK


def _verify_images(job: MigrationContext, json_path: Optional[str]) -> int:
    graph, through = proofs.verify_images(job)
    job.progress.close()  # the block off the screen before the table
    rows = [("tags", graph.tags), ("manifests (index children too)", graph.manifests), ("blobs", graph.blobs),
            ("missing or different in bucket", graph.missing), ("broken in the source itself", graph.source_broken)]
    if through is not None:
        rows += [("tags pulled through the registry", through.tags), ("failed through the registry", len(through.failed))]
    for label, value in rows:
        click.echo(f"{label:<34}{value:>12}")
    for key in graph.missing_keys[:10]:
        click.echo(f"  missing: {key}")
    for key in graph.source_broken_keys[:10]:
        click.echo(f"  broken in source: {key}")
    for failure in (through.failed if through else [])[:10]:
        click.echo(f"  does not pull: {failure}")
    ok = graph.ok and (through is None or through.ok)
    click.echo("OK: every image's objects are in the bucket" + (" and pull through the registry" if through else "")
               if ok else "DIFFERENCES FOUND")
    _write_json(json_path, {"images": graph.to_json(), "through_registry": through.to_json() if through else None,
                            "ok": ok})
    return EXIT_OK if ok else EXIT_DIFFERENCES


def status_snapshot(plan: Plan) -> dict:
    """Everything `status` shows, from state.json, live.json and the registry config: read only, no lock."""
    state = StateStore(plan.state_dir).load()
    live = read_live(plan.state_dir) or {}
    snapshot = {
        "running": bool(live.get("running")),
        "phase": live.get("phase") if live.get("running") else None,
        "phases_done": state.done,
        "phases_left": [p for p in runner.planned_phases(plan) if p not in state.done],
        "passes": state.passes,
        "last_pass_seconds": state.last_pass_seconds,
        "last_pass_changes": state.last_pass_changes,
        "progress": {name: live.get(name) for name in (
            "pass", "pass_phase", "phase_started_at", "walked", "listed", "checked", "uploaded_objects", "uploaded_bytes",
            "expected_objects", "expected_bytes",
            "rate_objects_per_second", "rate_bytes_per_second", "eta_seconds")},
        "last_problem": live.get("last_problem"),
        "question": live.get("question") if live.get("running") else None,
        "pid": live.get("pid") if live.get("running") else None,
        "read_only": None,
        "read_only_since": None,
        "restore_problem": state.restore_problem,
        "outcome": _outcome(state, live),
        "registry": registry_state(state, plan.registry is not None,
                                   front=plan.front is not None),
        "front_steered": front_steered(plan),
    }
    if not snapshot["running"]:  # a finished or stopped run's warnings are its own; its stop is the news
        snapshot["last_problem"] = ({"at": state.stopped["at"], "message": state.stopped["reason"]}
                                    if state.stopped else None)
    if plan.registry:
        config = open_config(plan.registry.config, plan.registry.format, plan.state_dir / "config-backup",
                             plan.registry.rendered_config)
        snapshot["read_only"] = is_readonly(config.effective_storage()) or bool(state.restore_problem)
        begun = state.readonly_on_at
        if begun is not None and state.writes_on_s3_since is None and not snapshot["running"] \
                and not snapshot["read_only"]:  # a run stopped before the read-only config was written
            snapshot["registry"] = (f"read-write on filesystem (its config is the original: the read-only flip "
                                    f"begun at {datetime.datetime.fromtimestamp(begun):%H:%M:%S} never took effect)")
        if snapshot["read_only"] and state.readonly_on_at:
            snapshot["read_only_since"] = datetime.datetime.fromtimestamp(state.readonly_on_at).isoformat(timespec="seconds")
    return snapshot


def front_steered(plan: Plan) -> Optional[bool]:
    """Whether registry.front's nginx file carries migrator's steering now (None without a front, or unreadable)."""
    if plan.front is None:
        return None
    try:
        return MARKER.encode() in plan.front.nginx.read_bytes()
    except OSError:
        return None


def _outcome(state: RunState, live: dict) -> str:
    """'in progress' only while a run is alive; else how the last attempt ended."""
    if live.get("running"):
        return "in progress"
    if state.stopped:
        return f"stopped: {state.stopped['reason']}"
    if state.outcome:
        return state.outcome
    if live and not live.get("finished"):
        return (f"stopped: the run ended without a word (killed?) during {live.get('phase') or 'its start'}; "
                "re-run 'migrator run PLAN' to continue")
    return "stopped before finishing; re-run 'migrator run PLAN' to continue" if state.done else "not started"


def _status_lines(snapshot: dict) -> list[str]:
    lines = [f"phases done: {', '.join(snapshot['phases_done']) or 'none'}",
             f"left: {', '.join(snapshot['phases_left']) or 'nothing'}"]
    progress = snapshot["progress"]
    if snapshot["question"]:
        lines.append(f"waiting: for an answer in the terminal of the run (pid {snapshot['pid']}) to: "
                     f"{snapshot['question']}")
    elif snapshot["running"] and progress["pass_phase"] != snapshot["phase"]:  # the counters are an earlier pass's
        since = (f" since {datetime.datetime.fromtimestamp(progress['phase_started_at']):%H:%M:%S}"
                 if progress["phase_started_at"] else "")
        lines.append(f"running: {snapshot['phase']}{since} (no copy pass in it yet)")
    elif snapshot["running"]:
        done = f"{progress['walked']} of {progress['expected_objects'] or '?'} files"
        eta = f", ETA {progress['eta_seconds']:.0f}s" if progress["eta_seconds"] is not None else ""
        lines.append(f"running: {snapshot['phase']} (pass {progress['pass'] or '-'}): {done}, "
                     f"{progress['rate_objects_per_second'] or 0:.0f} files/s{eta}")
        of_bytes = f" of ~{human_bytes(progress['expected_bytes'])}" if progress.get("expected_bytes") else ""
        lines.append(f"  uploaded {progress['uploaded_objects']} objects, "
                     f"{human_bytes(progress['uploaded_bytes'] or 0)}{of_bytes}; "
                     f"listed {progress['listed']}, checked {progress['checked']}")
    if snapshot["passes"]:
        lines.append(f"passes: {snapshot['passes']}; last pass {snapshot['last_pass_seconds']}s with "
                     f"{snapshot['last_pass_changes']} changes")
    else:
        lines.append("passes: none finished yet")
    if snapshot["read_only"] is not None:
        since = f" since {snapshot['read_only_since']}" if snapshot["read_only_since"] else ""
        lines.append(f"registry read-only now: {'yes' + since if snapshot['read_only'] else 'no'}")
    if snapshot["restore_problem"]:
        lines.append(f"REGISTRY NOT PROVEN BACK: the original config was written back, but {snapshot['restore_problem']}; "
                     f"pushes may be refused. Fix the registry, then run 'migrator rollback PLAN'")
    stopped = snapshot["outcome"].startswith("stopped")
    if snapshot["last_problem"] and not (stopped and snapshot["last_problem"]["message"] in snapshot["outcome"]):
        lines.append(f"last problem: {snapshot['last_problem']['message'][:300]}")
    lines.append(f"registry: {snapshot['registry']}")
    if snapshot["front_steered"]:
        lines.append("front: nginx is steered to migrator's standby while the registry restarts" if snapshot["running"] else
                     "front: nginx's file still carries migrator's steering (its standby died with the run: nginx "
                     "answers through the registry itself, the backup server); the next 'migrator run' or 'migrator "
                     "rollback' puts the operator's file back")
    lines.append(f"outcome: {snapshot['outcome']}")
    if stopped:
        lines.append("next: fix what the stop names, if anything; then 'migrator run PLAN' continues where it stopped")
    return lines


@main.command(epilog=epilog("status", (0, 2)))
@global_options
@click.argument("plan_path", metavar="PLAN")
@click.option("--watch", is_flag=True, help="Refresh every few seconds while a run goes on (Ctrl-C to stop).")
@click.option("--interval", type=click.FloatRange(min=0.2), default=2.0, show_default=True, help="Seconds between refreshes.")
@click.option("--json", "as_json", is_flag=True, help="Machine-readable: one JSON object (one a line with --watch).")
@click.pass_context
def status(ctx: click.Context, plan_path: str, watch: bool, interval: float, as_json: bool) -> None:
    """Phase, progress, rate and ETA, whether the registry is read-only now and since when. Takes no lock."""

    def work() -> int:
        plan = _load(ctx, plan_path)
        followed = False  # --watch waits for a run to start, then follows it to its end
        while True:
            snapshot = status_snapshot(plan)
            followed = followed or snapshot["running"]
            waiting = watch and not followed
            if as_json:
                click.echo(json.dumps(snapshot, default=str))
            else:
                if watch and sys.stdout.isatty():
                    click.clear()
                click.echo(with_plan("\n".join(_status_lines(snapshot)), plan_path))
                if waiting:
                    click.echo("waiting for a run to start (Ctrl-C to stop)")
            if not watch or (followed and not snapshot["running"]):
                return EXIT_OK
            try:
                time.sleep(interval)
            except KeyboardInterrupt:
                return EXIT_OK

    _guarded(work, plan_path)


def _would_free(plan: Plan) -> dict:
    """What the registry's garbage-collect --dry-run would free (or why it could not say)."""
    with open_context(plan, lock=False, dry_run=True) as job:
        if not job.managed.binary():
            return {"skipped": "registry.binary is not on this host"}
        try:
            collection = would_free(job)
        except InvalidInput as exc:
            return {"error": str(exc)}
    click.echo(f"garbage-collect would free {collection.blobs} blobs, {human_bytes(collection.bytes)} "
               f"({collection.manifests} manifests): see 'migrator gc'")
    return collection.to_json()


@main.command(epilog=epilog("gc"))
@global_options
@click.argument("plan_path", metavar="PLAN")
@click.option("--yes", is_flag=True, help="Do not ask before the read-only flip.")
@click.option("--delete-untagged", is_flag=True, help="Also remove manifests no tag points to (and their blobs).")
@click.option("--dry-run", is_flag=True, help="Only say what would be removed; the registry stays as it is.")
@click.option("--json", "json_path", type=click.Path(dir_okay=False), help="Write the figures as JSON here.")
@click.pass_context
def gc(ctx: click.Context, plan_path: str, yes: bool, delete_untagged: bool, dry_run: bool,
       json_path: Optional[str]) -> None:
    """The registry's own garbage collection, read-only meanwhile (pulls keep working), then read-write again."""

    def work() -> int:
        plan = _load(ctx, plan_path)
        if plan.registry is None:
            raise InvalidInput("the plan has no 'registry' section: gc needs the registry's config and restart command")
        with _progress(ctx) as progress, open_context(plan, progress, Options(yes=yes, confirm=_asker(progress)),
                                                         lock=not dry_run) as job:
            preflight.check_registry(job)
            collection = would_free(job, delete_untagged) if dry_run else collect_garbage(job, delete_untagged)
        verb = "would free" if dry_run else "freed"
        click.echo(f"garbage collection {verb}: {collection.blobs} blobs, {human_bytes(collection.bytes)}, "
                   f"{collection.manifests} manifests ({collection.seconds:.1f}s"
                   + ("" if dry_run else f", read-only {collection.read_only_seconds:.1f}s") + ")")
        for digest in collection.first_blobs[:10]:
            click.echo(f"  {'-' if not dry_run else '?'} sha256:{digest}")
        for image in collection.endangered[:10]:
            click.echo(f"  ! {image} needs some of it: 'migrator gc' refuses to collect", err=True)
        _write_json(json_path, collection.to_json())
        return EXIT_OK

    _guarded(work, plan_path)


@main.command(epilog=epilog("rollback"))
@global_options
@click.argument("plan_path", metavar="PLAN")
@click.option("--yes", is_flag=True, help="Do not ask for confirmation.")
@click.option("--force", is_flag=True, help="Roll back even though the registry wrote to the bucket since the cut-over.")
@click.pass_context
def rollback(ctx: click.Context, plan_path: str, yes: bool, force: bool) -> None:
    """Restore the registry's original config (filesystem, read-write), restart it, check health."""

    def work() -> int:
        plan = _load(ctx, plan_path)
        if plan.registry is None:
            raise InvalidInput("the plan has no 'registry' section: there is no config to roll back")
        with _progress(ctx) as progress, open_context(plan, progress, Options(yes=yes, confirm=_confirm)) as job:
            if not safety.rollback(job, force=force):
                click.echo("rollback declined; nothing changed")
                return EXIT_DIFFERENCES
        click.echo("rolled back: the registry runs with its original config again")
        return EXIT_OK

    _guarded(work, plan_path)


@main.command(epilog=epilog("doctor", (0, 2, 130)))
@global_options
@click.argument("plan_path", metavar="PLAN")
@click.option("--json", "json_path", type=click.Path(dir_okay=False), help="Write the findings as JSON here.")
@click.pass_context
def doctor(ctx: click.Context, plan_path: str, json_path: Optional[str]) -> None:
    """The bucket and the registry's own access proven before anything moves: a push by the registry under a
    scratch prefix (removed again), the bucket's rules, blob sizes, stray keys, the registry's release."""

    def work() -> int:
        diagnosis = examine(_load(ctx, plan_path))
        for line in diagnosis.lines():
            click.echo(line)
        _write_json(json_path, diagnosis.to_json())
        return EXIT_OK if diagnosis.ok else EXIT_INVALID

    _guarded(work, plan_path)
