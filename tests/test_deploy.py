"""The Kubernetes manifests in deploy/: what a cluster needs to run, shard and scrape the exporter.

Every manifest of a built-in kind validates, offline, against the Kubernetes OpenAPI schemas that
``kubernetes-validate`` ships, in strict mode (a misspelt field is an error): for 1.28, the oldest
version the StatefulSet works on (the ``apps.kubernetes.io/pod-index`` label), and the newest the
package knows. Custom resources (the ServiceMonitor) have no schema there; the tests below check
the fields they rely on.
"""

from __future__ import annotations

import copy
from pathlib import Path
from typing import Any

import kubernetes_validate  # type: ignore[import-untyped]
import pytest
import yaml

from exporter.configload import load_config

DEPLOY = Path(__file__).resolve().parents[1] / "deploy" / "kubernetes"
OLDEST_KUBERNETES = "1.28.0"
KUBERNETES_VERSIONS = (OLDEST_KUBERNETES, str(kubernetes_validate.latest_version()))
CUSTOM_KINDS = {"ServiceMonitor"}  # monitoring.coreos.com/v1: the Prometheus Operator's CRD


def _all_documents() -> list[dict[str, Any]]:
    return [
        doc for path in sorted(DEPLOY.glob("*.yaml")) for doc in yaml.safe_load_all(path.read_text()) if doc
    ]


def _documents() -> dict[str, dict[str, Any]]:
    return {doc["kind"]: doc for doc in _all_documents()}


BUILT_IN = [doc for doc in _all_documents() if doc["kind"] not in CUSTOM_KINDS]


@pytest.mark.parametrize("version", KUBERNETES_VERSIONS)
@pytest.mark.parametrize("doc", BUILT_IN, ids=[f"{d['kind']}/{d['metadata']['name']}" for d in BUILT_IN])
def test_manifest_validates_against_the_kubernetes_schema(doc: dict[str, Any], version: str) -> None:
    validated = kubernetes_validate.validate(doc, version, strict=True)
    assert validated == version.rsplit(".", 1)[0]


def test_the_schema_check_rejects_a_misspelt_field() -> None:
    sts = copy.deepcopy(_documents()["StatefulSet"])
    sts["spec"]["template"]["spec"]["containers"][0]["livenesProbe"] = {"httpGet": {"path": "/healthz"}}
    with pytest.raises(kubernetes_validate.ValidationError, match="livenesProbe"):
        kubernetes_validate.validate(sts, OLDEST_KUBERNETES, strict=True)


def test_only_the_custom_resources_lack_a_kubernetes_schema() -> None:
    for doc in _all_documents():
        if doc["kind"] in CUSTOM_KINDS:
            with pytest.raises(kubernetes_validate.SchemaNotFoundError):
                kubernetes_validate.validate(doc, OLDEST_KUBERNETES, strict=True)


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
