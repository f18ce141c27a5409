"""Benchmark suites: Darkroom's actors beside plain diffusers, in one process, with ratios.

    .venv/bin/python benchmarks/run.py --suite cpu                 # digits and tiny models on CPU
    .venv/bin/python benchmarks/run.py --suite gpu                 # full-size models on a GPU
    .venv/bin/python benchmarks/run.py --suite gpu --smoke         # the gpu code path, tiny, on CPU

Each suite writes JSON and a markdown table (`--out`, default benchmarks/results/). The gpu suite
builds SD 1.5, SDXL, DiT-XL/2 and SD 1.5 + ControlNet from their published configs with random
weights (`random:*` models: same compute, nothing to download), SD 3.5 Medium and FLUX.1-dev at
1024 px too, and keeps to a time budget.
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics
import sys
import time
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import numpy as np
import torch

# Dense fp16/bf16 tensor-core peak FLOP/s by device name fragment (vendor data sheets).
PEAK_TFLOPS = {"H200": 989.0, "H100 SXM": 989.0, "H100 PCIe": 756.0, "H100": 989.0,
               "A100": 312.0, "L40S": 362.0, "L4": 121.0, "A10G": 125.0, "4090": 165.0}


@dataclass
class Case:
    name: str
    model: str
    steps: int
    size: int | None  # None: the model's native size
    guidance: float
    best_batch: int
    best_runtime: dict[str, Any] = field(default_factory=dict)
    dtype: str | None = None  # None: the suite's (fp16 on GPU); Flux and SD3.5 run in bf16
    images: int | None = None  # None: the suite's; fewer for the 12B Flux


GPU_CASES = [
    Case("SD 1.5 @512", "random:sd15", 20, 512, 7.5, 8, {"channels_last": True, "fuse_qkv": True}),
    Case("SDXL @1024", "random:sdxl", 20, 1024, 5.0, 4, {"channels_last": True, "fuse_qkv": True}),
    Case("DiT-XL/2 @256", "random:dit-xl-2", 25, None, 4.0, 16, {}),
    Case("SD 1.5 + ControlNet @512", "random:sd15-controlnet", 20, 512, 7.5, 8,
         {"channels_last": True}),
    Case("SD 3.5 Medium @1024", "random:sd35-medium", 28, 1024, 4.5, 4, {}, dtype="bf16",
         images=8),
    Case("FLUX.1-dev @1024", "random:flux-dev", 28, 1024, 3.5, 2, {}, dtype="bf16", images=4),
]
SMOKE_CASES = [
    Case("tiny SD", "tiny:sd", 2, 64, 5.0, 4, {"channels_last": True, "fuse_qkv": True}),
    Case("tiny SDXL", "tiny:sdxl", 2, 64, 5.0, 4, {"fuse_qkv": True}),
    Case("tiny DiT", "tiny:dit", 2, None, 4.0, 4, {}),
    Case("tiny ControlNet", "tiny:controlnet", 2, 64, 5.0, 4, {"channels_last": True}),
    Case("tiny SD3", "tiny:sd3", 2, 64, 4.5, 4, {}, images=2),
    Case("tiny Flux", "tiny:flux", 2, 64, 3.5, 2, {}, images=2),
]
CPU_CASES = [
    Case("tiny SD", "tiny:sd", 10, 64, 5.0, 8),
    Case("tiny DiT", "tiny:dit", 10, None, 4.0, 8),
    Case("digits DiT", "builtin:digits-dit", 25, None, 4.0, 16),
    Case("digits LDM", "builtin:digits-ldm", 25, None, 4.0, 16),
]


def rows(case: Case, count: int, offset: int, control: bytes | None) -> list[dict[str, Any]]:
    return [{"seed": offset + i, "prompt": f"a handwritten digit {i % 10}", "class_label": i % 10,
             "control_image": control, "steps": case.steps, "guidance_scale": case.guidance,
             "width": case.size, "height": case.size} for i in range(count)]


def sync(device: str) -> None:
    if device.startswith("cuda"):
        torch.cuda.synchronize()


def plain_call(pipe: Any, family: str, case: Case, batch: list[dict], control_pil: Any) -> None:
    """The hand-written diffusers call a user would make, one batch of rows."""
    gens = [torch.Generator("cpu").manual_seed(r["seed"]) for r in batch]
    common = {"num_inference_steps": case.steps, "guidance_scale": case.guidance,
              "generator": gens}
    if family == "dit":
        pipe(class_labels=[r["class_label"] for r in batch], **common)
        return
    size = {"width": case.size, "height": case.size} if case.size else {}
    extra = {"image": [control_pil] * len(batch)} if family == "controlnet" else {}
    pipe(prompt=[r["prompt"] for r in batch], **common, **size, **extra)


def flops_per_image_step(gen: Any, case: Case) -> float | None:
    """FLOPs of one denoiser step for one image (both guidance branches), counted by torch."""
    from torch.utils.flop_counter import FlopCounterMode

    counted: list[float] = []
    net = getattr(gen.pipe, "unet", None) or gen.pipe.transformer
    handle = net.register_forward_hook(lambda *a: None)
    original = net.forward

    def counting_forward(*args: Any, **kwargs: Any) -> Any:
        if counted:
            return original(*args, **kwargs)
        with FlopCounterMode(display=False) as mode:
            out = original(*args, **kwargs)
        latents = args[0] if args else kwargs.get("sample", kwargs.get("hidden_states"))
        batch = latents.shape[0]
        counted.append(mode.get_total_flops() / batch)
        return out

    net.forward = counting_forward
    try:
        gen.generate(rows(case, 1, 0, CONTROL)[:1])
    except Exception:  # counting is a bonus; never fail the benchmark over it
        return None
    finally:
        net.forward = original
        handle.remove()
    # Flux's guidance is an input of one pass, not a second branch
    guided = 2 if case.guidance > 1 and gen.family.name != "flux" else 1
    return counted[0] * guided if counted else None


def weight_bytes(pipe: Any) -> int:
    return sum(p.numel() * p.element_size() for m in pipe.components.values()
               if isinstance(m, torch.nn.Module) for p in m.parameters())


def measure_interleaved(sides: dict[str, tuple[Any, int, Any]], device: str,
                        rounds: int) -> dict[str, dict[str, float | None]]:
    """Median images/s of each side, timed in alternating rounds so noise hits all alike.

    `sides`: name -> (fn, images per call, pipe). Peak memory is this side's own weights plus
    the most memory its calls allocated on top of what was resident before.
    """
    for fn, _, _ in sides.values():
        fn()  # warm-up
    sync(device)
    rates: dict[str, list[float]] = {name: [] for name in sides}
    peaks: dict[str, float] = {name: 0.0 for name in sides}
    for _ in range(rounds):
        for name, (fn, images, pipe) in sides.items():
            if device.startswith("cuda"):
                torch.cuda.reset_peak_memory_stats()
                resident = torch.cuda.memory_allocated()
            start = time.perf_counter()
            fn()
            sync(device)
            rates[name].append(images / (time.perf_counter() - start))
            if device.startswith("cuda"):
                extra = torch.cuda.max_memory_allocated() - resident
                peaks[name] = max(peaks[name], (extra + weight_bytes(pipe)) / 2**30)
    return {name: {"images_per_s": statistics.median(rates[name]),
                   "peak_gb": peaks[name] if device.startswith("cuda") else None}
            for name in sides}


def run_case(case: Case, device: str, dtype: str, plain_batch: int, images: int,
             rounds: int) -> dict[str, Any]:
    from PIL import Image

    from darkroom.platform.engine.generator import ImageGenerator

    model = {"model": case.model, "dtype": dtype}
    control_pil = Image.new("RGB", (case.size or 64,) * 2, "gray")
    plain = ImageGenerator(model, runtime={"device": device}, defaults={"steps": case.steps})
    best = ImageGenerator(model, runtime={"device": device, **case.best_runtime},
                     defaults={"steps": case.steps})
    plain_rows = rows(case, plain_batch, 0, CONTROL)
    plain_calls = max(1, images // plain_batch)
    count = max(images, case.best_batch)
    work = rows(case, count, 10_000, CONTROL)
    chunks = [work[i:i + case.best_batch] for i in range(0, count, case.best_batch)]

    def run_plain() -> None:
        for _ in range(plain_calls):
            plain_call(plain.pipe, plain.family.name, case, plain_rows, control_pil)

    def run_darkroom() -> None:
        for chunk in chunks:
            assert all(r["error"] is None for r in best.generate(chunk))

    measured = measure_interleaved({
        "plain": (run_plain, plain_calls * plain_batch, plain.pipe),
        "darkroom": (run_darkroom, count, best.pipe),
    }, device, rounds)
    result: dict[str, Any] = {
        "case": case.name, "model": case.model, "steps": case.steps, "size": case.size,
        "dtype": dtype, "plain_batch": plain_batch, "darkroom_batch": case.best_batch,
        "darkroom_options": case.best_runtime,
        "flops_per_image_step": flops_per_image_step(plain, case),
    }
    for who, numbers in measured.items():
        result[f"{who}_images_per_s"] = numbers["images_per_s"]
        result[f"{who}_peak_gb"] = numbers["peak_gb"]
    result["ratio"] = result["darkroom_images_per_s"] / result["plain_images_per_s"]
    peak = peak_tflops(device)
    if peak and result["flops_per_image_step"]:
        flops_per_image = result["flops_per_image_step"] * case.steps
        for who in ("darkroom", "plain"):
            achieved = flops_per_image * result[f"{who}_images_per_s"]
            result[f"{who}_fraction_of_peak"] = achieved / (peak * 1e12)
    return result


def peak_tflops(device: str) -> float | None:
    if not device.startswith("cuda"):
        return None
    name = torch.cuda.get_device_name()
    return next((v for k, v in PEAK_TFLOPS.items() if k in name), None)


def markdown(results: list[dict[str, Any]], header: str) -> str:
    lines = [header, "",
             "| case | steps | plain img/s (batch) | darkroom img/s (batch, options) | ratio | "
             "s/img darkroom | peak GB plain / darkroom | % of peak FLOP/s |",
             "|---|---|---|---|---|---|---|---|"]
    for r in results:
        if "error" in r:
            lines.append(f"| {r['case']} | | | | skipped: {r['error']} | | | |")
            continue
        options = ", ".join(k for k, v in r["darkroom_options"].items() if v) or "defaults"
        mem = (f"{r['plain_peak_gb']:.1f} / {r['darkroom_peak_gb']:.1f}"
               if r.get("plain_peak_gb") is not None else "n/a")
        frac = (f"{100 * r['darkroom_fraction_of_peak']:.1f}%"
                if r.get("darkroom_fraction_of_peak") else "n/a")
        lines.append(
            f"| {r['case']} | {r['steps']} | {r['plain_images_per_s']:.2f} ({r['plain_batch']}) | "
            f"{r['darkroom_images_per_s']:.2f} ({r['darkroom_batch']}, {options}) | "
            f"**{r['ratio']:.2f}x** | {1 / r['darkroom_images_per_s']:.3f} | {mem} | {frac} |")
    return "\n".join(lines) + "\n"


CONTROL: bytes | None = None


def main(argv: list[str] | None = None) -> int:
    global CONTROL
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--suite", choices=["cpu", "gpu"], required=True)
    parser.add_argument("--smoke", action="store_true", help="tiny models, CPU, 2 steps")
    parser.add_argument("--out", default="benchmarks/results")
    parser.add_argument("--budget-s", type=float, default=450.0, help="stop starting new cases")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--compile", choices=["default", "reduce-overhead", "max-autotune"],
                        help="also torch.compile the denoiser in Darkroom's runs (gpu suite)")
    args = parser.parse_args(argv)

    from darkroom.platform.data.records import encode_png
    from darkroom.platform.models.names import builtin_models

    CONTROL = encode_png(np.full((64, 64, 3), 128, np.uint8))
    if args.suite == "gpu":
        cases = SMOKE_CASES if args.smoke else GPU_CASES
        device = "cpu" if args.smoke else "cuda"
        dtype, plain_batch, images = ("fp32", 1, 4) if args.smoke else ("fp16", 1, 16)
    else:
        cases = [c for c in CPU_CASES if not c.model.startswith("builtin:")
                 or c.model.split(":", 1)[1] in builtin_models()]
        device, dtype, images = "cpu", "fp32", 32
        plain_batch = 0  # same batch as darkroom: the cpu suite isolates the platform's overhead
    if args.compile:
        cases = [replace(c, best_runtime={**c.best_runtime, "torch_compile": args.compile})
                 for c in cases]
    if device == "cpu":
        torch.set_num_threads(1)
    elif not torch.cuda.is_available():
        print("no CUDA GPU visible: run with --smoke to check the code path on CPU")
        return 2
    started, results = time.perf_counter(), []
    for case in cases:
        if time.perf_counter() - started > args.budget_s:
            results.append({"case": case.name, "error": "time budget spent"})
            continue
        try:
            result = run_case(case, device, case.dtype if case.dtype and not args.smoke
                              else dtype, plain_batch or case.best_batch,
                              case.images or images, args.rounds)
        except Exception as err:  # one failing case must not lose the others' numbers
            result = {"case": case.name, "error": f"{type(err).__name__}: {str(err)[:120]}"}
        results.append(result)
        print(json.dumps(result), flush=True)
        if device.startswith("cuda"):
            torch.cuda.empty_cache()
    where = torch.cuda.get_device_name() if device.startswith("cuda") else platform.processor()
    header = (f"suite {args.suite}{' (smoke)' if args.smoke else ''} on {where or device}, "
              f"torch {torch.__version__}, {time.strftime('%Y-%m-%d')}, "
              f"{time.perf_counter() - started:.0f} s")
    table = markdown(results, header)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    stem = f"{args.suite}{'-smoke' if args.smoke else ''}"
    (out / f"{stem}.json").write_text(json.dumps({"header": header, "results": results}, indent=1))
    (out / f"{stem}.md").write_text(table)
    print(table)
    return 0 if all("error" not in r for r in results) else 1


if __name__ == "__main__":
    sys.exit(main())
