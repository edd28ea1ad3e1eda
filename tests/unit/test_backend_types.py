"""Backend types from entry points and ``type: python``: every broken entry is one clear line that
names the file, the entry and the key. Plugins here are installed as pip lays them out (a module
and a ``.dist-info`` folder with ``entry_points.txt``) in a folder put on ``sys.path``."""

from __future__ import annotations

import importlib
import logging
import sys
import tomllib
from collections.abc import Iterator
from pathlib import Path

import pytest

from dragoman.app import build_backends, create_app
from dragoman.backends.base import BackendDeps
from dragoman.backends.echo import EchoBackend
from dragoman.backends.types import BUILT_IN, GROUP, BackendTypes
from dragoman.config import Config, ConfigError, load_config

ROOT = Path(__file__).resolve().parents[2]

PLUGIN = '''
from dragoman.backends.echo import EchoBackend

class Loud(EchoBackend):
    type = "loud"

NOT_A_BACKEND = 42
'''


@pytest.fixture
def site(tmp_path: Path) -> Iterator[Path]:
    """A folder on ``sys.path`` holding one installed distribution, ``plugin``, with entry points."""
    folder = tmp_path / "site"
    folder.mkdir()
    (folder / "plugin_backends.py").write_text(PLUGIN)
    (folder / "plugin_broken.py").write_text("raise RuntimeError('boom')\n")
    info = folder / "plugin-1.0.dist-info"
    info.mkdir()
    (info / "METADATA").write_text("Metadata-Version: 2.1\nName: plugin\nVersion: 1.0\n")
    (info / "entry_points.txt").write_text(
        f"[{GROUP}]\nloud = plugin_backends:Loud\nopenai = plugin_backends:Loud\nbroken = plugin_broken:Nothing\n"
        "gone = plugin_missing:Thing\n")
    sys.path.insert(0, str(folder))
    importlib.invalidate_caches()
    try:
        yield folder
    finally:
        sys.path.remove(str(folder))
        for module in ("plugin_backends", "plugin_broken"):
            sys.modules.pop(module, None)


def config_file(tmp_path: Path, text: str) -> Config:
    path = tmp_path / "dragoman.yaml"
    path.write_text(text)
    return load_config(path, environ={})


def build_error(tmp_path: Path, text: str) -> str:
    with pytest.raises(ConfigError) as info:
        build_backends(config_file(tmp_path, text), BackendDeps())
    return str(info.value)


def test_pyproject_declares_exactly_the_built_ins() -> None:
    declared = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["entry-points"][GROUP]
    assert declared == BUILT_IN


def test_an_installed_entry_point_is_a_type(site: Path, tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    with caplog.at_level(logging.WARNING, logger="dragoman"):
        types = BackendTypes()
        assert {"loud", "broken", "python", "echo"} <= set(types.names())
    assert "ignoring the backend entry point openai = plugin_backends:Loud" in caplog.text
    [backend] = build_backends(config_file(tmp_path, "backends: [{name: l, type: loud, models: [x]}]\n"),
                               BackendDeps(), types)
    assert type(backend).__name__ == "Loud" and backend.name == "l"
    assert types.load("openai").__name__ == "OpenAIBackend"  # a built-in's name stays the built-in


def test_broken_plugins_are_one_line_each(site: Path, tmp_path: Path) -> None:
    where = f"{tmp_path / 'dragoman.yaml'}: backends[0] (b)"
    assert build_error(tmp_path, "backends: [{name: b, type: broken}]\n") == (
        f"{where}.type: importing 'plugin_broken' failed (RuntimeError: boom)")
    assert build_error(tmp_path, "backends: [{name: b, type: gone}]\n").startswith(
        f"{where}.type: cannot import 'plugin_missing' (No module named 'plugin_missing')")
    assert build_error(tmp_path, "backends: [{name: b, type: loud, modles: [x]}]\n") == f"{where}.modles: unknown key"


def test_unknown_type_lists_the_known_ones(tmp_path: Path) -> None:
    message = build_error(tmp_path, "backends: [{name: up, type: nosuch}]\n")
    assert "backends[0] (up).type: unknown backend type 'nosuch' (known: anthropic, echo, " in message
    assert "python" in message


@pytest.mark.parametrize(("entry", "expected"), [
    ("{name: p, type: python}", ".class: Field required"),
    ("{name: p, type: python, class: plugin_backends}", ".class: String should match pattern"),
    ("{name: p, type: python, class: 'nowhere.at_all:Thing'}", ".class: cannot import 'nowhere.at_all'"),
    ("{name: p, type: python, class: 'plugin_backends:Nope'}", ".class: module 'plugin_backends' has no 'Nope'"),
    ("{name: p, type: python, class: 'plugin_backends:NOT_A_BACKEND'}", ".class: 'plugin_backends:NOT_A_BACKEND' "
                                                                         "is not a backend class"),
    ("{name: p, type: python, class: 'dragoman.backends.model:ModelBackend'}", "is abstract: it does not implement "
                                                                               "generate"),
    ("{name: p, type: python, class: 'plugin_backends:Loud', settings: {models: 3}}",
     ".settings.models: Input should be a valid list"),
    ("{name: p, type: python, class: 'plugin_backends:Loud', models: [x]}", ".models: unknown key"),
])
def test_type_python_errors_name_the_key(site: Path, tmp_path: Path, entry: str, expected: str) -> None:
    message = build_error(tmp_path, f"backends: [{entry}]\n")
    assert message.startswith(f"{tmp_path / 'dragoman.yaml'}: backends[0] (p)"), message
    assert expected in message


async def test_type_python_builds_the_class_with_its_settings(site: Path, tmp_path: Path) -> None:
    text = "backends: [{name: p, type: python, class: 'plugin_backends:Loud', settings: {models: [a, b]}}]\n"
    [backend] = build_backends(config_file(tmp_path, text), BackendDeps())
    assert isinstance(backend, EchoBackend) and [m.name for m in await backend.list_models()] == ["a", "b"]


def test_create_app_needs_a_backend_and_unique_names() -> None:
    with pytest.raises(ConfigError, match="at least one backend is required"):
        create_app(Config())
    echo = EchoBackend("e", EchoBackend.Settings(), BackendDeps())
    with pytest.raises(ConfigError, match="the backend name 'e' is used twice"):
        create_app(Config.model_validate({"backends": [{"name": "e", "type": "echo"}]}), backends=[echo])
    create_app(Config(), backends=[echo])  # a program may give every backend in code
