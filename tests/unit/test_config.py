"""Config loading: interpolation and errors that name the file and the key."""

from __future__ import annotations

from pathlib import Path

import pytest

from dragoman.app import build_backends
from dragoman.backends.base import BackendDeps
from dragoman.config import ConfigError, DataDir, load_config


def write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "dragoman.yaml"
    path.write_text(text)
    return path


def test_env_interpolation_and_defaults(tmp_path: Path) -> None:
    path = write(tmp_path, """
server: {host: 127.0.0.1, port: 9999}
backends:
  - name: up
    type: openai
    base_url: ${BASE:-http://127.0.0.1:1/v1}
    api_key: ${UPSTREAM_KEY}
    models: ["*"]
""")
    config = load_config(path, environ={"UPSTREAM_KEY": "secret"})
    assert config.server.port == 9999
    assert config.backends[0].settings["api_key"] == "secret"
    assert config.backends[0].settings["base_url"] == "http://127.0.0.1:1/v1"
    assert config.database_url.endswith(str(tmp_path / "dragoman.db"))


def test_missing_env_var_names_the_key(tmp_path: Path) -> None:
    path = write(tmp_path, "backends:\n  - {name: up, type: openai, base_url: x, api_key: \"${NOPE}\"}\n")
    with pytest.raises(ConfigError, match=r"dragoman.yaml: backends\[0\].api_key: environment variable NOPE"):
        load_config(path, environ={})


@pytest.mark.parametrize(("text", "expected"), [
    ("server: {port: nope}\nbackends: [{name: e, type: echo}]\n", r"server.port: Input should be a valid integer"),
    ("backends: []\n", r"at least one backend is required"),
    ("backends: [{name: e, type: echo}, {name: e, type: echo}]\n", r"used twice"),
    ("backend: []\n", r"backend: unknown key"),
    ("- just a list\n", r"top level must be a mapping"),
    ("backends: [\n", r"not valid YAML"),
])
def test_broken_config_is_a_clear_error(tmp_path: Path, text: str, expected: str) -> None:
    with pytest.raises(ConfigError, match=expected) as info:
        load_config(write(tmp_path, text), environ={})
    assert str(tmp_path / "dragoman.yaml") in str(info.value)


def test_backend_settings_errors_name_the_entry(tmp_path: Path) -> None:
    config = load_config(write(tmp_path, "backends:\n  - {name: up, type: openai, models: [a]}\n"), environ={})
    with pytest.raises(ConfigError, match=r"backends\[0\] \(up\)\.base_url: Field required"):
        build_backends(config, BackendDeps())
    config = load_config(write(tmp_path, "backends:\n  - {name: up, type: nosuch}\n"), environ={})
    with pytest.raises(ConfigError, match=r"unknown backend type 'nosuch'"):
        build_backends(config, BackendDeps())


def test_missing_file(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="file not found"):
        load_config(tmp_path / "absent.yaml", environ={})


def test_redis_is_a_url_or_a_mapping(tmp_path: Path) -> None:
    backends = "backends: [{name: e, type: echo}]\n"
    plain = load_config(write(tmp_path, backends + "redis: redis://127.0.0.1:6379/0\n"), environ={})
    assert plain.redis_url == "redis://127.0.0.1:6379/0"
    assert plain.redis is not None and (plain.redis.max_connections, plain.redis.pool_wait) == (32, 2.0)
    sized = load_config(write(tmp_path, backends + "redis: {url: 'redis://r:6379/1', max_connections: 64, "
                                                   "pool_wait: 0.5}\n"), environ={})
    assert sized.redis is not None and sized.redis_url == "redis://r:6379/1"
    assert (sized.redis.max_connections, sized.redis.pool_wait) == (64, 0.5)
    unset = load_config(write(tmp_path, backends + "redis: ${REDIS_URL:-}\n"), environ={})
    assert unset.redis is None and unset.redis_url is None
    assert load_config(write(tmp_path, backends), environ={}).redis_url is None


def test_limits_defaults_and_choices(tmp_path: Path) -> None:
    backends = "backends: [{name: e, type: echo}]\n"
    limits = load_config(write(tmp_path, backends), environ={}).limits
    assert (limits.redis_failure, limits.reserve_tokens, limits.reserve_tokens_by_model) == ("open", 1024, {})
    chosen = load_config(write(tmp_path, backends + "limits: {redis_failure: closed, reserve_tokens: 256, "
                                                    "reserve_tokens_by_model: {'lab/*': 4096}}\n"), environ={}).limits
    assert (chosen.redis_failure, chosen.reserve_tokens, chosen.reserve_tokens_by_model) == (
        "closed", 256, {"lab/*": 4096})


@pytest.mark.parametrize(("text", "expected"), [
    ("limits: {redis_failure: maybe}\n", r"limits.redis_failure: Input should be 'open' or 'closed'"),
    ("limits: {reserve_tokens: -1}\n", r"limits.reserve_tokens: Input should be greater than or equal to 0"),
    ("limits: {reserve_tokens_by_model: {'a/*': -5}}\n", r"limits.reserve_tokens_by_model: .*a/\*: a reservation"),
    ("limits: {fail_open: true}\n", r"limits.fail_open: unknown key"),
    ("redis: {url: 'redis://r', max_connections: 2}\n", r"redis.max_connections: Input should be greater than or"),
    ("redis: {url: 'redis://r', pool_wait: 0}\n", r"redis.pool_wait: Input should be greater than 0"),
    ("redis: {max_connections: 8}\n", r"redis.url: Field required"),
])
def test_broken_limits_and_redis_settings(tmp_path: Path, text: str, expected: str) -> None:
    with pytest.raises(ConfigError, match=expected):
        load_config(write(tmp_path, "backends: [{name: e, type: echo}]\n" + text), environ={})


ECHO = "backends: [{name: e, type: echo, models: [echo]}]\n"


def test_data_dir_from_the_file_then_the_environment_then_the_config_folder(tmp_path: Path) -> None:
    root = tmp_path.resolve()
    path = write(root, ECHO + "data_dir: state\n")  # relative to the file's folder
    config = load_config(path, environ={"DRAGOMAN_DATA_DIR": str(root / "env")})
    assert config.data_location == DataDir(root / "state", f"data_dir in {path}")
    assert config.database_url == f"sqlite+aiosqlite:///{root / 'state' / 'dragoman.db'}"

    path = write(root, ECHO)
    config = load_config(path, environ={"DRAGOMAN_DATA_DIR": str(root / "env")})
    assert config.data_location == DataDir(root / "env", "DRAGOMAN_DATA_DIR")
    assert config.database_url == f"sqlite+aiosqlite:///{root / 'env' / 'dragoman.db'}"

    config = load_config(path, environ={})  # a writable config folder: the database stays where it was
    assert config.data_location == DataDir(root, "the default; choose another with data_dir: or DRAGOMAN_DATA_DIR")
    assert config.database_url == f"sqlite+aiosqlite:///{root / 'dragoman.db'}"

    path = write(root, ECHO + "database: postgresql://db/x\n")
    assert load_config(path, environ={}).checked_database_url() == "postgresql+asyncpg://db/x"


def test_without_a_config_file_state_goes_to_the_users_data_dir(tmp_path: Path, monkeypatch: pytest.MonkeyPatch
                                                                 ) -> None:
    monkeypatch.setenv("HOME", str(tmp_path))
    config = load_config(None, environ={})
    assert config.data_location.path == tmp_path / ".dragoman"
    assert config.checked_database_url() == f"sqlite+aiosqlite:///{tmp_path.resolve() / '.dragoman' / 'dragoman.db'}"
    assert (tmp_path / ".dragoman").is_dir()  # created when it is needed


def test_data_dir_that_cannot_be_made_names_the_path_and_the_setting(tmp_path: Path) -> None:
    (tmp_path / "a-file").write_text("")
    config = load_config(write(tmp_path, ECHO), environ={"DRAGOMAN_DATA_DIR": str(tmp_path / "a-file" / "state")})
    with pytest.raises(ConfigError) as info:
        config.checked_database_url()
    assert str(info.value) == (f"cannot write to the data directory {tmp_path / 'a-file' / 'state'}: Not a directory "
                               "(DRAGOMAN_DATA_DIR)")
