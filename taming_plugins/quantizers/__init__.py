"""Built-in quantizers; each module registers itself under the kind ``quantizer``.

========== =================================================================
``vq``      nearest code + codebook/commitment loss (``legacy_beta`` for the
            original checkpoints' beta placement), optional low-dim / cosine
            codes and entropy loss
``ema``     EMA codebook, dead-code restart, optional k-means init, DDP-synced
``gumbel``  the original GumbelQuantize; deterministic argmax in eval
``fsq``     finite scalar quantization (levels list)
``lfq``     lookup-free (sign) quantization with the MAGVIT-v2 entropy loss
``residual`` L levels of any registered quantizer; indices B×H×W×L
========== =================================================================

Every quantizer validates its input (float B×C×H×W, finite) and reports
``usage``, ``perplexity`` and ``usage_window`` (running usage over the last
training batches) in :attr:`~taming_core.QuantizerOutput.metrics`.
"""

# Helpers a quantizer plugin needs to report the same metrics as the built-ins. Their
# public home is taming_core.quantization (plugins need only taming_core); these names
# stay importable from here too.
from taming_core.quantization import UsageTracker, check_latent, code_counts, finalize_metrics

__all__ = ["UsageTracker", "check_latent", "code_counts", "finalize_metrics"]
