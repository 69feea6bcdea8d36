"""The engine interface and its request types; no Dagster here.

The Dagster resource (``LLMResource``, the per-process engine cache and usage meters) is in
``persona_platform.resources.llm.resource``; the backends and their settings in
``persona_platform.resources.llm.backends``.
"""

from persona_platform.resources.llm.engine import (
    ChatPrompt,
    Engine,
    EngineCapabilityError,
    EngineUsage,
    GenerateRequest,
    LoglikelihoodRequest,
    ScoreRequest,
    TokenLogprobs,
)

__all__ = [
    "ChatPrompt",
    "Engine",
    "EngineCapabilityError",
    "EngineUsage",
    "GenerateRequest",
    "LoglikelihoodRequest",
    "ScoreRequest",
    "TokenLogprobs",
]
