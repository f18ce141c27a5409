"""`POST /v1/images/edits` in-process: the FastAPI app with a fake model, driven through ASGI
and the official client. Bad input images are refused from their headers, before decoding, in
OpenAI's error shape; the body guards hold for multipart bodies. End to end over Serve (a tiny
inpainting model, the replica's own decode): tests/serve/test_endpoint.py."""

from __future__ import annotations

import asyncio
import base64
import io
import struct
import time
import tracemalloc
import zlib

import httpx
import numpy as np
import pytest
from PIL import Image

from darkroom.platform.data.records import MAX_INPUT_PIXELS
from darkroom.serve.edits import InputImages, diffusers_mask
from darkroom.serve.guards import Gate
from darkroom.serve.ingress import build_api
from darkroom.serve.protocol import MAX_INPUT_PIXELS as SERVE_MAX_INPUT_PIXELS
from darkroom.serve.protocol import Limits
from tests.serve.openai_schema import assert_error_response, assert_images_response
from tests.serve.test_api import AUTH, KEY, PNG, FakeModel, call, drive, settings

INPAINT = InputImages(required=("image", "mask"), edits=("strength",))
KONTEXT = InputImages(required=("image",))
EDITS = "/v1/images/edits"


def png(width: int, height: int, mode: str = "RGB", value: int = 128) -> bytes:
    buffer = io.BytesIO()
    Image.new(mode, (width, height), value if mode != "RGBA" else (value,) * 4).save(
        buffer, format="PNG")
    return buffer.getvalue()


def png_header_only(width: int, height: int) -> bytes:
    """A PNG that declares `width` x `height` and holds a few bytes of pixel data: a
    decompression bomb's header (decoding it would allocate width x height x 3 bytes)."""
    def chunk(kind: bytes, data: bytes) -> bytes:
        return (struct.pack(">I", len(data)) + kind + data
                + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF))

    ihdr = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    return (b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", zlib.compress(b"\0" * 64))
            + chunk(b"IEND", b""))


@pytest.fixture
def model() -> FakeModel:
    return FakeModel()


def editing_app(model: FakeModel, inputs: InputImages | None = INPAINT, **changes):
    conditioning = {INPAINT: "text+image+mask", KONTEXT: "text+image", None: None}[inputs]
    return build_api(settings(conditioning=conditioning, inputs=inputs, **changes), model,
                     Gate(retry_after="1"))


def post_edit(app, files: list[tuple[str, tuple[str, bytes]]], **fields) -> httpx.Response:
    data = {"prompt": "a fox", **{k: str(v) for k, v in fields.items()}}
    return call(app, "POST", EDITS, headers=AUTH, data=data, files=files)


def test_the_openai_client_edits_an_image(model):
    """`images.edit(image=..., mask=..., prompt=...)` of the official client: each of `n` rows
    carries the image and the mask, and the answer decodes as an image."""
    from openai import AsyncOpenAI

    app = editing_app(model)
    image, mask = png(32, 16), png(32, 16, "L", 255)

    async def edit():
        http = httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://api")
        client = AsyncOpenAI(base_url="http://api/v1", api_key=KEY, http_client=http,
                             max_retries=0)
        async with http:
            result = await client.images.edit(
                image=("fox.png", image, "image/png"), mask=("mask.png", mask, "image/png"),
                prompt="a fox in the snow", n=2, response_format="b64_json",
                extra_body={"seed": 3, "strength": 0.5})
            listed = await client.images.edit(image=[("fox.png", image, "image/png")],
                                              mask=("mask.png", mask), prompt="a fox")
            raw = await http.post(EDITS, headers=AUTH, data={"prompt": "a fox"},
                                  files=[("image", ("f.png", image)), ("mask", ("m.png", mask))])
        return result, listed, raw.json()

    result, listed, raw = asyncio.run(edit())
    assert base64.b64decode(result.data[0].b64_json) == PNG
    Image.open(io.BytesIO(base64.b64decode(listed.data[0].b64_json))).load()
    assert_images_response(raw)
    first = model.rows[:2]
    assert [(r.seed, r.image, r.mask, r.strength) for r in first] == [(3, image, mask, 0.5),
                                                                      (4, image, mask, 0.5)]
    assert (first[0].width, first[0].height) == (None, None)  # the image's own size
    assert model.rows[2].image == image  # sent as `image[]`, a list of one


BOMB = png_header_only(50_000, 50_000)


@pytest.mark.parametrize(
    ("inputs", "files", "fields", "param", "words"),
    [
        (INPAINT, [("image", ("a.png", png(32, 32))), ("mask", ("m.png", png(32, 16, "L")))],
         {}, "mask", "the mask is 32x16 and the image 32x32"),
        (INPAINT, [("image", ("a.png", b"GIF89a not an image")), ("mask", ("m.png", PNG))],
         {}, "image", "`image` is not an image file"),
        (INPAINT, [("image", ("a.png", BOMB)), ("mask", ("m.png", BOMB))],
         {}, "image", "more than the 16777216 pixels"),
        (INPAINT, [("image", ("a.png", png_header_only(5000, 5000))),
                   ("mask", ("m.png", PNG))], {}, "image", "declares 5000x5000 pixels"),
        (INPAINT, [("image", ("a.png", PNG)), ("mask", ("m.png", BOMB))], {}, "mask",
         "`mask` declares more than"),
        (KONTEXT, [("image[]", ("a.png", PNG)), ("image[]", ("b.png", PNG))], {}, "image",
         "edits 1 source image per request; got 2"),
        (KONTEXT, [("image", ("a.png", PNG)), ("mask", ("m.png", PNG))], {}, "mask",
         "takes no mask"),
        (INPAINT, [("image", ("a.png", PNG))], {}, "mask", "is an inpainting model: give `mask`"),
        (INPAINT, [("mask", ("m.png", PNG))], {}, "image", "the file field `image`"),
        (KONTEXT, [("image", ("a.png", PNG))], {"strength": 0.5}, "strength", "no `strength`"),
        (KONTEXT, [("image", ("a.png", png(128, 64)))], {}, "image",
         "larger than the 64 px a side"),
        (KONTEXT, [("image", ("empty.png", b""))], {}, "image", "not an image file"),
        (KONTEXT, [("image", ("a.png", PNG))], {"n": 5}, "n", "less than or equal to 4"),
        (KONTEXT, [("image", ("a.png", PNG))], {"strength": 2}, "strength", "less than or equal"),
        (KONTEXT, [("image", ("a.png", PNG))], {"quality": "hd"}, "quality", "unknown field"),
    ],
)
def test_bad_edits_are_a_400_naming_the_field_before_any_work(model, inputs, files, fields,
                                                              param, words):
    response = post_edit(editing_app(model, inputs), files, **fields)
    assert response.status_code == 400, response.text
    assert_error_response(response.json())
    error = response.json()["error"]
    assert error["param"] == param and words in error["message"], error
    assert error["type"] == "invalid_request_error"
    assert not model.rows


def test_other_formats_are_refused_by_name(model):
    buffer = io.BytesIO()
    Image.new("RGB", (8, 8)).save(buffer, format="GIF")
    response = post_edit(editing_app(model, KONTEXT), [("image", ("a.gif", buffer.getvalue()))])
    assert response.status_code == 400
    assert "`image` is a GIF file; send PNG, JPEG or WebP" in response.json()["error"]["message"]


def test_a_decompression_bomb_is_refused_from_its_header(model):
    """A 50,000 x 50,000 PNG header (7.5 GB decoded), a 5,000 x 5,000 one and a mask of the
    wrong size: each a 400, and the ingress allocates no more than a couple of MB for it."""
    app = editing_app(model)
    cases = [[("image", ("a.png", BOMB)), ("mask", ("m.png", PNG))],
             [("image", ("a.png", png_header_only(5000, 5000))), ("mask", ("m.png", PNG))],
             [("image", ("a.png", png(64, 64))), ("mask", ("m.png", png(64, 32, "L")))]]
    post_edit(app, cases[2])  # warm: imports, the route's first call
    for files in cases:
        tracemalloc.start()
        response = post_edit(app, files)
        _, peak = tracemalloc.get_traced_memory()
        tracemalloc.stop()
        assert response.status_code == 400, response.text
        assert peak < 3 * 2**20, peak


def test_a_transparent_mask_follows_openais_convention(model):
    """OpenAI: fully transparent pixels are where to edit; diffusers: white is repainted."""
    rgba = np.zeros((16, 32, 4), np.uint8)
    rgba[..., 3] = 255
    rgba[:, :8, 3] = 0  # the left quarter transparent: edit there
    buffer = io.BytesIO()
    Image.fromarray(rgba, "RGBA").save(buffer, format="PNG")
    response = post_edit(editing_app(model), [("image", ("a.png", png(32, 16))),
                                              ("mask", ("m.png", buffer.getvalue()))])
    assert response.status_code == 200, response.text
    mask = np.asarray(Image.open(io.BytesIO(model.rows[0].mask)))
    assert (mask[:, :8] == 255).all() and (mask[:, 8:] == 0).all()
    opaque = png(32, 16, "RGBA", 200)  # alpha nowhere zero: taken as it is
    assert diffusers_mask(opaque) == opaque


def test_each_route_refuses_the_other_kind_of_model(model):
    """A text model refuses edits; an editing model refuses generations, naming the edits
    route; a model whose family is not known here takes both (the replica decides)."""
    text = build_api(settings(), model)
    refused = post_edit(text, [("image", ("a.png", PNG))])
    assert refused.status_code == 400 and "use POST /v1/images/generations" in refused.text
    editing = editing_app(model)
    refused = call(editing, "POST", "/v1/images/generations", headers=AUTH, json={"prompt": "x"})
    assert refused.status_code == 400
    assert "send the source image to POST /v1/images/edits" in refused.json()["error"]["message"]
    assert not model.rows
    unknown = editing_app(model, None)
    assert post_edit(unknown, [("image", ("a.png", PNG))]).status_code == 200
    assert call(unknown, "POST", "/v1/images/generations", headers=AUTH,
                json={"prompt": "x"}).status_code == 200


def test_a_json_body_to_the_edits_route_says_to_send_multipart(model):
    response = call(editing_app(model), "POST", EDITS, headers=AUTH, json={"prompt": "x"})
    assert response.status_code == 400
    assert "send the edit as multipart/form-data" in response.json()["error"]["message"]


def test_the_body_guards_hold_for_multipart_bodies(model):
    """The size limit (413, declared or not) and the body deadline (408) apply to edits."""
    app = editing_app(model, KONTEXT, limits=Limits(max_side=64, max_request_bytes=2**20,
                                                    body_timeout_s=0.5))
    big = post_edit(app, [("image", ("a.png", b"\0" * (2**20 + 1)))])
    assert big.status_code == 413 and big.json()["error"]["code"] == "request_too_large"
    boundary = "xyz"
    head = (f"--{boundary}\r\nContent-Disposition: form-data; name=\"prompt\"\r\n\r\nfox\r\n"
            f"--{boundary}\r\nContent-Disposition: form-data; name=\"image\"; filename=\"a.png\""
            "\r\n\r\n").encode()
    headers = {**AUTH, "Content-Type": f"multipart/form-data; boundary={boundary}"}
    started = time.monotonic()
    status, _, body = asyncio.run(drive(app, {**headers, "Content-Length": "100000"},
                                        [head, PNG[:20]], ends=False, path=EDITS))
    assert status == 408 and 0.4 < time.monotonic() - started < 3, body
    chunks = [head] + [b"\0" * 65536] * 17  # past the limit without a Content-Length
    status, _, body = asyncio.run(drive(app, headers, chunks, ends=True, path=EDITS))
    assert status == 413, body
    assert not model.rows


def test_the_serve_pixel_bound_is_the_platforms():
    assert SERVE_MAX_INPUT_PIXELS == MAX_INPUT_PIXELS
    assert Limits().max_input_pixels <= MAX_INPUT_PIXELS
