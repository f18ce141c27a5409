"""The ImageGenerator's images/s beside a plain diffusers pipeline call on the same model.

Same model, prompts, seeds, batch size, steps and thread count; the two are timed in alternating
rounds in one process so machine noise hits both alike. The plain loop returns PIL images, the
ImageGenerator returns finished image rows (PNG bytes, hash, provenance): the ratio is what the
platform's bookkeeping costs.

    .venv/bin/python benchmarks/engine.py --model tiny:sd --steps 10 --batch-size 8
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="tiny:sd")
    parser.add_argument("--sampler", default="dpmpp_2m")
    parser.add_argument("--steps", type=int, default=10)
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--batches", type=int, default=4, help="batches per timed round")
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--threads", type=int, default=1)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)

    from darkroom.platform.engine.generator import ImageGenerator
    from darkroom.platform.samplers import SamplerSpec, build_scheduler

    generator = ImageGenerator(
        {"model": args.model}, {"name": args.sampler},
        runtime={"torch_threads": args.threads}, defaults={"steps": args.steps},
    )
    # the plain baseline: the very same loaded pipeline object, called directly
    pipe = generator.pipe
    sampler = SamplerSpec(name=args.sampler)
    pipe.scheduler = build_scheduler(sampler, generator.base_scheduler_config)
    is_dit = generator.family.name == "dit"
    prompts = [f"a handwritten digit {i % 10}" for i in range(args.batch_size)]

    def plain_round() -> None:
        for b in range(args.batches):
            gens = [torch.Generator("cpu").manual_seed(b * 1000 + i)
                    for i in range(args.batch_size)]
            with torch.inference_mode():
                if is_dit:
                    pipe(class_labels=[i % 10 for i in range(args.batch_size)],
                         num_inference_steps=args.steps, generator=gens)
                else:
                    pipe(prompt=prompts, num_inference_steps=args.steps, generator=gens)

    def generator_round() -> None:
        for b in range(args.batches):
            rows = [{"seed": b * 1000 + i, "prompt": prompts[i], "class_label": i % 10,
                     "sampler": args.sampler} for i in range(args.batch_size)]
            out = generator.generate(rows)
            assert all(r["error"] is None for r in out)

    plain_round(), generator_round()  # warm-up
    images = args.batches * args.batch_size
    plain, ours = [], []
    for _ in range(args.rounds):
        for fn, sink in ((plain_round, plain), (generator_round, ours)):
            start = time.perf_counter()
            fn()
            sink.append(images / (time.perf_counter() - start))
    p, g = statistics.median(plain), statistics.median(ours)
    print(f"model {args.model}  sampler {args.sampler}  steps {args.steps}  "
          f"batch {args.batch_size}  threads {args.threads}  rounds {args.rounds}")
    print(f"plain diffusers call   {p:8.2f} images/s")
    print(f"darkroom ImageGenerator     {g:8.2f} images/s")
    print(f"ratio                  {g / p:8.3f}  (target >= 0.95)")


if __name__ == "__main__":
    main()
