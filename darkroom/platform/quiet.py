"""Quiet diffusers and transformers: no per-component progress bars or warnings in actor logs."""

from __future__ import annotations


def quiet_libraries() -> None:
    """Errors only from diffusers and transformers, and none of their progress bars."""
    import diffusers
    import transformers

    diffusers.utils.logging.set_verbosity_error()
    diffusers.utils.logging.disable_progress_bar()
    transformers.utils.logging.set_verbosity_error()
    transformers.utils.logging.disable_progress_bar()
