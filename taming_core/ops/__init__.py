"""Numerical kernels shared by plugins."""

from .nearest import nearest_code

__all__ = ["nearest_code"]
