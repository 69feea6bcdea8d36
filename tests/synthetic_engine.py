"""A deterministic engine for ICM tests: it believes a hidden labelling.

For a few-shot prompt it reads the demonstrations and the query back from the
segments, and answers with log-odds toward the hidden label of the query: a
prior plus a term that grows with the share of demonstrations agreeing with the
hidden labelling. The hidden labelling therefore has the highest mutual
predictability, and a labelling far from it is less sure of itself.
"""

import re
from dataclasses import dataclass, field

from persona_platform.resources.llm.engine import Engine, EngineUsage

LINE = re.compile(
    r'Q: "(?P<q>.*)" \| Op: "(?P<o>.*)" \| Is Most Popular Opinion in .*?:(?P<label> True| False)?\n?$'
)


@dataclass
class HiddenLabelEngine(Engine):
    hidden: dict = field(default_factory=dict)  # (question, option) -> 0/1
    prior: float = 2.5
    strength: float = 4.0
    usage: EngineUsage = field(default_factory=EngineUsage)

    def _parse(self, segment):
        match = LINE.search(segment.split("---\n")[-1])
        assert match, segment
        label = match.group("label")
        return (match.group("q"), match.group("o")), (None if label is None else int(label == " True"))

    def score(self, requests, reuse_prefix=None):
        out = []
        for request in requests:
            segments = request.prompt
            demos = [self._parse(s) for s in segments[1:-1]]
            query, _ = self._parse(segments[-1])
            agree = sum(self.hidden[k] == label for k, label in demos) / len(demos) if demos else 0.5
            sign = 1.0 if self.hidden[query] == 1 else -1.0
            margin = sign * (self.prior + self.strength * (agree - 0.5))
            self.usage.forward_passes += 1
            self.usage.requests += 1
            out.append([margin / 2, -margin / 2])
        return out

    def generate(self, requests):
        raise NotImplementedError

    def loglikelihood(self, requests):
        raise NotImplementedError
