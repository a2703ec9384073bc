"""Numerical kernels shared by plugins."""

from .linear import decode_linear, fast_decoding
from .nearest import nearest_code

__all__ = ["decode_linear", "fast_decoding", "nearest_code"]
