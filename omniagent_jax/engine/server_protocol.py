"""The wire schema of `omniagent serve`: OpenAI chat completions as pydantic models.

Requests are validated strictly (no type coercion, no NaN or infinity, ranges as OpenAI documents
them); a failure becomes a 400 whose `param` is the field's path (`messages.0.content.1.image_url.url`).
Content parts follow OpenAI (`text`, `image_url`, `input_audio`) plus vLLM's `video_url`, and are decoded
by `omniagent_jax.processing.content_codec`, the one definition of the multimodal wire format: a part's
data URL is checked by the codec as the body is validated, its media are decoded by the codec when
the request is prepared. Vendor fields, as vLLM has them: `top_k`, `mm_processor_kwargs`,
`stop_token_ids`, `return_token_ids` (requests); `seed` (the seed used, so any answer can be
reproduced), `token_ids`, `entropy` (responses).
"""

from __future__ import annotations

from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

from omniagent_jax.processing import tokens
from omniagent_jax.processing.content_codec import ROLES, ContentError, decode_data_url, decode_messages
from omniagent_jax.processing.policy_contract import SEED_RANGE

MAX_N = 16  # samples per request
MAX_STOPS = 4  # as OpenAI


class BadRequest(ValueError):
    """A request we refuse with a 4xx: `param` names the field (a dotted path), `status` the code."""

    def __init__(self, message: str, param: str | None = None, status: int = 400):
        super().__init__(message)
        self.param = param
        self.status = status


class _Model(BaseModel):
    # Strict: "0.5" is not a number and 1 is not a bool, as in OpenAI's schema; NaN/inf are refused.
    model_config = ConfigDict(strict=True, allow_inf_nan=False, extra="ignore")


class _DataURL(_Model):
    url: str

    @field_validator("url")
    @classmethod
    def check_url(cls, url: str) -> str:
        decode_data_url(url, ("",))  # a base64 data URL (its media type is checked when the part is decoded)
        return url


class TextPart(_Model):
    type: Literal["text"]
    text: str


class ImageURL(_DataURL):
    detail: Literal["auto", "low", "high"] | None = None


class ImagePart(_Model):
    type: Literal["image_url"]
    image_url: ImageURL


class InputAudio(_Model):
    data: str
    format: Literal["wav"] = "wav"


class AudioPart(_Model):
    type: Literal["input_audio"]
    input_audio: InputAudio


class VideoURL(_DataURL):
    pass


class VideoPart(_Model):
    type: Literal["video_url"]
    video_url: VideoURL


ContentPart = Annotated[TextPart | ImagePart | AudioPart | VideoPart, Field(discriminator="type")]


class ChatMessage(_Model):
    role: Literal[ROLES]
    content: str | list[ContentPart]
    name: str | None = None


class MMProcessorKwargs(_Model):
    """How clips are read (vLLM's `mm_processor_kwargs`): unset keys take the codec's defaults."""

    model_config = ConfigDict(extra="forbid")
    use_audio_in_video: bool | None = None
    fps: float | None = Field(None, gt=0, le=1000)


class StreamOptions(_Model):
    include_usage: bool = False


class ChatCompletionRequest(_Model):
    """The body of `POST /v1/chat/completions`. Fields this server cannot honour (penalties, tools,
    logit_bias, top_logprobs, response formats other than text) are refused when set, never ignored."""

    messages: list[ChatMessage] = Field(min_length=1)
    model: str | None = None
    temperature: float | None = Field(None, ge=0, le=2)
    top_p: float | None = Field(None, gt=0, le=1)
    top_k: int | None = Field(None, ge=-1)  # -1 or 0: off (vLLM); at most the vocabulary (checked by the engine)
    max_tokens: int | None = Field(None, ge=1)
    max_completion_tokens: int | None = Field(None, ge=1)
    n: int = Field(1, ge=1, le=MAX_N)
    seed: int | None = Field(None, ge=0, lt=SEED_RANGE)
    stop: str | list[str] | None = None
    stop_token_ids: list[int] | None = None
    stream: bool = False
    stream_options: StreamOptions | None = None
    logprobs: bool = False
    return_token_ids: bool = False
    mm_processor_kwargs: MMProcessorKwargs | None = None
    presence_penalty: float | None = None
    frequency_penalty: float | None = None
    logit_bias: dict[str, Any] | None = None
    top_logprobs: int | None = None
    tools: list[Any] | None = None
    response_format: dict[str, Any] | None = None
    user: str | None = None

    @field_validator("stop")
    @classmethod
    def check_stops(cls, stop: str | list[str] | None) -> str | list[str] | None:
        if isinstance(stop, list) and len(stop) > MAX_STOPS:
            raise ValueError(f"at most {MAX_STOPS} stop sequences, got {len(stop)}")
        return stop

    @field_validator("presence_penalty", "frequency_penalty", "logit_bias", "top_logprobs", "tools", "response_format")
    @classmethod
    def check_unsupported(cls, value: Any) -> Any:
        if value and value != {"type": "text"}:
            raise ValueError("is not supported by this server (leave it unset)")
        return value

    @property
    def max_new_tokens(self) -> int | None:
        return self.max_completion_tokens if self.max_completion_tokens is not None else self.max_tokens

    def decoded_messages(self) -> list[dict[str, Any]]:
        """OTA messages with decoded media; a part the codec cannot decode is a BadRequest naming its message."""
        mm = {} if self.mm_processor_kwargs is None else self.mm_processor_kwargs.model_dump(exclude_none=True)
        out = []
        for i, message in enumerate(self.messages):
            try:  # one message at a time: a clip and its own audio are always parts of one message
                out += decode_messages([message.model_dump(exclude_none=True)], mm)
            except ContentError as e:
                raise BadRequest(f"messages.{i}.content: {e}", f"messages.{i}.content") from e
        return out


def stop_token_ids(stop: str | list[str] | None, tokenizer: Any) -> tuple[int, ...]:
    """OpenAI `stop` strings → their ids in the served `tokenizer`; only the Omni special tokens (e.g.
    `<|im_end|>`) can be stops here."""
    names = [] if stop is None else [stop] if isinstance(stop, str) else stop
    if any(n not in tokens.SPECIAL_TOKENS for n in names):
        raise BadRequest(f"stop: special tokens only (e.g. {tokens.IM_END!r}), got {stop!r}", "stop")
    ids = {n: None if tokenizer is None else tokenizer.convert_tokens_to_ids(n) for n in names}
    missing = [n for n, i in ids.items() if i is None or (i == tokenizer.unk_token_id and n != tokenizer.unk_token)]
    if missing:
        raise BadRequest(f"stop: tokens {missing} are not in the served model's vocabulary", "stop")
    return tuple(ids[n] for n in names)


# ------------------------------------------------------------------------------------ errors
_UNION_LABELS = {"str", "int", "float", "bool", "list", "dict", "none"}


def error_path(loc: tuple) -> str:
    """A pydantic error location as the field's dotted path: union branch labels dropped (`str`,
    `list[...]`), a discriminated part's tag folded into the field it names, FastAPI's `body` dropped."""
    parts: list[str] = []
    for item in loc[1:] if loc[:1] == ("body",) else loc:
        if isinstance(item, str) and ("[" in item or item in _UNION_LABELS):
            continue
        if parts and isinstance(item, str) and parts[-1] == item:
            continue  # a content part's tag ("image_url") followed by its field of the same name
        parts.append(str(item))
    return ".".join(parts) or "body"


def validation_error(errors: list[dict[str, Any]]) -> BadRequest:
    """Pydantic (or FastAPI) validation errors → one BadRequest naming the most specific field."""
    if any(e.get("type") == "json_invalid" for e in errors):
        return BadRequest("the body is not valid JSON", "body")
    found: dict[str, str] = {}
    for e in sorted(errors, key=lambda e: -len(error_path(tuple(e.get("loc", ()))))):
        found.setdefault(error_path(tuple(e.get("loc", ()))), str(e.get("msg", "invalid")).removeprefix("Value error, "))
    # A union's other branch failing higher up ("content: Input should be a valid string") says nothing more.
    found = {p: m for p, m in found.items() if not any(q.startswith(p + ".") for q in found)}
    message = "; ".join(f"{path}: {msg}" for path, msg in list(found.items())[:3])
    return BadRequest(message, next(iter(found), "body"))


def parse_request(body: Any) -> ChatCompletionRequest:
    """A decoded JSON body → the request (BadRequest naming the field otherwise); what FastAPI does, for
    callers outside an HTTP request."""
    try:
        return ChatCompletionRequest.model_validate(body)
    except ValidationError as e:
        raise validation_error(e.errors()) from e


# ------------------------------------------------------------------------------------ responses
class PromptTokensDetails(BaseModel):
    cached_tokens: int


class Usage(BaseModel):
    prompt_tokens: int
    completion_tokens: int
    total_tokens: int
    prompt_tokens_details: PromptTokensDetails


class TokenLogprob(BaseModel):
    token: str
    logprob: float
    entropy: float  # of the model's raw distribution at this step (vendor)
    top_logprobs: list[Any] = Field(default_factory=list)


class ChoiceLogprobs(BaseModel):
    content: list[TokenLogprob]


class AssistantMessage(BaseModel):
    role: Literal["assistant"] = "assistant"
    content: str


class Choice(BaseModel):
    index: int
    message: AssistantMessage
    finish_reason: str
    logprobs: ChoiceLogprobs | None = None
    token_ids: list[int] | None = None  # with `return_token_ids` (vendor)


class ChatCompletion(BaseModel):
    id: str
    object: Literal["chat.completion"] = "chat.completion"
    created: int
    model: str
    choices: list[Choice]
    usage: Usage
    seed: int  # the seed the first choice was sampled with; choice i used seed + i (vendor)


class Delta(BaseModel):
    role: Literal["assistant"] | None = None
    content: str | None = None


class ChunkChoice(BaseModel):
    index: int
    delta: Delta
    finish_reason: str | None = None
    logprobs: ChoiceLogprobs | None = None
    token_ids: list[int] | None = None


class ChatCompletionChunk(BaseModel):
    id: str
    object: Literal["chat.completion.chunk"] = "chat.completion.chunk"
    created: int
    model: str
    choices: list[ChunkChoice]
    usage: Usage | None = None
    seed: int


class ModelCard(BaseModel):
    id: str
    object: Literal["model"] = "model"
    created: int
    owned_by: str = "omniagent-jax"


class ModelList(BaseModel):
    object: Literal["list"] = "list"
    data: list[ModelCard]


def error_body(message: str, status: int, param: str | None = None) -> dict[str, Any]:
    """OpenAI's error object."""
    kind = {401: "authentication_error", 404: "not_found_error"}.get(status, "invalid_request_error" if status < 500 else
                                                                     "server_error")
    return {"error": {"message": message, "type": kind, "param": param, "code": status}}
