"""The OpenAI API's shapes: requests (validated by pydantic, strictly: a field of the wrong type is
a 400, never coerced), responses, streamed chunks and the error object.

Fields JaneLM adds: `top_k` and `repetition_penalty` (as `janelm sample` has them), and for chat
`as` and `with` (the characters, as `janelm chat --as/--with`; a message's `name` names its speaker).
"""

from __future__ import annotations

import time
import uuid
from typing import Any, Literal, Union

from pydantic import BaseModel, ConfigDict, Field, field_validator

MAX_STOPS = 4  # as OpenAI's API
MAX_STOP_CHARS = 200


class Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", strict=True, populate_by_name=True)


class StreamOptions(Strict):
    include_usage: bool = True  # usage comes in a last chunk whatever this says


class Sampling(Strict):
    """What both endpoints take. None means the server's default."""

    model: str | None = None  # one model serves every name
    max_tokens: int | None = Field(None, ge=0)
    # JSON's Infinity and NaN refused: the draw's arithmetic needs numbers (SamplingOptions.validate).
    temperature: float | None = Field(None, ge=0, allow_inf_nan=False)
    top_p: float | None = Field(None, gt=0, le=1, allow_inf_nan=False)
    top_k: int | None = Field(None, ge=0)
    repetition_penalty: float | None = Field(None, gt=0, allow_inf_nan=False)
    frequency_penalty: float | None = None  # accepted at 0 (what clients send), else refused
    presence_penalty: float | None = None
    n: int = Field(1, ge=1)
    stop: Union[str, list[str], None] = None
    seed: int | None = None
    stream: bool = False
    stream_options: StreamOptions | None = None
    user: str | None = None

    @field_validator("frequency_penalty", "presence_penalty")
    @classmethod
    def _only_zero(cls, value: float | None) -> float | None:
        if value:
            raise ValueError("is not supported by JaneLM (only 0): use repetition_penalty")
        return value

    @field_validator("stop")
    @classmethod
    def _stops(cls, value: str | list[str] | None) -> str | list[str] | None:
        stops = [value] if isinstance(value, str) else value or []
        if len(stops) > MAX_STOPS or any(len(s) > MAX_STOP_CHARS for s in stops):
            raise ValueError(f"at most {MAX_STOPS} stop strings of at most {MAX_STOP_CHARS} characters")
        return value

    def stops(self) -> list[str]:
        return [self.stop] if isinstance(self.stop, str) else list(self.stop or [])


class CompletionRequest(Sampling):
    prompt: Union[str, list[str], list[int], list[list[int]]] = ""
    echo: bool = False


class TextPart(Strict):
    type: Literal["text"]
    text: str


class Message(Strict):
    role: Literal["system", "developer", "user", "assistant"]
    content: Union[str, list[TextPart]]
    name: str | None = Field(None, min_length=1, max_length=100)

    def text(self) -> str:
        return self.content if isinstance(self.content, str) else "".join(part.text for part in self.content)


class ChatRequest(Sampling):
    messages: list[Message] = Field(min_length=1)
    max_completion_tokens: int | None = Field(None, ge=0)  # newer clients' name for max_tokens
    as_: str | None = Field(None, alias="as", min_length=1, max_length=100)
    with_: str | None = Field(None, alias="with", min_length=1, max_length=100)


def error_body(message: str, kind: str = "invalid_request_error", param: str | None = None,
               code: str | None = None) -> dict[str, Any]:
    return {"error": {"message": message, "type": kind, "param": param, "code": code}}


def usage(prompt_tokens: int, completion_tokens: int) -> dict[str, int]:
    return {"prompt_tokens": prompt_tokens, "completion_tokens": completion_tokens,
            "total_tokens": prompt_tokens + completion_tokens}


class Reply:
    """The id, time and model of one response, and the shapes of its parts."""

    def __init__(self, chat: bool, model: str):
        self.chat, self.model = chat, model
        self.id = f"{'chatcmpl' if chat else 'cmpl'}-{uuid.uuid4().hex}"
        self.created = int(time.time())

    def _head(self, object_name: str) -> dict[str, Any]:
        return {"id": self.id, "object": object_name, "created": self.created, "model": self.model}

    def whole(self, texts: list[str], finishes: list[str], counts: dict[str, int]) -> dict[str, Any]:
        if self.chat:
            choices = [{"index": i, "message": {"role": "assistant", "content": text}, "logprobs": None,
                        "finish_reason": finish} for i, (text, finish) in enumerate(zip(texts, finishes))]
            return {**self._head("chat.completion"), "choices": choices, "usage": counts}
        choices = [{"index": i, "text": text, "logprobs": None, "finish_reason": finish}
                   for i, (text, finish) in enumerate(zip(texts, finishes))]
        return {**self._head("text_completion"), "choices": choices, "usage": counts}

    def chunk(self, index: int, text: str | None, finish: str | None = None, role: bool = False) -> dict[str, Any]:
        if self.chat:
            delta = ({"role": "assistant"} if role else {}) | ({"content": text} if text is not None else {})
            choice = {"index": index, "delta": delta, "logprobs": None, "finish_reason": finish}
            return {**self._head("chat.completion.chunk"), "choices": [choice]}
        choice = {"index": index, "text": text or "", "logprobs": None, "finish_reason": finish}
        return {**self._head("text_completion"), "choices": [choice]}

    def usage_chunk(self, counts: dict[str, int]) -> dict[str, Any]:
        return {**self._head("chat.completion.chunk" if self.chat else "text_completion"), "choices": [], "usage": counts}
