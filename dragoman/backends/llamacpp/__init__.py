"""The embedded llama.cpp backend (``type: llamacpp``), one concept per module:

* ``backend``: the :class:`LlamaCppBackend` itself (requests, queueing, streaming);
* ``slots``: per-model state (the fair queue, the loaded instances);
* ``engine``: the worker-thread side (load, prompt, generate, embed);
* ``compute``: the one compute thread every generation and embedding runs on;
* ``templates``: chat templates and tool-call parsing;
* ``models``: configuration and where GGUF files come from; ``gguf``: reading a file's header;
* ``pull``: pulling Hugging Face names.

``llama_cpp`` (the ``[local]`` extra) is imported only inside the functions that use it, so
every module here imports without it.
"""

from dragoman.backends.llamacpp.backend import LlamaCppBackend as LlamaCppBackend
