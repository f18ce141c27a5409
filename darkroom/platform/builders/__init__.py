"""Parts the family modules build their tiny and full-size random-init pipelines from."""
