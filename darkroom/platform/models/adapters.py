"""LoRA adapters (Hu et al. 2022) on a loaded pipeline: loaded once, switched between row groups.

Loading and switching are diffusers' own (`load_lora_weights`, `set_adapters`, `fuse_lora`, PEFT
backend); this module finds the weights file, hashes it for provenance, counts loads, and keeps
the pipeline's active set equal to what the current group of rows asks for, so a change of scale
or of adapter set never reloads the base model.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from darkroom.platform.data.records import file_sha256
from darkroom.platform.errors import ModelLoadError
from darkroom.platform.models.names import is_hub_id
from darkroom.platform.models.spec import LoraSpec

DEFAULT_WEIGHT_NAME = "pytorch_lora_weights.safetensors"  # what save_lora_weights writes
Active = tuple[tuple[str, float], ...]  # (adapter name, scale) in the model spec's order


@dataclass(frozen=True)
class Adapter:
    """A loaded adapter: its name, where its weights came from, and their SHA-256."""

    name: str
    path: str
    sha256: str


def weights_file(lora: LoraSpec, allow_pickle: bool = False) -> Path:
    """The adapter's weights file: the file given, the one inside a folder, or a hub download."""
    path = Path(lora.path).expanduser()
    if path.is_dir():
        path = path / (lora.weight_name or DEFAULT_WEIGHT_NAME)
    elif not path.exists():
        if not is_hub_id(lora.path):
            raise ModelLoadError(f"adapter `{lora.name}`: `{lora.path}` is neither a file, a "
                                 "folder that exists, nor a hub id (org/name)")
        from huggingface_hub import hf_hub_download

        try:
            path = Path(hf_hub_download(lora.path, lora.weight_name or DEFAULT_WEIGHT_NAME))
        except Exception as err:  # any failure means the same fix
            raise ModelLoadError(
                f"adapter `{lora.name}`: cannot fetch `{lora.path}` from the hub "
                f"({type(err).__name__}); with no network, copy the file here and give its path"
            ) from err
    if not path.is_file():
        raise ModelLoadError(f"adapter `{lora.name}`: no weights file {path}; give the file, or "
                             "the folder and its `weight_name`")
    if path.suffix != ".safetensors" and not allow_pickle:
        raise ModelLoadError(f"adapter `{lora.name}`: {path.name} is not safetensors; pickled "
                             "weights load only with the model's `allow_pickle: true`")
    if path.suffix == ".safetensors":
        problem = safetensors_problem(path)
        if problem:
            raise ModelLoadError(f"adapter `{lora.name}`: {path.name} {problem}")
    return path


# safetensors' own cap on the JSON header (its reader refuses larger ones, after reading them)
MAX_HEADER_BYTES = 100_000_000


def safetensors_problem(path: Path) -> str | None:
    """Why a .safetensors file is not a readable set of tensors, or None: read from its header
    alone (8 bytes of length, then JSON), so a bad file costs no memory to refuse.

    The format: a little-endian u64 header length, a JSON header mapping each tensor's name to
    its dtype, shape and [begin, end) byte offsets in the data that follows."""
    size = path.stat().st_size
    with path.open("rb") as handle:
        head = handle.read(8)
        if len(head) < 8:
            return "is not a safetensors file: shorter than its 8-byte header length"
        length = int.from_bytes(head, "little")
        if length > size - 8:
            return (f"is not a safetensors file: its header claims {length} bytes and the "
                    f"file holds {size}")
        if length > MAX_HEADER_BYTES:
            return (f"is not a safetensors file: its header claims {length} bytes, more than "
                    f"the format's {MAX_HEADER_BYTES}")
        try:
            header = json.loads(handle.read(length))
        except (UnicodeDecodeError, ValueError):
            return "is not a safetensors file: its header is not JSON"
    tensors = {k: v for k, v in header.items() if k != "__metadata__"} if isinstance(
        header, dict) else None
    if not tensors:
        return "holds no tensors"
    data = size - 8 - length
    for name, entry in tensors.items():
        offsets = entry.get("data_offsets") if isinstance(entry, dict) else None
        if (not isinstance(offsets, list) or len(offsets) != 2
                or not all(isinstance(o, int) for o in offsets)
                or not 0 <= offsets[0] <= offsets[1] <= data):
            return f"is damaged: tensor `{name[:80]}` lies outside the file's data"
    if not any("lora" in name.lower() for name in tensors):
        return "holds no LoRA tensors (no name contains `lora`): not a LoRA adapter"
    return None


class Adapters:
    """The adapters of one pipeline, and which of them are active at what scale."""

    def __init__(self, pipe: Any, allow_pickle: bool = False, fuse: bool = False) -> None:
        if not hasattr(pipe, "load_lora_weights"):
            raise ModelLoadError(f"{type(pipe).__name__} takes no LoRA adapters")
        self.pipe = pipe
        self.allow_pickle = allow_pickle
        self.fuse = fuse
        self.loaded: dict[str, Adapter] = {}
        self.loads = 0  # how many times weights were read from disk (tests: never twice)
        self.active: Active | None = None
        self._fused = False

    def load(self, lora: LoraSpec) -> Adapter:
        """Load an adapter's weights into the pipeline (once: a loaded name is kept)."""
        if lora.name in self.loaded:
            return self.loaded[lora.name]
        path = weights_file(lora, self.allow_pickle)
        self._unfuse()
        try:
            self.pipe.load_lora_weights(str(path.parent), weight_name=path.name,
                                        adapter_name=lora.name)
        except (ValueError, KeyError, RuntimeError, OSError) as err:
            raise ModelLoadError(f"adapter `{lora.name}` ({path}) does not fit "
                                 f"{type(self.pipe).__name__}: {str(err)[:300]}") from err
        # diffusers only warns when no key of the file matches a layer: the adapter would then
        # silently change nothing
        if not any(lora.name in names for names in self.pipe.get_list_adapters().values()):
            raise ModelLoadError(f"adapter `{lora.name}` ({path}) does not fit "
                                 f"{type(self.pipe).__name__}: none of its layers match "
                                 "(trained for another model family?)")
        self.loads += 1
        self.loaded[lora.name] = Adapter(lora.name, str(path), file_sha256(path))
        self.active = None  # loading activates the new adapter: set the wanted ones again
        return self.loaded[lora.name]

    def unload(self, name: str) -> None:
        """Drop an adapter's weights from the pipeline (serve evicts the least used ones)."""
        if name in self.loaded:
            self._unfuse()
            self.pipe.delete_adapters(name)
            del self.loaded[name]
            self.active = None

    def activate(self, active: Active) -> None:
        """Make exactly these adapters active at these scales (none: the base model)."""
        if active == self.active:
            return
        self._unfuse()
        if not active:
            self.pipe.disable_lora()
        else:
            self.pipe.enable_lora()
            self.pipe.set_adapters([name for name, _ in active],
                                   adapter_weights=[scale for _, scale in active])
            if self.fuse:  # merged into the weights: no LoRA matmuls per step
                self.pipe.fuse_lora(adapter_names=[name for name, _ in active])
                self._fused = True
        self.active = active

    def recorded(self, active: Active) -> str:
        """JSON of the active adapters for the `adapters` column: name, scale, SHA-256."""
        return json.dumps([{"name": name, "scale": scale, "sha256": self.loaded[name].sha256}
                           for name, scale in active])

    def _unfuse(self) -> None:
        if self._fused:
            self.pipe.unfuse_lora()
            self._fused = False


def save_random_lora(model: str, out: str | Path, seed: int = 0, rank: int = 4) -> Path:
    """A random LoRA adapter (Hu et al. 2022) for a model (`tiny:sd`, `builtin:digits-ldm`, a
    folder), saved as diffusers saves a trained one (`pytorch_lora_weights.safetensors`); its
    weights are non-zero, so it changes the images: a stand-in for a fine-tune."""
    import torch
    from peft import LoraConfig
    from peft.utils import get_peft_model_state_dict

    from darkroom.platform.errors import UserError
    from darkroom.platform.models.loading import load_model
    from darkroom.platform.models.spec import ModelSpec

    loaded = load_model(ModelSpec(model=model), "cpu")
    if not loaded.family.lora or not hasattr(loaded.pipe, "save_lora_weights"):
        raise UserError(f"`{model}` is {loaded.family.name}: it takes no LoRA adapters")
    torch.manual_seed(seed)
    unet = getattr(loaded.pipe, "unet", None)
    net, keyword = (unet, "unet_lora_layers") if unet is not None else (
        loaded.pipe.transformer, "transformer_lora_layers")
    net.add_adapter(LoraConfig(r=rank, lora_alpha=rank, init_lora_weights=False,
                               target_modules=["to_q", "to_k", "to_v", "to_out.0"]))
    out = Path(out)
    type(loaded.pipe).save_lora_weights(out, **{keyword: get_peft_model_state_dict(net)})
    return out / "pytorch_lora_weights.safetensors"
