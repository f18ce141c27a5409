"""A small CNN that reads 16x16 digits: the judge of class accuracy and the `digits` feature
extractor for FID (its 64-d penultimate layer plays the part of Inception's pool3; FID: Heusel et
al. 2017).
"""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from darkroom.platform.zoo.data import (
    IMAGE_SIZE,
    NUM_CLASSES,
    digits_dataset,
    to_tensor,
)

__all__ = [
    "DigitsClassifier",
    "DigitsFeatureExtractor",
    "digits_dataset",
    "load_digits_classifier",
    "train_classifier",
]

CLASSIFIER_NAME = "digits-classifier"


class DigitsClassifier(nn.Module):
    """conv-conv-pool x 2, then 1024 -> 64 -> ReLU -> 10. Input float NCHW RGB in [0, 1], any
    size; output logits."""

    def __init__(self, width: int = 32, num_features: int = 64, num_classes: int = NUM_CLASSES):
        super().__init__()
        self.config = {"width": width, "num_features": num_features, "num_classes": num_classes,
                       "image_size": IMAGE_SIZE}
        self.num_features = num_features
        w = width
        self.body = nn.Sequential(
            nn.Conv2d(3, w, 3, padding=1), nn.ReLU(),
            nn.Conv2d(w, w, 3, padding=1), nn.ReLU(),
            nn.MaxPool2d(2),  # 8x8
            nn.Conv2d(w, 2 * w, 3, padding=1), nn.ReLU(),
            nn.Conv2d(2 * w, 2 * w, 3, padding=1), nn.ReLU(),
            nn.MaxPool2d(2),  # 4x4
            nn.Flatten(),
            nn.Linear(2 * w * (IMAGE_SIZE // 4) ** 2, num_features),
        )
        self.act = nn.ReLU()
        self.dropout = nn.Dropout(0.3)
        self.head = nn.Linear(num_features, num_classes)

    def _prepare(self, x: torch.Tensor) -> torch.Tensor:
        if x.shape[-2:] != (IMAGE_SIZE, IMAGE_SIZE):
            # antialias, so a large generated image is averaged down rather than sampled
            x = F.interpolate(x, size=(IMAGE_SIZE, IMAGE_SIZE), mode="bilinear",
                              align_corners=False, antialias=True)
        return (x.float() - 0.5) / 0.5

    def features(self, x: torch.Tensor) -> torch.Tensor:
        """The 64-d penultimate features, N x 64, taken before their ReLU: after it, 13 of the 64
        units never fire on real digits, and FID wants features that are close to Gaussian."""
        return self.body(self._prepare(x))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Class logits, N x num_classes, of float NCHW images in [0, 1] of any size."""
        return self.head(self.dropout(self.act(self.features(x))))

    @torch.no_grad()
    def predict(self, x: torch.Tensor, batch_size: int = 256) -> torch.Tensor:
        """Predicted class ids for float NCHW images in [0, 1]."""
        was_training = self.training
        self.eval()
        out = torch.cat([self(x[i:i + batch_size]).argmax(1) for i in range(0, len(x), batch_size)])
        self.train(was_training)
        return out

    def save(self, folder: str | Path) -> Path:
        """Write model.safetensors and config.json into `folder` (made if need be); returns it."""
        from safetensors.torch import save_file

        folder = Path(folder)
        folder.mkdir(parents=True, exist_ok=True)
        save_file({k: v.contiguous() for k, v in self.state_dict().items()},
                  str(folder / "model.safetensors"))
        (folder / "config.json").write_text(json.dumps(self.config, indent=2) + "\n")
        return folder


class DigitsFeatureExtractor(nn.Module):
    """The classifier's 64-d features as a module whose forward returns them, for metric libraries
    that call `model(images)`: torchmetrics' FID (`feature=`, uint8 NCHW) or clean-fid
    (`custom_feat_extractor`, floats in [0, 255]: pass `scale=255`)."""

    def __init__(self, classifier: DigitsClassifier, scale: float = 1.0):
        super().__init__()
        self.classifier = classifier.eval()
        self.num_features = classifier.num_features
        self.scale = scale

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """The classifier's features, N x num_features: uint8 input is read as 0-255, floats
        are divided by `scale`; one-channel input is repeated to RGB."""
        x = x.float() / 255.0 if x.dtype == torch.uint8 else x.float() / self.scale
        if x.shape[1] == 1:  # grayscale input
            x = x.expand(-1, 3, -1, -1)
        return self.classifier.features(x)


def default_folder() -> Path:
    """The bundled classifier's folder: `weights/digits-classifier` beside this module."""
    return Path(__file__).parent / "weights" / CLASSIFIER_NAME


def load_digits_classifier(folder: str | Path | None = None) -> DigitsClassifier:
    """The bundled digits classifier (or the one saved in `folder`), in eval mode."""
    from safetensors.torch import load_file

    folder = Path(folder) if folder is not None else default_folder()
    config_file = folder / "config.json"
    if not config_file.exists():
        raise FileNotFoundError(
            f"no digits classifier in {folder} (config.json missing); train one with "
            "`darkroom zoo train-digits`"
        )
    config = json.loads(config_file.read_text())
    model = DigitsClassifier(config["width"], config["num_features"], config["num_classes"])
    model.load_state_dict(load_file(str(folder / "model.safetensors")))
    return model.eval()


def _augment(x: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
    """Random shifts of up to 1 pixel, so the judge is not fooled by a slightly off-centre digit."""
    padded = F.pad(x, (1, 1, 1, 1))
    dx, dy = torch.randint(0, 3, (2,), generator=generator).tolist()
    return padded[..., dy:dy + IMAGE_SIZE, dx:dx + IMAGE_SIZE]


def accuracy(model: DigitsClassifier, images: torch.Tensor, labels: torch.Tensor) -> float:
    """The fraction of `images` whose predicted class is their label, in [0, 1]."""
    return (model.predict(images) == labels).float().mean().item()


def train_classifier(
    epochs: int = 30, batch_size: int = 64, lr: float = 1e-3, seed: int = 0,
    max_steps: int | None = None, log=print,
) -> tuple[DigitsClassifier, dict[str, Any]]:
    """Train on the "train" split; returns the model and {test_accuracy, seconds, steps}."""
    start = time.perf_counter()
    torch.manual_seed(seed)
    generator = torch.Generator().manual_seed(seed)
    images, labels = digits_dataset("train")
    x, y = to_tensor(images), torch.from_numpy(labels)
    test_images, test_labels = digits_dataset("test")
    xt, yt = to_tensor(test_images), torch.from_numpy(test_labels)
    model = DigitsClassifier()
    total = epochs * ((len(x) + batch_size - 1) // batch_size)
    if max_steps is not None:
        total = min(total, max_steps)
    opt = torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=1e-4)
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=lr, total_steps=total)
    step = 0
    model.train()
    while step < total:
        for idx in torch.randperm(len(x), generator=generator).split(batch_size):
            loss = F.cross_entropy(model(_augment(x[idx], generator)), y[idx])
            opt.zero_grad()
            loss.backward()
            opt.step()
            sched.step()
            step += 1
            if step >= total:
                break
        log(f"[classifier] step {step}/{total} loss {loss.item():.4f} "
            f"test acc {accuracy(model, xt, yt):.4f} {time.perf_counter() - start:.0f}s")
    model.eval()
    stats = {"test_accuracy": accuracy(model, xt, yt), "train_accuracy": accuracy(model, x, y),
             "steps": step, "seconds": time.perf_counter() - start}
    return model, stats
