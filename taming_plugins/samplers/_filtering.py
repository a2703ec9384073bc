"""Logit filtering of the built-in samplers: public API in :mod:`taming_core.sampling`."""

from taming_core.sampling import SamplingOptions, top_k_filter, top_p_filter  # noqa: F401
