"""Step caching through diffusers' own cache hooks: reuse a transformer's work between steps.

First-Block Cache (ParaAttention's, after TeaCache: Liu et al. 2024; the first block's residual
decides whether the other blocks run), TaylorSeer (Liu et al. 2025), MagCache (Ma et al. 2025),
FasterCache (Lv et al. 2024) and Pyramid Attention Broadcast (Zhao et al. 2024), as
`runtime.cache`. They apply to transformer denoisers; each family names the caches that work on it
(`Family.caches`), and others are refused. Pipelines that do not open a cache context themselves
get one around each call, and every call starts from a clean cache. The spec
imports nothing heavy, so validating a file stays fast.

A cache skips work for a whole batch at once, so with a cache a row's image can depend on the
rows it shares a call with: `darkroom gate` measures what that costs in quality.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field

# kind -> (diffusers config class, the hooks function for models without `enable_cache`)
CACHES = {
    "first_block": ("FirstBlockCacheConfig", "apply_first_block_cache"),
    "taylorseer": ("TaylorSeerCacheConfig", "apply_taylorseer_cache"),
    "magcache": ("MagCacheConfig", "apply_mag_cache"),
    "faster": ("FasterCacheConfig", "apply_faster_cache"),
    "pab": ("PyramidAttentionBroadcastConfig", "apply_pyramid_attention_broadcast"),
}
class CacheSpec(BaseModel):
    """A step cache: its kind, and the fields of diffusers' config class for it."""

    model_config = ConfigDict(extra="forbid", frozen=True, allow_inf_nan=False)

    kind: Literal["first_block", "taylorseer", "magcache", "faster", "pab"] = Field(
        description="first_block | taylorseer | magcache | faster | pab")
    threshold: float | None = Field(
        None, ge=0, le=10, description="first_block, magcache: how much change still reuses "
        "the cached residual (higher: faster, further from the uncached image)")
    options: dict[str, Any] = Field(
        default_factory=dict, description="other fields of the diffusers config class, e.g. "
        "{cache_interval: 5} for taylorseer")


def apply_cache(pipe: Any, net: Any, cache: CacheSpec) -> None:
    """Attach the cache's hooks to a pipeline's transformer denoiser."""
    import diffusers
    import diffusers.hooks

    from darkroom.platform.errors import UserError

    config_name, apply_name = CACHES[cache.kind]
    fields = {**_callbacks(pipe, cache.kind), **cache.options}
    if cache.threshold is not None:
        fields["threshold"] = cache.threshold
    try:
        config = getattr(diffusers, config_name)(**fields)
        if hasattr(net, "enable_cache"):  # the model knows its own blocks
            net.enable_cache(config)
        else:
            getattr(diffusers.hooks, apply_name)(net, config)
    except (TypeError, ValueError) as err:  # diffusers' own words say what is missing
        raise UserError(f"`runtime.cache` ({cache.kind}) on {type(net).__name__}: "
                        f"{' '.join(str(err).split())[:300]}") from err


def _callbacks(pipe: Any, kind: str) -> dict[str, Any]:
    """FasterCache and Pyramid Attention Broadcast ask where the denoising loop is: the
    pipelines that track their current timestep (Flux, SD3) can tell them."""
    if kind not in ("faster", "pab"):
        return {}
    if not isinstance(getattr(type(pipe), "current_timestep", None), property):
        from darkroom.platform.errors import UserError

        raise UserError(f"`runtime.cache` ({kind}) needs the pipeline's current timestep, which "
                        f"{type(pipe).__name__} does not track; use first_block or taylorseer")
    fields: dict[str, Any] = {"current_timestep_callback": lambda: pipe.current_timestep}
    if kind == "faster":
        fields["attention_weight_callback"] = lambda _: 0.5  # diffusers' documented default
        fields["is_guidance_distilled"] = type(pipe).__name__.startswith("Flux")
    else:
        fields["spatial_attention_block_skip_range"] = 2
    return fields


@contextmanager
def cache_scope(net: Any) -> Iterator[None]:
    """One pipeline call: a cache context for pipelines that open none, a clean cache after."""
    from diffusers.hooks import HookRegistry
    from diffusers.hooks.hooks import CacheContext, _set_cache_context

    _set_cache_context(net, CacheContext("cond"))
    try:
        yield
    finally:
        _set_cache_context(net, None)
        HookRegistry.check_if_exists_or_initialize(net).reset_stateful_hooks(recurse=True)
