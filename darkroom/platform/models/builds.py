"""`tiny:<family>` and `random:<name>` pipelines, built from the family registry.

A tiny pipeline is built once per cache folder and then loaded like any saved pipeline, so the
loading code under test is the real one. A random full-size pipeline is built in memory, its
weights created directly on the target device.
"""

from __future__ import annotations

import shutil
import tempfile
from pathlib import Path
from typing import Any

from darkroom.platform.errors import UserError, did_you_mean
from darkroom.platform.families import registered
from darkroom.platform.models.names import tiny_path
from darkroom.platform.quiet import quiet_libraries


def build_tiny(family: str, seed: int = 0) -> Any:
    """A random-init tiny pipeline of `family`; the same seed gives the same weights."""
    import torch

    families = registered()
    if family not in families:
        raise UserError(f"unknown tiny family `{family}`;{did_you_mean(family, families)}")
    torch.manual_seed(seed)
    return families[family].tiny()


def save_tiny(family: str, out: str | Path, seed: int = 0) -> Path:
    """Build a tiny pipeline and save it as a standard diffusers folder (safetensors)."""
    quiet_libraries()
    out = Path(out)
    build_tiny(family, seed).save_pretrained(out, safe_serialization=True)
    return out


def tiny_folder(family: str) -> Path:
    """The cached folder of `tiny:<family>`, built on first use.

    Built in a temporary folder and renamed into place, so concurrent actors never read half a
    pipeline; whoever renames second finds the folder there and throws its copy away.
    """
    folder = tiny_path(family)
    if (folder / "model_index.json").exists():
        return folder
    folder.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{family}-", dir=folder.parent))
    try:
        save_tiny(family, staging)
        try:
            staging.rename(folder)
        except OSError:
            if not (folder / "model_index.json").exists():
                raise
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return folder


def build_fullsize(name: str, device: str, dtype: Any, seed: int = 0) -> Any:
    """`random:<name>`: a full-size pipeline with random weights created on `device`."""
    import torch

    from darkroom.platform.builders.fullsize import placement

    entry = next((e for f in registered().values() for e in f.fullsize if e.name == name), None)
    if entry is None:
        names = [e.name for f in registered().values() for e in f.fullsize]
        raise UserError(f"unknown full-size model `random:{name}`;{did_you_mean(name, names)}")
    torch.manual_seed(seed)
    with placement(device, dtype):
        pipe = entry.build()
    return pipe.to(device)
