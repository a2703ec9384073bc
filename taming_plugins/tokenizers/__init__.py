"""Built-in tokenizers (each module registers itself)."""
