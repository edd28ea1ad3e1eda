"""How a config file, environment variables and flags combine (``load_config`` with an environment)."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from dragoman.cli import _flag_environment, build_parser
from dragoman.config import ConfigError, load_config
from dragoman.envconfig import VARIABLES

FILE = """
server: {host: 0.0.0.0, port: 1111, trusted_proxies: [10.0.0.0/8]}
backends:
  - {name: openai, type: openai, base_url: "https://example.test/v1", headers: {X-Team: web}, models: [a]}
  - {name: lab, type: ollama}
auth: {keys: [{name: ci, key: "${CI_KEY}", models: ["lab/*"], rpm: 5}]}
"""


@pytest.fixture
def config_file(tmp_path: Path) -> Path:
    path = tmp_path / "dragoman.yaml"
    path.write_text(FILE)
    return path


def test_the_file_alone(config_file: Path) -> None:
    config = load_config(config_file, environ={"CI_KEY": "ci-key-0123456789abcdef"})
    assert (config.server.host, config.server.port) == ("0.0.0.0", 1111)
    assert config.server.forwarded_allow_ips == ["10.0.0.0/8"]  # trusted_proxies is its other name
    assert config.server.trusted_proxies == ["10.0.0.0/8"]
    assert config.auth.mode == "keys"  # implied by the static key
    assert [(k.name, k.key.get_secret_value(), k.rpm) for k in config.auth.keys] == [
        ("ci", "ci-key-0123456789abcdef", 5)]
    assert config.environment == []


def test_the_environment_overrides_and_adds_and_flags_win(config_file: Path) -> None:
    env = {"CI_KEY": "ci-key-0123456789abcdef", "DRAGOMAN_PORT": "2222", "DRAGOMAN_OPENAI_API_KEY": "sk-env",
           "DRAGOMAN_OPENAI_MODELS": " b , c ,", "DRAGOMAN_ANTHROPIC_API_KEY": "sk-ant", "DRAGOMAN_HOST": "",
           "DRAGOMAN_API_KEY": "default-key-0123456789", "DRAGOMAN_FORWARDED_ALLOW_IPS": "192.0.2.1, 10.1.0.0/16"}
    config = load_config(config_file, environ=env)
    assert (config.server.host, config.server.port) == ("0.0.0.0", 2222)  # an empty variable counts as unset
    assert config.server.forwarded_allow_ips == ["192.0.2.1", "10.1.0.0/16"]
    by_name = {b.name: (b.type, b.settings) for b in config.backends}
    assert by_name["openai"] == ("openai", {"base_url": "https://example.test/v1", "headers": {"X-Team": "web"},
                                            "models": ["b", "c"], "api_key": "sk-env"})
    assert by_name["lab"] == ("ollama", {})
    assert by_name["anthropic"] == ("anthropic", {"api_key": "sk-ant"})  # added
    assert [k.name for k in config.auth.keys] == ["ci", "default"]
    assert config.environment == ["DRAGOMAN_PORT", "DRAGOMAN_FORWARDED_ALLOW_IPS", "DRAGOMAN_API_KEY",
                                  "DRAGOMAN_OPENAI_API_KEY", "DRAGOMAN_OPENAI_MODELS", "DRAGOMAN_ANTHROPIC_API_KEY"]

    args = build_parser().parse_args(["serve", "--port", "3333", "--log-level", "debug", "--host", "::1"])
    flags = _flag_environment(args)
    assert flags == {"DRAGOMAN_HOST": "::1", "DRAGOMAN_PORT": "3333", "DRAGOMAN_LOG_LEVEL": "debug"}
    config = load_config(config_file, environ={**env, **flags})
    assert (config.server.host, config.server.port, config.server.log_level) == ("::1", 3333, "debug")


def test_no_file_environment_backends_replace_the_built_in_ones(tmp_path: Path) -> None:
    assert [b.name for b in load_config(None, environ={}).backends] == ["echo"]
    config = load_config(None, environ={"OLLAMA_URL": "http://gpu:11434", "OPENAI_ALLOWED_MODELS": "x"})
    assert [(b.name, b.settings) for b in config.backends] == [
        ("openai", {"models": ["x"], "base_url": "https://api.openai.com/v1", "api_key": "forward"}),
        ("ollama", {"base_url": "http://gpu:11434"})]


@pytest.mark.parametrize(("seed", "expected"), [
    ("https://openrouter.ai/api", "https://openrouter.ai/api/v1"),
    ("https://openrouter.ai/api/", "https://openrouter.ai/api/v1"),
    ("http://127.0.0.1:8000/v1", "http://127.0.0.1:8000/v1"),
])
def test_seed_base_url_gets_v1_once(seed: str, expected: str) -> None:
    config = load_config(None, environ={"OPENAI_API_BASE_URL": seed})
    assert config.backends[0].settings["base_url"] == expected


def test_dragoman_names_win_over_the_seed_names() -> None:
    config = load_config(None, environ={"OPENAI_API_BASE_URL": "https://seed.test", "OPENAI_ALLOWED_MODELS": "s",
                                        "DRAGOMAN_OPENAI_BASE_URL": "https://mine.test/v1",
                                        "DRAGOMAN_OPENAI_MODELS": "m"})
    assert config.backends[0].settings == {"base_url": "https://mine.test/v1", "models": ["m"], "api_key": "forward"}
    assert config.environment == ["DRAGOMAN_OPENAI_BASE_URL", "DRAGOMAN_OPENAI_MODELS"]


def test_ssl_paths_from_the_environment_are_relative_to_the_working_directory(
        config_file: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    work = tmp_path / "work"
    work.mkdir()
    monkeypatch.chdir(work)
    config = load_config(config_file, environ={"CI_KEY": "ci-key-0123456789abcdef", "DRAGOMAN_SSL_CERTFILE": "c.pem",
                                               "DRAGOMAN_SSL_KEYFILE": "k.pem"})
    assert config.server.tls is not None
    assert (config.server.tls.certfile, config.server.tls.keyfile) == (work / "c.pem", work / "k.pem")
    config_file.write_text(FILE.replace("server: {", "server: {tls: {certfile: certs/s.pem, ca_certs: certs/ca.pem}, "))
    config = load_config(config_file, environ={"CI_KEY": "ci-key-0123456789abcdef"})
    assert config.server.tls is not None  # from the file: relative to the file's folder
    assert (config.server.tls.certfile, config.server.tls.ca_certs) == (tmp_path / "certs/s.pem",
                                                                        tmp_path / "certs/ca.pem")


@pytest.mark.parametrize(("text", "env", "message"), [
    ("server: {trusted_proxies: [a], forwarded_allow_ips: [b]}\nbackends: [{name: e, type: echo}]\n", {},
     "server: trusted_proxies and forwarded_allow_ips are one setting; keep forwarded_allow_ips"),
    ("backends: [{name: openai, type: ollama}]\n", {"DRAGOMAN_OPENAI_API_KEY": "k"},
     "the OPENAI backend variables change the backend named 'openai', but the config file's 'openai' has type "
     "'ollama', not 'openai'"),
    ("backends: [{name: e, type: echo}]\nauth: {keys: [{name: a, key: 0123456789abcdefgh}, "
     "{name: a, key: 0123456789abcdefgX}]}\n", {}, "auth: keys: name 'a' is used twice"),
    ("backends: [{name: e, type: echo}]\nauth: {keys: [{name: a, key: 0123456789abcdefgh, budget_tokens: 5}]}\n",
     {}, "auth.keys[0]: a token or cost budget needs budget_period (day or month)"),
    ("backends: [{name: e, type: echo}]\nauth: {keys: [{name: a, key: 0123456789abcdefgh, rpm: 0}]}\n",
     {}, "auth.keys[0].rpm: Input should be greater than 0"),
])
def test_conflicts_are_config_errors(tmp_path: Path, text: str, env: dict[str, str], message: str) -> None:
    path = tmp_path / "dragoman.yaml"
    path.write_text(text)
    with pytest.raises(ConfigError) as info:
        load_config(path, environ=env)
    assert message in str(info.value)
    assert "0123456789abcdefgh" not in str(info.value)


def test_every_variable_is_in_the_readme() -> None:
    readme = (Path(__file__).resolve().parents[2] / "README.md").read_text()
    missing = [v.name for v in VARIABLES if f"`{v.name}`" not in readme]
    assert missing == []


def test_workers_from_the_flag_the_environment_or_the_file(tmp_path: Path) -> None:
    args = build_parser().parse_args(["serve", "--workers", "3"])
    assert _flag_environment(args) == {"DRAGOMAN_WORKERS": "3"}
    assert load_config(None, environ={"DRAGOMAN_WORKERS": "3"}).server.worker_count == 3
    assert load_config(None, environ={}).server.worker_count == 1
    assert load_config(None, environ={"DRAGOMAN_WORKERS": "auto"}).server.worker_count == len(os.sched_getaffinity(0))
    with pytest.raises(ConfigError, match="DRAGOMAN_WORKERS: 'two' is not a number of workers or 'auto'"):
        load_config(None, environ={"DRAGOMAN_WORKERS": "two"})
    file = tmp_path / "c.yaml"
    file.write_text("server: {workers: 0}\n")
    with pytest.raises(ConfigError, match="workers must be from 1 to 256"):
        load_config(file, environ={})


def test_the_log_format_comes_from_the_file_the_environment_or_the_flag(tmp_path: Path) -> None:
    path = tmp_path / "dragoman.yaml"
    path.write_text("server: {log_format: json}\nbackends: [{name: test, type: echo, models: [echo]}]\n")
    assert load_config(path, environ={}).server.log_format == "json"
    assert load_config(None, environ={}).server.log_format == "text"
    assert load_config(path, environ={"DRAGOMAN_LOG_FORMAT": "TEXT"}).server.log_format == "text"
    flags = _flag_environment(build_parser().parse_args(["serve", "--log-format", "json"]))
    assert flags == {"DRAGOMAN_LOG_FORMAT": "json"}
    assert load_config(None, environ={"DRAGOMAN_LOG_FORMAT": "text", **flags}).server.log_format == "json"
    with pytest.raises(ConfigError) as info:
        load_config(None, environ={"DRAGOMAN_LOG_FORMAT": "xml"})
    assert str(info.value) == "DRAGOMAN_LOG_FORMAT: 'xml' is not one of text, json"
