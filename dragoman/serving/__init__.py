"""The HTTP side every dialect shares: the call's context, the body read, the disconnect watch,
JSON and streamed answers, and the one generic handler that serves every generation request."""
