"""The serve file: one model, its defaults, request limits, batching, autoscaling and protection.

```yaml
model: {name: digits-dit, model: builtin:digits-dit}
defaults: {sampler: dpmpp_2m, steps: 20, guidance_scale: 4.0}
limits: {max_n: 8, max_steps: 100, max_side: 1024, max_prompt_chars: 2000}
batching: {max_batch_size: 16, batch_wait_timeout_s: 0.05}
autoscaling: {min_replicas: 1, max_replicas: 2, target_ongoing_requests: 8}
max_ongoing_requests: 32
max_queued_requests: 64
safety: {checker: nudenet, on: true}
http: {host: 127.0.0.1, port: 8000}
```
"""

from __future__ import annotations

import hashlib
import os
import re
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    ValidationError,
    ValidationInfo,
    field_validator,
    model_validator,
)

from darkroom.evals.spec import SafetySpec as EvalSafetySpec
from darkroom.platform.config import Problem, SpecError, read_yaml_file, try_validate
from darkroom.platform.errors import UserError
from darkroom.platform.models.fit import Asked, fit_problems
from darkroom.platform.models.names import cache_root
from darkroom.platform.models.runtime import RuntimeSpec
from darkroom.platform.models.spec import ModelSpec
from darkroom.platform.samplers import SamplerSpec
from darkroom.serve.jobs.book import JobSettings
from darkroom.serve.protocol import MAX_GUIDANCE, MAX_STEPS, Limits
from darkroom.serve.quotas import Quota

# `darkroom serve` stops within 20 s of a signal: the drain, then removing the app (see commands)
MAX_DRAIN_S = 12.0
# Upper bounds of every number, as in job files: past them no server does anything useful, and
# an unbounded one (a wait of .inf) would leave requests without an answer
MAX_BATCH = 1024
MAX_REPLICAS = 1000
MAX_IN_FLIGHT = 100_000  # images a replica holds, or waiting for one
MAX_DELAY_S = 3600.0
MAX_CPUS = 1024.0
MAX_GPUS = 64.0
MAX_MEMORY_GB = 16384.0


class _Spec(BaseModel):
    # finite numbers only: YAML's .inf and .nan are refused, naming the field
    model_config = ConfigDict(extra="forbid", frozen=True, allow_inf_nan=False)


class DefaultsSpec(_Spec):
    """Settings a request gets when it does not name them."""

    sampler: str = Field("ddim", description="sampler registry name")
    sampler_overrides: dict[str, Any] = Field(
        default_factory=dict, description="scheduler config keys for the default sampler"
    )
    steps: int = Field(25, ge=1, le=MAX_STEPS, description="denoising steps")
    guidance_scale: float = Field(5.0, ge=0, le=MAX_GUIDANCE,
                                  description="classifier-free guidance scale")

    @model_validator(mode="after")
    def _sampler_known(self) -> DefaultsSpec:
        SamplerSpec(name=self.sampler, overrides=self.sampler_overrides)  # names the bad key
        return self

    @property
    def sampler_spec(self) -> SamplerSpec:
        """The default sampler and its overrides as a `SamplerSpec`."""
        return SamplerSpec(name=self.sampler, overrides=self.sampler_overrides)


class BatchingSpec(_Spec):
    """Dynamic batching (`@serve.batch`): concurrent requests share one pipeline call."""

    max_batch_size: int = Field(16, ge=1, le=MAX_BATCH, description="images per pipeline call "
                                "at most")
    batch_wait_timeout_s: float = Field(
        0.05, ge=0, le=10, description="how long a batch waits to fill before it runs"
    )


class AutoscalingSpec(_Spec):
    """Ray Serve autoscaling of the model replicas (keys as in Serve's autoscaling_config)."""

    min_replicas: int = Field(1, ge=0, le=MAX_REPLICAS)
    max_replicas: int = Field(1, ge=1, le=MAX_REPLICAS)
    initial_replicas: int | None = Field(None, ge=0, le=MAX_REPLICAS)
    target_ongoing_requests: float = Field(8, gt=0, le=MAX_IN_FLIGHT,
                                           description="images in flight per replica")
    upscale_delay_s: float | None = Field(None, ge=0, le=MAX_DELAY_S)
    downscale_delay_s: float | None = Field(None, ge=0, le=MAX_DELAY_S)
    look_back_period_s: float | None = Field(None, gt=0, le=MAX_DELAY_S)
    metrics_interval_s: float | None = Field(None, gt=0, le=MAX_DELAY_S)

    @model_validator(mode="after")
    def _ordered(self) -> AutoscalingSpec:
        if self.min_replicas > self.max_replicas:
            raise ValueError(
                f"`min_replicas` ({self.min_replicas}) must not exceed `max_replicas` "
                f"({self.max_replicas})"
            )
        return self

    def ray_config(self) -> dict[str, Any]:
        """Serve's `autoscaling_config`: the keys that are set (the rest are Serve's defaults)."""
        return self.model_dump(exclude_none=True)


class ResourcesSpec(_Spec):
    """What one model replica reserves on the cluster."""

    num_cpus: float = Field(1, ge=0, le=MAX_CPUS)
    num_gpus: float = Field(0, ge=0, le=MAX_GPUS)
    memory_gb: float | None = Field(None, gt=0, le=MAX_MEMORY_GB,
                                    description="memory reserved per replica")
    accelerator_type: str | None = Field(None, description="e.g. A100, L4 (Ray's names)")

    def ray_actor_options(self) -> dict[str, Any]:
        """A replica's Ray actor options: CPUs, GPUs, and memory (bytes) and accelerator if set."""
        options: dict[str, Any] = {"num_cpus": self.num_cpus, "num_gpus": self.num_gpus}
        if self.memory_gb is not None:
            options["memory"] = int(self.memory_gb * 2**30)
        if self.accelerator_type is not None:
            options["accelerator_type"] = self.accelerator_type
        return options


class SafetySpec(EvalSafetySpec):
    """The safety filter: a flagged image is withheld, and the response says so."""

    on: bool = Field(True, description="false serves every image unchecked")


def _env_name(name: str, field: str) -> str:
    if not re.fullmatch(r"[A-Za-z_][A-Za-z0-9_]*", name):
        raise ValueError(f"`{field}` must be an environment variable name, got {name!r}")
    return name


class KeySpec(_Spec):
    """One API key of several: its name (in usage metrics and jobs) and its own quotas."""

    name: str = Field(pattern=r"^[A-Za-z0-9_.-]{1,64}$")
    env: str = Field(description="environment variable that holds the key")
    quotas: Quota | None = Field(None, description="instead of the file's `quotas`")

    @field_validator("env")
    @classmethod
    def _name(cls, name: str) -> str:
        return _env_name(name, "env")


class AuthSpec(_Spec):
    """API keys that clients send as `Authorization: Bearer KEY`: one (`api_key_env`) or
    several (`keys`), not both."""

    api_key_env: str | None = Field(None, description="environment variable that holds the key")
    keys: list[KeySpec] = Field(default_factory=list, max_length=1000)

    @field_validator("api_key_env")
    @classmethod
    def _name(cls, name: str | None) -> str | None:
        return None if name is None else _env_name(name, "api_key_env")

    @model_validator(mode="after")
    def _one_form(self) -> AuthSpec:
        if (self.api_key_env is None) == (not self.keys):
            raise ValueError("give `api_key_env` (one key) or `keys` (several), exactly one")
        names = [k.name for k in self.keys]
        if len(set(names)) != len(names):
            raise ValueError(f"key names must differ, got {names}")
        return self


class JobsSpec(_Spec):
    """Async jobs, idempotency keys and webhook deliveries: where they are kept."""

    store: str | None = Field(
        None, description="sqlite:///PATH.db (one machine; default: a file under the cache "
        "folder named after the app) or redis://HOST:PORT/DB (a cluster)")
    result_ttl_s: float = Field(3600, ge=1, le=30 * 86400,
                                description="how long a finished job and its images are kept")
    lease_s: float = Field(30, ge=0.5, le=3600, description="a job whose worker has not "
                           "answered for this long is taken up again")
    max_attempts: int = Field(2, ge=1, le=10, description="runs of a job whose worker died, "
                              "before it fails")
    idempotency_ttl_s: float = Field(86400, ge=1, le=30 * 86400,
                                     description="how long an Idempotency-Key is remembered")
    max_wait_s: float = Field(300, ge=0, le=3600, description="how long a synchronous request "
                              "through a job (Idempotency-Key, webhook) waits before a 202")

    @field_validator("store")
    @classmethod
    def _scheme(cls, uri: str | None) -> str | None:
        if uri is not None and not re.match(r"^(sqlite:///.+|rediss?://.+)$", uri):
            raise ValueError(f"`store` must be sqlite:///ABSOLUTE/PATH.db or "
                             f"redis://HOST:PORT/DB, got {uri!r}")
        return uri


class WebhooksSpec(_Spec):
    """Signed webhook deliveries (Standard Webhooks) and where they may go."""

    secret_env: str | None = Field(
        None, description="environment variable with the signing secret (whsec_BASE64 or any "
        "text); without it requests may not name a webhook")
    allow_hosts: list[str] = Field(default_factory=list, max_length=1000, description=(
        "host names (or *.domain) webhooks may go to; empty: any host with a public address"))
    allow_private: bool = Field(False, description="also loopback, private and link-local "
                                "addresses (a webhook receiver inside the network)")
    max_attempts: int = Field(5, ge=1, le=50)
    backoff_s: float = Field(1.0, ge=0.01, le=MAX_DELAY_S,
                             description="the first retry's delay; each next one doubles")
    timeout_s: float = Field(10.0, gt=0, le=300, description="per delivery")
    progress_every_s: float = Field(1.0, ge=0.05, le=MAX_DELAY_S,
                                    description="at most one progress event per job this often")

    @field_validator("secret_env")
    @classmethod
    def _name(cls, name: str | None) -> str | None:
        return None if name is None else _env_name(name, "secret_env")


class OutputsSpec(_Spec):
    """Where `response_format: url` images are kept, and how long their URLs work."""

    uri: str = Field(description="a folder or object store (s3://bucket/prefix, gs://...)")
    url_ttl_s: float = Field(3600, ge=1, le=7 * 86400, description="a URL's lifetime")
    secret_env: str | None = Field(None, description="environment variable with the URLs' "
                                   "signing secret; default a random one per deployment")

    @field_validator("secret_env")
    @classmethod
    def _name(cls, name: str | None) -> str | None:
        return None if name is None else _env_name(name, "secret_env")


class HttpSpec(_Spec):
    """Where `darkroom serve` listens (Ray's own `serve run`/`serve deploy` set this themselves)."""

    host: str = "127.0.0.1"
    port: int = Field(8000, ge=1, le=65535)
    route_prefix: str = Field("/", pattern=r"^/", description="the app's routes live under it")


class IngressSpec(_Spec):
    """The HTTP front replicas: validation, auth, fan-out of `n` images; no model."""

    replicas: int = Field(1, ge=1, le=MAX_REPLICAS)
    num_cpus: float = Field(0.25, ge=0, le=MAX_CPUS)


class ServeSpec(_Spec):
    """One served model: what a `darkroom serve` file holds."""

    name: str = Field("darkroom", description="Ray Serve application name")
    model: ModelSpec
    defaults: DefaultsSpec = Field(default_factory=DefaultsSpec)
    limits: Limits = Field(default_factory=Limits)
    batching: BatchingSpec = Field(default_factory=BatchingSpec)
    autoscaling: AutoscalingSpec = Field(default_factory=AutoscalingSpec)
    max_ongoing_requests: int = Field(
        32, ge=1, le=MAX_IN_FLIGHT,
        description="images a model replica works on or holds in its batch queue"
    )
    max_queued_requests: int = Field(
        64, ge=1, le=MAX_IN_FLIGHT,
        description="images waiting for a replica; beyond it, 503 with Retry-After"
    )
    retry_after_s: float = Field(1.0, ge=0, le=MAX_DELAY_S,
                                 description="Retry-After sent with a 503")
    max_adapters_per_replica: int = Field(
        4, ge=1, le=256, description="LoRA adapters a replica keeps loaded; past it the least "
        "recently used is dropped (Serve model multiplexing)")
    drain_timeout_s: float = Field(
        10.0, ge=0, le=MAX_DRAIN_S,
        description="on SIGINT/SIGTERM, how long `darkroom serve` waits for requests in flight "
        "(new ones get 503) before it removes the app",
    )
    resources: ResourcesSpec = Field(default_factory=ResourcesSpec)
    runtime: RuntimeSpec = Field(default_factory=RuntimeSpec)
    safety: SafetySpec = Field(default_factory=SafetySpec)
    auth: AuthSpec | None = None
    quotas: Quota = Field(default_factory=Quota, description="per API key (each ingress "
                          "replica keeps its own buckets)")
    jobs: JobsSpec = Field(default_factory=JobsSpec)
    webhooks: WebhooksSpec = Field(default_factory=WebhooksSpec)
    outputs: OutputsSpec | None = None
    http: HttpSpec = Field(default_factory=HttpSpec)
    ingress: IngressSpec = Field(default_factory=IngressSpec)

    @field_validator("max_ongoing_requests")
    @classmethod
    def _room_for_batches(cls, ongoing: int, info: ValidationInfo) -> int:
        batching = info.data.get("batching")
        # Serve hands a replica at most max_ongoing_requests at a time; with fewer than two
        # batches' worth, the next batch cannot fill while one runs (Serve's default of 5
        # collapses batches of 16 to ~2).
        if batching is not None and ongoing < 2 * batching.max_batch_size:
            batch = batching.max_batch_size
            raise ValueError(
                f"`max_ongoing_requests` ({ongoing}) must be at least twice "
                f"`batching.max_batch_size` ({batch}), or batches cannot fill; set it to "
                f"{2 * batch} or more"
            )
        return ongoing

    @property
    def model_id(self) -> str:
        """The model's id in the API (`model` of requests, `GET /v1/models`): its label."""
        return self.model.label


def load_spec(path: str | Path) -> ServeSpec:
    """Read and validate a serve file; every problem at once, in the one config error format."""
    data, problems = read_yaml_file(path, "serve file")
    return validate_spec(data, str(path), problems)


def validate_spec(data: dict[str, Any], source: str = "serve file",
                  problems: Sequence[Problem] = ()) -> ServeSpec:
    """A ServeSpec from plain data, or a SpecError listing every problem: the types, then what
    the model cannot do (the family's rules, as for job files) in the sections that are valid."""
    spec, found = try_validate(ServeSpec, data)
    found = [*problems, *found, *semantic_problems(data, spec)]
    if found:
        raise SpecError(source, found)
    return spec  # type: ignore[return-value]


def semantic_problems(data: dict[str, Any], spec: ServeSpec | None) -> list[Problem]:
    """The problems beyond types of each section valid on its own: the model against the
    runtime and default sampler, the runtime against the device and the batch bound (the
    runtime section, shared with job files, leaves its batch size open), the default steps
    against the limits."""
    model = spec.model if spec else _section(ModelSpec, data.get("model"))
    runtime = spec.runtime if spec else _section(RuntimeSpec, data.get("runtime", {}))
    defaults = spec.defaults if spec else _section(DefaultsSpec, data.get("defaults", {}))
    limits = spec.limits if spec else _section(Limits, data.get("limits", {}))
    problems = []
    if runtime:
        problems += [Problem(f"runtime.{name}", message)
                     for name, message in runtime.device_problems()]
    if model:
        # the replicas may see files this machine does not: only what is known here counts
        asked = Asked(samplers={"defaults.sampler": defaults.sampler} if defaults else {})
        problems += [p for p in fit_problems("model", model, runtime, asked)
                     if p.path != "model.model"]
    if runtime and isinstance(runtime.batch_size, int) and not 1 <= runtime.batch_size <= MAX_BATCH:
        problems.append(Problem("runtime.batch_size", f"must be in 1..{MAX_BATCH} (or auto), got "
                                f"{runtime.batch_size}"))
    if defaults and limits and defaults.steps > limits.max_steps:
        problems.append(Problem("defaults.steps", f"{defaults.steps} exceeds `limits.max_steps` "
                                f"({limits.max_steps}); lower it or raise the limit"))
    return problems


def _section(cls: type[BaseModel], value: Any) -> Any:
    try:
        return cls.model_validate(value)
    except ValidationError:
        return None


def job_settings(spec: ServeSpec) -> JobSettings:
    """The job book's settings; a store the file leaves unset is a SQLite file under the cache
    folder of the machine that builds the app (`darkroom serve`'s)."""
    jobs = spec.jobs
    store = jobs.store or f"sqlite://{cache_root() / 'serve-jobs' / f'{spec.name}.db'}"
    return JobSettings(store=store, namespace=f"darkroom:{spec.name}",
                       result_ttl_s=jobs.result_ttl_s, lease_s=jobs.lease_s,
                       max_attempts=jobs.max_attempts, idempotency_ttl_s=jobs.idempotency_ttl_s)


def api_key_digest(spec: ServeSpec) -> str | None:
    """SHA-256 of the API key, read where the app is built; the key itself is never shipped.
    With several keys (`auth.keys`): None (see `api_key_digests`)."""
    if spec.auth is None or spec.auth.api_key_env is None:
        api_key_digests(spec)  # every variable must be set
        return None
    return _digest("auth.api_key_env", spec.auth.api_key_env)


def api_key_digests(spec: ServeSpec) -> dict[str, str]:
    """SHA-256 of each API key -> its name (the single key's name is "default")."""
    if spec.auth is None:
        return {}
    if spec.auth.api_key_env is not None:
        return {_digest("auth.api_key_env", spec.auth.api_key_env): "default"}
    return {_digest(f"auth.keys ({key.name}).env", key.env): key.name for key in spec.auth.keys}


def secret(field: str, name: str | None) -> str | None:
    """The text of a secret's environment variable; None when `name` is None."""
    if name is None:
        return None
    value = os.environ.get(name, "")
    if not value:
        raise UserError(f"`{field}` names {name}, which is not set here: export {name}=... "
                        "before starting the server")
    return value


def _digest(field: str, name: str) -> str:
    key = os.environ.get(name, "")
    if not key:
        raise UserError(
            f"`{field}` names {name}, which is not set here: export {name}=... before "
            "starting the server, or remove `auth` to serve without a key"
        )
    return hashlib.sha256(key.encode()).hexdigest()
