"""dragoman: any LLM client to any LLM backend, through one fast gateway."""

__version__ = "0.1.0"
