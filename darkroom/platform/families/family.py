"""A model family as one unit: its table row, its pipeline call, its builders and its rules.

Each family module (`platform/families/<name>.py`) defines one `Family`. The rules are methods,
so `darkroom validate`, the generator's row preparation and the serve file's checks all ask the
same question and get the same words back. Nothing here imports torch: a family's call and
builders import what they need when they run.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any, Literal

from darkroom.platform.families.conditioning import TEXT, Conditioning

SamplerKind = Literal["diffusion", "flow", "any"]


@dataclass(frozen=True)
class Grid:
    """The image sizes a model makes: sides a multiple of `multiple`, or only `native`."""

    multiple: int
    native: int | None = None  # known once the model is loaded
    fixed: bool = False  # only the native size (DiT)


@dataclass(frozen=True)
class FullSize:
    """A full-size architecture with random weights, `random:<name>`, for the GPU suite."""

    name: str
    build: Callable[[], Any]
    labels: Mapping[int, str] | None = None  # id2label of a class-conditional model


def _no_negative_rule(spec: Any, pipeline_class: type | None) -> str | None:
    return None


def _no_load_options(spec: Any, dtype: Any) -> dict[str, Any]:
    return {}


def _vae_grid(pipe: Any) -> int:
    """Sides are multiples of the VAE factor times the denoiser's patch size."""
    net = getattr(pipe, "unet", None) or pipe.transformer
    patch = int(getattr(net.config, "patch_size", 1) or 1)
    return int(getattr(pipe, "vae_scale_factor", 8)) * patch


@dataclass(frozen=True)
class Family:
    """One model family. `call(pipe, batch)` runs a group of rows of equal settings and returns
    float N x H x W x 3 images in [0, 1]; `tiny()` builds a random-init tiny pipeline offline;
    `fullsize` lists full-size random-weight architectures."""

    name: str
    description: str
    pipeline: str  # diffusers pipeline class; "" for t2i: the folder's own class
    call: Callable[[Any, Any], Any]
    tiny: Callable[[], Any]
    conditioning: Conditioning = TEXT
    samplers: SamplerKind = "diffusion"  # "flow": rectified flow; "any": read from the model
    unfit: tuple[str, ...] = ()  # samplers of the kind this family's pipeline cannot drive
    options: tuple[str, ...] = ()  # ModelSpec fields only this family takes
    call_options: tuple[str, ...] = ()  # generation call options it takes (SDXL micro-cond.)
    size_multiple: int = 8  # its usual grid, for checks before loading
    fixed_size: bool = False  # makes its native size only
    lora: bool = True  # takes LoRA adapters (diffusers' load_lora_weights, PEFT backend)
    caches: tuple[str, ...] = ()  # `runtime.cache` kinds that work on it
    fullsize: tuple[FullSize, ...] = ()
    tiny_labels: Mapping[int, str] | None = None  # id2label of `tiny:<name>`
    tiny_pipeline: str = ""  # the class `tiny:<name>` is, when not `pipeline`
    aliases: tuple[str, ...] = ()  # other pipeline classes loaded as this family
    # (spec, pipeline class or None when unknown) -> why a negative prompt cannot be honoured
    negative_rule: Callable[[Any, type | None], str | None] = _no_negative_rule
    # (spec, torch dtype) -> extra from_pretrained arguments (components, dropped encoders)
    load_options: Callable[[Any, Any], dict[str, Any]] = _no_load_options
    # ModelSpec option -> the diffusers model class its weights load as, passed to the pipeline
    components: Mapping[str, str] = field(default_factory=dict)
    refiner: str = ""  # the pipeline class of the refiner named by `refiner` (SDXL)
    check_loaded: Callable[[Any, Any], None] | None = None  # refuse a pipeline it cannot run
    grid_of: Callable[[Any], int] = _vae_grid  # the loaded pipeline's size multiple
    negative_field: str = ""  # the ModelSpec option that lets it honour negative prompts
    edits: tuple[str, ...] = ()  # edit settings its call takes: strength, image_guidance_scale
    # a family for pipeline classes outside the table: parts of class names it takes (e.g.
    # "Inpaint"); a class no family claims is text-to-image (t2i)
    claims: tuple[str, ...] = ()
    denoiser: Literal["unet", "transformer"] = "unet"
    # class-conditional: (label name -> id, number of classes) of a loaded pipeline
    class_table: Callable[[Any], tuple[dict[str, int], int]] | None = None

    # -- rules ----------------------------------------------------------------------------------

    def who(self, label: str) -> str:
        """How messages name a model of this family: `label (family)`."""
        return f"{label} ({self.name})"

    def option_problems(self, spec: Any) -> list[tuple[str, str]]:
        """(field, message) for each family-specific option set on a model of this family that
        only other families take."""
        # the families that take an option, the text-to-image ones first
        families = sorted(registered().values(), key=lambda f: (bool(f.conditioning.inputs),
                                                                f.name))
        takers = {option: [f.name for f in families if option in f.options]
                  for f in families for option in f.options}
        problems = []
        if spec.loras and not self.lora:
            problems.append(("loras", f"{self.name} models take no LoRA adapters; remove "
                                      "`loras`"))
        for option in takers:
            unset = type(spec).model_fields[option].get_default(call_default_factory=True)
            if getattr(spec, option) != unset and option not in self.options:
                problems.append((option, f"`{option}` applies to "
                                         f"{_listing(takers.get(option, []))} models only; "
                                         f"`{spec.model}` is {self.name}"))
        return problems

    def grid(self, pipe: Any = None) -> Grid:
        """The sizes it makes: from the loaded pipeline, or (None) its usual grid."""
        if pipe is None:
            return Grid(self.size_multiple, None, self.fixed_size)
        net = getattr(pipe, "unet", None) or pipe.transformer
        # Flux's transformer has no sample size; its pipeline names a default
        latent = getattr(net.config, "sample_size", None) or getattr(
            pipe, "default_sample_size", 64)
        # a pipeline without a VAE denoises pixels: factor 1
        factor = getattr(pipe, "vae_scale_factor", 8 if hasattr(pipe, "vae") else 1)
        native = int(latent) * int(factor)
        return Grid(self.grid_of(pipe), native, self.fixed_size)

    def size_problems(self, width: int | None, height: int | None, grid: Grid,
                      who: str) -> list[tuple[str, str]]:
        """(side, message) for a size the grid cannot make; unset sides take the native size."""
        if grid.fixed:
            if (width and width != grid.native) or (height and height != grid.native):
                size = f"{grid.native}x{grid.native} images" if grid.native else "images of its "\
                       "native size"
                return [("width" if width else "height",
                         f"{who} makes {size} only: leave width and height unset")]
            return []
        return [(side, f"`{side}` must be a positive multiple of {grid.multiple} (the latent "
                       f"grid of {who}), got {value}")
                for side, value in (("width", width), ("height", height))
                if value is not None and (value <= 0 or value % grid.multiple)]

    def negative_problem(self, spec: Any, pipeline_class: type | None, who: str) -> str | None:
        """Why a negative prompt cannot be honoured by this model, or None."""
        reason = self.negative_rule(spec, pipeline_class)
        return None if reason is None else f"{who} {reason}"

    def call_option_problem(self, options: Mapping[str, Any], who: str) -> str | None:
        """Why call options (SDXL micro-conditioning) do not apply, or None."""
        foreign = [name for name in options if name not in self.call_options]
        if not foreign:
            return None
        return (f"micro-conditioning ({', '.join(foreign)}) applies to sdxl models only; "
                f"{who} takes none")

    def argument_problem(self, argument: str, pipeline_class: type | None,
                         who: str) -> str | None:
        """Why the pipeline does not take an optional call argument (eta, ...), or None."""
        if pipeline_class is None or self.pipeline:  # a table family: its call says what it uses
            return None
        from darkroom.platform.families.calling import call_parameters

        if argument in call_parameters(pipeline_class):
            return None
        return f"{pipeline_class.__name__} ({who}) takes no `{argument}`; leave it unset"

    def strength_problem(self, steps: int, strength: float | None,
                         pipeline_class: type | None) -> str | None:
        """Why an edit at `strength` (None: the pipeline's default) over `steps` steps would
        run no denoising step at all (the pipeline runs int(steps x strength) of them)."""
        if "strength" not in self.edits:
            return None
        if strength is None:
            if pipeline_class is None:
                return None
            import inspect

            parameter = inspect.signature(pipeline_class.__call__).parameters.get("strength")
            strength = parameter.default if parameter is not None else None
            if not isinstance(strength, int | float):
                return None
        if int(steps * strength) >= 1:
            return None
        import math

        return (f"`strength` {strength:g} x `steps` {steps} leaves no denoising step (the "
                f"pipeline runs int(steps x strength)): use at least "
                f"{math.ceil(1 / strength) if strength > 0 else 'a strength above 0 and'} steps")

    def sampler_kind(self, scheduler_config: Mapping[str, Any] | None) -> str | None:
        """"diffusion" or "flow"; for "any" what the model's scheduler config says (None when
        it is not known yet: a hub id before loading)."""
        if self.samplers != "any":
            return self.samplers
        if scheduler_config is None:
            return None
        from darkroom.platform.samplers import scheduler_kind

        return scheduler_kind(dict(scheduler_config))

    def fitting(self, kind: str) -> list[str]:
        """The sampler names that fit a model of this family whose samplers are of `kind`."""
        from darkroom.platform.samplers import fitting

        return fitting(kind, self.unfit)

    def sampler_problem(self, sampler: str, kind: str | None, label: str) -> str | None:
        """Why a sampler does not fit (its kind, or this family's pipeline), or None."""
        if kind is None:
            return None
        fits = self.fitting(kind)
        if sampler in fits:
            return None
        return f"`{sampler}` does not fit {self.name} models ({label}); fitting: {', '.join(fits)}"

    def cache_problem(self, cache: Any) -> str | None:
        """Why a step cache (`runtime.cache`) cannot apply to this family, or None."""
        if cache is None or cache.kind in self.caches:
            return None
        if self.denoiser == "unet":
            takers = [f.name for f in registered().values() if f.denoiser == "transformer"]
            return (f"step caching (`runtime.cache`) applies to transformer denoisers "
                    f"({', '.join(takers)}); {self.name} models have a UNet: remove `cache`")
        takers = [f.name for f in registered().values() if cache.kind in f.caches]
        return (f"`runtime.cache` {cache.kind} does not work on {self.name} models; it does on "
                f"{', '.join(takers)}")


def _listing(names: list[str]) -> str:
    """a, b and c"""
    return " and ".join([", ".join(names[:-1]), names[-1]] if len(names) > 1 else names)


# -- the registry -------------------------------------------------------------------------------

_REGISTRY: dict[str, Family] = {}
_DISCOVERED = False
PLUGINS_ENV = "DARKROOM_PLUGINS"  # comma-separated modules that register families or scorers


def register(family: Family) -> Family:
    """Add a family to the registry (a family module calls this for its `FAMILY`)."""
    known = _REGISTRY.get(family.name)
    if known is not None and known is not family:
        raise ValueError(f"a model family named `{family.name}` is registered twice")
    _REGISTRY[family.name] = family
    return family


def registered() -> dict[str, Family]:
    """Every family: the modules of `darkroom.platform.families`, then the plugin modules named
    in $DARKROOM_PLUGINS (imported once; each registers what it defines)."""
    global _DISCOVERED
    if not _DISCOVERED:
        _DISCOVERED = True
        import importlib
        import os
        import pkgutil

        package = importlib.import_module(__package__)
        for info in pkgutil.iter_modules(package.__path__):
            if info.name not in _SHARED_MODULES:
                importlib.import_module(f"{__package__}.{info.name}")
        for name in filter(None, os.environ.get(PLUGINS_ENV, "").split(",")):
            importlib.import_module(name.strip())
    return _REGISTRY


_SHARED_MODULES = {"family", "conditioning", "calling", "editing"}  # not family modules
