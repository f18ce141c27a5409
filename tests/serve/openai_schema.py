"""What OpenAI's published OpenAPI schema (github.com/openai/openai-openapi, `openapi.yaml`) says
about the images response and the error body, as JSON Schema: the parts a response of this
server could break. Optional properties have no `null` there (`b64_json: null` and
`revised_prompt: null` are invalid), and `size` is an enum of OpenAI's own sizes."""

from __future__ import annotations

from typing import Any

import jsonschema

IMAGE = {
    "type": "object",
    "properties": {
        "b64_json": {"type": "string"},
        "url": {"type": "string"},
        "revised_prompt": {"type": "string"},
    },
}
IMAGES_RESPONSE = {
    "type": "object",
    "required": ["created"],
    "properties": {
        "created": {"type": "integer"},
        "data": {"type": "array", "items": IMAGE},
        "background": {"type": "string", "enum": ["transparent", "opaque"]},
        "output_format": {"type": "string", "enum": ["png", "webp", "jpeg"]},
        "size": {"type": "string", "enum": ["1024x1024", "1024x1536", "1536x1024"]},
        "quality": {"type": "string", "enum": ["low", "medium", "high"]},
    },
}
ERROR_RESPONSE = {
    "type": "object",
    "required": ["error"],
    "properties": {"error": {
        "type": "object",
        "required": ["type", "message", "param", "code"],
        "properties": {
            "code": {"anyOf": [{"type": "string"}, {"type": "null"}]},
            "message": {"type": "string"},
            "param": {"anyOf": [{"type": "string"}, {"type": "null"}]},
            "type": {"type": "string"},
        },
    }},
}


def assert_images_response(body: Any) -> None:
    """Fails, naming the first violation, unless `body` is valid for OpenAI's schema."""
    jsonschema.validate(body, IMAGES_RESPONSE)


def assert_error_response(body: Any) -> None:
    """Fails unless `body` is OpenAI's error shape."""
    jsonschema.validate(body, ERROR_RESPONSE)
