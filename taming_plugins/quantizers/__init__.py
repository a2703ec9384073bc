"""Built-in quantizers (each module registers itself)."""
