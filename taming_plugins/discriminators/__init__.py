"""Built-in discriminators (each module registers itself)."""
