"""The HTTP front: OpenAI-compatible routes, validation, auth, and the fan-out of `n` images.

It holds no model: each image is one call to the model deployment, whose replicas batch them.
Overload there (its `max_queued_requests` reached) becomes a 503 with `Retry-After` here. In
front of the routes (`guards.py`): the request-size limit, the API key, the body deadline and
the drain on stop.
"""

# No `from __future__ import annotations`: FastAPI reads the route signatures at runtime, and the
# request model is built per server.

import asyncio
import base64
import functools
import io
import logging
import math
import secrets
import time
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
from darkroom.serve.guards import (
    NO_KEY,
    BodyReader,
    Gate,
    KeyCheck,
    SizeLimit,
    drain_on_signal,
    key_matches,
    openai_error,
)
from darkroom.serve.protocol import (
    OPENAI_SIZES,
    SEED_MAX,
    BadRequest,
    BaseRequest,
    ErrorResponse,
    ImageData,
    ImagesResponse,
    Limits,
    ModelCard,
    ModelList,
    adapter_of,
    request_model,
)

logger = logging.getLogger("ray.serve")
BATCH_HEADER = "X-Darkroom-Batch-Size"
EDITS = "/v1/images/edits"
ERROR_RESPONSES: dict[int | str, dict[str, Any]] = {
    code: {"model": ErrorResponse, "description": text}
    for code, text in [
        (400, "bad input: the message names the field"),
        (401, "missing or wrong API key"),
        (408, "the body did not arrive within the server's `limits.body_timeout_s`"),
        (413, "the request body is larger than the server's `limits.max_request_bytes`"),
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
    api_key_sha256: str | None = None
    retry_after_s: float = 1.0
    created: int = 0


UNAVAILABLE = (BackPressureError, DeploymentUnavailableError, RayActorError)


class Overloaded(Exception):
    """The model deployment refused the work: answer 503 with Retry-After."""


class ImageFailed(Exception):
    """The model replica failed on an image of the request (not its input): 500."""


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
        return build_api(self.settings, self._generate, self.gate)

    async def _generate(self, rows: list[RequestRow]) -> list[dict[str, Any]]:
        # Siblings of a refused image run to completion and are dropped: cancelling them from
        # here would block this event loop until their replica assignment resolves.
        # Serve's model multiplexing: each adapter's requests go to a replica that has it loaded,
        # and a batch never mixes adapters (Serve splits batches by multiplexed model id)
        responses = [self.model.generate.options(multiplexed_model_id=adapter_of(row))
                     .remote(row) for row in rows]
        results = await asyncio.gather(*responses, return_exceptions=True)
        failures = [r for r in results if isinstance(r, BaseException)]
        if any(isinstance(f, UNAVAILABLE) for f in failures):
            raise Overloaded(str(failures[0]))
        if failures:
            raise failures[0]
        return list(results)


def build_api(
    settings: IngressSettings,
    generate: Callable[[list[RequestRow]], Awaitable[list[dict[str, Any]]]],
    gate: Gate | None = None,
) -> FastAPI:
    """The FastAPI app of one server: its limits are the request schema's constraints."""
    Generation = request_model(  # noqa: N806 (classes)
        settings.limits, settings.samplers, settings.conditioning
    )
    Edit = edit_model(settings.limits, settings.samplers)  # noqa: N806
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
    if settings.api_key_sha256:
        open_paths = {"/healthz", app.openapi_url, app.docs_url, app.redoc_url,
                      app.swagger_ui_oauth2_redirect_url}
        app.add_middleware(KeyCheck, digest=settings.api_key_sha256, open_paths=open_paths)
    app.add_middleware(SizeLimit, max_bytes=limits.max_request_bytes)
    if gate is not None:
        app.add_middleware(gate.middleware)
    # the key is checked by KeyCheck already; the dependency puts it in the API docs and keeps
    # every route closed should the app be mounted without the middleware
    auth = [Depends(_auth(settings.api_key_sha256))] if settings.api_key_sha256 else []
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

    @app.exception_handler(BadRequest)
    async def _bad(_, err: BadRequest) -> JSONResponse:
        return openai_error(400, str(err), "invalid_request_error", err.param)

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
    async def generations(body: Generation, response: Response) -> ImagesResponse:
        if settings.inputs and settings.inputs.takes("image"):
            raise BadRequest(f"{settings.model_id} is an image-editing model: send the source "
                             f"image to POST /v1/images/edits ({MULTIPART})", "image")
        return _answer(await generate(_rows(body, settings)), settings, response)

    @app.post(
        EDITS,
        response_model=ImagesResponse,
        dependencies=auth,
        responses=ERROR_RESPONSES,
        summary="edit an image (OpenAI Images API, multipart/form-data)",
    )
    async def edits(body: Annotated[Edit, Form(media_type="multipart/form-data")],
                    response: Response) -> ImagesResponse:
        known = settings.conditioning is not None
        if known and not (settings.inputs and settings.inputs.takes("image")):
            raise BadRequest(f"{settings.model_id} is {settings.conditioning}-conditioned: it "
                             "edits no images; use POST /v1/images/generations", "image")
        inputs = await checked_inputs(body, settings.inputs, settings.limits, settings.model_id)
        rows = _rows(body, settings, edit_fields(body, inputs))
        return _answer(await generate(rows), settings, response)

    return app


def _answer(results: list[dict[str, Any]], settings: IngressSettings,
            response: Response) -> ImagesResponse:
    """The images response for the replicas' answers; the first failed image fails the request
    (a 500 when the server failed on it, else a 400 naming its field)."""
    failed = next((r for r in results if r["error"]), None)
    if failed and failed.get("status", 400) >= 500:
        raise ImageFailed(failed["error"])
    if failed:
        raise BadRequest(failed["error"], failed.get("param"))
    response.headers[BATCH_HEADER] = str(max(r["batch_size"] for r in results))
    width, height = results[0]["width"], results[0]["height"]
    size = f"{width}x{height}"
    return ImagesResponse(
        created=int(time.time()),
        model=settings.model_id,
        size=size if size in OPENAI_SIZES else None,
        width=width,
        height=height,
        data=[
            ImageData(
                # a flagged image's own bytes never left the replica: a blank in its place
                b64_json=base64.b64encode(r["image"] if r["image"] is not None
                                          else blank_png(r["width"], r["height"])).decode(),
                seed=r["seed"],
                flagged=r["flagged"],
                safety_score=r["safety_score"],
                batch_size=r["batch_size"],
            )
            for r in results
        ],
    )


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


@functools.lru_cache(maxsize=16)
def blank_png(width: int, height: int) -> bytes:
    """A black PNG of the given size: what a flagged image is returned as."""
    from PIL import Image

    buffer = io.BytesIO()
    Image.new("RGB", (width, height)).save(buffer, format="PNG")
    return buffer.getvalue()


def _auth(digest: str) -> Callable[..., None]:
    bearer = HTTPBearer(auto_error=False, description="the key held in the server's api_key_env")

    def check(credentials: Annotated[HTTPAuthorizationCredentials | None, Depends(bearer)]) -> None:
        header = f"Bearer {credentials.credentials}" if credentials else None
        if not key_matches(header, digest):
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
