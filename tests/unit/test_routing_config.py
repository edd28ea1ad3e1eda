"""The ``routing:`` and ``models:`` sections of the config: shapes, defaults, mistakes."""

from __future__ import annotations

from pathlib import Path

import pytest

from dragoman.app import model_specs
from dragoman.backends.base import Timeouts
from dragoman.config import Config, ConfigError, load_config

BACKEND = "backends: [{name: e, type: echo}]\n"


def load(tmp_path: Path, text: str) -> Config:
    path = tmp_path / "dragoman.yaml"
    path.write_text(BACKEND + text)
    return load_config(path, environ={})


def test_the_documented_example(tmp_path: Path) -> None:
    config = load(tmp_path, """
timeouts: {connect: 3, first_byte: 100, idle: 20}
routing:
  strategy: least_busy
  retries: 1
  max_retry_after: 5
  cooldown: {failures: 5, window: 30, period: 10}
  health_interval: 15
models:
  - name: llama
    strategy: lowest_latency
    deployments:
      - {target: ollama-a/llama3.2, weight: 2, priority: 0}
      - ollama-b/llama3.2
      - {target: openai/gpt-4o-mini, priority: 1}
    fallbacks: [bigger-model]
    timeouts: {first_byte: 60}
    retries: 2
""")
    assert config.routing.strategy == "least_busy"
    assert config.routing.cooldown.failures == 5
    spec = model_specs(config)[0]
    assert spec.strategy == "lowest_latency" and spec.retries == 2 and spec.fallbacks == ("bigger-model",)
    assert [(d.target, d.weight, d.priority) for d in spec.deployments] == [
        ("ollama-a/llama3.2", 2.0, 0), ("ollama-b/llama3.2", 1.0, 0), ("openai/gpt-4o-mini", 1.0, 1)]
    assert spec.timeouts == Timeouts(3, 60, 20)  # what the model leaves out comes from the global ones


def test_defaults(tmp_path: Path) -> None:
    config = load(tmp_path, "")
    routing = config.routing
    assert (routing.strategy, routing.retries, routing.max_retry_after) == ("weighted_random", 2, 10.0)
    assert (routing.cooldown.failures, routing.cooldown.window, routing.cooldown.period) == (3, 60.0, 30.0)
    assert config.models == []


@pytest.mark.parametrize(("text", "message"), [
    ("models: [{name: m, deployments: []}]", "models[0].deployments"),
    ("models: [{name: m, deployments: [e/echo], strategy: fastest}]", "models[0].strategy"),
    ("models: [{name: m, deployments: [{target: e/echo, weight: 0}]}]", "weight"),
    ("models: [{name: m, deployments: [e/echo], fallbacks: [m]}]", "lists itself"),
    ("models: [{name: m, deployments: [e/echo]}, {name: m, deployments: [e/echo]}]", "used twice"),
    ("aliases: {m: e/echo}\nmodels: [{name: m, deployments: [e/echo]}]", "also an alias"),
    ("routing: {retries: -1}", "routing.retries"),
    ("routing: {cooldown: {windows: 3}}", "unknown key"),
])
def test_mistakes_name_the_key(tmp_path: Path, text: str, message: str) -> None:
    with pytest.raises(ConfigError, match=message.replace("[", r"\[").replace("]", r"\]")):
        load(tmp_path, text)
