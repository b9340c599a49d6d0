"""The house rules of the layout: data flows one way, and the runtime never loads the generators.

The runtime modules sit in layers; a module may import its own layer or the ones below, never one
above. The generators read the runtime, never the other way round: the repository's (``tools/``)
stay out of the wheel; the monitoring mixin (``exporter/mixin/``, the alert rules and dashboards a
user renders with ``nico-task-exporter mixin``) ships in it, on a layer above the runtime, and only
the CLI's ``mixin`` handler imports it, lazily. The simulator may use the payload models only: it
plays NICo, and NICo knows nothing of us.
"""

from __future__ import annotations

import ast
import subprocess
import sys
import zipfile
from collections.abc import Iterable, Iterator
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
PACKAGE = ROOT / "exporter"

# Bottom to top. Within a layer imports are free; across layers they only go down.
LAYERS: tuple[frozenset[str], ...] = tuple(
    frozenset(layer.split())
    for layer in (
        "__init__ errors logs addresses durations yamlfile exposition ratelimit sharding outbox slots breaker"
        " clockskew errortext",
        "models",
        "operations attribution auth tokencommand oidc ngc credentials",
        "client persistence",
        "state",
        "facts",
        "metrics tracing learner",
        "inventory runs discovery rackpolls poller",
        "config nicocli configload scheduler snapshot",
        "connect",
        "web web.server web.toolkit web.tls web.basic_auth",
        "app probe taskcmd",
        "demo cli __main__",
        # The monitoring mixin: generators above the runtime (MIXIN_MAY_BE_REACHED_FROM below).
        "mixin mixin.alerts mixin.command mixin.dashboards mixin.dashboards.builder mixin.dashboards.conditions"
        " mixin.dashboards.model mixin.dashboards.queries mixin.dashboards.specs",
    )
)
# Pairs in one layer that still must not import each other (they share what they need below).
APART = {("metrics", "tracing"), ("tracing", "metrics")}
SIMULATOR_MAY_USE = {"models", "__init__"}
# The one runtime module that reaches the mixin, inside its ``mixin`` handler only.
MIXIN_MAY_BE_REACHED_FROM = {"cli"}


def _module(path: Path) -> str:
    parts = path.relative_to(PACKAGE).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" and len(parts) > 1 else parts)


def _exporter_modules(nodes: Iterable[ast.AST]) -> set[str]:
    """Every exporter module the import statements among ``nodes`` name."""
    found: set[str] = set()
    for node in nodes:
        if isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            if node.module == "exporter":
                found.update(alias.name for alias in node.names)
            elif node.module.startswith("exporter."):
                found.add(node.module.removeprefix("exporter."))
        elif isinstance(node, ast.Import):
            found.update(
                a.name.removeprefix("exporter.") for a in node.names if a.name.startswith("exporter.")
            )
    return found


def _imports(path: Path) -> set[str]:
    """Every exporter module ``path`` imports, at any depth of the file (lazy imports count too)."""
    return _exporter_modules(ast.walk(ast.parse(path.read_text(encoding="utf-8"))))


def _outside_functions(node: ast.AST) -> Iterator[ast.AST]:
    """``node`` and what it holds, except function bodies: what runs when the module is imported."""
    yield node
    for child in ast.iter_child_nodes(node):
        if not isinstance(child, ast.FunctionDef | ast.AsyncFunctionDef | ast.Lambda):
            yield from _outside_functions(child)


def _eager_imports(path: Path) -> set[str]:
    """The exporter modules ``path`` imports as it is imported (not inside a function)."""
    return _exporter_modules(_outside_functions(ast.parse(path.read_text(encoding="utf-8"))))


def _layer(module: str) -> int:
    for index, layer in enumerate(LAYERS):
        if module in layer:
            return index
    raise AssertionError(f"exporter/{module.replace('.', '/')}.py is in no layer of tests/test_layout.py")


def _runtime_modules() -> dict[str, Path]:
    return {_module(p): p for p in PACKAGE.rglob("*.py") if not _module(p).startswith("simulator")}


def test_every_runtime_import_goes_down_a_layer_or_stays_in_its_own() -> None:
    upward = []
    for module, path in sorted(_runtime_modules().items()):
        for target in sorted(_imports(path)):
            if target == "__version__":
                continue
            if target.startswith("simulator"):
                # Only the commands that serve the simulator reach it (simulate, demo).
                if module not in {"cli", "demo"}:
                    upward.append(f"{module} -> {target}")
                continue
            if target.startswith("mixin") and not module.startswith("mixin"):
                if module not in MIXIN_MAY_BE_REACHED_FROM:
                    upward.append(f"{module} -> {target}")
                continue
            if (module, target) in APART or _layer(target) > _layer(module):
                upward.append(f"{module} -> {target}")
    assert upward == []


def test_the_mixin_is_reached_only_lazily() -> None:
    """The CLI imports the mixin inside its handler, never at module level; nor does anything else."""
    runtime = {m: p for m, p in _runtime_modules().items() if not m.startswith("mixin")}
    eager = sorted(
        f"{m} -> {t}" for m, p in runtime.items() for t in _eager_imports(p) if t.startswith("mixin")
    )
    assert eager == []
    lazy = sorted(m for m, p in runtime.items() if any(t.startswith("mixin") for t in _imports(p)))
    assert lazy == sorted(MIXIN_MAY_BE_REACHED_FROM)  # the handler exists, and is the only one


def test_running_the_exporter_loads_no_generator() -> None:
    """What ``run`` imports (the CLI, the app and the server) leaves the mixin unloaded."""
    code = (
        "import sys, exporter.cli, exporter.app, exporter.web, exporter.connect\n"
        "exporter.cli.build_parser()\n"
        "print(sorted(m for m in sys.modules if m.startswith(('exporter.mixin', 'tools', 'matplotlib'))))"
    )
    result = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True, cwd=ROOT
    )
    assert result.stdout.strip() == "[]"


def test_the_simulator_uses_nothing_of_the_exporter_but_the_payload_models() -> None:
    reached = {
        f"{_module(p)} -> {target}"
        for p in (PACKAGE / "simulator").rglob("*.py")
        for target in _imports(p)
        if not target.startswith("simulator") and target not in SIMULATOR_MAY_USE
    }
    assert reached == set()


def test_the_runtime_imports_no_generator_and_no_plotting() -> None:
    offenders = []
    for path in PACKAGE.rglob("*.py"):
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            names = (
                [node.module or ""] if isinstance(node, ast.ImportFrom) else
                [a.name for a in node.names] if isinstance(node, ast.Import) else []
            )  # fmt: skip
            offenders += [
                f"{path.relative_to(ROOT)}: {n}" for n in names if n.split(".")[0] in {"tools", "matplotlib"}
            ]
    assert offenders == []


def test_the_layers_name_every_module_that_exists() -> None:
    for module in _runtime_modules():
        _layer(module)
    named = {m for layer in LAYERS for m in layer}
    assert named - set(_runtime_modules()) <= {"durations", "yamlfile", "configload", "web.server",
                                                "web.toolkit", "web.tls", "web.basic_auth"}  # fmt: skip


def test_the_wheel_holds_the_runtime_only(tmp_path: Path) -> None:
    """Build the wheel as the Dockerfile does and look inside it."""
    try:
        import hatchling  # noqa: F401  (the build backend, a test extra)
    except ImportError:  # pragma: no cover - the test extra installs it
        pytest.skip("hatchling (the build backend) is not installed: pip install -e '.[test]'")
    result = subprocess.run(
        [sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-q", "-w", str(tmp_path), str(ROOT)],
        capture_output=True, text=True, check=False, timeout=300,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr[-2000:]
    (wheel,) = tmp_path.glob("*.whl")
    names = zipfile.ZipFile(wheel).namelist()
    tops = {name.split("/")[0] for name in names if not name.split("/")[0].endswith(".dist-info")}
    assert tops == {"exporter"}
    assert "exporter/simulator/harness.py" in names  # the simulator is part of the product
    # The mixin and its shipped variables, byte for byte the repository's one copy.
    mixin = {str(p.relative_to(ROOT)) for p in (PACKAGE / "mixin").rglob("*") if p.suffix in {".py", ".yml"}}
    assert "exporter/mixin/config.yml" in mixin and "exporter/mixin/dashboards/specs.py" in mixin
    assert mixin <= set(names), sorted(mixin - set(names))
    shipped = zipfile.ZipFile(wheel).read("exporter/mixin/config.yml")
    assert shipped == (PACKAGE / "mixin" / "config.yml").read_bytes()
    assert not [n for n in names if n.startswith(("tools/", "tests/", "benchmarks/"))]
    metadata = next(n for n in names if n.endswith("METADATA"))
    requires = [
        line
        for line in zipfile.ZipFile(wheel).read(metadata).decode().splitlines()
        if line.startswith("Requires-Dist:")
    ]
    plotting = [line for line in requires if "matplotlib" in line]
    assert plotting and all("extra ==" in line for line in plotting), plotting  # only in an extra
