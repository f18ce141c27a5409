"""Bundled small trained models: `builtin:digits-dit`, `builtin:digits-ldm` and the digits
classifier, all trained offline on scikit-learn's digits by `darkroom zoo train-digits`.

Importing this package is cheap (no torch); the models load on demand.
"""

from __future__ import annotations

from pathlib import Path

WEIGHTS_ROOT = Path(__file__).parent / "weights"
BUILTIN_MODELS: dict[str, Path] = {
    "digits-dit": WEIGHTS_ROOT / "digits-dit",
    "digits-ldm": WEIGHTS_ROOT / "digits-ldm",
}
BUNDLED_FOLDERS = (*BUILTIN_MODELS, "digits-classifier")


def weights_folder(name: str) -> Path:
    """The folder of a bundled model: "digits-dit", "digits-ldm" or "digits-classifier"."""
    if name not in BUNDLED_FOLDERS:
        raise KeyError(f"no bundled model `{name}`; known: {', '.join(BUNDLED_FOLDERS)}")
    return WEIGHTS_ROOT / name

