"""The deployment examples in ``deploy/`` agree with the code: settings, commands, ports, probes.

Nothing here starts a container; the files are parsed (YAML with PyYAML, the Dockerfile and the
Caddyfile line by line) and checked against ``service.core.settings.FIELDS`` and the real command-line
parser, so a renamed setting, a removed flag or a moved port breaks a test instead of a deployment.
"""

from __future__ import annotations

import argparse
import json
import re
import shlex
import urllib.parse
from collections.abc import Iterator
from functools import cache
from pathlib import Path
from typing import Any

import pytest
import yaml

from service.cli.main import build_parser
from service.core.settings import CORE, FIELDS, GRAPH_APP, STARFACE, Settings, SettingsError

ROOT = Path(__file__).resolve().parents[2]
DEPLOY = ROOT / "deploy"
K8S = DEPLOY / "kubernetes"
DOCKERFILE = DEPLOY / "Dockerfile"
COMPOSE = DEPLOY / "docker-compose.yml"
CADDYFILE = DEPLOY / "Caddyfile"
GUIDE = ROOT / "docs" / "production.md"

SETTING_NAMES = frozenset(f.env for f in FIELDS)
# Secrets are the settings whose dataclass field is kept out of repr (and masked in `status`).
SECRET_SETTINGS = frozenset(f.env for f in FIELDS if f.secret)
# What the web tier serves publicly (service/app.py, service/webhook.py, service/callback.py).
PUBLIC_EXACT = frozenset({"/graph/notifications", "/graph/lifecycle", "/healthz"})
PUBLIC_PREFIXES = ("/graph/", "/starface/uci/")
WORKLOAD_KINDS = ("Deployment", "StatefulSet")


# -- loading -----------------------------------------------------------------------------------


@cache
def compose() -> dict[str, Any]:
    data = yaml.safe_load(COMPOSE.read_text(encoding="utf-8"))
    assert isinstance(data, dict), "docker-compose.yml is not a mapping"
    return data


def compose_services() -> dict[str, dict[str, Any]]:
    services = compose().get("services")
    assert isinstance(services, dict), "docker-compose.yml has no services"
    assert services, "docker-compose.yml has no services"
    return services


@cache
def k8s_documents() -> tuple[tuple[str, dict[str, Any]], ...]:
    """(file name, document) for every YAML document under deploy/kubernetes."""
    found: list[tuple[str, dict[str, Any]]] = []
    for path in sorted(K8S.glob("*.y*ml")):
        for doc in yaml.safe_load_all(path.read_text(encoding="utf-8")):
            if doc is None:
                continue
            assert isinstance(doc, dict), f"{path.name}: a document is not a mapping"
            found.append((path.name, doc))
    assert found, "no Kubernetes manifests found"
    return tuple(found)


def k8s(kind: str) -> list[dict[str, Any]]:
    return [doc for _, doc in k8s_documents() if doc.get("kind") == kind]


def k8s_one(kind: str, name: str) -> dict[str, Any]:
    matches = [doc for doc in k8s(kind) if doc["metadata"]["name"] == name]
    assert len(matches) == 1, f"expected one {kind} named {name}, found {len(matches)}"
    return matches[0]


def pod_spec(workload: dict[str, Any]) -> dict[str, Any]:
    spec = workload["spec"]["template"]["spec"]
    assert isinstance(spec, dict)
    return spec


def containers(workload: dict[str, Any]) -> list[dict[str, Any]]:
    spec = pod_spec(workload)
    return [*spec.get("initContainers", []), *spec["containers"]]


def dockerfile_instructions() -> list[tuple[str, str]]:
    """(INSTRUCTION, arguments) with continuation lines joined and comments dropped."""
    logical: list[str] = []
    pending = ""
    for raw in DOCKERFILE.read_text(encoding="utf-8").splitlines():
        stripped = raw.strip()
        if not pending and (not stripped or stripped.startswith("#")):
            continue
        if stripped.startswith("#"):
            continue  # a comment inside a continued instruction
        if stripped.endswith("\\"):
            pending += stripped[:-1] + " "
            continue
        logical.append(pending + stripped)
        pending = ""
    assert not pending, "Dockerfile ends inside a continued line"
    result = []
    for line in logical:
        word, _, rest = line.partition(" ")
        result.append((word.upper(), rest.strip()))
    return result


def dockerfile_exec_form(instruction: str) -> list[str]:
    values = [rest for word, rest in dockerfile_instructions() if word == instruction]
    assert values, f"the Dockerfile has no {instruction}"
    parsed = json.loads(values[-1])  # the last one wins
    assert isinstance(parsed, list), f"{instruction} must be in exec form (a JSON list)"
    assert all(isinstance(p, str) for p in parsed), f"{instruction} must list strings"
    return parsed


def parse_cli(argv: list[str], where: str) -> argparse.Namespace:
    try:
        return build_parser().parse_args(argv)
    except SystemExit:
        pytest.fail(f"{where}: `presence-bridge {shlex.join(argv)}` is not a valid command")


def serve_args(argv: list[str], where: str) -> argparse.Namespace:
    args = parse_cli(argv, where)
    assert args.command == "serve", f"{where}: expected a serve command, got {args.command}"
    return args


def command_list(value: Any, where: str) -> list[str]:
    if isinstance(value, str):
        return shlex.split(value)
    assert isinstance(value, list), f"{where}: the command is neither a string nor a list"
    assert all(isinstance(v, str) for v in value), f"{where}: the command has non-string words"
    return list(value)


def bridge_services() -> dict[str, dict[str, Any]]:
    """Compose services that run the presence-bridge image."""
    return {
        name: service
        for name, service in compose_services().items()
        if "presence-bridge" in str(service.get("image", "")) or "build" in service
    }


def compose_serve(name: str) -> argparse.Namespace:
    service = compose_services()[name]
    return serve_args(command_list(service.get("command"), f"compose service {name}"), f"compose {name}")


def compose_roles() -> dict[str, list[str]]:
    roles: dict[str, list[str]] = {}
    for name in bridge_services():
        roles.setdefault(compose_serve(name).role, []).append(name)
    return roles


def compose_environment(service: dict[str, Any]) -> dict[str, str]:
    env = service.get("environment") or {}
    if isinstance(env, list):
        pairs = (item.partition("=") for item in env)
        return {key: value for key, _, value in pairs}
    assert isinstance(env, dict)
    return {str(k): "" if v is None else str(v) for k, v in env.items()}


def bridge_workloads() -> dict[str, tuple[dict[str, Any], dict[str, Any], argparse.Namespace]]:
    """Role -> (workload, bridge container, parsed args) for every Deployment running the bridge."""
    found = {}
    for deployment in k8s("Deployment"):
        for container in containers(deployment):
            if "presence-bridge" not in container.get("image", ""):
                continue
            where = f"Deployment {deployment['metadata']['name']}"
            args = serve_args(command_list(container.get("args"), where), where)
            assert args.role not in found, f"two Deployments run --role {args.role}"
            found[args.role] = (deployment, container, args)
    return found


def caddyfile_lines() -> list[str]:
    lines = []
    for raw in CADDYFILE.read_text(encoding="utf-8").splitlines():
        stripped = raw.split("#", 1)[0].strip()
        if stripped:
            lines.append(stripped)
    return lines


def host_port(address: str) -> tuple[str, int]:
    parsed = urllib.parse.urlsplit(address if "://" in address else f"http://{address}")
    host, port = parsed.hostname, parsed.port
    assert host is not None, f"upstream {address} has no host"
    assert port is not None, f"upstream {address} has no port"
    return host, port


def iter_env_names() -> Iterator[tuple[str, str]]:
    """(where, NAME) for every environment variable named anywhere in deploy/."""
    for name, service in compose_services().items():
        for key in compose_environment(service):
            yield f"compose {name} environment", key
    for filename, doc in k8s_documents():
        kind = doc.get("kind")
        if kind == "ConfigMap":
            for key in doc.get("data") or {}:
                yield f"{filename} ConfigMap", key
        if kind == "Secret":
            for key in [*(doc.get("stringData") or {}), *(doc.get("data") or {})]:
                yield f"{filename} Secret", key
        if kind in WORKLOAD_KINDS:
            for container in containers(doc):
                for entry in container.get("env") or []:
                    yield f"{filename} {container['name']} env", entry["name"]
    for word, rest in dockerfile_instructions():
        if word in ("ENV", "ARG"):
            tokens = shlex.split(rest)
            names = [t.partition("=")[0] for t in tokens] if "=" in tokens[0] else tokens[:1]
            for name in names:
                yield f"Dockerfile {word}", name
    # Variable substitution in any text file: ${NAME} / $NAME (Compose, Dockerfile), {$NAME} (Caddy).
    for path in (COMPOSE, DOCKERFILE, CADDYFILE, *sorted(K8S.glob("*.y*ml"))):
        text = path.read_text(encoding="utf-8")
        for match in re.finditer(r"\$\{([A-Za-z_][A-Za-z0-9_]*)|\{\$([A-Za-z_][A-Za-z0-9_]*)", text):
            yield f"{path.name} substitution", match.group(1) or match.group(2)


# -- Compose -----------------------------------------------------------------------------------


def test_compose_runs_two_web_two_workers_a_scheduler_valkey_and_caddy() -> None:
    roles = compose_roles()
    assert len(roles.get("web", [])) == 2, roles
    assert len(roles.get("worker", [])) == 2, roles
    assert len(roles.get("scheduler", [])) >= 1, roles
    assert "all" not in roles, "a role=all process next to split roles would run everything twice"
    images = {name: str(s.get("image", "")) for name, s in compose_services().items()}
    assert any(image.startswith(("valkey/", "redis")) for image in images.values()), images
    assert any(image.startswith("caddy") for image in images.values()), images


def test_compose_valkey_keeps_an_append_only_file_on_a_volume() -> None:
    services = compose_services()
    (name,) = [n for n, s in services.items() if str(s.get("image", "")).startswith(("valkey/", "redis"))]
    command = command_list(services[name]["command"], name)
    assert command[command.index("--appendonly") + 1] == "yes"
    assert command[command.index("--appendfsync") + 1] == "everysec"
    assert command[command.index("--maxmemory-policy") + 1] == "noeviction"
    mounts = [str(v) for v in services[name].get("volumes", [])]
    named = [m.split(":", 1)[0] for m in mounts if m.endswith(":/data")]
    assert named, f"{name} has no volume on /data"
    assert named[0] in (compose().get("volumes") or {}), f"volume {named[0]} is not declared"


def test_compose_bridge_services_use_env_file_and_the_valkey_service() -> None:
    services = compose_services()
    for name, service in bridge_services().items():
        env_file = service.get("env_file")
        files = [env_file] if isinstance(env_file, str) else list(env_file or [])
        assert ".env" in files, f"{name} does not read .env"
        env = compose_environment(service)
        assert "REDIS_URL" in env, f"{name} has no REDIS_URL"
        host = urllib.parse.urlsplit(env["REDIS_URL"]).hostname
        assert host in services, f"{name}: REDIS_URL host {host} is not a compose service"
        assert str(services[host].get("image", "")).startswith(("valkey/", "redis")), host
        assert host in (service.get("depends_on") or {}), f"{name} does not wait for {host}"


def test_compose_publishes_only_the_proxy_and_never_metrics() -> None:
    services = compose_services()
    published = {name: s["ports"] for name, s in services.items() if s.get("ports")}
    assert set(published) == {n for n, s in services.items() if str(s.get("image", "")).startswith("caddy")}
    for name, ports in published.items():
        texts = [str(p) for p in ports]
        assert any(t.split(":")[-1].split("/")[0] == "443" for t in texts), f"{name} does not publish 443"
    metrics_ports = {str(compose_serve(name).metrics_port) for name in bridge_services()}
    assert metrics_ports != {"None"}, "no bridge service serves metrics"
    for name, ports in published.items():
        for port in ports:
            assert str(port).split(":")[-1].split("/")[0] not in metrics_ports, f"{name} publishes metrics"


def test_compose_roles_without_a_web_tier_check_their_heartbeat() -> None:
    for name in bridge_services():
        args = compose_serve(name)
        if args.role in ("web", "all"):
            continue
        check = compose_services()[name].get("healthcheck")
        assert check, f"{name} ({args.role}) would inherit the image's /livez check but serves no web"
        # The event loop's heartbeat, not the metrics port (served from a thread, it outlives a stuck loop).
        assert command_list(check["test"], name) == [
            "CMD",
            "presence-bridge",
            "health",
            "--role",
            args.role,
        ], f"{name}: the health check does not read the {args.role} heartbeat"


# -- Caddy -------------------------------------------------------------------------------------


def test_caddyfile_proxies_to_every_compose_web_replica_on_its_port() -> None:
    upstreams: set[tuple[str, int]] = set()
    for line in caddyfile_lines():
        words = line.rstrip("{").split()
        if words and words[0] == "reverse_proxy":
            upstreams |= {host_port(word) for word in words[1:] if not word.startswith(("/", "@"))}
    expected = {(name, compose_serve(name).port) for name in compose_roles()["web"]}
    assert upstreams == expected


def test_caddyfile_forwards_only_the_public_paths_with_body_limits() -> None:
    lines = caddyfile_lines()
    handled = [line.split()[1] for line in lines if line.startswith("handle ") and line.split()[1] != "{"]
    assert handled, "the Caddyfile has no path handlers"
    for path in handled:
        prefix = path.removesuffix("*")
        assert path in PUBLIC_EXACT or prefix in PUBLIC_PREFIXES, f"Caddy forwards {path}"
    assert {"/graph/*", "/starface/uci/*", "/healthz"} <= set(handled)
    assert sum(1 for line in lines if line.startswith("max_size ")) >= 2, "body limits are missing"
    # Anything else must be answered by Caddy itself, not proxied.
    assert any(line.startswith("respond 404") for line in lines)


# -- Dockerfile --------------------------------------------------------------------------------


def test_dockerfile_runs_the_cli_as_non_root() -> None:
    instructions = dockerfile_instructions()
    base = [rest for word, rest in instructions if word == "FROM"]
    assert base, "the Dockerfile has no FROM"
    assert re.match(r"python:3\.11-slim", base[-1]), base
    users = [rest for word, rest in instructions if word == "USER"]
    assert users, "the image runs as root"
    user = users[-1].split(":")[0]
    assert user.isdigit(), f"USER {users[-1]}: use a numeric uid (runAsNonRoot can only verify those)"
    assert int(user) != 0, "the image runs as root"
    assert dockerfile_exec_form("ENTRYPOINT") == ["presence-bridge"]
    args = serve_args(dockerfile_exec_form("CMD"), "Dockerfile CMD")
    assert args.role == "all"
    assert args.host == "0.0.0.0"  # noqa: S104 - a container must listen beyond its loopback
    exposed = {p.split("/")[0] for word, rest in instructions if word == "EXPOSE" for p in rest.split()}
    assert {str(args.port), "9100"} <= exposed


def test_dockerfile_installs_only_from_pypi_and_checks_livez_with_python() -> None:
    instructions = dockerfile_instructions()
    runs = " ".join(rest for word, rest in instructions if word == "RUN")
    assert re.search(r"\bpip install\b[^&;]*\s\.(\s|$)", runs), "the package is not installed with pip"
    for tool in ("curl", "wget", "apt-get", "apk "):
        assert tool not in runs, f"the build runs {tool}"
    assert not any(word == "ADD" and "://" in rest for word, rest in instructions), "ADD downloads"
    checks = [rest for word, rest in instructions if word == "HEALTHCHECK"]
    assert checks, "no HEALTHCHECK"
    check = checks[-1]
    default_port = serve_args(dockerfile_exec_form("CMD"), "Dockerfile CMD").port
    assert f":{default_port}/livez" in check
    assert "python" in check, "the slim image has no curl: check with python"


# -- settings used by the deployment --------------------------------------------------------------


def test_every_environment_variable_in_deploy_is_a_setting() -> None:
    used = list(iter_env_names())
    assert {name for _, name in used} >= {"REDIS_URL", "BRIDGE_SECRET_KEY", "PUBLIC_BASE_URL"}
    unknown = sorted({f"{where}: {name}" for where, name in used if name not in SETTING_NAMES})
    assert not unknown, "not settings in service/settings.py FIELDS:\n" + "\n".join(unknown)


def test_secrets_are_only_in_the_secret() -> None:
    configmap = k8s_one("ConfigMap", "presence-bridge")["data"]
    secret = k8s_one("Secret", "presence-bridge")["stringData"]
    assert not SECRET_SETTINGS & set(configmap), "a secret setting is in the ConfigMap"
    assert not set(configmap) & set(secret), "a key is both in the ConfigMap and the Secret"
    assert {"BRIDGE_SECRET_KEY", "AZURE_CLIENT_SECRET", "STARFACE_ADMIN_PASSWORD"} <= set(secret)
    for name, service in compose_services().items():
        leaked = SECRET_SETTINGS & set(compose_environment(service))
        assert not leaked, f"compose {name} puts {leaked} into the compose file instead of .env"


def test_configmap_and_secret_configure_every_role_once_the_key_is_replaced() -> None:
    environ = {
        **k8s_one("ConfigMap", "presence-bridge")["data"],
        **k8s_one("Secret", "presence-bridge")["stringData"],
    }
    # The placeholder key is refused, so nobody runs with a key published in this repository.
    with pytest.raises(SettingsError, match="BRIDGE_SECRET_KEY"):
        Settings.from_env(environ, env_file=None, require=[CORE])
    environ["BRIDGE_SECRET_KEY"] = "k" * 43
    settings = Settings.from_env(environ, env_file=None, require=[CORE, GRAPH_APP, STARFACE])
    assert settings.redis_url is not None
    host = urllib.parse.urlsplit(settings.redis_url).hostname
    services = {doc["metadata"]["name"] for doc in k8s("Service")}
    assert host in services, f"REDIS_URL points at {host}, which is no Service here"


def test_every_setting_is_documented_in_env_example_and_the_guides() -> None:
    example = (ROOT / ".env.example").read_text(encoding="utf-8")
    guides = GUIDE.read_text(encoding="utf-8") + (ROOT / "README.md").read_text(encoding="utf-8")
    for field in FIELDS:
        assert re.search(rf"^#?\s*{field.env}=", example, flags=re.M), f"{field.env} not in .env.example"
        assert re.search(rf"\b{field.env}\b", guides), f"{field.env} not in docs/production.md or README"


# -- Kubernetes ----------------------------------------------------------------------------------


def test_every_kubernetes_document_is_named_and_listed() -> None:
    seen: set[tuple[str, str]] = set()
    for filename, doc in k8s_documents():
        for key in ("apiVersion", "kind"):
            assert isinstance(doc.get(key), str), f"{filename}: no {key}"
            assert doc[key], f"{filename}: empty {key}"
        name = (doc.get("metadata") or {}).get("name")
        assert isinstance(name, str), f"{filename}: {doc['kind']} without metadata.name"
        assert name, f"{filename}: {doc['kind']} with an empty metadata.name"
        assert "namespace" not in doc["metadata"], f"{filename}: {name} pins a namespace"
        assert (doc["kind"], name) not in seen, f"two {doc['kind']} named {name}"
        seen.add((doc["kind"], name))
    (kustomization,) = k8s("Kustomization")
    listed = set(kustomization["resources"])
    files = {p.name for p in K8S.glob("*.y*ml")} - {"kustomization.yaml"}
    assert listed == files


def test_bridge_deployments_have_probes_resources_and_run_as_non_root() -> None:
    workloads = bridge_workloads()
    assert set(workloads) == {"web", "worker", "scheduler"}
    assert workloads["web"][0]["spec"]["replicas"] == 2
    assert workloads["worker"][0]["spec"]["replicas"] == 2
    for role, (deployment, container, args) in workloads.items():
        where = f"{deployment['metadata']['name']}"
        labels = deployment["spec"]["template"]["metadata"]["labels"]
        assert labels.get("app.kubernetes.io/component") == role, f"{where}: label does not match the role"
        refs = container["envFrom"]
        names = {ref.get("configMapRef", ref.get("secretRef", {})).get("name") for ref in refs}
        assert names == {"presence-bridge"}, f"{where}: envFrom {names}"
        ports = {p["name"]: p["containerPort"] for p in container["ports"]}
        assert ports.get("metrics") == args.metrics_port, f"{where}: metrics port differs from --metrics-port"
        if role == "web":
            assert ports.get("http") == args.port, f"{where}: http port differs from --port"
            assert container["readinessProbe"]["httpGet"]["path"] == "/readyz"
            assert container["livenessProbe"]["httpGet"]["path"] == "/livez"
            for probe in ("livenessProbe", "readinessProbe"):
                port = container[probe]["httpGet"]["port"]
                declared = port in ports or port in ports.values()
                assert declared, f"{where}: {probe} asks undeclared port {port}"
        else:
            # A role without a web tier proves its event loop alive through its heartbeat file.
            expected = ["presence-bridge", "health", "--role", role]
            for probe in ("livenessProbe", "readinessProbe"):
                assert container[probe]["exec"]["command"] == expected, f"{where}: {probe}"


@pytest.mark.parametrize("kind", WORKLOAD_KINDS)
def test_workloads_are_hardened_and_bounded(kind: str) -> None:
    workloads = k8s(kind)
    assert workloads, f"no {kind}"
    for workload in workloads:
        name = workload["metadata"]["name"]
        pod_context = pod_spec(workload).get("securityContext") or {}
        for container in containers(workload):
            context = {**pod_context, **(container.get("securityContext") or {})}
            assert context.get("runAsNonRoot") is True, f"{name}/{container['name']}: runAsNonRoot"
            assert context.get("runAsUser", 1) != 0, f"{name}/{container['name']} runs as root"
            assert context.get("allowPrivilegeEscalation") is False, f"{name}/{container['name']}"
            assert "ALL" in context.get("capabilities", {}).get("drop", []), f"{name}/{container['name']}"
            assert container.get("livenessProbe"), f"{name}/{container['name']}: no livenessProbe"
            resources = container.get("resources") or {}
            assert resources.get("requests", {}).get("memory"), f"{name}/{container['name']}: no requests"
            assert resources.get("limits", {}).get("memory"), f"{name}/{container['name']}: no memory limit"


def test_disruption_budgets_select_the_web_and_worker_pods() -> None:
    workloads = bridge_workloads()
    budgets = k8s("PodDisruptionBudget")
    for role in ("web", "worker"):
        labels = workloads[role][0]["spec"]["template"]["metadata"]["labels"]
        covering = [
            pdb
            for pdb in budgets
            if pdb["spec"]["selector"]["matchLabels"].items() <= labels.items()
            and pdb["spec"].get("minAvailable", 0) >= 1
        ]
        assert covering, f"no PodDisruptionBudget keeps a {role} pod available"


def test_ingress_routes_only_public_paths_to_the_web_service_over_tls() -> None:
    web, container, _ = bridge_workloads()["web"]
    pod_labels = web["spec"]["template"]["metadata"]["labels"]
    container_ports = {p["name"]: p["containerPort"] for p in container["ports"]}
    (ingress,) = k8s("Ingress")
    assert ingress["metadata"].get("annotations", {}).get("cert-manager.io/cluster-issuer")
    tls_hosts = {h for entry in ingress["spec"]["tls"] for h in entry["hosts"]}
    paths: set[str] = set()
    for rule in ingress["spec"]["rules"]:
        assert rule["host"] in tls_hosts, f"{rule['host']} is served without TLS"
        for item in rule["http"]["paths"]:
            path = item["path"]
            if item["pathType"] == "Exact":
                assert path in PUBLIC_EXACT, f"the Ingress routes {path}"
            else:
                assert path in PUBLIC_PREFIXES, f"the Ingress routes the prefix {path}"
            paths.add(path)
            backend = item["backend"]["service"]
            service = k8s_one("Service", backend["name"])
            assert service["spec"]["selector"].items() <= pod_labels.items(), "Service misses the web pods"
            (port,) = [p for p in service["spec"]["ports"] if p["name"] == backend["port"]["name"]]
            target = port["targetPort"]
            assert target in container_ports or target in container_ports.values(), target
            http = container_ports["http"]
            assert container_ports.get(target, target) == http, "the Ingress does not reach the web port"
    assert {"/graph/notifications", "/graph/lifecycle", "/starface/uci/"} <= paths


def test_valkey_statefulset_persists_with_aof_on_a_claim() -> None:
    (valkey,) = k8s("StatefulSet")
    (container,) = pod_spec(valkey)["containers"]
    args = command_list(container["args"], "valkey")
    assert args[args.index("--appendonly") + 1] == "yes"
    assert args[args.index("--appendfsync") + 1] == "everysec"
    assert args[args.index("--maxmemory-policy") + 1] == "noeviction"
    claims = {c["metadata"]["name"] for c in valkey["spec"]["volumeClaimTemplates"]}
    mounts = {m["name"]: m["mountPath"] for m in container["volumeMounts"]}
    data_dir = args[args.index("--dir") + 1]
    assert any(mounts.get(claim) == data_dir for claim in claims), "the AOF directory is not on a claim"
    assert valkey["spec"]["serviceName"] in {doc["metadata"]["name"] for doc in k8s("Service")}


# -- the production guide --------------------------------------------------------------------------


def test_production_guide_commands_are_valid() -> None:
    commands: list[str] = []
    fence: str | None = None  # the language of the code block we are in
    for line in GUIDE.read_text(encoding="utf-8").splitlines():
        if line.startswith("```"):
            fence = None if fence is not None else line[3:].strip()
        elif fence == "sh" and line.startswith("presence-bridge "):
            commands.append(line.split(" #", 1)[0].strip())
    assert fence is None, "docs/production.md has an unclosed code block"
    assert len(commands) >= 5, commands
    for command in commands:
        parse_cli(shlex.split(command)[1:], "docs/production.md")


def test_production_guide_points_at_the_deploy_files() -> None:
    text = GUIDE.read_text(encoding="utf-8")
    for path in ("deploy/Dockerfile", "deploy/docker-compose.yml", "deploy/Caddyfile", "deploy/kubernetes"):
        assert path in text, f"docs/production.md does not mention {path}"
        assert (ROOT / path).exists(), path
