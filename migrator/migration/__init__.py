"""The zero-downtime migration as phases around one context (see docs/design.md).

``open_context`` builds what every phase reads; ``runner.PHASES`` lists the phases once, in order; each module
holds one concern: ``preflight``, ``copy``, ``proofs``, ``window``, ``safety``, ``estimate``, ``report``."""

from migrator.migration.context import Context, Options, open_context
from migrator.migration.runner import PHASES, planned_phases, run

__all__ = ["PHASES", "Context", "Options", "open_context", "planned_phases", "run"]
