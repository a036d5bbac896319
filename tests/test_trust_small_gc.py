"""`migrator gc --delete-untagged` never removes what a tagged image needs (issue 21 item 3): Distribution 2.8's
collector counts an index's children as untagged. Oracles: skopeo pulls and the registry's own answers."""

from __future__ import annotations

import json
import urllib.parse

import pytest
from conftest import run_cli
from oci import Layout, pull, push

pytestmark = pytest.mark.slow


def test_gc_delete_untagged_refuses_to_remove_the_children_of_a_multi_arch_image(local_registry, tmp_path):
    registry = urllib.parse.urlparse(local_registry.url).netloc
    layout = Layout(tmp_path / "images")
    layout.multi_arch("latest", "multi")
    layout.image("v1", "single")
    layout.image("old", "untagged")
    push(layout, "latest", registry, "multi/arch:latest")
    push(layout, "v1", registry, "team/single:v1")
    push(layout, "old", registry, "team/single:old")
    push(layout, "v1", registry, "team/single:old")  # `old`'s first manifest is now untagged: gc may remove it
    plan = local_registry.write_plan()

    dry = run_cli("gc", plan, "--dry-run", "--delete-untagged", "--json", tmp_path / "dry.json")
    assert dry.returncode == 0, dry.stderr
    assert json.loads((tmp_path / "dry.json").read_text())["endangered"] == ["multi/arch:latest"]
    assert "! multi/arch:latest needs some of it" in dry.stderr, dry.stderr

    refused = run_cli("gc", plan, "--yes", "--delete-untagged", "--json", tmp_path / "gc.json")
    assert refused.returncode == 3, refused.stdout + refused.stderr
    assert "multi/arch:latest" in refused.stderr and "team/single" not in refused.stderr, refused.stderr
    pull(registry, "multi/arch:latest", tmp_path / "pulled-multi")  # nothing was removed
    pull(registry, "team/single:v1", tmp_path / "pulled-single")

    plain = run_cli("gc", plan, "--yes", "--json", tmp_path / "gc.json")  # without --delete-untagged: safe
    assert plain.returncode == 0, plain.stderr
    assert json.loads((tmp_path / "gc.json").read_text())["images_pulled"] == 3
    pull(registry, "multi/arch:latest", tmp_path / "pulled-multi-2")
