"""Darkroom: batch generation and evaluation of diffusion models on Ray."""

__version__ = "0.1.0"
