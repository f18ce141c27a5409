"""YAML batch jobs: spec, prompt sources, sweep plans, the Ray Data pipeline, submit."""
