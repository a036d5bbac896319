"""Tests' hooks into the phase table."""

from __future__ import annotations

import dataclasses
from typing import Callable, Optional

import pytest

from migrator.migration import runner
from migrator.migration.context import Context
from migrator.sync import PassResult


def replace_phase(monkeypatch: pytest.MonkeyPatch, name: str,
                  work: Callable[[Context], Optional[PassResult]]) -> None:
    """``run`` calls ``work(ctx)`` in place of the phase ``name`` until ``monkeypatch`` is undone."""
    if name not in {phase.name for phase in runner.PHASES}:
        raise KeyError(f"no phase {name!r}")
    phases = tuple(dataclasses.replace(phase, work=work) if phase.name == name else phase for phase in runner.PHASES)
    monkeypatch.setattr(runner, "PHASES", phases)
