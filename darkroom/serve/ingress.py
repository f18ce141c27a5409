"""The HTTP front: OpenAI-compatible routes, validation, auth, and the fan-out of `n` images.

It holds no model: each image is one call to the model deployment, whose replicas batch them.
Overload there (its `max_queued_requests` reached) becomes a 503 with `Retry-After` here. In
front of the routes (`guards.py`): the request-size limit, the API key, the body deadline and
the drain on stop.
"""

# No `from __future__ import annotations`: FastAPI reads the route signatures at runtime, and the
# request model is built per server.

import asyncio
import logging
import math
import secrets
from collections.abc import Awaitable, Callable
from typing import Annotated, Any

from fastapi import Depends, FastAPI, Form, HTTPException, Request, Response
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer
from pydantic import BaseModel, ConfigDict
from ray import serve
from ray.exceptions import RayActorError
from ray.serve.exceptions import BackPressureError, DeploymentUnavailableError
from starlette.exceptions import HTTPException as StarletteHTTPException

import darkroom
from darkroom.platform.engine.rows import RequestRow
from darkroom.platform.errors import did_you_mean
from darkroom.serve.edits import MULTIPART, InputImages, checked_inputs, edit_fields, edit_model
from darkroom.serve.front import Front
from darkroom.serve.guards import (
    NO_KEY,
    BodyReader,
    Gate,
    KeyCheck,
    SizeLimit,
    drain_on_signal,
    key_of,
    openai_error,
)
from darkroom.serve.jobs.book import JobSettings
from darkroom.serve.jobs.dispatch import Busy, Died
from darkroom.serve.protocol import (
    SEED_MAX,
    ApiError,
    BadRequest,
    BaseRequest,
    ErrorResponse,
    ImageFailed,
    ImagesResponse,
    Limits,
    ModelCard,
    ModelList,
    Overloaded,
    adapter_of,
    request_model,
)
from darkroom.serve.quotas import Quota, QuotaExceeded
from darkroom.serve.webhooks import WebhookSettings

logger = logging.getLogger("ray.serve")
BATCH_HEADER = "X-Darkroom-Batch-Size"
EDITS = "/v1/images/edits"
CONTENT = r"^/v1/images/[^/]+/content$"  # kept images: open, their URLs are signed
ERROR_RESPONSES: dict[int | str, dict[str, Any]] = {
    code: {"model": ErrorResponse, "description": text}
    for code, text in [
        (400, "bad input: the message names the field"),
        (401, "missing or wrong API key"),
        (404, "no such job (or it expired), or no such kept image"),
        (408, "the body did not arrive within the server's `limits.body_timeout_s`"),
        (413, "the request body is larger than the server's `limits.max_request_bytes`"),
        (422, "an Idempotency-Key used before with another body"),
        (429, "the API key's rate or in-flight limit: retry after the Retry-After header"),
        (500, "the server failed on an image (never bad input)"),
        (503, "overloaded or shutting down: retry after the Retry-After header's seconds"),
    ]
}


class IngressSettings(BaseModel):
    """What the front needs to know about the served model (no model code, no torch)."""

    model_config = ConfigDict(extra="forbid", frozen=True, protected_namespaces=())

    model_id: str
    limits: Limits
    samplers: list[str]
    conditioning: str | None = None  # the family's; None when it is not known before loading
    inputs: InputImages | None = None  # the input images it takes; None: not known
    adapters: list[str] = []  # LoRA adapters a request may name
    api_key_sha256: str | None = None  # one key (named "default")
    api_keys: dict[str, str] = {}  # several: SHA-256 of each key -> its name
    retry_after_s: float = 1.0
    created: int = 0
    quota: Quota = Quota()  # per key, unless `key_quotas` names it
    key_quotas: dict[str, Quota] = {}
    jobs: JobSettings | None = None  # None: no async jobs, idempotency keys or webhooks
    max_wait_s: float = 300.0
    dispatch_images: int = 64  # images this replica's dispatcher has out at once
    webhooks: WebhookSettings = WebhookSettings()
    outputs_uri: str | None = None  # where `response_format: url` images are kept
    url_secret: str | None = None
    url_ttl_s: float = 3600.0

    def key_names(self) -> dict[str, str]:
        """SHA-256 of each API key -> its name; empty without auth."""
        if self.api_keys:
            return self.api_keys
        return {self.api_key_sha256: "default"} if self.api_key_sha256 else {}


UNAVAILABLE = (BackPressureError, DeploymentUnavailableError, RayActorError)


@serve.deployment(name="Ingress")
@serve.ingress()
class Ingress:
    """An ingress replica: builds its FastAPI app from the settings at replica start."""

    def __init__(self, model: Any, settings: dict[str, Any], stop: Any = None) -> None:
        self.model = model  # DeploymentHandle of the model deployment
        self.settings = IngressSettings.model_validate(settings)
        self.gate = Gate(retry_after=str(math.ceil(self.settings.retry_after_s)))
        if stop is not None:  # `darkroom serve`'s StopSignal: drain when it says so
            replica = serve.get_replica_context().replica_id.unique_id
            # held here: a task nothing refers to may be collected before it ends
            self._drain = asyncio.get_running_loop().create_task(
                drain_on_signal(stop, self.gate, replica)
            )

    def __serve_build_asgi_app__(self) -> FastAPI:
        return build_api(self.settings, self._generate, self.gate, run_rows=self._run_rows,
                         stream=self._stream, classify=classify)

    def _calls(self, rows: list[RequestRow], extras: list[dict | None] | None) -> list[Any]:
        # Serve's model multiplexing: each adapter's requests go to a replica that has it loaded,
        # and a batch never mixes adapters (Serve splits batches by multiplexed model id)
        extras = extras or [None] * len(rows)
        return [self.model.generate.options(multiplexed_model_id=adapter_of(row))
                .remote(row, extra) for row, extra in zip(rows, extras, strict=True)]

    async def _run_rows(self, rows: list[RequestRow], extras: list[dict | None]) -> list[Any]:
        """Each row's answer, or the exception its call raised (a job's rows)."""
        return list(await asyncio.gather(*self._calls(rows, extras), return_exceptions=True))

    async def _generate(self, rows: list[RequestRow],
                        extras: list[dict | None] | None = None) -> list[dict[str, Any]]:
        # Siblings of a refused image run to completion and are dropped: cancelling them from
        # here would block this event loop until their replica assignment resolves.
        results = await self._run_rows(rows, extras or [None] * len(rows))
        failures = [r for r in results if isinstance(r, BaseException)]
        if any(isinstance(f, UNAVAILABLE) for f in failures):
            raise Overloaded(str(failures[0]))
        if failures:
            raise failures[0]
        return results

    async def _stream(self, row: RequestRow, extra: dict[str, Any]) -> Any:
        """One row's previews and answer, as the model replica streams them."""
        stream = self.model.options(stream=True, multiplexed_model_id=adapter_of(row))
        async for event in stream.generate_stream.remote(row.model_dump(), extra):
            yield event


def classify(err: BaseException) -> type[Exception] | None:
    """What an exception of a model call means for a job: the model was busy (Busy), the
    replica died (Died), or the call failed (None)."""
    if isinstance(err, BackPressureError | DeploymentUnavailableError | Overloaded):
        return Busy
    if isinstance(err, RayActorError):
        return Died
    return None


def build_api(
    settings: IngressSettings,
    generate: Callable[..., Awaitable[list[dict[str, Any]]]],
    gate: Gate | None = None,
    run_rows: Any = None,
    stream: Any = None,
    classify: Any = None,
) -> FastAPI:
    """The FastAPI app of one server: its limits are the request schema's constraints.
    `generate(rows, extras)`: the model's answers; `run_rows`, `stream`, `classify`: see
    `front.Front`."""
    urls = settings.outputs_uri is not None
    Generation = request_model(  # noqa: N806 (classes)
        settings.limits, settings.samplers, settings.conditioning, urls
    )
    Edit = edit_model(settings.limits, settings.samplers, urls)  # noqa: N806
    front = Front(settings, _extras_taken(generate), run_rows, stream, classify)
    app = FastAPI(
        title="Darkroom images API",
        version=darkroom.__version__,
        description=f"OpenAI-compatible image generation with `{settings.model_id}`.",
    )
    # Middlewares run in reverse order of adding: the gate, the declared size, the key (both
    # before the body), then the body read whole within its deadline. (Not FastAPI's own
    # `max_body_size`: it checks Content-Length only once the body is read, and answers in
    # plain text outside a route.)
    limits = settings.limits
    app.add_middleware(BodyReader, max_bytes=limits.max_request_bytes,
                       timeout_s=limits.body_timeout_s)
    keys = settings.key_names()
    if keys:
        open_paths = {"/healthz", app.openapi_url, app.docs_url, app.redoc_url,
                      app.swagger_ui_oauth2_redirect_url}
        app.add_middleware(KeyCheck, digests=keys, open_paths=open_paths,
                           open_pattern=CONTENT)  # kept images: their URLs are signed
    app.add_middleware(SizeLimit, max_bytes=limits.max_request_bytes)
    if gate is not None:
        app.add_middleware(gate.middleware)
    # the key is checked by KeyCheck already; the dependency puts it in the API docs and keeps
    # every route closed should the app be mounted without the middleware
    auth = [Depends(_auth(keys))] if keys else []
    retry_after = str(math.ceil(settings.retry_after_s))

    @app.exception_handler(RequestValidationError)
    async def _invalid(request: Request, err: RequestValidationError) -> JSONResponse:
        message, param = _describe(err.errors())
        kind = request.headers.get("content-type", "")
        if request.url.path.endswith(EDITS) and not kind.startswith("multipart/form-data"):
            message, param = f"{MULTIPART} (got {kind or 'no Content-Type'})", None
        return openai_error(400, message, "invalid_request_error", param)

    @app.exception_handler(StarletteHTTPException)
    async def _http(_, err: StarletteHTTPException) -> JSONResponse:
        kind = "authentication_error" if err.status_code == 401 else "invalid_request_error"
        return openai_error(err.status_code, str(err.detail), kind, headers=err.headers)

    @app.exception_handler(ApiError)
    async def _api(_, err: ApiError) -> JSONResponse:
        return openai_error(err.status, str(err), err.kind, err.param, err.code, err.headers)

    @app.exception_handler(QuotaExceeded)
    async def _quota(_, err: QuotaExceeded) -> JSONResponse:
        return openai_error(429, str(err), "rate_limit_error", code="rate_limit_exceeded",
                            headers={"Retry-After": str(max(1, math.ceil(err.retry_after_s)))})

    @app.exception_handler(ImageFailed)
    async def _image_failed(_, err: ImageFailed) -> JSONResponse:
        return openai_error(500, str(err), "server_error", code="image_failed")

    @app.exception_handler(Overloaded)
    async def _overloaded(_, err: Overloaded) -> JSONResponse:
        logger.warning("answering 503: %s", err)
        return openai_error(
            503, f"the model is busy or restarting; retry in {retry_after} s", "server_error", None,
            code="overloaded", headers={"Retry-After": retry_after},
        )

    @app.exception_handler(Exception)
    async def _failed(_, err: Exception) -> JSONResponse:
        logger.exception("request failed")
        return openai_error(500, f"internal error: {type(err).__name__}", "server_error")

    @app.get("/healthz", summary="liveness")
    async def healthz() -> dict[str, str]:
        return {"status": "ok"}

    @app.get("/v1/models", response_model=ModelList, dependencies=auth, responses=ERROR_RESPONSES)
    async def models() -> ModelList:
        ids = [settings.model_id, *(f"{settings.model_id}:{a}" for a in settings.adapters)]
        return ModelList(data=[ModelCard(id=i, created=settings.created) for i in ids])

    @app.post(
        "/v1/images/generations",
        response_model=ImagesResponse,
        dependencies=auth,
        responses=ERROR_RESPONSES,
        summary="generate images (OpenAI Images API)",
    )
    async def generations(body: Generation, request: Request) -> Response:
        if settings.inputs and settings.inputs.takes("image"):
            raise BadRequest(f"{settings.model_id} is an image-editing model: send the source "
                             f"image to POST /v1/images/edits ({MULTIPART})", "image")
        return await front.serve(request, body, _rows(body, settings), "generations")

    @app.post(
        EDITS,
        response_model=ImagesResponse,
        dependencies=auth,
        responses=ERROR_RESPONSES,
        summary="edit an image (OpenAI Images API, multipart/form-data)",
    )
    async def edits(body: Annotated[Edit, Form(media_type="multipart/form-data")],
                    request: Request) -> Response:
        known = settings.conditioning is not None
        if known and not (settings.inputs and settings.inputs.takes("image")):
            raise BadRequest(f"{settings.model_id} is {settings.conditioning}-conditioned: it "
                             "edits no images; use POST /v1/images/generations", "image")
        inputs = await checked_inputs(body, settings.inputs, settings.limits, settings.model_id)
        rows = _rows(body, settings, edit_fields(body, inputs))
        files = {"image": inputs.image, "mask": inputs.mask or b""}
        return await front.serve(request, body, rows, "edits", files)

    front.add_routes(app, auth, ERROR_RESPONSES)
    return app


def _extras_taken(generate: Callable[..., Any]) -> Callable[..., Any]:
    """`generate` as `(rows, extras)`, also for one that takes only the rows."""
    import inspect

    if len(inspect.signature(generate).parameters) >= 2:
        return generate

    async def with_extras(rows: list[RequestRow], extras: list[dict | None]) -> Any:
        return await generate(rows)

    return with_extras


def _rows(body: BaseRequest, settings: IngressSettings,
          extra: dict[str, Any] | None = None) -> list[RequestRow]:
    """One request row per image (consecutive seeds from the request's seed); `extra`: an
    edit's image, mask and edit settings."""
    class_label = getattr(body, "class_label", None)
    lora = _adapter_of(body, settings)
    width, height = body.dimensions()
    seed = secrets.randbelow(2**31) if body.seed is None else body.seed
    return [
        RequestRow(
            seed=(seed + i) % (SEED_MAX + 1),
            prompt=body.prompt,
            negative_prompt=body.negative_prompt or "",
            class_label=None if class_label is None else str(class_label),
            width=width,
            height=height,
            steps=body.steps,
            guidance_scale=body.guidance_scale,
            sampler=body.sampler,
            adapters=[lora] if lora else [],
            lora_scale=body.lora_scale,
            **(extra or {}),
        )
        for i in range(body.n)
    ]


def _adapter_of(body: BaseRequest, settings: IngressSettings) -> str | None:
    """The adapter a request names (`lora`, or `model: BASE:ADAPTER`), checked; None: base."""
    from_model = None
    if body.model is not None and body.model != settings.model_id:
        prefix = f"{settings.model_id}:"
        from_model = body.model.removeprefix(prefix) if body.model.startswith(prefix) else None
        if from_model not in settings.adapters:
            served = ", ".join([settings.model_id, *(prefix + a for a in settings.adapters)])
            raise BadRequest(f"`model` {body.model!r} is not served here; this server serves "
                             f"{served} (GET /v1/models)", "model")
    if from_model and body.lora and body.lora != from_model:
        raise BadRequest(f"`model` names adapter {from_model!r} but `lora` is {body.lora!r}; "
                         "give one of them", "lora")
    lora = body.lora or from_model or None
    if lora is not None and lora not in settings.adapters:
        raise BadRequest(f"unknown adapter `{lora}`;{did_you_mean(lora, settings.adapters)}"
                         if settings.adapters else f"`lora` {lora!r}: this server has no "
                         "adapters", "lora")
    if body.lora_scale is not None and lora is None:
        raise BadRequest("`lora_scale` needs an adapter: give `lora`", "lora_scale")
    return lora


def _auth(digests: dict[str, str]) -> Callable[..., None]:
    bearer = HTTPBearer(auto_error=False, description="the key held in the server's api_key_env")

    def check(credentials: Annotated[HTTPAuthorizationCredentials | None, Depends(bearer)]) -> None:
        header = f"Bearer {credentials.credentials}" if credentials else None
        if key_of(header, digests) is None:
            raise HTTPException(401, NO_KEY, headers={"WWW-Authenticate": "Bearer"})

    return check


def _describe(problems: list[dict[str, Any]]) -> tuple[str, str | None]:
    """pydantic errors -> one message naming each field, and the first field as OpenAI's param."""
    by_field: dict[str, list[str]] = {}
    inputs: dict[str, Any] = {}
    for problem in problems:
        loc = [str(p) for p in problem.get("loc", ()) if p != "body"]
        if problem.get("type") == "json_invalid":
            by_field.setdefault("", []).append(
                f"the body is not valid JSON: {problem.get('ctx', {}).get('error', '')}"
            )
            continue
        if not loc and problem.get("type") == "string_unicode":  # a key, not a value
            by_field.setdefault("", []).append(
                f"a field name is not Unicode text (got {problem.get('input')!r:.60}); send "
                "UTF-8 text")
            continue
        if not loc:
            by_field.setdefault("", []).append("the body must be a JSON object with `prompt`")
            continue
        field = loc[0]  # a union's alternatives add their type names after the field
        message = str(problem.get("msg", "invalid")).removeprefix("Value error, ")
        if problem.get("type") == "extra_forbidden":
            message = "unknown field; see the API docs (/docs) for the accepted fields"
        if message not in by_field.setdefault(field, []):
            by_field[field].append(message)
        inputs[field] = problem.get("input")
    parts = [
        " or ".join(messages) if not field
        else f"`{field}`: {' or '.join(messages)} (got {inputs[field]!r:.60})"
        for field, messages in by_field.items()
    ]
    params = [field for field in by_field if field]
    return "; ".join(parts), (params[0] if params else None)
