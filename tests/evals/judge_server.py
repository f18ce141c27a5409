"""An OpenAI-compatible chat-completions server for the judge's remote path: FastAPI on uvicorn,
a real socket on 127.0.0.1, serving a saved VLM's first-token logprobs as vLLM does
(`logprobs.content[0].top_logprobs`), computed here from the model alone. Its `Behaviour` makes
it misbehave as servers do: answer without logprobs, answer slowly, fail with a status for a
while or for good."""

from __future__ import annotations

import asyncio
import base64
import io
import socket
import threading
import time
from contextlib import contextmanager
from dataclasses import dataclass, field

import numpy as np
from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse


@dataclass
class Behaviour:
    """What the server does with a request (changed by the test between calls)."""

    logprobs: bool = True  # False: answer as a server that ignores the logprobs field
    delay_s: float = 0.0  # before answering
    fail_first: int = 0  # answer `status` to this many requests, then serve
    fail_always: bool = False
    status: int = 503
    requests: int = 0
    questions: list[str] = field(default_factory=list)


def _image(url: str) -> np.ndarray:
    from PIL import Image

    data = base64.b64decode(url.split(",", 1)[1])
    return np.asarray(Image.open(io.BytesIO(data)).convert("RGB"))


def build_app(folder, behaviour: Behaviour):
    """The app: POST /v1/chat/completions for one user turn of an image and a text."""
    import torch
    from PIL import Image
    from transformers import AutoModelForImageTextToText, AutoProcessor

    model = AutoModelForImageTextToText.from_pretrained(folder).eval()
    processor = AutoProcessor.from_pretrained(folder)
    api = FastAPI()
    lock = threading.Lock()

    def logprobs_of(image: np.ndarray, question: str) -> torch.Tensor:
        chat = [{"role": "user", "content": [{"type": "image"},
                                             {"type": "text", "text": question}]}]
        text = processor.apply_chat_template(chat, add_generation_prompt=True, tokenize=False)
        inputs = processor(images=[Image.fromarray(image)], text=[text], return_tensors="pt")
        with lock, torch.no_grad():
            return torch.log_softmax(model(**inputs).logits[0, -1].double(), dim=-1)

    @api.post("/v1/chat/completions")
    async def chat(request: Request):
        body = await request.json()
        behaviour.requests += 1
        if behaviour.delay_s:
            await asyncio.sleep(behaviour.delay_s)
        if behaviour.fail_always or behaviour.fail_first > 0:
            behaviour.fail_first -= 1
            return JSONResponse({"error": {"message": "overloaded", "code": behaviour.status}},
                                status_code=behaviour.status)
        parts = body["messages"][0]["content"]
        image = _image(next(p["image_url"]["url"] for p in parts if p["type"] == "image_url"))
        question = next(p["text"] for p in parts if p["type"] == "text")
        behaviour.questions.append(question)
        logprobs = logprobs_of(image, question)
        k = min(int(body.get("top_logprobs") or 0), len(logprobs))
        values, ids = torch.topk(logprobs, k)
        top = [{"token": processor.tokenizer.decode([int(i)]), "logprob": float(v)}
               for v, i in zip(values, ids, strict=True)]
        first = top[0] if top else {"token": "", "logprob": 0.0}
        content = [{**first, "top_logprobs": top}]
        return {"id": "chatcmpl-test", "object": "chat.completion", "created": int(time.time()),
                "model": body["model"],
                "choices": [{"index": 0, "message": {"role": "assistant",
                                                     "content": first["token"]},
                             "logprobs": {"content": content} if behaviour.logprobs else None,
                             "finish_reason": "length"}]}

    return api


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


@contextmanager
def serving(folder, behaviour: Behaviour | None = None):
    """The server on a free port for the body: yields (base URL ending in /v1, behaviour)."""
    import uvicorn

    behaviour = behaviour or Behaviour()
    port = free_port()
    server = uvicorn.Server(uvicorn.Config(build_app(folder, behaviour), host="127.0.0.1",
                                           port=port, log_level="warning"))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    deadline = time.monotonic() + 30
    while not server.started:
        if time.monotonic() > deadline or not thread.is_alive():
            raise AssertionError("the judge server did not start")
        time.sleep(0.05)
    try:
        yield f"http://127.0.0.1:{port}/v1", behaviour
    finally:
        server.should_exit = True
        thread.join(timeout=10)
