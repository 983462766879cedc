"""Every artefact in ``deploy/`` passes the checker its ecosystem uses, run for real.

hadolint (Dockerfile), kubernetes-validate --strict (manifests), yamllint (all YAML), the Compose
specification's JSON schema (docker-compose.yml; there is no Docker engine to run
``docker compose config``), promtool (alert rules and their unit tests) and systemd-analyze
(the unit).  The Python tools come with ``pip install -e '.[dev]'``; promtool and systemd-analyze
are Debian's ``prometheus`` and ``systemd`` packages, which ``.ci/run`` installs.  The metric names
the alerts and the dashboard use are checked against the metrics the code defines.
"""

from __future__ import annotations

import json
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml
from prometheus_client import REGISTRY

from service.core import metrics as bridge_metrics
from subscriptions import metrics as scheduler_metrics

ROOT = Path(__file__).resolve().parents[2]
DEPLOY = ROOT / "deploy"
MONITORING = DEPLOY / "monitoring"
K8S = DEPLOY / "kubernetes"
ALERTS = MONITORING / "alerts.yml"
ALERT_TESTS = Path(__file__).with_name("alerts_test.yml")
DASHBOARD = MONITORING / "dashboard.json"
UNIT = DEPLOY / "systemd" / "presence-bridge.service"
VENV_BIN = Path(sys.executable).parent


def tool(name: str, debian_package: str | None = None) -> str:
    found = shutil.which(name, path=f"{VENV_BIN}:/usr/bin:/usr/sbin:/bin")
    where = f"apt-get install -y {debian_package}" if debian_package else "pip install -e '.[dev]'"
    assert found, f"{name} is not installed: {where} (.ci/run does this)"
    return found


def run(*args: str | Path, cwd: Path = ROOT) -> str:
    result = subprocess.run([str(a) for a in args], cwd=cwd, capture_output=True, text=True, timeout=120)
    output = result.stdout + result.stderr
    assert result.returncode == 0, f"{' '.join(map(str, args))} failed:\n{output}"
    return output


def test_hadolint_finds_nothing_in_the_dockerfile() -> None:
    run(tool("hadolint"), "--failure-threshold", "info", DEPLOY / "Dockerfile")


MANIFESTS = sorted(p.name for p in K8S.glob("*.yaml") if p.name != "kustomization.yaml")


@pytest.mark.parametrize("manifest", MANIFESTS)
def test_kubernetes_validate_strict_accepts_each_manifest(manifest: str) -> None:
    output = run(tool("kubernetes-validate"), "--strict", K8S / manifest)
    assert "passed" in output
    assert "WARN" not in output, output


def test_yamllint_accepts_every_yaml_file() -> None:
    files = [*sorted(DEPLOY.rglob("*.y*ml")), ALERT_TESTS]
    run(tool("yamllint"), "--strict", "-c", DEPLOY / ".yamllint.yml", *files)


def test_the_compose_file_follows_the_compose_specification() -> None:
    run(tool("check-jsonschema"), "--builtin-schema", "vendor.compose-spec", DEPLOY / "docker-compose.yml")


def test_promtool_accepts_the_alert_rules_and_their_unit_tests_pass() -> None:
    promtool = tool("promtool", "prometheus")
    assert "SUCCESS" in run(promtool, "check", "rules", ALERTS)
    assert "SUCCESS" in run(promtool, "test", "rules", ALERT_TESTS, cwd=ALERT_TESTS.parent)


def test_every_alert_has_a_unit_test_that_fires_it() -> None:
    rules = [r["alert"] for g in yaml.safe_load(ALERTS.read_text())["groups"] for r in g["rules"]]
    fired: set[str] = set()
    for case in yaml.safe_load(ALERT_TESTS.read_text())["tests"]:
        fired |= {t["alertname"] for t in case.get("alert_rule_test", []) if t.get("exp_alerts")}
    assert set(rules) == fired, f"alerts without a firing test: {sorted(set(rules) - fired)}"
    for group in yaml.safe_load(ALERTS.read_text())["groups"]:
        for rule in group["rules"]:
            assert rule["labels"]["severity"] in ("critical", "warning", "info"), rule["alert"]
            assert rule["annotations"].get("summary"), rule["alert"]
            assert rule["annotations"].get("description"), rule["alert"]


def test_systemd_analyze_verifies_the_unit(tmp_path: Path) -> None:
    # verify also checks that ExecStart's program exists: point it at this checkout's command.
    executable = VENV_BIN / "presence-bridge"
    assert executable.exists(), "pip install -e '.[dev]' installs the presence-bridge command"
    unit = tmp_path / UNIT.name
    unit.write_text(UNIT.read_text().replace("/opt/presence-bridge/bin/presence-bridge", str(executable)))
    run(tool("systemd-analyze", "systemd"), "verify", "--man=no", unit, cwd=tmp_path)


def test_the_unit_runs_every_role_with_the_watchdog_the_heartbeat_feeds() -> None:
    text = UNIT.read_text()
    joined = text.replace("\\\n", " ")  # systemd's line continuation
    exec_start = re.search(r"^ExecStart=(.+)$", joined, flags=re.M)
    assert exec_start is not None
    words = exec_start.group(1).split()
    from service.cli.main import build_parser

    args = build_parser().parse_args(words[1:])
    assert args.role == "all"
    assert args.host == "127.0.0.1"  # behind a local reverse proxy, never on the public interface
    assert re.search(r"^WatchdogSec=\d+", text, flags=re.M)
    assert "NotifyAccess=main" in text


# -- metric names -----------------------------------------------------------------------------

# Importing the two modules registers the bridge's and the scheduler's metrics.
assert bridge_metrics.BUILD_INFO is not None
assert scheduler_metrics is not None
_KNOWN = {
    sample_name
    for collector in REGISTRY._collector_to_names
    for sample_name in REGISTRY._collector_to_names[collector]
}


def _metric_names(expression: str) -> set[str]:
    return set(re.findall(r"\bpresence_bridge_[a-z_]+\b", expression))


def test_alerts_and_dashboard_use_only_metrics_the_code_defines() -> None:
    expressions = [r["expr"] for g in yaml.safe_load(ALERTS.read_text())["groups"] for r in g["rules"]]
    dashboard = json.loads(DASHBOARD.read_text())
    expressions += [t["expr"] for p in dashboard["panels"] for t in p["targets"]]
    used = set().union(*(_metric_names(e) for e in expressions))
    assert used, "no presence_bridge metric is used"
    assert used <= _KNOWN, f"unknown metrics: {sorted(used - _KNOWN)}"


def test_the_dashboard_is_importable_and_asks_a_chosen_prometheus() -> None:
    dashboard = json.loads(DASHBOARD.read_text())
    assert dashboard["uid"] == "presence-bridge"
    variables = {v["name"]: v for v in dashboard["templating"]["list"]}
    assert variables["datasource"]["type"] == "datasource"
    ids = [p["id"] for p in dashboard["panels"]]
    assert len(ids) == len(set(ids))
    for panel in dashboard["panels"]:
        assert panel["datasource"]["uid"] == "${datasource}", panel["title"]
        assert panel["targets"], panel["title"]


def test_the_service_monitor_selects_a_metrics_service_of_every_role() -> None:
    (monitor,) = yaml.safe_load_all((MONITORING / "servicemonitor.yaml").read_text())
    selector = monitor["spec"]["selector"]["matchLabels"]
    services = [d for d in yaml.safe_load_all((K8S / "metrics.yaml").read_text()) if d]
    selected = [s for s in services if selector.items() <= s["metadata"]["labels"].items()]
    roles = {s["metadata"]["labels"]["app.kubernetes.io/component"] for s in selected}
    assert roles == {"web", "worker", "scheduler"}
    port_names = {e["port"] for e in monitor["spec"]["endpoints"]}
    for metrics_service in selected:
        assert port_names <= {p["name"] for p in metrics_service["spec"]["ports"]}
        assert metrics_service["spec"]["clusterIP"] == "None"  # every pod scraped on its own


def test_every_dependency_of_the_image_is_pinned_in_the_constraints() -> None:
    from importlib.metadata import distribution

    from packaging.requirements import Requirement

    pins = {}
    for line in (DEPLOY / "constraints.txt").read_text().splitlines():
        if line and not line.startswith("#"):
            name, _, version = line.partition("==")
            assert version, f"constraints.txt: {line!r} is not an exact pin"
            pins[name.lower().replace("_", "-")] = version
    seen: set[str] = set()
    todo = [Requirement(r) for r in distribution("presence-bridge").requires or []]
    while todo:
        requirement = todo.pop()
        if requirement.marker is not None and not requirement.marker.evaluate({"extra": ""}):
            continue  # a dev extra or another platform's dependency
        name = requirement.name.lower().replace("_", "-")
        if name in seen:
            continue
        seen.add(name)
        assert name in pins, f"{name} (needed by the image) is not pinned in deploy/constraints.txt"
        todo += [Requirement(r) for r in distribution(name).requires or []]
    assert seen
