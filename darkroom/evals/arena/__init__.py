"""Human preference: a rating round over a job's runs (`darkroom arena`). Raters compare two
images of the same prompt and seed from two runs, blind; the votes are kept in a database and
become Bradley-Terry rankings with intervals, agreement figures and judge-human agreement, logged
to MLflow beside the automatic metrics. See docs/arena.md.

Layers, top to bottom: commands -> app -> pages | tracking -> rounds -> judges | pairing ->
rankings | source | store -> bt | agreement | spec.
"""
