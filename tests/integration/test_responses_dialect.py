"""The Responses API (``/v1/responses``) over real HTTP, driven by the official ``openai`` SDK.

Backends: ``echo`` (tool calls by ``!tool NAME {json}``, reasoning on request) and the
OpenAI-compatible fake upstream (tests/fakes/openai_upstream.py), which records what it got.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from typing import Any

import httpx
import openai
import pytest

from tests.fakes.openai_upstream import FakeOpenAI
from tests.servers import ServerThread, dragoman_server

WEATHER = {"type": "function", "name": "get_weather", "description": "Weather for a city", "strict": False,
           "parameters": {"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]}}
SQL = {"type": "custom", "name": "run_sql", "description": "One SQL statement",
       "format": {"type": "grammar", "syntax": "lark", "definition": "start: /SELECT .+/"}}
CRM = {"type": "namespace", "name": "crm", "description": "The customer database",
       "tools": [{"type": "function", "name": "lookup", "description": "Find a customer",
                  "parameters": {"type": "object", "properties": {"q": {"type": "string"}}}}]}


@pytest.fixture(scope="module")
def fake() -> FakeOpenAI:
    return FakeOpenAI()


@pytest.fixture(scope="module")
def gateway(fake: FakeOpenAI) -> Iterator[ServerThread]:
    with ServerThread(fake.app()) as upstream:
        config = {
            "backends": [
                {"name": "up", "type": "openai", "base_url": f"{upstream.url}/v1", "api_key": "upstream-secret",
                 "models": ["gpt-*"]},
                {"name": "test", "type": "echo", "models": ["echo"]},
            ],
            "timeouts": {"connect": 2, "first_byte": 2, "idle": 1},
        }
        with dragoman_server(config) as server:
            yield server


@pytest.fixture()
def client(gateway: ServerThread) -> openai.OpenAI:
    return openai.OpenAI(base_url=f"{gateway.url}/v1", api_key="client-key", max_retries=0, timeout=10)


def raw_events(gateway: ServerThread, body: dict[str, Any]) -> list[tuple[str, dict[str, Any]]]:
    """The SSE events exactly as sent: (the ``event:`` line, the ``data:`` JSON)."""
    response = httpx.post(f"{gateway.url}/v1/responses", json={**body, "stream": True}, timeout=10)
    assert response.status_code == 200, response.text
    assert response.headers["content-type"].startswith("text/event-stream")
    events = []
    for block in response.text.split("\n\n"):
        if not block.strip():
            continue
        lines = dict(line.split(": ", 1) for line in block.split("\n"))
        events.append((lines["event"], json.loads(lines["data"])))
    return events


# ---------------------------------------------------------------------------------- answers


def test_whole_answer_has_the_spec_shape(client: openai.OpenAI) -> None:
    response = client.responses.create(model="test/echo", input="Hello  wide world", instructions="Be brief.",
                                       metadata={"ticket": "42"}, temperature=0.5, user="u1")
    assert response.id.startswith("resp_")
    assert response.object == "response"
    assert response.status == "completed"
    assert response.output_text == "Hello  wide world"
    [message] = response.output
    assert message.type == "message" and message.id.startswith("msg_") and message.status == "completed"
    assert message.content[0].type == "output_text" and message.content[0].annotations == []
    assert response.instructions == "Be brief."
    assert response.metadata == {"ticket": "42"}
    assert (response.temperature, response.top_p, response.user) == (0.5, 1.0, "u1")
    assert response.error is None and response.incomplete_details is None
    usage = response.usage
    assert usage is not None
    assert usage.output_tokens == 3 and usage.total_tokens == usage.input_tokens + usage.output_tokens
    assert usage.input_tokens_details.cached_tokens == 0
    assert usage.output_tokens_details.reasoning_tokens == 0


def test_stream_event_sequence(gateway: ServerThread) -> None:
    events = raw_events(gateway, {"model": "test/echo", "input": "one two"})
    names = [name for name, _ in events]
    assert names == ["response.created", "response.in_progress", "response.output_item.added",
                     "response.content_part.added", "response.output_text.delta", "response.output_text.delta",
                     "response.output_text.done", "response.content_part.done", "response.output_item.done",
                     "response.completed"]
    assert [data["type"] for _, data in events] == names
    assert [data["sequence_number"] for _, data in events] == list(range(len(events)))
    created = events[0][1]["response"]
    assert created["status"] == "in_progress" and created["output"] == [] and created["usage"] is None
    final = events[-1][1]["response"]
    assert final["id"] == created["id"]
    assert final["output"][0]["content"][0]["text"] == "one two"
    assert events[6][1]["text"] == "one two"


def test_sdk_stream_equals_whole_answer(client: openai.OpenAI) -> None:
    for model in ("test/echo", "up/gpt-test", "up/gpt-tools", "up/gpt-reason"):
        whole = client.responses.create(model=model, input="same text please")
        with client.responses.stream(model=model, input="same text please") as stream:
            deltas = [e.delta for e in stream if e.type == "response.output_text.delta"]
            streamed = stream.get_final_response()
        assert streamed.output_text == whole.output_text == "".join(deltas)
        assert [i.type for i in streamed.output] == [i.type for i in whole.output]


def test_message_items_and_content_parts(client: openai.OpenAI, fake: FakeOpenAI) -> None:
    response = client.responses.create(model="up/gpt-test", instructions="sys", input=[
        {"role": "developer", "content": "dev note"},
        {"type": "message", "role": "user", "content": [{"type": "input_text", "text": "first"}]},
        {"role": "assistant", "content": [{"type": "output_text", "text": "earlier answer"}]},
        {"role": "user", "content": [{"type": "input_text", "text": "look"},
                                     {"type": "input_image", "image_url": "https://example.com/a.png",
                                      "detail": "low"}]},
    ])
    assert response.output_text == "You said: look"
    sent = fake.last().body["messages"]
    assert [m["role"] for m in sent] == ["system", "system", "user", "assistant", "user"]
    assert sent[0]["content"] == "sys" and sent[3]["content"] == "earlier answer"
    assert sent[4]["content"][1] == {"type": "image_url", "image_url": {"url": "https://example.com/a.png",
                                                                       "detail": "low"}}


def test_sampling_and_format_reach_the_upstream(client: openai.OpenAI, fake: FakeOpenAI) -> None:
    schema = {"type": "object", "properties": {"a": {"type": "string"}}, "required": ["a"],
              "additionalProperties": False}
    client.responses.create(model="up/gpt-test", input="x", max_output_tokens=50, temperature=0.2, top_p=0.9,
                            user="someone", reasoning={"effort": "low"},
                            text={"format": {"type": "json_schema", "name": "answer", "schema": schema,
                                             "strict": True}})
    body = fake.last().body
    assert (body["max_tokens"], body["temperature"], body["top_p"], body["user"]) == (50, 0.2, 0.9, "someone")
    assert body["reasoning_effort"] == "low"
    assert body["response_format"] == {"type": "json_schema",
                                       "json_schema": {"name": "answer", "schema": schema, "strict": True}}
    client.responses.create(model="up/gpt-test", input="x", text={"format": {"type": "json_object"}})
    assert fake.last().body["response_format"] == {"type": "json_object"}


def test_incomplete_when_max_output_tokens_is_hit(client: openai.OpenAI, gateway: ServerThread) -> None:
    response = client.responses.create(model="test/echo", input=" ".join(["w"] * 16), max_output_tokens=16)
    assert response.status == "completed"  # echo counts a word as a token
    response = client.responses.create(model="test/echo", input=" ".join(["w"] * 40), max_output_tokens=16)
    assert response.status == "incomplete"
    assert response.incomplete_details is not None and response.incomplete_details.reason == "max_output_tokens"
    events = raw_events(gateway, {"model": "test/echo", "input": " ".join(["w"] * 40), "max_output_tokens": 16})
    assert events[-1][0] == "response.incomplete"
    assert events[-1][1]["response"]["incomplete_details"] == {"reason": "max_output_tokens"}


# ------------------------------------------------------------------------------------ tools


def test_function_call_round_trip(client: openai.OpenAI, fake: FakeOpenAI) -> None:
    first = client.responses.create(model="up/gpt-tools", input="weather and time?", tools=[WEATHER],
                                    parallel_tool_calls=True)
    calls = [item for item in first.output if item.type == "function_call"]
    assert [(c.call_id, c.name, c.arguments) for c in calls] == [
        ("call_a", "get_weather", '{"city": "Paris"}'), ("call_b", "get_time", '{"tz": "UTC"}')]
    assert all(c.id is not None and c.id.startswith("fc_") and c.status == "completed" for c in calls)
    assert fake.last().body["tools"] == [{"type": "function", "function": {
        "name": "get_weather", "description": "Weather for a city", "parameters": WEATHER["parameters"],
        "strict": False}}]
    history: list[Any] = ["weather and time?", *[c.model_dump(exclude_none=True) for c in calls],
                          {"type": "function_call_output", "call_id": "call_a", "output": "14C"},
                          {"type": "function_call_output", "call_id": "call_b", "output": "noon"}]
    history[0] = {"role": "user", "content": history[0]}
    client.responses.create(model="up/gpt-test", input=history, tools=[WEATHER], parallel_tool_calls=False)
    body = fake.last().body
    sent = body["messages"]
    assert [m["role"] for m in sent] == ["user", "assistant", "tool", "tool"]
    assert [c["id"] for c in sent[1]["tool_calls"]] == ["call_a", "call_b"]
    assert sent[2] == {"role": "tool", "tool_call_id": "call_a", "content": "14C"}
    assert body["parallel_tool_calls"] is False


def test_streamed_function_call_events(gateway: ServerThread) -> None:
    events = raw_events(gateway, {"model": "up/gpt-tools", "input": "go", "tools": [WEATHER]})
    names = [name for name, _ in events]
    assert names.count("response.output_item.added") == 2
    deltas = [d["delta"] for n, d in events if n == "response.function_call_arguments.delta" and d["output_index"] == 0]
    assert "".join(deltas) == '{"city": "Paris"}'
    done = [d for n, d in events if n == "response.function_call_arguments.done"]
    assert [(d["name"], d["arguments"], d["output_index"]) for d in done] == [
        ("get_weather", '{"city": "Paris"}', 0), ("get_time", '{"tz": "UTC"}', 1)]
    final = events[-1][1]["response"]
    assert events[-1][0] == "response.completed"
    assert [i["type"] for i in final["output"]] == ["function_call", "function_call"]


def test_custom_tool_is_carried_as_a_function_and_mapped_back(client: openai.OpenAI,
                                                              gateway: ServerThread) -> None:
    command = '!tool run_sql {"input": "SELECT 1"}'
    response = client.responses.create(model="test/echo", input=command, tools=[SQL])
    [call] = response.output
    assert call.type == "custom_tool_call"
    assert (call.name, call.input) == ("run_sql", "SELECT 1")
    assert call.id is not None and call.id.startswith("ctc_")
    events = raw_events(gateway, {"model": "test/echo", "input": command, "tools": [SQL]})
    names = [name for name, _ in events]
    assert "response.function_call_arguments.delta" not in names
    assert [d["input"] for n, d in events if n == "response.custom_tool_call_input.done"] == ["SELECT 1"]
    # The call and its output go back; echo answers with the output's text.
    answer = client.responses.create(model="test/echo", tools=[SQL], input=[
        {"role": "user", "content": command},
        {"type": "custom_tool_call", "call_id": call.call_id, "name": "run_sql", "input": "SELECT 1"},
        {"type": "custom_tool_call_output", "call_id": call.call_id, "output": "1 row"}])
    assert answer.output_text == "1 row"


def test_custom_tool_reaches_the_upstream_as_one_string_argument(client: openai.OpenAI, fake: FakeOpenAI) -> None:
    fake.agent_calls["run_sql"] = '{"input": "SELECT 2"}'
    response = client.responses.create(model="up/gpt-agent", input="query", tools=[SQL])
    assert [(i.type, getattr(i, "input", None)) for i in response.output] == [("custom_tool_call", "SELECT 2")]
    [tool] = fake.last().body["tools"]
    function = tool["function"]
    assert function["name"] == "run_sql"
    assert function["parameters"]["required"] == ["input"]
    assert "start: /SELECT .+/" in function["parameters"]["properties"]["input"]["description"]


def test_namespace_tools_are_flattened_and_mapped_back(client: openai.OpenAI, fake: FakeOpenAI) -> None:
    response = client.responses.create(model="test/echo", input='!tool crm__lookup {"q": "ada"}', tools=[CRM])
    [call] = response.output
    assert call.type == "function_call"
    assert (call.name, call.namespace, call.arguments) == ("lookup", "crm", '{"q": "ada"}')
    client.responses.create(model="up/gpt-test", tools=[CRM], input=[
        {"role": "user", "content": "find ada"},
        {"type": "function_call", "call_id": "call_9", "name": "lookup", "namespace": "crm", "arguments": "{}"},
        {"type": "function_call_output", "call_id": "call_9", "output": "found"}])
    body = fake.last().body
    assert body["tools"][0]["function"]["name"] == "crm__lookup"
    assert body["tools"][0]["function"]["description"] == "The customer database\n\nFind a customer"
    assert body["messages"][1]["tool_calls"][0]["function"]["name"] == "crm__lookup"


def test_hosted_tools_are_dropped_and_named(client: openai.OpenAI, fake: FakeOpenAI, gateway: ServerThread) -> None:
    raw = client.responses.with_raw_response.create(
        model="up/gpt-test", input="hi", tools=[{"type": "web_search"}, WEATHER, {"type": "file_search",
                                                                               "vector_store_ids": ["vs_1"]}])
    assert raw.headers["x-dragoman-dropped-tools"] == "web_search,file_search"
    response = raw.parse()
    assert [t.type for t in response.tools] == ["function"]
    assert [t["function"]["name"] for t in fake.last().body["tools"]] == ["get_weather"]
    with pytest.raises(openai.BadRequestError) as caught:
        client.responses.create(model="up/gpt-test", input="hi", tools=[{"type": "web_search"}],
                                tool_choice={"type": "web_search"})
    assert caught.value.body["param"] == "tool_choice"  # type: ignore[index]
    assert "web_search" in caught.value.message
    events = raw_events(gateway, {"model": "test/echo", "input": "hi", "tools": [{"type": "web_search"}]})
    assert events[-1][0] == "response.completed"


def test_hosted_tools_rejected_when_configured() -> None:
    config = {"backends": [{"name": "test", "type": "echo", "models": ["echo"]}],
              "responses": {"hosted_tools": "reject"}}
    with dragoman_server(config) as server:
        client = openai.OpenAI(base_url=f"{server.url}/v1", api_key="k", max_retries=0, timeout=10)
        with pytest.raises(openai.BadRequestError) as caught:
            client.responses.create(model="test/echo", input="hi", tools=[{"type": "web_search"}])
        assert "hosted tools (web_search)" in caught.value.message
        assert client.responses.create(model="test/echo", input="hi", tools=[WEATHER]).output_text == "hi"


# ------------------------------------------------------------------------------- reasoning


def test_reasoning_as_text_or_summary(client: openai.OpenAI, gateway: ServerThread) -> None:
    plain = client.responses.create(model="up/gpt-reason", input="why?")
    reasoning, message = plain.output
    assert reasoning.type == "reasoning" and reasoning.id.startswith("rs_")
    assert reasoning.summary == [] and reasoning.content is not None
    assert reasoning.content[0].text == "Let me think."
    assert message.type == "message" and plain.output_text == "Answer."
    summarized = client.responses.create(model="up/gpt-reason", input="why?", reasoning={"summary": "auto"})
    assert summarized.output[0].type == "reasoning"
    assert [s.text for s in summarized.output[0].summary] == ["Let me think."]
    events = raw_events(gateway, {"model": "up/gpt-reason", "input": "why?", "reasoning": {"summary": "auto"}})
    names = [name for name, _ in events]
    assert names[2:5] == ["response.output_item.added", "response.reasoning_summary_part.added",
                          "response.reasoning_summary_text.delta"]
    assert "response.reasoning_summary_text.done" in names and "response.reasoning_summary_part.done" in names
    assert [d["output_index"] for n, d in events if n == "response.output_text.delta"] == [1]


def test_encrypted_reasoning_round_trips_as_a_signature(client: openai.OpenAI) -> None:
    response = client.responses.create(model="test/echo", input="ponder", reasoning={"effort": "high"},
                                       include=["reasoning.encrypted_content"])
    reasoning = response.output[0]
    assert reasoning.type == "reasoning" and reasoning.encrypted_content
    assert reasoning.content is not None and reasoning.content[0].text == "Thinking: ponder"
    again = client.responses.create(model="test/echo", include=["reasoning.encrypted_content"], input=[
        {"role": "user", "content": "ponder"}, reasoning.model_dump(exclude_none=True),
        {"role": "assistant", "content": response.output_text}, {"role": "user", "content": "more"}])
    assert again.output_text == "more"
    without = client.responses.create(model="test/echo", input="ponder", reasoning={"effort": "high"})
    assert without.output[0].type == "reasoning"
    assert getattr(without.output[0], "encrypted_content", None) is None


# ------------------------------------------------------------------- previous responses


def test_previous_response_id_continues_the_conversation(client: openai.OpenAI, fake: FakeOpenAI) -> None:
    first = client.responses.create(model="up/gpt-test", input="remember me", instructions="first rules")
    second = client.responses.create(model="up/gpt-test", input="and now", previous_response_id=first.id,
                                     instructions="second rules")
    assert second.previous_response_id == first.id
    sent = fake.last().body["messages"]
    assert [(m["role"], m["content"]) for m in sent] == [
        ("system", "second rules"), ("user", "remember me"), ("assistant", "You said: remember me"),
        ("user", "and now")]
    assert client.responses.retrieve(second.id).output_text == second.output_text
    # Only the key that created a response sees it.
    assert httpx.get(f"{client.base_url}responses/{first.id}", timeout=10,
                     headers={"authorization": "Bearer another-key"}).status_code == 404
    deleted = httpx.delete(f"{client.base_url}responses/{first.id}", timeout=10,
                           headers={"authorization": "Bearer client-key"})
    assert deleted.json() == {"id": first.id, "object": "response.deleted", "deleted": True}
    with pytest.raises(openai.NotFoundError):
        client.responses.retrieve(first.id)
    with pytest.raises(openai.NotFoundError) as caught:
        client.responses.create(model="up/gpt-test", input="x", previous_response_id=first.id)
    assert caught.value.body["param"] == "previous_response_id"  # type: ignore[index]


def test_streamed_answers_are_stored_unless_store_is_false(client: openai.OpenAI) -> None:
    with client.responses.stream(model="test/echo", input="kept") as stream:
        kept = stream.get_final_response()
    assert client.responses.retrieve(kept.id).output_text == "kept"
    unkept = client.responses.create(model="test/echo", input="not kept", store=False)
    assert unkept.store is False
    with pytest.raises(openai.NotFoundError):
        client.responses.retrieve(unkept.id)


# ----------------------------------------------------------------------------- errors


@pytest.mark.parametrize(("body", "param", "words"), [
    ({"model": "test/echo"}, "input", "field required"),
    ({"model": "test/echo", "input": [{"type": "web_search_call", "id": "ws_1"}]}, "input[0].type", "hosted"),
    ({"model": "test/echo", "input": [{"role": "user", "content": [{"type": "input_file", "file_id": "f"}]}]},
     "input[0].content[0].type", "input_file"),
    ({"model": "test/echo", "input": [{"role": "user", "content": [{"type": "input_image", "file_id": "f"}]}]},
     "input[0].content[0].image_url", "file ids"),
    ({"model": "test/echo", "input": "x", "temperature": 3}, "temperature", "less than or equal to 2"),
    ({"model": "test/echo", "input": "x", "include": ["everything"]}, "include[0]", "unknown value"),
    ({"model": "test/echo", "input": "x", "tools": [WEATHER], "tool_choice": {"type": "function", "name": "nope"}},
     "tool_choice", "unknown function tool"),
    ({"model": "test/echo", "input": "x", "text": {"format": {"type": "json_schema", "name": "a"}}},
     "text.format.schema", "schema is required"),
    ({"model": "test/echo", "input": "x", "metadata": {str(i): "v" for i in range(17)}}, "metadata", "at most 16"),
    ({"model": "test/echo", "input": "x", "background": True, "stream": True}, "stream", "cannot be streamed"),
    ({"model": "test/echo", "input": [{"type": "function_call", "call_id": "c", "name": "f"}]},
     "input[0].arguments", "field required"),
    ({"model": "test/echo", "input": "x", "tools": [WEATHER, WEATHER]}, "tools[1]", "used twice"),
    ({"model": "test/echo", "input": []}, "input", "at least one item"),
])
def test_bad_requests_are_400s_in_openai_shape(gateway: ServerThread, body: dict[str, Any], param: str,
                                               words: str) -> None:
    response = httpx.post(f"{gateway.url}/v1/responses", json=body, timeout=10)
    assert response.status_code == 400, response.text
    error = response.json()["error"]
    assert set(error) == {"message", "type", "param", "code"}
    assert error["type"] == "invalid_request_error"
    assert error["param"] == param
    assert words in error["message"]


def test_upstream_errors_keep_their_status(client: openai.OpenAI) -> None:
    with pytest.raises(openai.RateLimitError) as caught:
        client.responses.create(model="up/gpt-error-429", input="x")
    assert caught.value.body["code"] == "fake_429"  # type: ignore[index]
    with pytest.raises(openai.NotFoundError):
        client.responses.create(model="up/no-such-model", input="x")


def test_failure_mid_stream_is_an_error_event_then_response_failed(gateway: ServerThread,
                                                                   client: openai.OpenAI) -> None:
    events = raw_events(gateway, {"model": "up/gpt-midstream-error", "input": "x"})
    name, data = events[-1]
    assert name == "response.failed"
    assert data["response"]["status"] == "failed"
    assert data["response"]["error"]["code"] == "server_error"
    assert "upstream exploded" in data["response"]["error"]["message"]
    error_name, error = events[-2]
    assert error_name == "error"
    assert error == {"type": "error", "code": "server_error", "message": data["response"]["error"]["message"],
                     "param": None, "sequence_number": data["sequence_number"] - 1}
    streamed = list(client.responses.create(model="up/gpt-midstream-error", input="x", stream=True))
    assert [e.type for e in streamed[-2:]] == ["error", "response.failed"]
    assert streamed[-2].code == "server_error"  # type: ignore[union-attr]
    with client.responses.stream(model="up/gpt-midstream-error", input="x") as stream:
        assert [e.type for e in stream][-2:] == ["error", "response.failed"]
    with pytest.raises(openai.InternalServerError):
        client.responses.create(model="up/gpt-midstream-error", input="x")


def test_truncation_auto_drops_the_oldest_turns(client: openai.OpenAI, fake: FakeOpenAI) -> None:
    turns: list[Any] = []
    for n in range(4):
        turns += [{"role": "user", "content": f"question {n}"}, {"role": "assistant", "content": f"answer {n}"}]
    turns.append({"role": "user", "content": "last question"})
    with pytest.raises(openai.BadRequestError) as caught:
        client.responses.create(model="up/gpt-short", input=turns)
    assert caught.value.code == "context_length_exceeded"
    answer = client.responses.create(model="up/gpt-short", input=turns, instructions="rules", truncation="auto")
    assert answer.output_text == "You said: last question"
    assert answer.truncation == "auto"
    sent = fake.last().body["messages"]
    assert [m["content"] for m in sent] == ["rules", "last question"]


# ------------------------------------------------------------------------------ input tokens


def test_input_tokens_are_exact_where_the_backend_counts(client: openai.OpenAI) -> None:
    raw = client.responses.input_tokens.with_raw_response.count(
        model="test/echo", input="one two three", instructions="Be brief.")
    assert raw.headers["x-dragoman-token-count"] == "exact"
    count = raw.parse()
    assert count.object == "response.input_tokens"
    assert count.input_tokens == 5  # echo counts words: instructions and input
    first = client.responses.create(model="test/echo", input="alpha beta")
    chained = client.responses.input_tokens.count(model="test/echo", input="gamma", previous_response_id=first.id)
    assert chained.input_tokens == 5  # the stored turn (asked and answered) and the new input


def test_input_tokens_are_estimated_elsewhere_and_errors_are_openai_shaped(client: openai.OpenAI) -> None:
    raw = client.responses.input_tokens.with_raw_response.count(model="up/gpt-test", input="hello " * 40)
    assert raw.headers["x-dragoman-token-count"] == "estimated"
    assert raw.parse().input_tokens > 0
    with pytest.raises(openai.BadRequestError) as caught:
        client.responses.input_tokens.count(model="test/echo")
    assert caught.value.body["param"] == "input"  # type: ignore[index]
    with pytest.raises(openai.NotFoundError):
        client.responses.input_tokens.count(model="test/echo", input="x", previous_response_id="resp_missing")


# ------------------------------------------------------------------------------- input items


def test_input_items_of_a_stored_response_page_like_the_api(client: openai.OpenAI, gateway: ServerThread) -> None:
    first = client.responses.create(model="test/echo", input="first question")
    turn = [{"role": "user", "content": "second question"},
            {"type": "message", "role": "assistant", "content": [{"type": "output_text", "text": "noted"}]},
            {"type": "function_call", "call_id": "call_1", "name": "get_weather", "arguments": "{}"},
            {"type": "function_call_output", "call_id": "call_1", "output": "sunny"}]
    second = client.responses.create(model="test/echo", input=turn, previous_response_id=first.id, tools=[WEATHER])

    [only] = client.responses.input_items.list(first.id).data
    assert only.type == "message" and only.role == "user" and only.id.startswith("msg_")
    assert [c.text for c in only.content] == ["first question"]  # type: ignore[union-attr]

    listed = client.responses.input_items.list(second.id, order="asc")
    assert [item.type for item in listed.data] == ["message", "message", "function_call", "function_call_output"]
    assert listed.data[2].call_id == "call_1" and listed.data[3].output == "sunny"  # type: ignore[union-attr]
    newest_first = client.responses.input_items.list(second.id)  # desc by default
    assert [item.id for item in newest_first.data] == [item.id for item in reversed(listed.data)]

    page = client.responses.input_items.list(second.id, order="asc", limit=3)
    assert page.has_more and len(page.data) == 3
    assert [item.id for item in page.data] == [item.id for item in listed.data[:3]]
    rest = client.responses.input_items.list(second.id, order="asc", limit=3, after=page.data[-1].id)
    assert [item.id for item in rest.data] == [listed.data[3].id] and not rest.has_more
    assert [item.id for item in client.responses.input_items.list(second.id, order="asc", limit=2)] == \
        [item.id for item in listed.data]  # the SDK's auto-paging follows last_id

    body = httpx.get(f"{gateway.url}/v1/responses/{second.id}/input_items?limit=1",
                     headers={"authorization": "Bearer client-key"}, timeout=10).json()
    assert body["object"] == "list" and body["has_more"] is True
    assert body["first_id"] == body["last_id"] == listed.data[3].id

    with client.responses.stream(model="test/echo", input=[{"role": "user", "content": "streamed"}]) as stream:
        streamed_id = stream.get_final_response().id
    [item] = client.responses.input_items.list(streamed_id).data
    assert [c.text for c in item.content] == ["streamed"]  # type: ignore[union-attr]

    with pytest.raises(openai.BadRequestError):
        client.responses.input_items.list(second.id, limit=101)
    with pytest.raises(openai.NotFoundError):  # another key sees nothing
        openai.OpenAI(base_url=f"{gateway.url}/v1", api_key="other-key", max_retries=0).responses.input_items.list(
            second.id)
    client.responses.delete(second.id)
    with pytest.raises(openai.NotFoundError):
        client.responses.input_items.list(second.id)
