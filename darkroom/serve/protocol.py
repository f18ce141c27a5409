"""The HTTP protocol: OpenAI Images API requests and responses, with Darkroom's extensions.

Request models are built per server (`request_model(limits, samplers, conditioning)`), so the
limits, the sampler names and the conditioning of a served model show up in the app's OpenAPI
schema and are enforced by pydantic like any other constraint: a client that follows the schema
is not refused for those fields. This module imports no torch: the ingress replica stays light.
"""

from __future__ import annotations

import re
from typing import Any, ClassVar, Literal

from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    ValidationInfo,
    field_validator,
    model_validator,
)

from darkroom.platform.engine.rows import RequestRow
from darkroom.platform.errors import did_you_mean

SEED_MAX = 2**63 - 1  # torch.Generator.manual_seed takes 64-bit seeds
# the same bounds as job files'
MAX_STEPS = 1000
MAX_SIDE = 8192
MAX_GUIDANCE = 100.0
MAX_N = 256
MAX_PROMPT_CHARS = 100_000
SIZE_PATTERN = re.compile(r"^(\d{1,5})x(\d{1,5})$")
MiB = 2**20
# the default body limit of an editing model's server: its requests carry an image and a mask
EDIT_REQUEST_BYTES = 32 * MiB
# the most bytes one character of a prompt can take in a JSON body (an escaped surrogate pair)
JSON_BYTES_PER_CHAR = 12
# the platform's bound on any input image (records.MAX_INPUT_PIXELS): 8192 x 8192
MAX_INPUT_PIXELS = 8192 * 8192
# the image sizes OpenAI's schema lets an images response name in `size`
OPENAI_SIZES = ("1024x1024", "1024x1536", "1536x1024")


class ApiError(Exception):
    """An error answered in OpenAI's shape, with its status (and headers)."""

    def __init__(self, status: int, message: str, kind: str = "invalid_request_error",
                 param: str | None = None, code: str | None = None,
                 headers: dict[str, str] | None = None) -> None:
        super().__init__(message)
        self.status, self.kind, self.param, self.code = status, kind, param, code
        self.headers = headers


class BadRequest(ApiError):
    """A request the front refuses: 400 with the message and the field (`param`)."""

    def __init__(self, message: str, param: str | None = None) -> None:
        super().__init__(400, message, param=param)


class Overloaded(Exception):
    """The model deployment refused the work: answer 503 with Retry-After."""


class ImageFailed(Exception):
    """The model replica failed on an image of the request (not its input): 500."""


class Limits(BaseModel):
    """What one request may ask for; anything larger is a 400 that names the field."""

    model_config = ConfigDict(extra="forbid", frozen=True, allow_inf_nan=False)

    max_n: int = Field(8, ge=1, le=MAX_N, description="images per request")
    max_steps: int = Field(100, ge=1, le=MAX_STEPS, description="denoising steps per image")
    max_side: int = Field(1024, ge=8, le=MAX_SIDE, description="width and height in pixels")
    max_prompt_chars: int = Field(
        2000, ge=1, le=MAX_PROMPT_CHARS, description="characters in prompt and negative_prompt"
    )
    max_request_bytes: int = Field(
        MiB, ge=4096, le=64 * MiB,
        description="bytes of a request body; a larger one is refused (413) before it is read",
    )
    body_timeout_s: float = Field(
        10.0, gt=0, le=300,
        description="seconds a request's body may take to arrive; a slower one gets 408",
    )
    max_input_pixels: int = Field(
        4096 * 4096, ge=64, le=MAX_INPUT_PIXELS,
        description="pixels of an edit's source image or mask, read from its header: a larger "
        "one is refused (400) before it is decoded",
    )

    @model_validator(mode="after")
    def _room_for_prompts(self) -> Limits:
        # a request within the other limits must fit: both prompts at their longest, escaped
        needed = 2 * self.max_prompt_chars * JSON_BYTES_PER_CHAR + 4096
        if self.max_request_bytes < needed:
            raise ValueError(
                f"`max_request_bytes` ({self.max_request_bytes}) is too small for prompts of "
                f"`max_prompt_chars` ({self.max_prompt_chars}); set it to {needed} or more"
            )
        return self


class BaseRequest(BaseModel):
    """What generation and edit requests share: OpenAI's fields, then Darkroom's extensions."""

    model_config = ConfigDict(extra="forbid")
    max_side: ClassVar[int] = Limits().max_side

    prompt: str = Field(
        description="text prompt; for a class-conditional model (DiT) a class name or id when "
        "`class_label` is not given"
    )
    model: str | None = Field(None, description="the served model id (GET /v1/models), if given")
    n: int = Field(1, ge=1, le=Limits().max_n, description="number of images")
    size: str | None = Field(
        None, pattern=r"^(auto|[0-9]{1,5}x[0-9]{1,5})$",
        description="WIDTHxHEIGHT, e.g. 512x512; auto or unset: the model's native size",
    )
    response_format: Literal["b64_json"] = Field(
        "b64_json", description="only b64_json: images are returned inline as base64 PNG"
    )
    output_format: Literal["png", "jpeg", "webp"] = Field("png", description="the images' "
                                                          "file format")
    output_compression: int | None = Field(None, ge=0, le=100, description="jpeg and webp: "
                                           "compression in percent (100 - quality); default 25")
    user: str | None = Field(
        None, max_length=256, description="an end-user id (accepted, not stored)"
    )
    stream: bool = Field(False, description="send server-sent events: `partial_images` "
                         "previews, then each image (OpenAI's streaming)")
    partial_images: int | None = Field(None, ge=0, le=3, description="with `stream`: previews "
                                       "per image, decoded cheaply from the latents")
    webhook: str | None = Field(None, max_length=2048, pattern=r"^https?://",
                                description="a URL that gets the job's events, signed "
                                "(Standard Webhooks)")
    webhook_events_filter: list[Literal["start", "progress", "completed"]] | None = Field(
        None, max_length=3, description="which events the webhook gets; default all")
    negative_prompt: str | None = Field(None, description="what the image should not show")
    lora: str | None = Field(None, description="a LoRA adapter the server lists (GET "
                             "/v1/models); the same as `model: BASE:ADAPTER`")
    lora_scale: float | None = Field(None, ge=-10, le=10, allow_inf_nan=False,
                                     description="times the adapter's own scale; default 1")
    steps: int | None = Field(None, ge=1, le=Limits().max_steps, description="denoising steps")
    guidance_scale: float | None = Field(
        None, ge=0, le=MAX_GUIDANCE, allow_inf_nan=False,
        description="classifier-free guidance scale"
    )
    seed: int | None = Field(
        None, ge=0, le=SEED_MAX, description="seed of the first image; image i uses seed + i"
    )
    sampler: str | None = Field(None, description="sampler name, e.g. ddim, dpmpp_2m, euler_a")

    @field_validator("*", mode="before")
    @classmethod
    def _unicode(cls, value: Any) -> Any:
        if isinstance(value, str) and not is_text(value):
            raise ValueError("is not Unicode text: it holds a lone surrogate (an escape such as "
                             "\\ud800 without its pair); send UTF-8 text")
        return value

    @field_validator("size")
    @classmethod
    def _size(cls, size: str | None) -> str | None:
        if size is None or size == "auto":
            return None
        match = SIZE_PATTERN.match(size)
        if not match:
            raise ValueError(f"`size` must look like 512x512 (WIDTHxHEIGHT), got {size!r}")
        for side in map(int, match.groups()):
            if not 8 <= side <= cls.max_side:
                raise ValueError(f"each side of `size` must be in 8..{cls.max_side}, got {size}")
        return size

    def dimensions(self) -> tuple[int | None, int | None]:
        """(width, height) from `size`, or (None, None) for the model's native size."""
        if self.size is None:
            return None, None
        width, height = SIZE_PATTERN.match(self.size).groups()
        return int(width), int(height)


class ImageRequest(BaseRequest):
    """`POST /v1/images/generations`: OpenAI's fields, then Darkroom's extensions."""

    class_label: int | str | None = Field(
        None, description="class id or name, for class-conditional models (DiT)"
    )


def constrained(limits: Limits, samplers: list[str] | None = None,
                urls: bool = False) -> type[BaseRequest]:
    """`BaseRequest` with this server's limits and sampler names as schema constraints: the
    base of each route's request model (`request_model`, `edits.edit_model`). `urls`: the
    server keeps images (`outputs`), so `response_format` may be `url`."""
    prompt_chars = limits.max_prompt_chars
    sampler_type: Any = Literal[tuple(samplers)] if samplers else str
    formats: Any = Literal["b64_json", "url"] if urls else Literal["b64_json"]

    class Constrained(BaseRequest):
        max_side: ClassVar[int] = limits.max_side

        prompt: str = Field(
            max_length=prompt_chars,
            description=BaseRequest.model_fields["prompt"].description,
        )
        n: int = Field(1, ge=1, le=limits.max_n, description="number of images")
        steps: int | None = Field(
            None, ge=1, le=limits.max_steps, description="denoising steps"
        )
        negative_prompt: str | None = Field(
            None, max_length=prompt_chars, description="what the image should not show"
        )
        sampler: sampler_type | None = Field(  # type: ignore[valid-type]
            None, description=BaseRequest.model_fields["sampler"].description
        )
        response_format: formats = Field(  # type: ignore[valid-type]
            "b64_json", description="b64_json: inline base64; url: a link valid for a while"
            if urls else "only b64_json: images are returned inline as base64")

        @field_validator("response_format", mode="before")
        @classmethod
        def _url_kept(cls, value: Any) -> Any:
            if value == "url" and not urls:
                raise ValueError("`url` needs a server that keeps images (`outputs` in its "
                                 "serve file); this one answers b64_json only")
            return value

        @field_validator("stream")
        @classmethod
        def _inline(cls, stream: bool, info: ValidationInfo) -> bool:
            if stream and info.data.get("response_format") == "url":
                raise ValueError("a stream sends its images inline: leave `response_format` "
                                 "unset")
            return stream

        @field_validator("partial_images")
        @classmethod
        def _streamed(cls, count: int | None, info: ValidationInfo) -> int | None:
            if count is not None and not info.data.get("stream"):
                raise ValueError("`partial_images` needs `stream: true`")
            return count

        @field_validator("webhook_events_filter")
        @classmethod
        def _hooked(cls, events: Any, info: ValidationInfo) -> Any:
            if events is not None and info.data.get("webhook") is None:
                raise ValueError("`webhook_events_filter` needs `webhook`")
            return events

        # Before the type check, so a near miss gets a hint rather than the whole enum
        @field_validator("sampler", mode="before")
        @classmethod
        def _known_sampler(cls, name: Any) -> Any:
            if samplers and isinstance(name, str) and is_text(name) and name not in samplers:
                raise ValueError(f"unknown sampler `{name}`;{did_you_mean(name, samplers)}")
            return name

    return Constrained


def request_model(
    limits: Limits, samplers: list[str] | None = None, conditioning: str | None = None,
    urls: bool = False,
) -> type[ImageRequest]:
    """`ImageRequest` with this server's limits as schema constraints.

    `samplers`: the sampler names the server accepts (the schema's enum). `conditioning`: the
    model family's ("text", "class", "text+control"), when known; only a class-conditional model
    (or one whose family is not known here) takes `class_label`.
    """
    takes_class_label = conditioning in (None, "class")
    class_label_type: Any = int | str | None if takes_class_label else type(None)

    class ImageGenerationRequest(constrained(limits, samplers, urls), ImageRequest):
        class_label: class_label_type = Field(  # type: ignore[valid-type]
            None,
            description=ImageRequest.model_fields["class_label"].description if takes_class_label
            else f"not taken: the served model is {conditioning}-conditioned",
        )

        @field_validator("class_label", mode="before")
        @classmethod
        def _class_label_taken(cls, label: Any) -> Any:
            if label is not None and not takes_class_label:
                raise ValueError(
                    f"`class_label` is for class-conditional models; this one is "
                    f"{conditioning}-conditioned: describe the image in `prompt`"
                )
            return label

    return ImageGenerationRequest


class ImageData(BaseModel):
    """One image: OpenAI's `b64_json`, plus its seed, the safety verdict and the batch it ran in.
    No `revised_prompt`: prompts are used as given (OpenAI's schema takes no null there)."""

    b64_json: str | None = Field(None, exclude_if=lambda value: value is None,
                                 description="the image in base64 (`output_format`); a black "
                                 "image of the same size when the safety filter withheld it "
                                 "(`flagged`)")
    url: str | None = Field(None, exclude_if=lambda value: value is None,
                            description="with `response_format: url`: where to fetch the "
                            "image, for `outputs.url_ttl_s`")
    seed: int = Field(description="the seed that reproduces this image")
    flagged: bool = Field(False, description="withheld by the safety filter: `b64_json` is a "
                          "black image in its place")
    safety_score: float | None = Field(None, description="the safety checker's score in [0, 1]")
    batch_size: int = Field(description="images in the pipeline call that made this one")


class ImagesResponse(BaseModel):
    """The answer to `POST /v1/images/generations`: OpenAI's shape, plus the model and size."""

    created: int = Field(description="Unix time")
    data: list[ImageData]
    model: str
    output_format: Literal["png", "jpeg", "webp"] = "png"
    size: str | None = Field(None, exclude_if=lambda size: size is None,
                             description="WIDTHxHEIGHT, only when it is one of OpenAI's sizes "
                             f"({', '.join(OPENAI_SIZES)}); see `width` and `height`")
    width: int = Field(description="of the images, in pixels")
    height: int = Field(description="of the images, in pixels")


class ModelCard(BaseModel):
    """One model as OpenAI's `GET /v1/models` lists it."""

    id: str
    object: Literal["model"] = "model"
    created: int
    owned_by: str = "darkroom"


class ModelList(BaseModel):
    """`GET /v1/models`: OpenAI's list of models, here only the served one."""

    object: Literal["list"] = "list"
    data: list[ModelCard]


class ErrorBody(BaseModel):
    """The `error` of an `ErrorResponse`: OpenAI's message, type, param and code."""

    message: str
    type: str
    param: str | None = None
    code: str | None = None


class ErrorResponse(BaseModel):
    """OpenAI's error shape: `{"error": {"message", "type", "param", "code"}}`."""

    error: ErrorBody


def is_text(value: str) -> bool:
    """Whether a string is Unicode text that UTF-8 can carry (no lone surrogate)."""
    try:
        value.encode("utf-8")
    except UnicodeEncodeError:
        return False
    return True


def adapter_of(row: RequestRow) -> str:
    """A served row's adapter (its multiplexed model id in Serve); "" for the base model."""
    return row.adapters[0] if row.adapters else ""
