"""Built-in tokenizers (each module registers itself).

The VQGAN building blocks (the original ``Encoder``/``Decoder`` and their attention block)
are public API for plugins and benchmarks that compose them.
"""

from ._vqgan_modules import AttnBlock, Decoder, Encoder

__all__ = ["AttnBlock", "Decoder", "Encoder"]
