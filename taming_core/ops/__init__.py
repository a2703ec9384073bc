"""Numerical kernels shared by plugins."""

from .linear import decode_linear
from .nearest import nearest_code

__all__ = ["decode_linear", "nearest_code"]
