"""Sampler names -> diffusers scheduler classes with their overrides.

Schedulers are not wrapped: a sampler is a scheduler class and a few config overrides, swapped in
with ``cls.from_config(pipe.scheduler.config, **overrides)`` (diffusers' ``_compatibles``).
DDPM: Ho et al. 2020; DDIM: Song et al. 2021; DPM-Solver++: Lu et al. 2022; Karras sigmas:
Karras et al. 2022; Euler ancestral: Karras et al. 2022 / k-diffusion; UniPC: Zhao et al. 2023;
LCM: Luo et al. 2023; TCD: Zheng et al. 2024.
"""

from __future__ import annotations

import inspect
import json
from dataclasses import dataclass, field
from typing import Any

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from darkroom.platform.errors import UserError, did_you_mean


@dataclass(frozen=True)
class Sampler:
    """A sampler: a diffusers scheduler class name and the config overrides that make it."""

    scheduler: str  # a diffusers scheduler class name
    overrides: dict[str, Any] = field(default_factory=dict)
    stochastic: bool = False  # draws fresh noise at every step
    uses_eta: bool = False  # accepts `eta` in its step (DDIM)
    kind: str = "diffusion"  # "flow": rectified-flow models (SD3, Flux); "diffusion": the rest


# DPM-Solver and UniPC on flow models: flow sigmas and flow prediction (diffusers' flow support)
_FLOW = {"use_flow_sigmas": True, "prediction_type": "flow_prediction"}

SAMPLERS: dict[str, Sampler] = {
    "ddpm": Sampler("DDPMScheduler", stochastic=True),
    "ddim": Sampler("DDIMScheduler", uses_eta=True),
    "pndm": Sampler("PNDMScheduler", {"skip_prk_steps": True}),
    "lms": Sampler("LMSDiscreteScheduler"),
    "euler": Sampler("EulerDiscreteScheduler"),
    "euler_a": Sampler("EulerAncestralDiscreteScheduler", stochastic=True),
    "heun": Sampler("HeunDiscreteScheduler"),
    "dpm2": Sampler("KDPM2DiscreteScheduler"),
    "dpm2_a": Sampler("KDPM2AncestralDiscreteScheduler", stochastic=True),
    "dpmpp_2m": Sampler(
        "DPMSolverMultistepScheduler", {"algorithm_type": "dpmsolver++", "solver_order": 2}
    ),
    "dpmpp_2m_karras": Sampler(
        "DPMSolverMultistepScheduler",
        {"algorithm_type": "dpmsolver++", "solver_order": 2, "use_karras_sigmas": True},
    ),
    "dpmpp_2m_sde": Sampler(
        "DPMSolverMultistepScheduler",
        {"algorithm_type": "sde-dpmsolver++", "solver_order": 2},
        stochastic=True,
    ),
    "dpmpp_2m_sde_karras": Sampler(
        "DPMSolverMultistepScheduler",
        {"algorithm_type": "sde-dpmsolver++", "solver_order": 2, "use_karras_sigmas": True},
        stochastic=True,
    ),
    "dpmpp_2s": Sampler("DPMSolverSinglestepScheduler", {"solver_order": 2}),
    "deis": Sampler("DEISMultistepScheduler"),
    "unipc": Sampler("UniPCMultistepScheduler"),
    # consistency-distilled few-step models (LCM-LoRA, Hyper-SD, SDXL-Turbo-style): LCM (Luo et
    # al. 2023) re-noises between steps; TCD (Zheng et al. 2024) with its gamma as `eta`
    "lcm": Sampler("LCMScheduler", stochastic=True),
    "tcd": Sampler("TCDScheduler", stochastic=True, uses_eta=True),
    # rectified flow (Liu et al. 2023; Esser et al. 2024): `shift` and `use_dynamic_shifting` come
    # from the pipeline's own scheduler config and can be overridden
    "flow_euler": Sampler("FlowMatchEulerDiscreteScheduler", kind="flow"),
    "flow_euler_sde": Sampler("FlowMatchEulerDiscreteScheduler", {"stochastic_sampling": True},
                              stochastic=True, kind="flow"),
    "flow_heun": Sampler("FlowMatchHeunDiscreteScheduler", kind="flow"),
    "flow_dpmpp_2m": Sampler(
        "DPMSolverMultistepScheduler",
        {**_FLOW, "algorithm_type": "dpmsolver++", "solver_order": 2}, kind="flow",
    ),
    "flow_dpmpp_2m_sde": Sampler(
        "DPMSolverMultistepScheduler",
        {**_FLOW, "algorithm_type": "sde-dpmsolver++", "solver_order": 2},
        stochastic=True, kind="flow",
    ),
    "flow_unipc": Sampler("UniPCMultistepScheduler", dict(_FLOW), kind="flow"),
}


def scheduler_kind(config: dict[str, Any]) -> str:
    """"flow" or "diffusion": what a pipeline's own scheduler config says its model predicts."""
    flow = (str(config.get("_class_name", "")).startswith("FlowMatch")
            or config.get("use_flow_sigmas") or config.get("prediction_type") == "flow_prediction")
    return "flow" if flow else "diffusion"


def fitting(kind: str, unfit: tuple[str, ...] = ()) -> list[str]:
    """The sampler names of a kind ("diffusion", "flow", "any"), less the unfit ones."""
    return [name for name, s in SAMPLERS.items()
            if (kind == "any" or s.kind == kind) and name not in unfit]


def scheduler_class(name: str) -> type:
    """The diffusers scheduler class of a sampler (imports diffusers)."""
    import diffusers

    return getattr(diffusers, SAMPLERS[name].scheduler)


def allowed_overrides(name: str) -> set[str]:
    """Config keys the sampler's scheduler accepts (its ``__init__`` parameters); flow samplers
    on DPM-Solver/UniPC also take `shift`, the FlowMatch name of their `flow_shift`."""
    params = inspect.signature(scheduler_class(name).__init__).parameters
    allowed = {p for p in params if p not in ("self", "kwargs")}
    if SAMPLERS[name].kind == "flow" and "flow_shift" in allowed:
        allowed.add("shift")
    return allowed


class SamplerSpec(BaseModel):
    """A sampler by registry name, with optional scheduler config overrides."""

    model_config = ConfigDict(extra="forbid", frozen=True, allow_inf_nan=False)

    name: str = Field("ddim", description="registry name, e.g. ddim, dpmpp_2m, euler_a")
    overrides: dict[str, Any] = Field(
        default_factory=dict, description="scheduler config keys, e.g. {timestep_spacing: trailing}"
    )

    @field_validator("name")
    @classmethod
    def _known(cls, name: str) -> str:
        if name not in SAMPLERS:
            raise ValueError(f"unknown sampler `{name}`;{did_you_mean(name, SAMPLERS)}")
        return name

    @model_validator(mode="after")
    def _overrides_fit(self) -> SamplerSpec:
        if not self.overrides:  # nothing to check: no need to import diffusers
            return self
        allowed = allowed_overrides(self.name)
        for key in self.overrides:
            if key not in allowed:
                raise ValueError(
                    f"`{key}` is not a config key of {SAMPLERS[self.name].scheduler} "
                    f"(sampler `{self.name}`);{did_you_mean(key, allowed)}"
                )
        return self

    @property
    def key(self) -> str:
        """A stable string naming this sampler and its overrides."""
        return json.dumps({"name": self.name, "overrides": self.overrides}, sort_keys=True)


def build_scheduler(spec: SamplerSpec, base_config: dict[str, Any]) -> Any:
    """A scheduler of the sampler's class, configured from the pipeline's own scheduler config."""
    entry = SAMPLERS[spec.name]
    overrides = {**entry.overrides, **spec.overrides}
    if entry.kind == "flow" and "shift" in allowed_overrides(spec.name):
        # the pipeline's FlowMatch config names its shift `shift`; DPM-Solver/UniPC `flow_shift`
        if "shift" in overrides:
            overrides["flow_shift"] = overrides.pop("shift")
        overrides.setdefault("flow_shift", base_config.get("shift", 1.0))
        overrides.setdefault("use_dynamic_shifting", base_config.get("use_dynamic_shifting", False))
    try:
        return scheduler_class(spec.name).from_config(base_config, **overrides)
    except (TypeError, ValueError, NotImplementedError) as err:
        raise UserError(f"sampler `{spec.name}` with overrides {spec.overrides}: {err}") from err


def scheduler_config_json(scheduler: Any) -> str:
    """The resolved scheduler config, recorded with every image."""
    config = {k: v for k, v in dict(scheduler.config).items() if not k.startswith("_")}
    config["_class_name"] = type(scheduler).__name__
    return json.dumps(config, sort_keys=True, default=str)
