"""Runtime options: where a pipeline runs and what speed-ups are applied to it once it is loaded.

Each option is a small function in a registry, applied in order after loading; the chosen options
are recorded with every image (`runtime_options`).
"""

from __future__ import annotations

import json
from collections.abc import Callable
from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field

from darkroom.platform.errors import UserError
from darkroom.platform.models.caching import CacheSpec, apply_cache

CUDA_ONLY = ("cpu_offload", "quantize")


class RuntimeSpec(BaseModel):
    """Device, threads and the speed options of one Generator."""

    model_config = ConfigDict(extra="forbid", frozen=True, allow_inf_nan=False)

    device: str = Field("auto", description="auto | cpu | cuda | cuda:N")
    torch_threads: int | None = Field(
        None, ge=1, le=1024, description="torch threads on CPU; default 1 per actor"
    )
    batch_size: Annotated[int, Field(ge=1, le=4096)] | Literal["auto"] | None = Field(
        None, description="most rows per pipeline call; auto: halve on GPU out-of-memory and "
        "remember the size that fits; none: as many as a batch brings",
    )
    attention: Literal["sdpa", "eager"] = Field(
        "sdpa", description="sdpa: torch scaled_dot_product_attention (diffusers' default)"
    )
    channels_last: bool = Field(False, description="channels_last memory format for UNet and VAE")
    fuse_qkv: bool = Field(False, description="fuse attention Q/K/V projections into one matmul")
    torch_compile: Literal["default", "reduce-overhead", "max-autotune"] | None = Field(
        None, description="torch.compile mode for the denoiser; compiled once per actor"
    )
    vae_slicing: bool = Field(False, description="decode one image at a time (less memory)")
    vae_tiling: bool = Field(False, description="decode in tiles (large images, less memory)")
    attention_slicing: bool = Field(False, description="attention in slices (less memory)")
    cpu_offload: bool = Field(False, description="model CPU offload (GPU only; much less memory)")
    cache: CacheSpec | None = Field(
        None, description="step caching of a transformer denoiser (platform.caching)")
    compile_regions: bool = Field(
        False, description="regional compilation: torch.compile each repeated transformer block "
        "once (diffusers' compile_repeated_blocks), a much shorter cold start than torch_compile")
    quantize: Literal["int8_weight_only", "float8_weight_only"] | None = Field(
        None, description="torchao weight-only quantization of the denoiser (CUDA GPU only)")
    fuse_lora: bool = Field(False, description="merge the active LoRA adapters into the weights "
                            "(faster when one adapter set serves a whole run)")

    def device_problems(self) -> list[tuple[str, str]]:
        """(field, message) for options that an explicitly chosen CPU device cannot run."""
        if self.device != "cpu":
            return []
        return [(name, f"needs a CUDA GPU but `runtime.device` is cpu; set `{name}` to false "
                       "or the device to cuda/auto")
                for name in CUDA_ONLY if getattr(self, name)]

    def recorded(self) -> str:
        """The options as a JSON string for the `runtime_options` column."""
        return json.dumps(self.model_dump(exclude={"device", "batch_size"}), sort_keys=True)


def denoiser(pipe: Any) -> Any:
    """The network called at every step: a UNet or a transformer."""
    return getattr(pipe, "unet", None) or pipe.transformer


def _eager_attention(pipe: Any, spec: RuntimeSpec) -> None:
    from diffusers.models.attention_processor import AttnProcessor

    for module in (denoiser(pipe), getattr(pipe, "vae", None), getattr(pipe, "controlnet", None)):
        if module is not None and hasattr(module, "set_attn_processor"):
            module.set_attn_processor(AttnProcessor())


def _channels_last(pipe: Any, spec: RuntimeSpec) -> None:
    import torch

    for module in (denoiser(pipe), getattr(pipe, "vae", None), getattr(pipe, "controlnet", None)):
        if module is not None:
            module.to(memory_format=torch.channels_last)


def _fuse_qkv(pipe: Any, spec: RuntimeSpec) -> None:
    if not hasattr(pipe, "fuse_qkv_projections"):
        raise UserError(f"`fuse_qkv` is not supported by {type(pipe).__name__}; set it to false")
    pipe.fuse_qkv_projections()


def _compile(pipe: Any, spec: RuntimeSpec) -> None:
    # dynamic=False with fixed shape buckets: each (batch, size) compiles once and is reused
    net = denoiser(pipe)
    net.compile(mode=spec.torch_compile, dynamic=False)


def _cache(pipe: Any, spec: RuntimeSpec) -> None:
    apply_cache(pipe, denoiser(pipe), spec.cache)


def _compile_regions(pipe: Any, spec: RuntimeSpec) -> None:
    net = denoiser(pipe)
    if not getattr(net, "_repeated_blocks", None):
        raise UserError(f"`compile_regions`: {type(net).__name__} names no repeated blocks to "
                        "compile; use `torch_compile` for it")
    net.compile_repeated_blocks(dynamic=False)


def _quantize(pipe: Any, spec: RuntimeSpec) -> None:
    if pipe.device.type != "cuda":
        raise UserError("`quantize` needs a CUDA GPU (torchao's weight-only kernels); remove it "
                        "on CPU")
    try:
        from torchao import quantization
    except ImportError as err:
        raise UserError("`quantize` needs torchao: pip install torchao (on the GPU machines)"
                        ) from err
    quantization.quantize_(denoiser(pipe), getattr(quantization, spec.quantize)())


def _needs_cuda(option: str, action: Callable[[Any], None]) -> Callable[[Any, RuntimeSpec], None]:
    def apply(pipe: Any, spec: RuntimeSpec) -> None:
        if pipe.device.type != "cuda":
            raise UserError(f"`{option}` needs a CUDA GPU; set it to false on CPU")
        action(pipe)

    return apply


# option name -> (is it on?, how to apply it); applied in this order
OPTIONS: dict[str, tuple[Callable[[RuntimeSpec], bool], Callable[[Any, RuntimeSpec], None]]] = {
    "attention": (lambda s: s.attention == "eager", _eager_attention),
    "fuse_qkv": (lambda s: s.fuse_qkv, _fuse_qkv),
    "channels_last": (lambda s: s.channels_last, _channels_last),
    "vae_slicing": (lambda s: s.vae_slicing, lambda p, s: p.vae.enable_slicing()),
    "vae_tiling": (lambda s: s.vae_tiling, lambda p, s: p.vae.enable_tiling()),
    "attention_slicing": (lambda s: s.attention_slicing, lambda p, s: p.enable_attention_slicing()),
    "cpu_offload": (
        lambda s: s.cpu_offload,
        _needs_cuda("cpu_offload", lambda p: p.enable_model_cpu_offload()),
    ),
    "cache": (lambda s: s.cache is not None, _cache),
    "quantize": (lambda s: s.quantize is not None, _quantize),
    "compile_regions": (lambda s: s.compile_regions, _compile_regions),
    "torch_compile": (lambda s: s.torch_compile is not None, _compile),
}


def configure_threads(spec: RuntimeSpec, device: str) -> None:
    """One torch thread per CPU actor unless the spec says otherwise (threads fight on CPU)."""
    import torch

    if device == "cpu":
        torch.set_num_threads(spec.torch_threads or 1)


def apply_options(pipe: Any, spec: RuntimeSpec, family: Any) -> list[str]:
    """Apply every enabled option to a loaded pipeline of a family; returns the names applied.

    Options that do not fit the family (a step cache on a UNet) are refused first."""
    problem = family.cache_problem(spec.cache)
    if problem:
        raise UserError(problem)
    applied = []
    for name, (enabled, apply) in OPTIONS.items():
        if enabled(spec):
            apply(pipe, spec)
            applied.append(name)
    return applied
