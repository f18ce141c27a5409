"""Inputs refused before work: each bad input, as a careless or hostile user would give it, is an
exit code 2 naming the field, found by `darkroom validate` (or before any actor starts)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

from darkroom.cli import main
from darkroom.jobs.jobfile import load, validate
from darkroom.platform.config import SpecError
from darkroom.platform.data.records import encode_png

ROOT = Path(__file__).resolve().parents[2]


def job(tmp_path: Path, **changes) -> Path:
    data = {"name": "inputs", "output": str(tmp_path / "out"),
            "prompts": {"list": ["a fox"]}, "models": [{"model": "tiny:sd"}],
            "sweep": {"sampler": ["ddim"], "steps": [2]}, "runtime": {"device": "cpu"}}
    data.update(changes)
    path = tmp_path / "job.yaml"
    path.write_text(json.dumps(data))
    return path


def test_keys_that_are_lists_or_mappings_are_named_not_a_crash(tmp_path, capsys):
    path = tmp_path / "job.yaml"
    path.write_text("name: x\n? [a, b]\n: 1\nmodels:\n  - {model: 'tiny:sd', ? {x: 1} : 2}\n")
    assert main(["validate", str(path)]) == 2
    err = capsys.readouterr().err
    assert "a key on line 2 is a list" in err and "models.0: a key on line 5 is a mapping" in err
    assert main(["validate", str(job(tmp_path)), "prompts={? [a]: 1}"]) == 2
    assert "is a list" in capsys.readouterr().err
    serve = tmp_path / "serve.yaml"
    serve.write_text("model: {model: 'tiny:dit'}\n? [limits]\n: 3\n")
    assert main(["serve", str(serve), "--dry-run"]) == 2
    assert "is a list" in capsys.readouterr().err


def test_a_sweep_of_a_billion_runs_is_refused_at_once(tmp_path, capsys):
    values = ",".join(str(i) for i in range(1, 1000))
    guidance = ",".join(f"{i / 10:g}" for i in range(1000))
    started = time.perf_counter()
    assert main(["validate", str(job(tmp_path)), f"sweep.steps=[{values}]",
                 f"sweep.guidance_scale=[{guidance}]",
                 "sweep.sampler=[ddim, ddpm, euler, dpmpp_2m]"]) == 2
    assert time.perf_counter() - started < 10
    err = capsys.readouterr().err
    assert "sweep: the sweep is 4 sampler x 999 steps x 1000 guidance_scale = 3996000 runs" in err
    # one axis past its own bound
    assert main(["validate", str(job(tmp_path)), f"sweep.steps=[{values},1000,1]"]) == 2
    assert "sweep.steps" in capsys.readouterr().err


def test_a_sweep_axis_alone_is_an_override(tmp_path):
    spec = load(job(tmp_path), ["steps=4", "guidance_scale=[1.5, 4]", "sampler=dpmpp_2m"])
    assert spec.sweep.steps == [4] and spec.sweep.guidance_scale == [1.5, 4.0]
    assert [s.name for s in spec.sweep.sampler] == ["dpmpp_2m"]
    assert load(ROOT / "configs/jobs/smoke.yaml", ["steps=4"]).sweep.steps == [4]


def test_a_class_written_in_other_digits_is_a_name_the_model_lacks(tmp_path, capsys):
    path = job(tmp_path, prompts={"classes": [1, "²", "①"]}, models=[{"model": "tiny:dit"}])
    assert main(["validate", str(path)]) == 2
    err = capsys.readouterr().err
    assert "has no class named '²'" in err and "has no class named '①'" in err
    assert main(["validate", str(path), "models.²=x"]) == 2


@pytest.mark.parametrize("deep", [True, False], ids=["validate", "run"])
def test_a_prompt_line_past_1_mib_is_refused_by_validate_and_run_alike(tmp_path, deep):
    (tmp_path / "p.txt").write_text("x" * (2 << 20) + "\na fox\n")
    with pytest.raises(SpecError, match=r"line 1 of p.txt is longer than 1 MiB"):
        load(job(tmp_path, prompts={"file": "p.txt"}), deep=deep)


def test_jsonl_strings_may_hold_unicode_line_separators(tmp_path):
    lines = [json.dumps({"prompt": "a fox\u2028on two lines"}, ensure_ascii=False),
             json.dumps({"prompt": "a boat\x85"}, ensure_ascii=False)]
    (tmp_path / "p.jsonl").write_text("\n".join(lines) + "\n", encoding="utf-8")
    from darkroom.jobs.prompts import load_prompts

    spec = load(job(tmp_path, prompts={"file": "p.jsonl"}))
    assert [p.prompt for p in load_prompts(spec.prompts)] == ["a fox\u2028on two lines",
                                                              "a boat\x85"]


def bad_safetensors(tmp_path: Path) -> dict[str, bytes]:
    """Files that are not LoRA adapters, as a hostile or careless user would give them."""
    header = json.dumps({"lora_A.weight": {"dtype": "F32", "shape": [1],
                                           "data_offsets": [0, 4]}}).encode()
    return {
        "huge_header": (2**40).to_bytes(8, "little") + b"{}",
        "header_past_the_end": (60_000_000).to_bytes(8, "little") + b"{" * 100,
        "not_json": (8).to_bytes(8, "little") + b"\xff" * 8,
        "no_lora": (lambda h: len(h).to_bytes(8, "little") + h + b"\0" * 4)(json.dumps(
            {"weight": {"dtype": "F32", "shape": [1], "data_offsets": [0, 4]}}).encode()),
        "data_missing": len(header).to_bytes(8, "little") + header,
    }


def test_bad_adapter_files_are_refused_at_validate_from_their_header(tmp_path, capsys):
    files = bad_safetensors(tmp_path)
    loras = []
    for name, data in files.items():
        (tmp_path / f"{name}.safetensors").write_bytes(data)
        loras.append({"name": name.replace("_", "-"), "path": f"{name}.safetensors"})
    assert main(["validate", str(job(tmp_path, models=[{"model": "tiny:sd",
                                                         "loras": loras}]))]) == 2
    err = capsys.readouterr().err
    for i, words in enumerate(["header claims 1099511627776 bytes", "header claims 60000000",
                               "header is not JSON", "holds no LoRA tensors",
                               "lies outside the file's data"]):
        assert f"models.0.loras.{i}.path" in err and words in err, (words, err)


def test_a_gpu_a_local_machine_lacks_is_refused_before_any_work(tmp_path):
    import torch

    if torch.cuda.is_available():
        pytest.skip("this machine has a GPU")
    from darkroom.jobs.gate import run_gate
    from darkroom.jobs.pipeline import run_job
    from darkroom.jobs.spec import GateSpec

    spec = load(job(tmp_path, compute={"gpus_per_actor": 1}), ["runtime.device=cuda"])
    with pytest.raises(SpecError) as caught:
        run_job(spec)
    assert {p.path for p in caught.value.problems} == {"runtime.device",
                                                       "compute.gpus_per_actor"}
    base = load(job(tmp_path))
    with pytest.raises(SpecError, match="runtime.device"):  # before the baseline arm runs
        run_gate(base, ["runtime.device=cuda"], GateSpec())
    assert not (tmp_path / "out").exists()


def control_folder(tmp_path: Path, size: int) -> Path:
    folder = tmp_path / f"control{size}"
    folder.mkdir()
    image = np.random.default_rng(0).integers(0, 255, (size, size, 3), np.uint8)
    (folder / "a.png").write_bytes(encode_png(image))
    return folder


def test_control_images_of_another_size_are_refused_or_recorded(tmp_path, capsys):
    folder = control_folder(tmp_path, 48)
    refuse = {"model": "tiny:controlnet", "control": {"resize": "refuse"}}
    path = job(tmp_path, prompts={"control_images": str(folder)}, models=[refuse],
               generation={"width": 64, "height": 64})
    assert main(["validate", str(path)]) == 2
    assert "a.png is 48x48, the output 64x64" in capsys.readouterr().err
    (tmp_path / "empty").mkdir()
    with pytest.raises(SpecError, match="no images"):
        validate(json.loads(job(tmp_path, prompts={"control_images": str(tmp_path / "empty")},
                                models=[{"model": "tiny:controlnet"}]).read_text()))

    from darkroom.platform.engine.generator import ImageGenerator

    stretched = ImageGenerator({"model": "tiny:controlnet"}, runtime={"device": "cpu"},
                               defaults={"steps": 2})
    data = (folder / "a.png").read_bytes()
    (row,) = stretched.generate([{"seed": 1, "prompt": "a house", "control_image": data}])
    (given,) = json.loads(row["input_images"])
    assert given["role"] == "control" and given["resized"] is True
    assert (given["width"], given["height"]) == (48, 48)
    refusing = ImageGenerator(refuse, runtime={"device": "cpu"}, defaults={"steps": 2})
    (row,) = refusing.generate([{"seed": 1, "prompt": "a house", "control_image": data}])
    assert row["image"] is None and "is 48x48, the output 64x64" in row["error"]


def test_a_control_image_that_declares_a_huge_size_is_refused_before_decoding():
    import zlib

    from darkroom.platform.data.records import open_image
    header = b"\x89PNG\r\n\x1a\n"
    ihdr = (50_000).to_bytes(4, "big") * 2 + b"\x08\x02\x00\x00\x00"

    def chunk(kind: bytes, body: bytes) -> bytes:
        return (len(body).to_bytes(4, "big") + kind + body
                + zlib.crc32(kind + body).to_bytes(4, "big"))

    png = header + chunk(b"IHDR", ihdr) + chunk(b"IDAT", zlib.compress(b"")) + chunk(b"IEND", b"")
    with pytest.raises(ValueError, match="declares more pixels than"):
        open_image(png, "`control_image`")


@pytest.mark.slow  # over ten seconds: the full tier runs it
def test_an_unreachable_hub_is_found_once_and_loads_fail_at_once(tmp_path):
    """With no network a hub model fails at once, not after tens of seconds of retries."""
    import socket

    with socket.socket() as probe:  # a port nothing listens on
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    env = {k: v for k, v in os.environ.items() if k not in ("HF_HUB_OFFLINE",
                                                            "DARKROOM_OFFLINE_REASON")}
    env["HF_ENDPOINT"] = f"http://127.0.0.1:{port}"
    script = ("import os, time\n"
              "from darkroom.platform.offline import detect_offline\n"
              "reason = detect_offline()\n"
              "assert reason and os.environ['HF_HUB_OFFLINE'] == '1', reason\n"
              "from diffusers import DiffusionPipeline  # imports, not the load, are slow\n"
              "from darkroom.platform.engine.generator import ImageGenerator\n"
              "from darkroom.platform.errors import ModelLoadError\n"
              "started = time.perf_counter()\n"
              "try:\n"
              "    ImageGenerator({'model': 'some-org/some-model'}, runtime={'device': 'cpu'})\n"
              "except ModelLoadError as err:\n"
              "    print(round(time.perf_counter() - started, 1), err)\n")
    done = subprocess.run([sys.executable, "-c", script], env=env, capture_output=True,
                          text=True, timeout=120, cwd=ROOT)
    assert done.returncode == 0, done.stderr[-2000:]
    seconds, message = done.stdout.split(" ", 1)
    assert float(seconds) < 5 and "unreachable" in message, done.stdout


@pytest.mark.ray
def test_a_model_error_in_an_actor_is_one_line_and_exit_2(ray_session, tmp_path, capsys):
    """An adapter that fits no layer of the model is found when the actor loads it: the command
    still ends with one `error:` line naming it, exit 2, not Ray's traceback."""
    from darkroom.platform.models.adapters import save_random_lora

    lora = save_random_lora("tiny:sd", tmp_path / "sd-lora")
    path = job(tmp_path, models=[{"model": "tiny:flux", "loras": [{"name": "x",
                                                                   "path": str(lora)}]}],
               sweep={"sampler": ["flow_euler"], "steps": [2]},
               generation={"width": 32, "height": 32})
    assert main(["run", str(path)]) == 2
    last = capsys.readouterr().err.strip().splitlines()[-1]
    assert last.startswith("error: adapter `x`") and "does not fit FluxPipeline" in last


def huge_png(side: int = 50_000) -> bytes:
    """A PNG whose header declares side x side pixels, in a few dozen bytes."""
    import zlib

    def chunk(kind: bytes, body: bytes) -> bytes:
        return (len(body).to_bytes(4, "big") + kind + body
                + zlib.crc32(kind + body).to_bytes(4, "big"))

    header = side.to_bytes(4, "big") * 2 + b"\x08\x02\x00\x00\x00"
    return (b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", zlib.compress(b""))
            + chunk(b"IEND", b""))


def edit_folders(tmp_path: Path) -> tuple[Path, Path]:
    """Images and masks for an inpainting job: good ones, a truncated image, a 50,000 x 50,000
    header, a mask of the wrong size."""
    images, masks = tmp_path / "images", tmp_path / "masks"
    images.mkdir()
    masks.mkdir()
    rng = np.random.default_rng(0)
    good = encode_png(rng.integers(0, 255, (64, 64, 3), np.uint8))
    mask = encode_png(np.full((64, 64, 3), 255, np.uint8))
    for name, image, its_mask in [("good.png", good, mask), ("truncated.png", good[:200], mask),
                                  ("huge.png", huge_png(), mask),
                                  ("wrong-mask.png", good,
                                   encode_png(np.zeros((32, 32, 3), np.uint8)))]:
        (images / name).write_bytes(image)
        (masks / name).write_bytes(its_mask)
    return images, masks


def test_bad_source_images_and_masks_are_named_at_validate_using_little_memory(tmp_path):
    images, masks = edit_folders(tmp_path)
    path = job(tmp_path, prompts={"images": str(images), "masks": str(masks),
                                  "instruction": "a lighthouse"},
               models=[{"model": "tiny:sd-inpaint"}], sweep={"sampler": ["ddim"], "steps": [4]})
    probe = ("import resource, sys\nfrom darkroom.cli import main\ncode = main(sys.argv[1:])\n"
             "print('RSS', resource.getrusage(resource.RUSAGE_SELF).ru_maxrss, file=sys.stderr)\n"
             "sys.exit(code)\n")
    done = subprocess.run([sys.executable, "-c", probe, "validate", str(path)], cwd=ROOT,
                          capture_output=True, text=True, timeout=120)
    assert done.returncode == 2, done.stderr
    err = done.stderr
    assert "prompt truncated.png: image image" in err and "cannot be used" in err
    assert "prompt huge.png: image image" in err and "declares more than" in err
    assert "prompt wrong-mask.png: the mask is 32x32 and the image 64x64" in err
    assert "good.png" not in err
    good = job(tmp_path, prompts={"images": str(images), "masks": str(masks)},
               models=[{"model": "tiny:sd-inpaint"}], sweep={"sampler": ["ddim"], "steps": [4]})
    baseline = subprocess.run([sys.executable, "-c", probe, "validate", str(good),
                               "prompts.limit=1"], cwd=ROOT, capture_output=True, text=True,
                              timeout=120)
    assert baseline.returncode == 0, baseline.stderr
    rss = [int(e.stderr.rsplit("RSS ", 1)[1]) for e in (done, baseline)]
    assert rss[0] - rss[1] < 50_000, rss  # kilobytes: no image was decoded whole


def test_a_row_with_a_mask_of_another_size_fails_alone():
    from darkroom.platform.engine.generator import ImageGenerator

    generator = ImageGenerator({"model": "tiny:sd-inpaint"}, runtime={"device": "cpu"},
                               defaults={"steps": 4})
    image = encode_png(np.random.default_rng(0).integers(0, 255, (64, 64, 3), np.uint8))
    rows = [{"seed": 1, "prompt": "x", "image": image,
             "mask": encode_png(np.full((64, 64, 3), 255, np.uint8))},
            {"seed": 2, "prompt": "x", "image": image,
             "mask": encode_png(np.zeros((32, 32, 3), np.uint8))},
            {"seed": 3, "prompt": "x", "image": huge_png(),
             "mask": encode_png(np.zeros((32, 32, 3), np.uint8))}]
    good, wrong, huge = generator.generate(rows)
    assert good["error"] is None
    assert "the mask is 32x32 and the image 64x64" in wrong["error"]
    assert "declares more pixels than" in huge["error"]
