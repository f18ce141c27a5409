"""Before any work: can this machine run what the job asks of its devices?

On a private local Ray (no RAY_ADDRESS) the actors run here, so a CUDA device, a CUDA-only
option or GPUs per actor without a visible GPU can be refused at once, naming the field, instead
of after an actor fails to start (or, with `gpus_per_actor`, waits forever for a GPU). On a
cluster the workers decide: nothing is checked here.
"""

from __future__ import annotations

import os

from darkroom.jobs.spec import JobSpec
from darkroom.platform.config import Problem, SpecError
from darkroom.platform.models.runtime import CUDA_ONLY


def device_problems(spec: JobSpec, source: str = "job") -> None:
    """Raise a SpecError (exit 2) when a local run asks for a GPU this machine does not have."""
    if os.environ.get("RAY_ADDRESS"):
        return
    import torch

    if torch.cuda.is_available():
        return
    fix = "no CUDA GPU is visible on this machine: use cpu/auto, or run on a GPU machine"
    problems = []
    if spec.runtime.device.startswith("cuda"):
        problems.append(Problem("runtime.device", fix, spec.runtime.device))
    problems += [Problem(f"runtime.{name}", f"needs a CUDA GPU; {fix}")
                 for name in CUDA_ONLY if getattr(spec.runtime, name)]
    if spec.compute.gpus_per_actor > 0:
        problems.append(Problem("compute.gpus_per_actor", f"the actors would wait for a GPU "
                                f"forever; {fix} (set it to 0)", spec.compute.gpus_per_actor))
    if problems:
        raise SpecError(source, problems)
