"""Roles of a bridge process, the settings groups each needs, and the configuration error.

Kept apart from the settings schema (and pydantic) so that building the command line, and
commands such as ``health`` that read no settings, start fast.
"""

from __future__ import annotations

# Groups of settings that only some roles need: the web tier alone never talks to STARFACE.
CORE = "core"
GRAPH_APP = "graph_app"
STARFACE = "starface"


# What ``serve --role`` accepts.
ROLES = ("all", "web", "worker", "scheduler")


def required_groups(role: str) -> list[str]:
    """Settings groups a role needs: the web tier alone talks to neither STARFACE nor Graph."""
    return [CORE] if role == "web" else [CORE, GRAPH_APP, STARFACE]


class SettingsError(Exception):
    """The configuration cannot be used; ``problems`` names every bad or missing key."""

    def __init__(self, problems: list[str]) -> None:
        self.problems = problems
        lines = "\n".join(f"  - {p}" for p in problems)
        super().__init__(f"configuration has {len(problems)} problem(s):\n{lines}")
