"""What an image is sent as: its file format (`output_format`, `output_compression`), and for
`response_format: url` a file kept through the storage layer (a folder or an object store)
behind a signed, time-limited `/v1/images/{id}/content` URL.

Conversion runs in the model replica, beside the safety check; the ingress only signs URLs and
serves the files. A URL is `.../content?expires=UNIX&signature=HEX`, the signature an
HMAC-SHA256 of `id.expires` with the deployment's secret: no API key is needed to fetch it, and
it stops working at `expires`.
"""

from __future__ import annotations

import hashlib
import hmac
import io
import re
import secrets
import time

MEDIA_TYPES = {"png": "image/png", "jpeg": "image/jpeg", "webp": "image/webp"}
PIL_FORMATS = {"png": "PNG", "jpeg": "JPEG", "webp": "WEBP"}
DEFAULT_COMPRESSION = 25  # percent, when jpeg or webp is asked without output_compression
IMAGE_ID = re.compile(r"^img_[A-Za-z0-9_-]{16,64}\.(png|jpeg|webp)$")


def encode(png: bytes, output_format: str, compression: int | None = None) -> bytes:
    """A PNG as `output_format`; jpeg and webp at quality 100 - compression."""
    if output_format == "png":
        return png
    from PIL import Image

    quality = max(1, 100 - (DEFAULT_COMPRESSION if compression is None else compression))
    with Image.open(io.BytesIO(png)) as image:
        buffer = io.BytesIO()
        image.convert("RGB").save(buffer, format=PIL_FORMATS[output_format], quality=quality)
    return buffer.getvalue()


class StoredImages:
    """Images kept under `root` (any location of `platform.data.storage`)."""

    def __init__(self, root: str) -> None:
        self.root = root

    def put(self, data: bytes, output_format: str) -> str:
        """Keeps the image; returns its id."""
        from darkroom.platform.data import storage

        image_id = f"img_{secrets.token_urlsafe(18)}.{output_format}"
        storage.write_bytes(storage.location(self.root) / image_id, data)
        return image_id

    def read(self, image_id: str) -> bytes | None:
        from darkroom.platform.data import storage

        if not IMAGE_ID.match(image_id):
            return None
        place = storage.location(self.root) / image_id
        return storage.read_bytes(place) if storage.exists(place) else None


class UrlSigner:
    """Signs and checks the content URLs of kept images."""

    def __init__(self, secret: str, ttl_s: float) -> None:
        self.key = secret.encode()
        self.ttl_s = ttl_s

    def signature(self, image_id: str, expires: int) -> str:
        return hmac.new(self.key, f"{image_id}.{expires}".encode(), hashlib.sha256).hexdigest()

    def url(self, base_url: str, image_id: str) -> str:
        expires = int(time.time() + self.ttl_s)
        return (f"{base_url.rstrip('/')}/v1/images/{image_id}/content?expires={expires}"
                f"&signature={self.signature(image_id, expires)}")

    def valid(self, image_id: str, expires: int, signature: str) -> bool:
        return (bool(IMAGE_ID.match(image_id)) and expires >= time.time()
                and hmac.compare_digest(self.signature(image_id, expires), signature))


def blank(width: int, height: int, output_format: str = "png") -> bytes:
    """A black image of the given size: what a withheld (flagged) image is sent as."""
    from PIL import Image

    buffer = io.BytesIO()
    Image.new("RGB", (width, height)).save(buffer, format=PIL_FORMATS[output_format])
    return buffer.getvalue()


def shaped(answer: dict, output: dict | None, stored: StoredImages | None) -> dict:
    """A replica's answer with its image in the asked format, or kept for a URL (`stored`:
    its id); a withheld image as a black one. Unchanged for a failed image."""
    output = output or {}
    if answer.get("error") or answer.get("cancelled") or (
            answer.get("image") is None and not answer.get("flagged")):
        return answer
    fmt = output.get("format", "png")
    data = (blank(answer["width"], answer["height"], fmt) if answer["image"] is None
            else encode(answer["image"], fmt, output.get("compression")))
    if output.get("url"):
        if stored is None:
            raise RuntimeError("a url was asked of a replica that keeps no images")
        return {**answer, "image": None, "stored": stored.put(data, fmt), "format": fmt}
    return {**answer, "image": data, "format": fmt}
