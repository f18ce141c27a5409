"""The gate's report, without running the arms."""

from __future__ import annotations

from darkroom.jobs.gate import GateResult, format_gate


def test_a_baseline_interval_of_zero_width_judges_nothing():
    """Before intervals resampled one-prompt classes, the shipped gate_digits job printed
    `candidate outside [1.166, 1.166]` for a 0.006 FID change."""
    result = GateResult(["runtime.cache={kind: first_block}"], 1.6, 41.0, 33.0, 0.99, 0.97, 500,
                        metrics={
                            "fid": {"baseline": 1.166, "candidate": 1.172, "delta": 0.006,
                                    "baseline_ci": [1.166, 1.166]},
                            "kid": {"baseline": 0.10, "candidate": 0.30, "delta": 0.20,
                                    "baseline_ci": [0.05, 0.15]}})
    lines = {line.split()[0]: line for line in format_gate(result).splitlines()
             if line.startswith("  ")}
    assert "outside" not in lines["fid"] and "zero width" in lines["fid"]
    assert "cannot judge the change" in lines["fid"]
    assert "[0.05, 0.15]: candidate outside" in lines["kid"]
