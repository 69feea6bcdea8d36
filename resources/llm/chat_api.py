"""An OpenAI-compatible chat API, for baselines that need an instruction model elsewhere."""

from __future__ import annotations

import os

from dagster import ConfigurableResource
from pydantic import Field

API_KEY_VARIABLE = "PERSONA_CHAT_API_KEY"


class ChatApiResource(ConfigurableResource):
    """Empty ``base_url`` means no API: callers fall back to the local engine's chat template."""

    base_url: str = Field(default="", description="e.g. http://host:8000/v1 ; empty = use the local engine")
    model: str = Field(default="", description="The model name the API serves.")
    timeout_s: float = Field(default=60.0)
    max_retries: int = Field(default=5, description="Retries on 429, 5xx and timeouts, with exponential backoff.")

    @property
    def enabled(self) -> bool:
        return bool(self.base_url)

    def describe(self) -> str:
        return f"api:{self.model}"

    def complete(self, messages: list[tuple[str, str]], max_tokens: int = 5, temperature: float = 0.0) -> str:
        from openai import OpenAI

        # The key is read here, from the environment only, so it never enters config or metadata.
        client = OpenAI(
            base_url=self.base_url,
            api_key=os.environ.get(API_KEY_VARIABLE) or "not-set",
            timeout=self.timeout_s,
            max_retries=self.max_retries,
        )
        response = client.chat.completions.create(
            model=self.model,
            messages=[{"role": role, "content": content} for role, content in messages],
            max_tokens=max_tokens,
            temperature=temperature,
        )
        return response.choices[0].message.content or ""
