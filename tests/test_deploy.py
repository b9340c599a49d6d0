"""The Kubernetes manifests in deploy/: what a cluster needs to run, shard and scrape the exporter."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import yaml

from exporter.configload import load_config

DEPLOY = Path(__file__).resolve().parents[1] / "deploy" / "kubernetes"


def _documents() -> dict[str, dict[str, Any]]:
    docs: dict[str, dict[str, Any]] = {}
    for path in sorted(DEPLOY.glob("*.yaml")):
        for doc in yaml.safe_load_all(path.read_text()):
            if doc:
                docs[doc["kind"]] = doc
    return docs


def test_every_piece_is_there() -> None:
    assert set(_documents()) == {"ConfigMap", "StatefulSet", "Service", "ServiceMonitor"}


def test_the_configmap_is_a_valid_exporter_config(tmp_path: Path) -> None:
    config = tmp_path / "config.yaml"
    config.write_text(_documents()["ConfigMap"]["data"]["config.yaml"])
    loaded = load_config(config, env={})
    assert loaded.state.path.as_posix().startswith("/var/lib/nico-task-exporter")
    assert loaded.api.credential_kind == "token_file"


def test_statefulset_shards_probes_and_runs_unprivileged() -> None:
    sts = _documents()["StatefulSet"]
    pod = sts["spec"]["template"]["spec"]
    (container,) = pod["containers"]
    env = {e["name"]: e for e in container["env"]}
    # The pod ordinal is the shard; the replica count is the total.
    assert "pod-index" in env["NICO_EXPORTER_SHARDING__SHARD"]["valueFrom"]["fieldRef"]["fieldPath"]
    assert int(env["NICO_EXPORTER_SHARDING__TOTAL_SHARDS"]["value"]) == sts["spec"]["replicas"]
    assert container["livenessProbe"]["httpGet"]["path"] == "/healthz"
    assert container["readinessProbe"]["httpGet"]["path"] == "/readyz"
    assert pod["securityContext"]["runAsNonRoot"] is True
    assert container["securityContext"]["allowPrivilegeEscalation"] is False
    mounts = {m["mountPath"] for m in container["volumeMounts"]}
    assert "/var/lib/nico-task-exporter" in mounts  # the state file survives restarts
    assert sts["spec"]["volumeClaimTemplates"][0]["metadata"]["name"] == "state"


def test_service_monitor_scrapes_the_metrics_port() -> None:
    docs = _documents()
    ports = {p["name"] for p in docs["Service"]["spec"]["ports"]}
    endpoints = docs["ServiceMonitor"]["spec"]["endpoints"]
    assert [e["port"] for e in endpoints] == ["metrics"] and "metrics" in ports
    # The alert rules select job="nico-task-exporter": the Service name becomes the job.
    assert docs["Service"]["metadata"]["name"] == "nico-task-exporter"
