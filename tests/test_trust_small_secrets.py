"""No secret of the registry's own config in any output (issue 21 item 6): the config diffs of `report`, `report
--json`, the HTML page, the run's output and logs, whatever the key (http.secret, redis password, a notification
endpoint's Authorization header, s3 keys; on Omnibus the database password). Oracle: the literal values."""

from __future__ import annotations

import logging
import sys

import pytest
from conftest import run_cli
from test_e2e import push_images

from migrator.console import RedactSecrets
from migrator.registry_config import redact
from migrator.registry_http import RegistryClient
from migrator.testing.omnibus_fake import GITLAB_RB, FakeOmnibus

pytestmark = pytest.mark.slow

CONFIG_SECRETS = {
    "http-secret": "local-drill-secret",  # in migrator.testing.local's config: http.secret
    "redis": "redis-pass-9f3k2",
    "header": "bearer-token-77d1c",
    "s3": "AKIAEXAMPLE0S3KEY",
}
EXTRA_CONFIG = f"""redis:
  addr: 127.0.0.1:6399
  password: {CONFIG_SECRETS['redis']}
notifications:
  endpoints:
    - name: listener
      disabled: true
      url: https://listener.example.com/event
      headers:
        Authorization: [Bearer {CONFIG_SECRETS['header']}]
"""


def assert_no_secret(texts: dict, secrets) -> None:
    for where, text in texts.items():
        for secret in secrets:
            assert secret not in text, f"{secret!r} shown in {where}"


def test_report_json_html_and_logs_show_no_secret_of_the_registry_config(local_registry, tmp_path):
    local_registry.config.write_text(local_registry.config.read_text() + EXTRA_CONFIG)
    local_registry.stop()
    local_registry.start()
    push_images(RegistryClient(local_registry.url), 2, seed=61)
    plan = local_registry.write_plan()
    outputs = {}
    report = run_cli("report", plan, "--json", tmp_path / "before.json")
    assert report.returncode == 0, report.stderr
    outputs |= {"report": report.stdout + report.stderr, "report --json": (tmp_path / "before.json").read_text()}
    assert "secret: <redacted>" in outputs["report"]  # the diff still shows where the key is
    run = run_cli("--log-file", tmp_path / "run.log", "-v", "run", "--yes", plan)
    assert run.returncode == 0, run.stderr
    html = run_cli("report", plan, "--html", tmp_path / "page.html")
    assert html.returncode == 0, html.stderr
    outputs |= {"run": run.stdout + run.stderr, "log": (tmp_path / "run.log").read_text(),
                "html": (tmp_path / "page.html").read_text(),
                "report.json": (plan.parent / "plan.state/report.json").read_text()}
    assert_no_secret(outputs, CONFIG_SECRETS.values())


def test_omnibus_report_hides_the_database_password(local_registry, tmp_path):
    password = "db-pass-0a8e1c"
    omnibus = FakeOmnibus(local_registry, tmp_path)
    omnibus.gitlab_rb.write_text(GITLAB_RB + "registry['database'] = {\n  'enabled' => false,\n"
                                 f"  'password' => '{password}'\n}}\n")
    omnibus.reconfigure()
    plan = omnibus.write_plan()
    report = run_cli("report", plan, "--json", tmp_path / "report.json")
    assert report.returncode == 0, report.stderr
    assert_no_secret({"report": report.stdout + report.stderr, "json": (tmp_path / "report.json").read_text()},
                     [password])


@pytest.mark.parametrize("line", [
    "  secret: s3cr3t-value", "  password: 'quoted value'", "        Authorization: [Bearer s3cr3t-value]",
    "  secretkey: s3cr3t-value", "    accesskey: s3cr3t-value", "  sessiontoken: s3cr3t-value",
    "registry['database'] = { 'password' => 's3cr3t-value', 'user' => 'x' }",
    "gitlab_rails['db_password'] = \"s3cr3t-value\"", 'database: {"enabled": true, "password": "s3cr3t-value"}',
    "-  token: s3cr3t-value", "+  X-Api-Key: s3cr3t-value",
])
def test_redact_hides_a_secret_value_whatever_its_key(line):
    assert "s3cr3t-value" not in redact(line) and "quoted value" not in redact(line), redact(line)


def test_redact_hides_a_secret_given_as_a_block_list():
    text = "      headers:\n        Authorization:\n          - Bearer s3cr3t-value\n        Other: [x]\n"
    assert "s3cr3t-value" not in redact(text) and "Other: [x]" in redact(text)


def test_log_records_holding_config_secrets_are_redacted():
    record = logging.LogRecord("migrator", logging.INFO, __file__, 1, "config line %s", ("  secret: s3cr3t-value",),
                               None)
    RedactSecrets().filter(record)
    assert "s3cr3t-value" not in record.getMessage()


def test_a_logged_traceback_holding_a_secret_is_redacted(monkeypatch):
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "env-secret-4711")
    try:
        raise ValueError("bad config: password: s3cr3t-value, key env-secret-4711")
    except ValueError:
        record = logging.LogRecord("migrator", logging.DEBUG, __file__, 1, "unexpected error", (), sys.exc_info())
    RedactSecrets().filter(record)
    text = logging.Formatter("%(message)s").format(record)
    assert "ValueError" in text and "s3cr3t-value" not in text and "env-secret-4711" not in text, text
