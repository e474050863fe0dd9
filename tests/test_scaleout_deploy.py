"""deploy/ describes the topology the scale-out tests run on loopback: three gateway replicas, one PostgreSQL,
one Redis, migrations once, readiness on /health/ready, the pool file from a ConfigMap and keys from a Secret.
Docker and Kubernetes cannot run here, so these tests read the files and check what would break a deployment:
structure, cross-references, and that the shipped pool file is one the gateway accepts.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import pytest
import yaml

DEPLOY = Path(__file__).resolve().parent.parent / "deploy"


def k8s(kind: str) -> dict[str, Any]:
    docs = [yaml.safe_load(p.read_text()) for p in sorted((DEPLOY / "k8s").glob("*.yaml"))]
    found = [d for d in docs if d and d.get("kind") == kind]
    assert len(found) == 1, f"expected one {kind} in deploy/k8s"
    return found[0]


@pytest.fixture(scope="module")
def compose() -> dict[str, Any]:
    return yaml.safe_load((DEPLOY / "compose.yaml").read_text())


def test_compose_has_three_gateways_sharing_postgres_and_redis_after_one_migration(compose):
    services = compose["services"]
    gateways = {name: s for name, s in services.items() if name.startswith("gateway")}
    assert len(gateways) == 3
    assert {"postgres", "redis", "migrate"} <= set(services)
    assert services["migrate"]["command"] == ["poolgate", "db", "upgrade"]
    assert services["migrate"]["depends_on"]["postgres"]["condition"] == "service_healthy"
    urls = set()
    spools = set()
    for name, svc in gateways.items():
        env = svc["environment"]
        assert svc["depends_on"]["migrate"]["condition"] == "service_completed_successfully", name
        assert "@postgres:5432/" in env["POOLGATE_DATABASE_URL"] and env["POOLGATE_REDIS_URL"].startswith("redis://redis")
        assert env["POOLGATE_AUTH_ENABLED"] == "true" and "POOLGATE_MASTER_KEY" in env
        assert "/health/ready" in " ".join(svc["healthcheck"]["test"])
        urls.add((env["POOLGATE_DATABASE_URL"], env["POOLGATE_REDIS_URL"]))
        spools |= {v.split(":")[0] for v in svc["volumes"] if v.endswith(":/var/lib/poolgate/spool")}
    assert len(urls) == 1  # one shared database and Redis
    assert len(spools) == 3  # one spool volume per replica (one process per spool directory)
    assert len({tuple(svc["ports"]) for svc in gateways.values()}) == 3


def test_k8s_deployment_service_configmap_and_secret_fit_together():
    deployment, service = k8s("Deployment"), k8s("Service")
    configmap, secret = k8s("ConfigMap"), k8s("Secret")
    spec = deployment["spec"]
    pod = spec["template"]["spec"]
    assert spec["replicas"] == 3
    assert service["spec"]["selector"].items() <= spec["template"]["metadata"]["labels"].items()
    gateway = next(c for c in pod["containers"] if c["name"] == "gateway")
    assert gateway["readinessProbe"]["httpGet"]["path"] == "/health/ready"
    assert gateway["livenessProbe"]["httpGet"]["path"] == "/health"
    port_names = {p["name"] for p in gateway["ports"]}
    assert gateway["readinessProbe"]["httpGet"]["port"] in port_names
    assert service["spec"]["ports"][0]["targetPort"] in port_names
    assert [c["command"] for c in pod["initContainers"]] == [["poolgate", "db", "upgrade"]]
    secret_keys = set(secret["stringData"])
    refs = [e["valueFrom"]["secretKeyRef"] for c in pod["containers"] + pod["initContainers"] for e in c["env"]
            if "valueFrom" in e]
    assert refs and all(r["name"] == secret["metadata"]["name"] and r["key"] in secret_keys for r in refs)
    env = {e["name"]: e for e in gateway["env"]}
    assert {"POOLGATE_MASTER_KEY", "POOLGATE_DATABASE_URL", "POOLGATE_REDIS_URL"} <= set(env)
    assert all("value" not in env[n] for n in ("POOLGATE_MASTER_KEY", "POOLGATE_DATABASE_URL"))  # from the Secret
    pool_volume = next(v for v in pod["volumes"] if "configMap" in v)
    assert pool_volume["configMap"]["name"] == configmap["metadata"]["name"]
    mount = next(m for m in gateway["volumeMounts"] if m["name"] == pool_volume["name"])
    assert f"{mount['mountPath']}/pool.yaml" == env["POOLGATE_POOL_FILE"]["value"]
    assert pod["terminationGracePeriodSeconds"] >= 25  # drain (10 s) + log writer's bounded flush (10 s)


def test_shipped_pool_file_is_valid_and_the_configmap_carries_the_same_text(monkeypatch):
    from gateway.pools import parse_pool_file

    text = (DEPLOY / "pool.yaml").read_text()
    assert k8s("ConfigMap")["data"]["pool.yaml"] == text
    monkeypatch.delenv("POOLGATE_REPLAY_HOST", raising=False)
    pool = parse_pool_file(text, "deploy/pool.yaml")
    assert [p.name for p in pool.pools] == ["auto"]
    assert all(b.base_url.startswith("http://replay:8001/") for b in pool.backends)
    assert "api_key:" not in text  # keys are named (api_key_env), never inline


def test_dockerfile_runs_the_gateway_unprivileged_with_its_spool_on_a_volume():
    text = (DEPLOY / "Dockerfile").read_text()
    assert re.search(r'^CMD \["poolgate", "serve"\]$', text, re.M)
    assert re.search(r"^USER 10001$", text, re.M) and "POOLGATE_HOST=0.0.0.0" in text
    assert 'VOLUME ["/var/lib/poolgate/spool"]' in text and "POOLGATE_SPOOL_DIR=/var/lib/poolgate/spool" in text
    for package in ("gateway", "routers", "training", "migrations"):  # everything pyproject packages
        assert f"COPY {package} ./{package}" in text
