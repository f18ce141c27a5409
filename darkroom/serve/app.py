"""The Serve application: an ingress deployment in front of an autoscaled model deployment.

The app builder `build_app` is what Ray's own tools deploy, from the same serve file:

    serve run darkroom.serve.app:build_app config=configs/serve/tiny.yaml

and what a Serve config file (`serve deploy`) or a KubeRay RayService names as its import path.
"""

from __future__ import annotations

import math
import secrets
import time
from typing import Any

from ray.serve import Application

from darkroom.platform.config import validate
from darkroom.platform.errors import UserError
from darkroom.platform.families import Family
from darkroom.platform.models.names import local_family, sampler_kind
from darkroom.platform.samplers import SAMPLERS
from darkroom.serve.edits import InputImages
from darkroom.serve.ingress import Ingress, IngressSettings
from darkroom.serve.model import ImageModel
from darkroom.serve.protocol import EDIT_REQUEST_BYTES, Limits
from darkroom.serve.spec import (
    ServeSpec,
    api_key_digest,
    api_key_digests,
    job_settings,
    load_spec,
    secret,
)
from darkroom.serve.webhooks import WebhookSettings


def build_app(args: dict[str, Any] | None = None) -> Application:
    """Ray Serve app builder. `args` is `{config: PATH}` (a serve file) or a serve file's keys."""
    return application(spec_from_args(args or {}))


def spec_from_args(args: dict[str, Any]) -> ServeSpec:
    """The serve spec from builder args: the serve file at `config`, or its keys, not both."""
    args = dict(args)
    if "config" in args:
        path = args.pop("config")
        if args:
            raise UserError(
                f"give either `config` or the serve file's keys inline, not both (also got "
                f"{', '.join(sorted(args))})"
            )
        return load_spec(path)
    return validate(ServeSpec, args, "serve app arguments")


def application(spec: ServeSpec, stop: Any = None) -> Application:
    """The bound app: `Ingress -> ImageModel`, configured from the serve file.

    `stop`: a `guards.StopSignal` actor that `darkroom serve` drains the ingress through.
    """
    # the job store's place is fixed here, where the app is built: every replica uses it
    jobs = job_settings(spec)
    spec = spec.model_copy(update={"jobs": spec.jobs.model_copy(update={"store": jobs.store})})
    backpressure = {"retry_after_s": spec.retry_after_s}
    model = ImageModel.options(
        max_ongoing_requests=spec.max_ongoing_requests,
        max_queued_requests=spec.max_queued_requests,
        autoscaling_config=spec.autoscaling.ray_config(),
        ray_actor_options=spec.resources.ray_actor_options(),
        backpressure_config=backpressure,
        # one call per image: access lines would cost more than the images' own bookkeeping
        logging_config={"enable_access_log": False},
    ).bind(spec.model_dump(mode="json"))
    family = _known_family(spec)
    settings = IngressSettings(
        model_id=spec.model_id,
        limits=effective_limits(spec, family),
        samplers=fitting_samplers(spec),
        adapters=[lora.name for lora in spec.model.loras],
        conditioning=None if family is None else family.conditioning.name,
        inputs=None if family is None else input_images(family),
        api_key_sha256=api_key_digest(spec),
        api_keys=api_key_digests(spec) if spec.auth and spec.auth.keys else {},
        retry_after_s=spec.retry_after_s,
        created=int(time.time()),
        quota=spec.quotas,
        key_quotas={key.name: key.quotas for key in (spec.auth.keys if spec.auth else [])
                    if key.quotas is not None},
        jobs=jobs,
        max_wait_s=spec.jobs.max_wait_s,
        # the dispatchers together keep the model replicas as busy as requests would
        dispatch_images=math.ceil(spec.autoscaling.max_replicas * spec.max_ongoing_requests
                                  / spec.ingress.replicas),
        webhooks=WebhookSettings(
            secret=secret("webhooks.secret_env", spec.webhooks.secret_env),
            **spec.webhooks.model_dump(exclude={"secret_env"})),
        outputs_uri=spec.outputs.uri if spec.outputs else None,
        url_secret=(secret("outputs.secret_env", spec.outputs.secret_env)
                    or secrets.token_hex(32)) if spec.outputs else None,
        url_ttl_s=spec.outputs.url_ttl_s if spec.outputs else 3600.0,
    )
    # The model deployment, not the front, is the gate: a waiting request costs the front
    # little, so it holds twice what the model side can take (working + queued), and the model
    # side's refusals become OpenAI-shaped 503s. Past that, Serve's proxy answers 503 itself.
    capacity = spec.autoscaling.max_replicas * spec.max_ongoing_requests + spec.max_queued_requests
    front = math.ceil((2 * capacity + 64) / spec.ingress.replicas)
    return Ingress.options(
        num_replicas=spec.ingress.replicas,
        max_ongoing_requests=front,
        # Serve's router counts a request as queued until it is assigned, so a burst of
        # simultaneous arrivals needs this much room even when the front has free slots
        max_queued_requests=front,
        ray_actor_options={"num_cpus": spec.ingress.num_cpus},
        backpressure_config=backpressure,
    ).bind(model, settings.model_dump(), stop)


def fitting_samplers(spec: ServeSpec) -> list[str]:
    """The samplers the served model takes, when its family is known here; else all of them."""
    try:
        family = local_family(spec.model)
        kind = sampler_kind(spec.model, family) if family else None
    except Exception:  # a folder only the cluster's nodes have: the replica checks each row
        kind = None
    return family.fitting(kind) if family and kind else list(SAMPLERS)


def _known_family(spec: ServeSpec) -> Family | None:
    """The model's family when it can be told here, before any replica loads it."""
    try:
        return local_family(spec.model)
    except Exception:  # e.g. a folder that exists only on the cluster's nodes: the replica knows
        return None


def input_images(family: Family) -> InputImages:
    """The input images and edit settings a family's rows take."""
    conditioning = family.conditioning
    return InputImages(required=tuple(i for i in conditioning.inputs if i != "control"),
                       optional=conditioning.optional, edits=family.edits)


def effective_limits(spec: ServeSpec, family: Family | None) -> Limits:
    """The serve file's limits; an editing model's body limit defaults to `EDIT_REQUEST_BYTES`
    (its requests carry images), unless the file sets `limits.max_request_bytes`."""
    edits = family is not None and "image" in family.conditioning.inputs
    if not edits or "max_request_bytes" in spec.limits.model_fields_set:
        return spec.limits
    return spec.limits.model_copy(update={"max_request_bytes": EDIT_REQUEST_BYTES})
