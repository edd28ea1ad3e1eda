"""The largest sizes a client may ask for where a size drives work (README: "Request limits").

A number in a request must not set how long the gateway, or the local runtime that serves every
client, computes: each of these is checked where the dialect parses the request, with a 400 in
the client's own shape naming the field.
"""

from __future__ import annotations

from dragoman.errors import ErrorKind, GatewayError

# Vector sizes: the largest embedding models make 4096 (text-embedding-3-large: 3072).
MAX_EMBEDDING_DIMENSIONS = 16_384
# Texts in one embeddings request: OpenAI's own limit.
MAX_EMBEDDING_INPUTS = 2048
# Stop sequences, and characters in each: every generated token is checked against all of them.
MAX_STOP_SEQUENCES = 16
MAX_STOP_LENGTH = 256


def check_embedding_inputs(count: int, param: str = "input") -> None:
    if count > MAX_EMBEDDING_INPUTS:
        raise GatewayError(ErrorKind.INVALID_REQUEST,
                           f"{param} holds {count} texts; at most {MAX_EMBEDDING_INPUTS} are allowed per request",
                           param=param)


def check_stop_sequences(stop: list[str], param: str) -> None:
    if len(stop) > MAX_STOP_SEQUENCES:
        raise GatewayError(ErrorKind.INVALID_REQUEST,
                           f"{param} holds {len(stop)} sequences; at most {MAX_STOP_SEQUENCES} are allowed",
                           param=param)
    for index, sequence in enumerate(stop):
        if len(sequence) > MAX_STOP_LENGTH:
            raise GatewayError(ErrorKind.INVALID_REQUEST,
                               f"{param}[{index}] is {len(sequence)} characters long; at most {MAX_STOP_LENGTH} "
                               "are allowed", param=param)
