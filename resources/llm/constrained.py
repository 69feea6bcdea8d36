"""JSON-schema constrained decoding for the transformers backend, through xgrammar.

xgrammar (the library vLLM's guided decoding uses) compiles a schema into a
grammar over the tokenizer's vocabulary; its logits processor masks every token
that would leave the grammar, so a generation that ends is valid JSON of the
schema. A generation cut off by ``max_new_tokens`` is not, and is reported as
a failure by whoever parses it.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field


@dataclass
class JsonSchemaGrammars:
    """Compiled grammars for one tokenizer, one per schema text, compiled once."""

    tokenizer: object
    vocab_size: int
    # Every token generation stops at (the model's generation config may name several, e.g. end-of-text
    # and end-of-turn); the grammar allows them only where the JSON is complete. A stop token the grammar
    # did not know would be read as text inside a string and end the reply mid-JSON.
    stop_token_ids: tuple[int, ...]
    _compiler: object = None
    _compiled: dict = field(default_factory=dict)

    def logits_processor(self, schema_text: str, batch_size: int):
        """A fresh processor (it holds per-sequence matcher state) for a batch that shares one schema."""
        import xgrammar
        from xgrammar.contrib.hf import LogitsProcessor

        if self._compiler is None:
            info = xgrammar.TokenizerInfo.from_huggingface(
                self.tokenizer, vocab_size=self.vocab_size, stop_token_ids=list(self.stop_token_ids)
            )
            self._compiler = xgrammar.GrammarCompiler(info)
        grammar = self._compiled.get(schema_text)
        if grammar is None:
            json.loads(schema_text)  # a malformed schema fails here, by name, not inside the compiler
            grammar = self._compiled[schema_text] = self._compiler.compile_json_schema(
                schema_text, any_whitespace=False, strict_mode=True
            )
        return LogitsProcessor([grammar] * batch_size)
