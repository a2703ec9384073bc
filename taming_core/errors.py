"""Exception types raised by taming.

Every error a user can trigger with bad input derives from :class:`TamingError`, so
front ends (the CLI, notebooks) can catch one type and print a single readable line.
The concrete classes also derive from the matching builtin (``ValueError``,
``KeyError``...) so ordinary ``except ValueError`` code keeps working.
"""

from __future__ import annotations


class TamingError(Exception):
    """Base class of all errors raised deliberately by taming."""


class RegistryError(TamingError, KeyError):
    """Unknown kind or name, or a conflicting registration."""

    def __str__(self) -> str:  # KeyError quotes its message; we want plain text.
        return str(self.args[0]) if self.args else ""


class ConfigError(TamingError, ValueError):
    """A malformed component config; the message starts with the offending key path."""


class ValidationError(TamingError, ValueError):
    """A tensor or argument with the wrong shape, dtype, device or value range."""


class CheckpointError(TamingError, ValueError):
    """A corrupt, foreign or incompatible checkpoint file."""


class PluginError(TamingError, RuntimeError):
    """A plugin entry point that could not be loaded."""


class TrainingError(TamingError, RuntimeError):
    """Training cannot continue (for example the loss became NaN or Inf)."""
