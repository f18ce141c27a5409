"""The serve file and the request schema: validation, limits, the CLI's dry run. No Ray."""

from __future__ import annotations

from pathlib import Path

import pytest
from pydantic import ValidationError

from darkroom.cli import main
from darkroom.serve.app import build_app, spec_from_args
from darkroom.serve.protocol import Limits, request_model
from darkroom.serve.spec import ServeSpec, load_spec

ROOT = Path(__file__).resolve().parents[2]
CONFIGS = sorted((ROOT / "configs" / "serve").glob("*.yaml"))


def write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "serve.yaml"
    path.write_text(text)
    return path


@pytest.mark.parametrize("path", CONFIGS, ids=lambda p: p.name)
def test_shipped_configs_validate_and_open_with_their_command(path: Path) -> None:
    spec = load_spec(path)
    assert path.read_text().startswith(f"# darkroom serve configs/serve/{path.name}")
    assert spec.max_ongoing_requests >= 2 * spec.batching.max_batch_size


def test_shipped_configs_cover_tiny_digits_and_a_real_model() -> None:
    assert {p.name for p in CONFIGS} >= {"tiny.yaml", "digits.yaml", "sd15.yaml"}
    assert load_spec(ROOT / "configs/serve/digits.yaml").model.model == "builtin:digits-dit"


def test_yaml_on_is_a_key_not_a_boolean(tmp_path: Path) -> None:
    spec = load_spec(write(tmp_path, "model: {model: 'tiny:dit'}\nsafety: {on: false}\n"))
    assert spec.safety.on is False


def test_duplicate_keys_are_rejected_with_the_line(tmp_path: Path, capsys) -> None:
    path = write(tmp_path, "model: {model: 'tiny:dit'}\nmax_queued_requests: 4\n"
                           "max_queued_requests: 8\n")
    assert main(["serve", str(path), "--dry-run"]) == 2
    err = capsys.readouterr().err
    assert "duplicate key `max_queued_requests` (lines 2 and 3)" in err
    assert "Traceback" not in err


@pytest.mark.parametrize(
    ("text", "field", "hint"),
    [
        ("batching: {max_batch_size: 16}\nmax_ongoing_requests: 5\n",
         "max_ongoing_requests", "set it to 32 or more"),
        ("defaults: {sampler: dpmpp2m}\n", "defaults", "did you mean `dpmpp_2m`"),
        ("autoscaling: {min_replicas: 3, max_replicas: 2}\n", "autoscaling", "must not exceed"),
        ("safety: {checker: nudnet}\n", "safety.checker", "did you mean `nudenet`"),
        ("limits: {max_n: 0}\n", "limits.max_n", "greater than or equal to 1"),
        ("batching: {max_batch: 4}\n", "batching.max_batch", "did you mean `max_batch_size`?"),
        ("defaults: {steps: 200}\nlimits: {max_steps: 50}\n", "defaults.steps", "max_steps"),
        ("auth: {api_key_env: 'not a name'}\n", "auth.api_key_env", "environment variable"),
    ],
)
def test_bad_serve_files_name_the_field_and_exit_2(tmp_path, capsys, text, field, hint) -> None:
    path = write(tmp_path, "model: {model: 'tiny:dit'}\n" + text)
    assert main(["serve", str(path), "--dry-run"]) == 2
    err = capsys.readouterr().err
    assert f"  {field}" in err and hint in err, err
    assert "Traceback" not in err


def test_a_serve_file_reports_every_problem_at_once(tmp_path, capsys) -> None:
    # three problems of three kinds: a sampler the family cannot drive, a step cache on a UNet
    # family, default steps past the limit; and a misspelt key beside them
    path = write(tmp_path, "model: {model: 'tiny:sd'}\n"
                           "defaults: {sampler: flow_euler, steps: 200}\n"
                           "limits: {max_steps: 50}\n"
                           "runtime: {cache: {kind: first_block}}\n"
                           "batchin: {max_batch_size: 4}\n")
    assert main(["serve", str(path), "--dry-run"]) == 2
    err = capsys.readouterr().err
    assert "4 problem(s)" in err, err
    for field, words in [("defaults.sampler", "`flow_euler` does not fit sd models"),
                         ("runtime.cache", "have a UNet"), ("defaults.steps", "max_steps"),
                         ("batchin", "did you mean `batching`")]:
        assert f"  {field}: " in err and words in err, (field, err)
    assert "Traceback" not in err


def test_missing_file_and_missing_api_key_are_user_errors(tmp_path, capsys, monkeypatch) -> None:
    assert main(["serve", str(tmp_path / "nope.yaml"), "--dry-run"]) == 2
    assert "does not exist" in capsys.readouterr().err
    monkeypatch.delenv("DARKROOM_NO_SUCH_KEY", raising=False)
    path = write(
        tmp_path, "model: {model: 'tiny:dit'}\nauth: {api_key_env: DARKROOM_NO_SUCH_KEY}\n"
    )
    assert main(["serve", str(path), "--dry-run"]) == 2
    assert "DARKROOM_NO_SUCH_KEY, which is not set" in capsys.readouterr().err


def test_an_unknown_model_name_is_caught_before_ray_starts(tmp_path, capsys) -> None:
    path = write(tmp_path, "model: {model: 'tiny:ditt'}\n")
    assert main(["serve", str(path), "--dry-run"]) == 2
    assert "did you mean `tiny:dit`" in capsys.readouterr().err


def test_dry_run_prints_the_plan(capsys) -> None:
    assert main(["serve", str(ROOT / "configs/serve/tiny.yaml"), "--dry-run"]) == 0
    out = capsys.readouterr().out
    assert "tiny-dit" in out and "would serve at http://127.0.0.1:8000/v1" in out


def test_app_builder_takes_a_file_or_inline_keys(tmp_path) -> None:
    path = str(ROOT / "configs/serve/tiny.yaml")
    assert spec_from_args({"config": path}) == load_spec(path)
    inline = spec_from_args({"model": {"model": "tiny:sd"}, "max_queued_requests": 3})
    assert inline.model.model == "tiny:sd" and inline.max_queued_requests == 3
    with pytest.raises(ValueError, match="not both"):
        spec_from_args({"config": path, "name": "x"})
    app = build_app({"config": path})  # binds the deployments; deploys nothing
    assert type(app).__name__ == "Application"


def test_request_limits_are_schema_constraints() -> None:
    Request = request_model(Limits(max_n=2, max_steps=5, max_side=64, max_prompt_chars=10))  # noqa: N806
    ok = Request(prompt="three", n=2, size="48x64", steps=5)
    assert ok.dimensions() == (48, 64)
    assert Request(prompt="x", size="auto").dimensions() == (None, None)
    schema = Request.model_json_schema()["properties"]
    assert schema["n"]["maximum"] == 2 and schema["prompt"]["maxLength"] == 10
    bad = [
        ({"prompt": "x", "n": 3}, "n"),
        ({"prompt": "x", "steps": 6}, "steps"),
        ({"prompt": "x" * 11}, "prompt"),
        ({"prompt": "x", "size": "128x64"}, "size"),
        ({"prompt": "x", "size": "64*64"}, "size"),
        ({"prompt": "x", "response_format": "url"}, "response_format"),
        ({"prompt": "x", "guidance_scale": float("nan")}, "guidance_scale"),
        ({"prompt": "x", "seed": 2**64}, "seed"),
        ({"prompt": "x", "quality": "hd"}, "quality"),
    ]
    for body, field in bad:
        with pytest.raises(ValidationError) as err:
            Request(**body)
        assert err.value.errors()[0]["loc"] == (field,), body


def test_spec_round_trips_through_json() -> None:
    spec = load_spec(ROOT / "configs/serve/tiny.yaml")
    assert ServeSpec.model_validate(spec.model_dump(mode="json")) == spec


def test_the_schema_offers_only_the_samplers_the_server_takes() -> None:
    Request = request_model(Limits(), samplers=["ddim", "dpmpp_2m"])  # noqa: N806
    sampler = Request.model_json_schema()["properties"]["sampler"]
    assert {"enum": ["ddim", "dpmpp_2m"], "type": "string"} in sampler["anyOf"]
    assert Request(prompt="x", sampler="ddim").sampler == "ddim"
    for name, hint in [("", "known: ddim, dpmpp_2m"), ("dpmpp2m", "did you mean `dpmpp_2m`")]:
        with pytest.raises(ValidationError) as err:
            Request(prompt="x", sampler=name)
        problem = err.value.errors()[0]
        assert problem["loc"] == ("sampler",) and hint in problem["msg"], problem


@pytest.mark.parametrize(("conditioning", "taken"),
                         [("text", False), ("text+control", False), ("class", True), (None, True)])
def test_class_label_is_taken_only_where_the_model_is_class_conditional(conditioning, taken):
    Request = request_model(Limits(), samplers=["ddim"], conditioning=conditioning)  # noqa: N806
    schema = Request.model_json_schema()["properties"]["class_label"]
    assert Request(prompt="x").class_label is None
    if taken:
        assert Request(prompt="x", class_label=3).class_label == 3
        assert {"type": "integer"} in schema["anyOf"]
        return
    assert schema.get("type") == "null"  # a client that follows the schema never sends one
    with pytest.raises(ValidationError) as err:
        Request(prompt="x", class_label=3)
    problem = err.value.errors()[0]
    assert problem["loc"] == ("class_label",)
    assert f"{conditioning}-conditioned" in problem["msg"]


def test_the_request_size_limit_has_bounds_and_room_for_the_prompts() -> None:
    assert Limits().max_request_bytes == 2**20
    for bad in (1024, 65 * 2**20):
        with pytest.raises(ValidationError, match="max_request_bytes"):
            Limits(max_request_bytes=bad)
    with pytest.raises(ValidationError, match="too small for prompts of `max_prompt_chars`"):
        Limits(max_prompt_chars=100_000, max_request_bytes=2**20)


def test_the_drain_fits_in_the_stop(tmp_path, capsys) -> None:
    from darkroom.serve.commands import STOP_SECONDS

    assert load_spec(ROOT / "configs/serve/tiny.yaml").drain_timeout_s == 10
    path = write(tmp_path, "model: {model: 'tiny:dit'}\ndrain_timeout_s: 30\n")
    assert main(["serve", str(path), "--dry-run"]) == 2
    assert "drain_timeout_s" in capsys.readouterr().err
    limit = ServeSpec.model_fields["drain_timeout_s"].metadata
    assert max(m.le for m in limit if hasattr(m, "le")) + 4 <= STOP_SECONDS < 20


def numeric_fields(model: type, prefix: tuple[str, ...] = ()) -> list[tuple[str, type]]:
    """Every int and float setting of a serve file, by dotted path, found in the models
    themselves (a new number is covered without touching this test)."""
    import types
    import typing

    from pydantic import BaseModel

    found = []
    for name, field in model.model_fields.items():
        annotation = field.annotation
        union = isinstance(annotation, types.UnionType) or typing.get_origin(annotation) is (
            typing.Union)
        for kind in typing.get_args(annotation) if union else (annotation,):
            if typing.get_origin(kind) is typing.Annotated:  # constrained: Annotated[int, ...]
                kind = typing.get_args(kind)[0]
            if isinstance(kind, type) and issubclass(kind, BaseModel):
                found += numeric_fields(kind, (*prefix, field.alias or name))
            elif kind in (int, float):
                found.append((".".join((*prefix, field.alias or name)), kind))
    return found


NUMBERS = numeric_fields(ServeSpec)


def test_the_serve_file_has_the_numbers_this_test_walks() -> None:
    paths = {path for path, _ in NUMBERS}
    assert {"batching.batch_wait_timeout_s", "limits.max_n", "limits.body_timeout_s",
            "autoscaling.upscale_delay_s", "resources.memory_gb", "runtime.batch_size",
            "retry_after_s"} <= paths, paths


@pytest.mark.parametrize(("path", "kind"), NUMBERS, ids=[path for path, _ in NUMBERS])
def test_every_number_in_a_serve_file_is_finite_and_bounded(tmp_path, capsys, path, kind):
    """`.inf`, `.nan` and numbers no server can use are refused like in job files: exit 2 from
    the dry run, naming the field (`batching.batch_wait_timeout_s: .inf` left concurrent
    requests without an answer)."""
    import yaml

    values = [float("inf"), float("-inf"), float("nan"), 1e300] if kind is float else [10**18]
    for value in values:
        data: dict = {"model": {"model": "tiny:dit"}}
        *sections, key = path.split(".")
        place = data
        for section in sections:
            place = place.setdefault(section, {})
        place[key] = value
        path_file = write(tmp_path, yaml.safe_dump(data))
        assert main(["serve", str(path_file), "--dry-run"]) == 2, (path, value)
        err = capsys.readouterr().err
        assert f"  {path}" in err and "Traceback" not in err, (path, value, err)


@pytest.mark.parametrize(("name", "hub_id", "needed"), [
    ("kontext.yaml", "black-forest-labs/FLUX.1-Kontext-dev", ("image",)),
    ("sdxl_inpaint.yaml", "diffusers/stable-diffusion-xl-1.0-inpainting-0.1", ("image", "mask")),
])
def test_the_editing_serve_files_are_known_to_edit_before_loading(name, hub_id, needed) -> None:
    """The front knows from the file alone (no download) that the model edits: generations
    are refused there, and the body limit has room for the images."""
    from darkroom.serve.app import _known_family, input_images

    spec = load_spec(ROOT / "configs/serve" / name)
    assert spec.model.model == hub_id
    assert input_images(_known_family(spec)).required == needed
    assert spec.limits.max_request_bytes >= 16 * 2**20


def test_an_editing_models_body_limit_defaults_larger_unless_set() -> None:
    from darkroom.serve.app import _known_family, effective_limits
    from darkroom.serve.protocol import EDIT_REQUEST_BYTES

    def limit(model: str, limits: dict) -> int:
        spec = ServeSpec.model_validate({"model": {"model": model}, "limits": limits})
        return effective_limits(spec, _known_family(spec)).max_request_bytes

    assert limit("tiny:sd", {}) == 2**20
    assert limit("tiny:sd-inpaint", {}) == EDIT_REQUEST_BYTES
    assert limit("tiny:flux-kontext", {"max_request_bytes": 2**21}) == 2**21
