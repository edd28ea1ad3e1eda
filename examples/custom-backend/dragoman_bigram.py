"""A bigram model over a few built-in sentences, served by dragoman in all three dialects."""

from collections import Counter, defaultdict
from collections.abc import Iterator
from itertools import pairwise

from pydantic import BaseModel, ConfigDict

from dragoman.backends.model import ChatRequest, ModelBackend, Output, ToolCall, last_text, tool_results

TEXT = "the cat sat on the mat . the dog sat on the log . the cat saw the dog and the dog ran ."
WORDS = TEXT.split()
FOLLOWERS: defaultdict[str, Counter[str]] = defaultdict(Counter)
for first, second in pairwise(WORDS):
    FOLLOWERS[first][second] += 1


class BigramSettings(BaseModel):
    model_config = ConfigDict(extra="forbid")  # a misspelt key is an error, not a silent default
    words: int = 8  # how many words an answer has


class BigramBackend(ModelBackend):
    Settings = BigramSettings
    settings: BigramSettings
    models = ["bigram"]
    tools = True
    context_length = 4096

    def generate(self, request: ChatRequest) -> Iterator[Output]:
        if request.tools and not tool_results(request):  # offered a tool: call it once, with the last word
            yield ToolCall(request.tools[0].name, {"word": (last_text(request).split() or ["the"])[-1]})
            return
        word = (last_text(request).split() or ["the"])[-1].lower()
        for _ in range(self.settings.words):
            followers = FOLLOWERS.get(word)
            word = followers.most_common(1)[0][0] if followers else "the"
            yield word + " "
