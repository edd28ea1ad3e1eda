"""The Go template subset created models render with (dragoman/gateway/gotemplate*.py), on
Ollama's own templates and on each construct; what it cannot render is refused, never skipped."""

from __future__ import annotations

from typing import Any

import pytest

from dragoman.gateway.gotemplate import FUNCTION_NAMES, TemplateError, compile_template
from dragoman.gateway.gotemplate_render import FUNCTIONS, render

# Ollama's llama3 template (the older kind: .System, .Prompt, .Response).
LLAMA3 = """{{ if .System }}<|start_header_id|>system<|end_header_id|>

{{ .System }}<|eot_id|>{{ end }}{{ if .Prompt }}<|start_header_id|>user<|end_header_id|>

{{ .Prompt }}<|eot_id|>{{ end }}<|start_header_id|>assistant<|end_header_id|>

{{ .Response }}<|eot_id|>"""

# Ollama's qwen2.5 template, shortened (its tool parts kept: they must compile, and are skipped
# when there are no tools).
QWEN = """{{- if .Messages }}
{{- if or .System .Tools }}<|im_start|>system
{{- if .System }}
{{ .System }}
{{- end }}
{{- if .Tools }}

# Tools
{{- range .Tools }}
{"type": "function", "function": {{ .Function }}}
{{- end }}
{{- end }}<|im_end|>
{{ end }}
{{- range $i, $_ := .Messages }}
{{- $last := eq (len (slice $.Messages $i)) 1 -}}
{{- if eq .Role "user" }}<|im_start|>user
{{ .Content }}<|im_end|>
{{ else if eq .Role "assistant" }}<|im_start|>assistant
{{ if .Content }}{{ .Content }}
{{- else if .ToolCalls }}<tool_call>
{{ range .ToolCalls }}{"name": "{{ .Function.Name }}", "arguments": {{ .Function.Arguments }}}
{{ end }}</tool_call>
{{- end }}{{ if not $last }}<|im_end|>
{{ end }}
{{- end }}
{{- if and (ne .Role "assistant") $last }}<|im_start|>assistant
{{ end }}
{{- end }}
{{- else }}
{{- if .System }}<|im_start|>system
{{ .System }}<|im_end|>
{{ end }}{{ if .Prompt }}<|im_start|>user
{{ .Prompt }}<|im_end|>
{{ end }}<|im_start|>assistant
{{ end }}{{ .Response }}{{ if .Response }}<|im_end|>{{ end }}"""


def run(template: str, **data: Any) -> str:
    return render(compile_template(template), {"Messages": [], "Tools": [], "System": "", "Prompt": "",
                                               "Response": "", **data})


def msg(role: str, content: str) -> dict[str, Any]:
    return {"Role": role, "Content": content, "ToolCalls": []}


def test_ollamas_llama3_template() -> None:
    out = run(LLAMA3, System="Be brief.", Prompt="Hi")
    assert out == ("<|start_header_id|>system<|end_header_id|>\n\nBe brief.<|eot_id|>"
                   "<|start_header_id|>user<|end_header_id|>\n\nHi<|eot_id|>"
                   "<|start_header_id|>assistant<|end_header_id|>\n\n<|eot_id|>")


def test_ollamas_qwen_template_over_messages() -> None:
    messages = [msg("system", "Be brief."), msg("user", "Hi"), msg("assistant", "Hello"), msg("user", "Bye")]
    out = run(QWEN, System="Be brief.", Messages=messages)
    assert out == ("<|im_start|>system\nBe brief.<|im_end|>\n"
                   "<|im_start|>user\nHi<|im_end|>\n"
                   "<|im_start|>assistant\nHello<|im_end|>\n"
                   "<|im_start|>user\nBye<|im_end|>\n"
                   "<|im_start|>assistant\n")


def test_trimming_comments_and_literals() -> None:
    assert run("a  {{- /* gone */ -}}  b") == "ab"
    assert run("{{ \"x\\ty\" }}|{{ `raw\\n` }}|{{ 3 }}|{{ true }}") == "x\ty|raw\\n|3|true"
    assert run("{{-3}}") == "-3"  # a number, not a trim: Go needs a space after the dash


def test_conditions_follow_gos_truth_and_and_or_return_values() -> None:
    assert run("{{ if .System }}s{{ else if .Prompt }}p{{ else }}none{{ end }}", Prompt="x") == "p"
    assert run("{{ if .Messages }}m{{ else }}empty{{ end }}") == "empty"
    assert run("{{ or .System \"default\" }}") == "default"
    assert run("{{ and .Prompt .System }}|", Prompt="p") == "|"
    assert run("{{ with .Prompt }}[{{ . }}]{{ else }}none{{ end }}", Prompt="p") == "[p]"
    assert run('{{ if eq .Prompt "a" "b" }}yes{{ end }}', Prompt="b") == "yes"


def test_range_variables_and_scopes() -> None:
    messages = [msg("user", "a"), msg("assistant", "b"), msg("user", "c")]
    out = run("{{ $n := 0 }}{{ range $i, $m := .Messages }}{{ if eq $m.Role \"user\" }}{{ $n = $i }}{{ end }}"
              "{{ end }}last user: {{ $n }}; {{ range .Messages }}{{ .Content }}{{ else }}none{{ end }}",
              Messages=messages)
    assert out == "last user: 2; abc"
    assert run("{{ range .Messages }}x{{ else }}none{{ end }}") == "none"
    assert run("{{ len .Messages }} {{ len (slice .Messages 1) }} {{ len (slice .Messages 1 2) }}",
               Messages=messages) == "3 2 1"


@pytest.mark.parametrize(("template", "message"), [
    ("{{ .Prompt | printf }}", "pipes"),
    ("{{ define \"x\" }}{{ end }}", "'{{ define }}' is not supported"),
    ("{{ block \"x\" . }}{{ end }}", "'{{ block }}' is not supported"),
    ("{{ html .Prompt }}", "function 'html' is not supported"),
    ("{{ .Nope }}", "field .Nope"),
    ("{{ end }}", "without a block"),
    ("{{ else }}", "outside a block"),
    ("{{ range .Messages }}", "without '{{ end }}'"),
    ("{{ if }}{{ end }}", "missing expression"),
    ("{{ .Prompt", "unclosed action"),
    ("{{ }}", "empty action"),
    ("{{ $x }}", "undefined variable \\$x"),
    ("{{ .Prompt .System }}", "call a function first"),
])
def test_what_is_outside_the_subset_is_refused(template: str, message: str) -> None:
    with pytest.raises(TemplateError, match=message.replace("(", r"\(").replace("|", r"\|")):
        compile_template(template)


def test_failures_on_the_data_are_template_errors() -> None:
    with pytest.raises(TemplateError, match="index"):
        run("{{ index .Messages 5 }}")


def test_the_parser_accepts_exactly_the_functions_the_renderer_runs() -> None:
    assert set(FUNCTIONS) | {"and", "or"} == FUNCTION_NAMES
