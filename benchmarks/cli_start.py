"""Start-up time of `darkroom validate` beside a bare `python -c pass`, measured in one run.

    .venv/bin/python benchmarks/cli_start.py [--rounds 10]

Prints the median wall time of each, the difference (what Darkroom's own imports and checks
cost) and the ratio. Target: `darkroom validate configs/jobs/smoke.yaml` under 1.0 s.
"""

from __future__ import annotations

import argparse
import statistics
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def wall(command: list[str]) -> float:
    started = time.perf_counter()
    subprocess.run(command, cwd=ROOT, check=True, capture_output=True)
    return time.perf_counter() - started


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=10)
    parser.add_argument("--job", default="configs/jobs/smoke.yaml")
    args = parser.parse_args()
    commands = {
        "python -c pass": [sys.executable, "-c", "pass"],
        f"darkroom validate {args.job}": [sys.executable, "-m", "darkroom", "validate", args.job],
        "darkroom --help": [sys.executable, "-m", "darkroom", "--help"],
    }
    times: dict[str, list[float]] = {name: [] for name in commands}
    for _ in range(args.rounds):  # alternate, so a noisy moment hits every command alike
        for name, command in commands.items():
            times[name].append(wall(command))
    base = statistics.median(times["python -c pass"])
    print(f"{'command':<48}{'median s':>10}{'minus python':>14}{'ratio':>8}")
    for name, samples in times.items():
        median = statistics.median(samples)
        print(f"{name:<48}{median:>10.3f}{median - base:>14.3f}{median / base:>8.2f}")


if __name__ == "__main__":
    main()
