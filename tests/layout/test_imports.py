"""The import structure: packages import downward only, and no runtime code loads a sandbox."""

from __future__ import annotations

import ast
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]

# Lower floors first.  A module may import its own package and any package on a lower floor;
# graph and starface stand side by side and never import each other.
FLOORS: dict[str, int] = {
    "service.core": 0,
    "service.graph": 1,
    "service.starface": 1,
    "service.bridge": 2,
    "service.web": 3,
    "subscriptions": 3,
    "service.ops": 4,
    "service.runtime": 5,
    "service.sandbox": 6,
    "service.cli": 7,
}


def _package(module: str) -> str | None:
    for name in sorted(FLOORS, key=len, reverse=True):
        if module == name or module.startswith(name + "."):
            return name
    return None


def _imports(path: Path) -> list[tuple[int, str]]:
    tree = ast.parse(path.read_text(encoding="utf-8"))
    found: list[tuple[int, str]] = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            found.extend((node.lineno, alias.name) for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            found.extend((node.lineno, f"{node.module}.{alias.name}") for alias in node.names)
    return found


def _modules() -> list[tuple[str, Path]]:
    result = []
    for top in ("service", "subscriptions"):
        for path in sorted((ROOT / top).rglob("*.py")):
            dotted = ".".join(path.relative_to(ROOT).with_suffix("").parts)
            result.append((dotted, path))
    return result


def test_every_package_imports_only_its_own_floor_or_lower() -> None:
    upward = []
    for module, path in _modules():
        own = _package(module)
        if own is None:
            continue
        for line, target in _imports(path):
            other = _package(target)
            if other is None or other == own:
                continue
            if FLOORS[other] >= FLOORS[own]:
                upward.append(f"{path.relative_to(ROOT)}:{line} ({own}) imports {target} ({other})")
    assert upward == []


def test_no_runtime_module_imports_a_sandbox() -> None:
    offenders = [
        f"{path.relative_to(ROOT)}:{line}"
        for module, path in _modules()
        if not module.startswith(("service.sandbox", "service.cli"))
        for line, target in _imports(path)
        if target.startswith("service.sandbox")
    ]
    assert offenders == []


def _modules_loaded_by(argv: list[str], which: str) -> str:
    """Run ``presence-bridge ARGV`` in a fresh interpreter; the loaded modules ``which`` selects."""
    probe = (
        "import sys\n"
        "from service.cli.main import main\n"
        f"try:\n    main({argv!r})\nexcept SystemExit:\n    pass\n"
        f"loaded = sorted(m for m in sys.modules if {which})\n"
        "print('LOADED=' + ','.join(loaded), file=sys.stderr)\n"
    )
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    result = subprocess.run(
        [sys.executable, "-c", probe],
        capture_output=True,
        text=True,
        cwd=ROOT,
        env=env,
        timeout=60,
        check=False,
    )
    last = (result.stderr.strip().splitlines() or [""])[-1]
    assert last.startswith("LOADED="), result.stderr
    return last.removeprefix("LOADED=")


@pytest.mark.parametrize("argv", [["--help"], ["serve", "--help"], ["status", "--help"], ["--version"]])
def test_cli_help_loads_no_sandbox(argv: list[str]) -> None:
    assert _modules_loaded_by(argv, "m.startswith('service.sandbox')") == ""


@pytest.mark.parametrize(
    "argv",
    [["--help"], ["rotate", "--help"], ["health", "--role", "worker", "--heartbeat-dir", "/nonexistent"]],
)
def test_help_and_the_health_probe_load_neither_pydantic_nor_redis(argv: list[str]) -> None:
    # The probe runs every few seconds in every container; --help should answer at once.
    heavy = "m.split('.')[0] in ('pydantic', 'redis', 'aiohttp', 'msal', 'cryptography')"
    assert _modules_loaded_by(argv, heavy) == ""
