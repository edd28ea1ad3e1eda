"""The worker-thread side of the embedded runtime: load a GGUF, build the prompt, generate.

Everything here blocks and runs in a worker thread, never on the event loop (generation and
embeddings on the backend's one compute thread, see ``compute``). Generation reports
through an ``emit`` callback (the backend forwards it with ``call_soon_threadsafe``) and checks
a ``threading.Event`` after every sampled token, so a client that goes away stops the model
within one token.
"""

from __future__ import annotations

import codecs
import contextlib
import functools
import logging
import os
import threading
import time
from collections.abc import Callable, Generator, Iterator
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import orjson

from dragoman.backends.llamacpp.models import unavailable
from dragoman.backends.llamacpp.templates import ChatTemplate, ParsedCall, ToolCallExtractor
from dragoman.core.stops import StopMatcher
from dragoman.core.types import ChatRequest, FinishReason, ResponseFormat, Sampling
from dragoman.errors import ErrorKind, GatewayError

if TYPE_CHECKING:
    from pathlib import Path

    from llama_cpp import Llama
    from llama_cpp.llama_grammar import LlamaGrammar

log = logging.getLogger("dragoman.llamacpp")

# llama.cpp server's sampling defaults, used for whatever the request leaves unset.
DEFAULT_TEMPERATURE = 0.8
DEFAULT_TOP_K = 40
DEFAULT_TOP_P = 0.95
DEFAULT_MIN_P = 0.05
DEFAULT_REPEAT_PENALTY = 1.0

_SCHEMA_ERRORS = (AssertionError, ValueError, KeyError, TypeError, IndexError, RecursionError)


@functools.cache
def cpu_has_amx() -> bool:
    """Whether this CPU advertises Intel AMX tiles (Linux reports it in ``/proc/cpuinfo``)."""
    try:
        with open("/proc/cpuinfo", encoding="ascii", errors="replace") as cpuinfo:
            for line in cpuinfo:
                if line.startswith("flags"):
                    return "amx_tile" in line.split()
    except OSError:
        pass
    return False


_PARAMS_LOCK = threading.Lock()


@contextlib.contextmanager
def _without_extra_buffers() -> Iterator[None]:
    """``Llama`` loads with ``use_extra_bufts`` off (its constructor has no argument for it).

    llama.cpp's AMX kernels crash in ``ggml_backend_amx_mul_mat`` on Q4_K files, Gemma 3's
    built-in one included (llama.cpp issue 20824, closed unfixed); without extra buffer types the
    weights stay in plain CPU buffers, which work everywhere. The default-params function the
    constructor calls is swapped for the length of the load, under a lock.
    """
    import llama_cpp.llama_cpp as lib

    if not any(field[0] == "use_extra_bufts" for field in lib.llama_model_params._fields_):
        yield  # an older llama-cpp-python: no extra buffer types to turn off
        return
    defaults = lib.llama_model_default_params

    def without_extra() -> Any:
        params = defaults()
        params.use_extra_bufts = False
        return params

    with _PARAMS_LOCK:
        lib.llama_model_default_params = without_extra
        try:
            yield
        finally:
            lib.llama_model_default_params = defaults


def load_llama(model: str, path: Path, *, n_ctx: int, n_threads: int | None, n_batch: int,
               embedding: bool = False, repack_weights: bool | None = None) -> Llama:
    """Load the weights; failures are a 503 naming the model and the file.

    ``repack_weights``: llama.cpp's extra CPU buffer types (weights repacked for AMX or wider
    SIMD kernels); None means on unless the CPU has AMX (see ``_without_extra_buffers``)."""
    try:
        from llama_cpp import LLAMA_POOLING_TYPE_MEAN, Llama
    except ImportError as exc:
        raise unavailable(model, f"local models need the package llama-cpp-python ({exc})") from exc
    threads = n_threads or os.cpu_count() or 1
    kwargs: dict[str, Any] = {}
    if embedding:
        # One vector per input (Gemma's default pooling is none: a vector per token), and the
        # whole input in one batch, which pooled embeddings need.
        kwargs = {"embedding": True, "pooling_type": LLAMA_POOLING_TYPE_MEAN, "n_ubatch": n_ctx}
        n_batch = n_ctx
    if repack_weights is None:
        repack_weights = not cpu_has_amx()
    started = time.perf_counter()
    try:
        with contextlib.nullcontext() if repack_weights else _without_extra_buffers():
            llama = Llama(model_path=str(path), n_ctx=n_ctx, n_batch=min(n_batch, n_ctx), n_threads=threads,
                          n_threads_batch=threads, verbose=False, **kwargs)
    except (ValueError, RuntimeError, OSError) as exc:
        raise unavailable(model, f"llama.cpp could not load {path}: {exc}") from exc
    log.info("loaded %s%s in %.2fs%s", model, " (embeddings)" if embedding else "", time.perf_counter() - started,
             "" if repack_weights else " (weights not repacked)")
    return llama


@dataclass(slots=True)
class Runtime:
    """A loaded model and what generation needs from it."""

    model: str
    llama: Llama
    n_ctx: int
    template: ChatTemplate | None
    tools: bool  # the template renders tools and emits Hermes <tool_call> blocks
    default_max_tokens: int | None = None  # answer length when the client sets none (None: the room left)

    def token_text(self, token: int) -> str:
        return "" if token < 0 else str(self.llama._model.token_get_text(token))

    def tokenize(self, text: str, *, add_bos: bool, special: bool) -> list[int]:
        return list(self.llama.tokenize(text.encode("utf-8"), add_bos=add_bos, special=special))



# ------------------------------------------------------------------------------------ prompts


@dataclass(slots=True)
class Prepared:
    tokens: list[int]
    budget: int  # completion tokens allowed (max_tokens, or what the context has left)
    grammar: LlamaGrammar | None = None
    cache_prompt: bool = True  # reuse the KV cache of the previous request's common prefix
    parse_tools: bool = False
    stops: list[str] = field(default_factory=list)
    logprobs: int | None = None  # report each token's log probability with this many alternatives


def prompt_tokens(runtime: Runtime, request: ChatRequest) -> list[int]:
    """The exact tokens the model will read: the raw prompt, or the rendered chat template, after
    the ``context`` token ids an Ollama client sent back (then without a second BOS)."""
    tokens = _request_tokens(runtime, request)
    context = request.options.get("context")
    if not context:
        return tokens
    _check_context(runtime, context)
    bos = runtime.llama.token_bos()
    return [*context, *(tokens[1:] if tokens and tokens[0] == bos else tokens)]


def _check_context(runtime: Runtime, context: list[int]) -> None:
    """Every id must be one of the model's tokens: llama.cpp does not check them itself."""
    check_token_ids(runtime, context, "context", "; send back the context this model returned")


def check_token_ids(runtime: Runtime, tokens: list[int], param: str, advice: str = "") -> None:
    """A 400 naming the first id the model does not have (llama.cpp would read past its vocabulary)."""
    size = runtime.llama.n_vocab()
    for token in tokens:
        if not 0 <= token < size:
            raise GatewayError(ErrorKind.INVALID_REQUEST,
                               f"{param} holds token id {token}, which model {runtime.model!r} does not have "
                               f"(its token ids are 0 to {size - 1}){advice}", param=param)


def tokenize_request(runtime: Runtime, request: ChatRequest, *, add_special: bool) -> list[int]:
    """``POST /tokenize``: a raw prompt with the model's BOS when ``add_special`` (and the model
    adds one), or exactly the tokens a chat request's messages become."""
    if request.prompt is not None:
        add_bos = add_special and bool(runtime.llama._model.add_bos_token())
        return runtime.tokenize(request.prompt, add_bos=add_bos, special=True)
    return prompt_tokens(runtime, request)


def detokenize(runtime: Runtime, tokens: list[int]) -> str:
    check_token_ids(runtime, tokens, "tokens")
    return bytes(runtime.llama.detokenize(tokens)).decode("utf-8", errors="replace")


def _request_tokens(runtime: Runtime, request: ChatRequest) -> list[int]:
    llama = runtime.llama
    default_bos = bool(llama._model.add_bos_token())
    if request.prompt is not None:
        if request.suffix is None:
            return runtime.tokenize(request.prompt, add_bos=default_bos, special=True)
        pre, suf, mid = llama._model.token_prefix(), llama._model.token_suffix(), llama._model.token_middle()
        if min(pre, suf, mid) < 0:
            raise GatewayError(ErrorKind.INVALID_REQUEST,
                               f"model {runtime.model!r} does not support fill-in-the-middle (suffix)",
                               param="suffix")
        bos = [llama.token_bos()] if default_bos and llama.token_bos() >= 0 else []
        prefix = runtime.tokenize(request.prompt, add_bos=False, special=False)
        suffix = runtime.tokenize(request.suffix, add_bos=False, special=False)
        return [*bos, pre, *prefix, suf, *suffix, mid]
    if runtime.template is None:
        raise GatewayError(ErrorKind.INVALID_REQUEST,
                           f"model {runtime.model!r} has no chat template (its GGUF file carries none and its "
                           "architecture has no known one): set 'chat_template' in its config or send a raw "
                           "prompt", param="model")
    bos_text = runtime.token_text(llama.token_bos())
    text = runtime.template.render(request, bos_token=bos_text, eos_token=runtime.token_text(llama.token_eos()),
                                   with_tools=bool(request.tools) and _tools_wanted(request))
    add_bos = default_bos and not (bos_text and text.startswith(bos_text))
    return runtime.tokenize(text, add_bos=add_bos, special=True)


def _tools_wanted(request: ChatRequest) -> bool:
    return request.tool_choice is None or request.tool_choice.mode != "none"


def grammar_for(runtime: Runtime, response_format: ResponseFormat | None) -> LlamaGrammar | None:
    """A llama.cpp grammar that forces JSON (or JSON matching the schema)."""
    if response_format is None or response_format.type == "text":
        return None
    from llama_cpp.llama_grammar import JSON_GBNF, LlamaGrammar

    if response_format.type == "json_schema" and response_format.schema:
        try:
            grammar = LlamaGrammar.from_json_schema(orjson.dumps(response_format.schema).decode(), verbose=False)
        except _SCHEMA_ERRORS as exc:
            raise GatewayError(ErrorKind.INVALID_REQUEST, f"unsupported JSON schema: {exc}",
                               param="response_format") from exc
    else:
        grammar = LlamaGrammar.from_string(JSON_GBNF, verbose=False)
    _check_grammar(runtime, grammar, "the JSON schema could not be turned into a grammar", "response_format")
    return grammar


def gbnf_grammar(runtime: Runtime, text: str) -> LlamaGrammar:
    """A client's own GBNF ``grammar`` (llama.cpp server's field), checked before generation."""
    from llama_cpp.llama_grammar import LlamaGrammar

    try:
        grammar = LlamaGrammar.from_string(text, verbose=False)
    except (ValueError, RuntimeError) as exc:
        raise GatewayError(ErrorKind.INVALID_REQUEST, f"grammar is not valid GBNF: {exc}", param="grammar") from exc
    _check_grammar(runtime, grammar, "grammar is not valid GBNF (llama.cpp could not parse it; it needs a "
                   "'root' rule)", "grammar")
    return grammar


def _check_grammar(runtime: Runtime, grammar: LlamaGrammar, problem: str, param: str) -> None:
    """llama.cpp returns NULL for a grammar it cannot parse; adding NULL to a sampler chain crashes."""
    import llama_cpp

    probe = llama_cpp.llama_sampler_init_grammar(runtime.llama._model.vocab, grammar._grammar.encode(),
                                                 grammar._root.encode())
    if not probe:
        raise GatewayError(ErrorKind.INVALID_REQUEST, problem, param=param)
    llama_cpp.llama_sampler_free(probe)


def prepare(runtime: Runtime, request: ChatRequest, *, cache_prompt: bool = True) -> Prepared:
    tokens = prompt_tokens(runtime, request)
    if len(tokens) >= runtime.n_ctx:
        raise GatewayError(ErrorKind.CONTEXT_TOO_LONG,
                           f"prompt is {len(tokens)} tokens, the context window of {runtime.model} is "
                           f"{runtime.n_ctx}", param="messages", code="context_length_exceeded")
    room = runtime.n_ctx - len(tokens)
    max_tokens = request.sampling.max_tokens
    if max_tokens is None:
        max_tokens = runtime.default_max_tokens
    budget = room if max_tokens is None else max(0, min(max_tokens, room))
    cache = request.options.get("cache_prompt", cache_prompt)
    grammar = (gbnf_grammar(runtime, request.sampling.grammar) if request.sampling.grammar is not None
               else grammar_for(runtime, request.response_format))
    if request.sampling.logit_bias:
        check_token_ids(runtime, list(request.sampling.logit_bias), "logit_bias")
    return Prepared(tokens=tokens, budget=budget, grammar=grammar,
                    cache_prompt=cache if isinstance(cache, bool) else cache_prompt,
                    parse_tools=runtime.tools and bool(request.tools) and _tools_wanted(request),
                    stops=[s for s in request.sampling.stop if s], logprobs=request.logprobs)


# --------------------------------------------------------------------------------- generation


@dataclass(slots=True)
class Started:
    prompt_tokens: int


@dataclass(slots=True)
class Finished:
    reason: FinishReason
    completion_tokens: int
    stop_sequence: str | None = None
    context: list[int] = field(default_factory=list)  # prompt and answer token ids (``MessageEnd.context``)


TokenLogprob = dict[str, Any]  # one ``Logprobs`` entry (OpenAI's chat shape)
Output = Started | str | ParsedCall | Finished | TokenLogprob | BaseException
Emit = Callable[[Output], None]


def sampling_kwargs(sampling: Sampling) -> dict[str, Any]:
    def pick(value: float | None, default: float) -> float:
        return default if value is None else value

    extras = {key: value for key, value in (("typical_p", sampling.typical_p), ("mirostat_mode", sampling.mirostat),
                                            ("mirostat_tau", sampling.mirostat_tau),
                                            ("mirostat_eta", sampling.mirostat_eta)) if value is not None}
    if sampling.logit_bias:
        extras["logits_processor"] = _biased(sampling.logit_bias)
    return {
        "temp": pick(sampling.temperature, DEFAULT_TEMPERATURE),
        "top_k": int(pick(sampling.top_k, DEFAULT_TOP_K)),
        "top_p": pick(sampling.top_p, DEFAULT_TOP_P),
        "min_p": pick(sampling.min_p, DEFAULT_MIN_P),
        "repeat_penalty": pick(sampling.repeat_penalty, DEFAULT_REPEAT_PENALTY),
        "presence_penalty": pick(sampling.presence_penalty, 0.0),
        "frequency_penalty": pick(sampling.frequency_penalty, 0.0),
        **extras,
    }


def _biased(bias: dict[int, float]) -> Any:
    """A llama-cpp-python logits processor adding ``bias`` to the logits (OpenAI's ``logit_bias``;
    -100 and 100 all but ban and force a token)."""
    from llama_cpp import LogitsProcessorList

    ids = list(bias)
    values = [bias[i] for i in ids]

    def apply(input_ids: Any, scores: Any) -> Any:
        scores[ids] += values
        return scores

    return LogitsProcessorList([apply])


def generate(runtime: Runtime, prepared: Prepared, sampling: Sampling, emit: Emit,
             cancel: threading.Event) -> Generator[None, None, None]:
    """Generate until end of turn, a stop sequence, the budget or ``cancel``; emit as it goes.
    Yields after each token, so the compute thread can give other jobs a turn."""
    import llama_cpp

    llama = runtime.llama
    llama.set_seed(sampling.seed if sampling.seed is not None else llama_cpp.LLAMA_DEFAULT_SEED)
    emit(Started(len(prepared.tokens)))
    decoder = codecs.getincrementaldecoder("utf-8")("replace")
    stops = StopMatcher(prepared.stops)
    tools = ToolCallExtractor() if prepared.parse_tools else None

    def send(text: str) -> None:
        if not text:
            return
        if tools is None:
            emit(text)
            return
        for piece in tools.feed(text):
            emit(piece)

    if not prepared.cache_prompt:
        # A prefix reused from the KV cache is evaluated in a different batch shape than a
        # fresh prompt, which moves logits slightly; without reuse, equal requests at
        # temperature 0 (or with one seed) give equal answers.
        llama.reset()  # type: ignore[no-untyped-call]
    is_eog, vocab = llama_cpp.llama_vocab_is_eog, llama._model.vocab
    completion = 0
    reason = FinishReason.LENGTH
    matched: str | None = None
    answer: list[int] = []  # the sampled token ids, an end-of-generation token included
    kept: list[str] = []  # the answer's text up to a stop sequence
    try:
        if prepared.budget > 0:
            for token in llama.generate(prepared.tokens, grammar=prepared.grammar, **sampling_kwargs(sampling)):
                if cancel.is_set():
                    log.info("generation of %s cancelled after %d tokens", runtime.model, completion)
                    return
                answer.append(token)
                if is_eog(vocab, token):
                    reason = FinishReason.STOP
                    break
                completion += 1
                raw = llama.detokenize([token])
                if prepared.logprobs is not None:
                    emit(token_logprob(runtime, token, raw, prepared.logprobs))
                text, matched = stops.feed(decoder.decode(raw))
                kept.append(text)
                send(text)
                if matched is not None:
                    reason = FinishReason.STOP_SEQUENCE
                    break
                if completion >= prepared.budget:
                    break
                yield
    except (RuntimeError, ValueError) as exc:
        llama.reset()  # type: ignore[no-untyped-call]  # the KV cache may be half-written
        raise GatewayError(ErrorKind.UPSTREAM_ERROR, f"model {runtime.model!r} failed while generating: {exc}"
                           ) from exc
    if matched is None:
        text, matched = stops.feed(decoder.decode(b"", final=True))
        kept.append(text)
        send(text)
        if matched is not None:
            reason = FinishReason.STOP_SEQUENCE
        else:
            send(stops.flush())
    if tools is not None:
        for piece in tools.flush():
            emit(piece)
    if matched is not None:  # the context ends where the answer did, before the stop sequence
        answer = runtime.tokenize("".join(kept), add_bos=False, special=False)
    emit(Finished(reason, completion, matched, [*prepared.tokens, *answer]))


def token_logprob(runtime: Runtime, token: int, piece: bytes, top: int) -> TokenLogprob:
    """The sampled token's log probability under the model (before temperature and other
    samplers, as OpenAI and vLLM report it), with the ``top`` likeliest tokens. Read from the
    logits llama.cpp computed for this position, which stay in place until the next decode."""
    import llama_cpp
    import numpy as np

    llama = runtime.llama
    size = llama.n_vocab()
    logits = np.ctypeslib.as_array(llama_cpp.llama_get_logits_ith(llama._ctx.ctx, -1), shape=(size,))
    peak = float(logits.max())
    log_total = peak + float(np.log(np.exp(logits - peak, dtype=np.float64).sum()))

    def entry(token_id: int, raw: bytes) -> dict[str, Any]:
        return {"token": raw.decode("utf-8", errors="replace"), "logprob": float(logits[token_id]) - log_total,
                "bytes": list(raw)}

    chosen = entry(token, piece)
    alternatives: list[dict[str, Any]] = []
    if top > 0:
        best = np.argpartition(logits, -top)[-top:]
        best = best[np.argsort(-logits[best])]
        alternatives = [entry(int(t), llama.detokenize([int(t)])) for t in best]
    return {**chosen, "top_logprobs": alternatives}


def embed(runtime: Runtime, inputs: list[str]) -> tuple[list[list[float]], int]:
    """L2-normalised mean-pooled vectors and the prompt tokens they took."""
    llama = runtime.llama
    for index, text in enumerate(inputs):
        count = len(runtime.tokenize(text, add_bos=True, special=False))
        if count > runtime.n_ctx:
            raise GatewayError(ErrorKind.CONTEXT_TOO_LONG,
                               f"input {index} is {count} tokens, the context window of {runtime.model} is "
                               f"{runtime.n_ctx}", param="input")
    try:
        vectors, total = llama.embed(inputs, normalize=True, truncate=False, return_count=True)
    except (RuntimeError, ValueError) as exc:
        raise GatewayError(ErrorKind.UPSTREAM_ERROR, f"model {runtime.model!r} failed to embed: {exc}") from exc
    return [list(map(float, vector)) for vector in vectors], int(total)
