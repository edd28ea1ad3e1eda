"""The import directions of DESIGN.md: core <- protocols <- dialects, backends <- gateway <- app."""

from __future__ import annotations

import ast
from pathlib import Path

PACKAGE = Path(__file__).resolve().parents[2] / "dragoman"
# What every dialect may share: the plain modules beside the dialect packages (importing none of
# them), found rather than listed.
SHARED_DIALECT_MODULES = tuple(sorted(f"dragoman.dialects.{path.stem}" for path in (PACKAGE / "dialects").glob("*.py")
                                      if not path.stem.startswith("__")))


def imports_of(path: Path) -> set[str]:
    found: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom) and node.module:
            found.add(node.module)
        elif isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
    return {name for name in found if name.startswith("dragoman")}


def layer_violations(folder: str, allowed: tuple[str, ...]) -> list[str]:
    problems = []
    for path in (PACKAGE / folder).rglob("*.py"):
        for module in imports_of(path):
            if not module.startswith(allowed):
                problems.append(f"{path.relative_to(PACKAGE)} imports {module}")
    return problems


def test_core_imports_only_core_and_errors() -> None:
    assert layer_violations("core", ("dragoman.core", "dragoman.errors")) == []


def dialect_packages() -> list[str]:
    """Every dialect package, found rather than listed: a new one is checked from its first commit."""
    return sorted(path.name for path in (PACKAGE / "dialects").iterdir()
                  if path.is_dir() and not path.name.startswith("__"))


def test_dialects_never_import_backends_or_gateway() -> None:
    assert {"openai", "ollama", "anthropic", "responses"} <= set(dialect_packages())
    for dialect in dialect_packages():
        assert layer_violations(f"dialects/{dialect}", (
            "dragoman.core", "dragoman.errors", "dragoman.protocols", "dragoman.serving", *SHARED_DIALECT_MODULES,
            f"dragoman.dialects.{dialect}")) == []


def test_backends_never_import_dialects_or_gateway() -> None:
    assert layer_violations("backends", ("dragoman.core", "dragoman.errors", "dragoman.protocols",
                                         "dragoman.backends")) == []


def test_shared_dialect_modules_import_no_dialect() -> None:
    assert "dragoman.dialects.validation" in SHARED_DIALECT_MODULES
    for module in SHARED_DIALECT_MODULES:
        path = PACKAGE / "dialects" / f"{module.rpartition('.')[2]}.py"
        assert {m for m in imports_of(path) if not m.startswith(
            ("dragoman.core", "dragoman.errors", "dragoman.serving", *SHARED_DIALECT_MODULES))} == set(), path


def test_serving_knows_dialects_only_by_their_interface() -> None:
    """The one generation handler and the HTTP plumbing serve any dialect through
    ``core.dialect.Dialect``: no dialect package, backend or gateway policy in them."""
    assert layer_violations("serving", ("dragoman.core", "dragoman.errors", "dragoman.serving")) == []


def test_gateway_never_imports_dialects_admin_or_assembly() -> None:
    """Policy is written once against the canonical model: no wire format, no HTTP surface. The
    ``Gateway`` itself, its stream and the control plane live in ``gateway/`` and are checked here."""
    assert {"gateway.py", "stream.py", "control.py"} <= {path.name for path in (PACKAGE / "gateway").iterdir()}
    assert layer_violations("gateway", ("dragoman.core", "dragoman.errors", "dragoman.backends", "dragoman.config",
                                        "dragoman.extras", "dragoman.tracing", "dragoman.gateway")) == []


def test_admin_never_imports_the_assembly() -> None:
    """The admin site is built by the assembly (app, services, cli), never the other way round
    (a type-only import of the services it is handed is allowed)."""
    problems = []
    for path in (PACKAGE / "admin").rglob("*.py"):
        tree = ast.parse(path.read_text())
        type_only = {id(node) for block in ast.walk(tree) if isinstance(block, ast.If)
                     and getattr(block.test, "id", None) == "TYPE_CHECKING" for node in ast.walk(block)}
        for node in ast.walk(tree):
            if isinstance(node, ast.ImportFrom) and node.module and id(node) not in type_only \
                    and node.module.startswith(("dragoman.app", "dragoman.services", "dragoman.cli")):
                problems.append(f"{path.relative_to(PACKAGE)} imports {node.module}")
    assert problems == []


def test_protocols_import_only_core_and_errors() -> None:
    """Shared protocol knowledge sits below the adapters that share it."""
    assert layer_violations("protocols", ("dragoman.core", "dragoman.errors", "dragoman.protocols")) == []
