"""Shared pytest setup."""

from __future__ import annotations

import logging
import os

from dragoman.envconfig import VARIABLES

# The SDKs and dragoman read these; make sure a developer's environment cannot redirect the tests.
for name in ("OPENAI_BASE_URL", "OPENAI_API_KEY", "ANTHROPIC_BASE_URL", "ANTHROPIC_API_KEY", "OLLAMA_HOST",
             "OLLAMA_API_KEY", "HTTP_PROXY", "HTTPS_PROXY", "ALL_PROXY", *(v.name for v in VARIABLES)):
    os.environ.pop(name, None)
os.environ["NO_PROXY"] = "127.0.0.1,localhost,::1"

logging.getLogger("dragoman").setLevel(logging.WARNING)
