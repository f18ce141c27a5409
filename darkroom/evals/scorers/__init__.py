"""Per-image scorers, one module each: a module declares its units in `UNITS` (`units.py`) and
`darkroom.evals.registry` finds it. Modules here import no torch, transformers or Ray at module
level; models load inside the builders, on the scoring actors.

- `features` runs one feature extractor per part; the extractors live with their model family:
  `inception`, `clip`, `dinov2`, `digits`, `tiny`.
- `clip` (CLIP score), `safety`, `classifier` (class accuracy), `pickscore`: a part and the
  metric it feeds.
- `plan` decides the parts a spec's metrics need; `actor` runs them on Ray Data; `images` holds
  what parts share (decoding, batches of one size, tensors, clean-fid's resize).
"""
