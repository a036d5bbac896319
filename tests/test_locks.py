"""One migration per registry and bucket: the locks are keyed by what is migrated, not by the plan's file."""

from __future__ import annotations

import pytest

from migrator.errors import Refused
from migrator.plan import load_plan
from migrator.state import StateStore, migrated_resources


def test_two_plans_for_the_same_bucket_exclude_each_other_and_other_buckets_do_not(tmp_path, tree, make_plan):
    first = load_plan(make_plan(tree.root, name="plan.yml"))
    copy = load_plan(make_plan(tree.root, name="copy.yml"))  # same bucket and prefix, its own state directory
    other = load_plan(make_plan(tree.root, prefix="elsewhere", name="other.yml"))
    assert first.state_dir != copy.state_dir
    holder = StateStore(first.state_dir)
    holder.lock(migrated_resources(first), first.path)
    try:
        with pytest.raises(Refused, match=f"plan {first.path}, state directory {first.state_dir}"):
            StateStore(copy.state_dir).lock(migrated_resources(copy), copy.path)
        beside = StateStore(other.state_dir)
        beside.lock(migrated_resources(other), other.path)  # another prefix: another migration
        beside.unlock()
    finally:
        holder.unlock()
    again = StateStore(copy.state_dir)
    again.lock(migrated_resources(copy), copy.path)  # released with the first run
    again.unlock()
