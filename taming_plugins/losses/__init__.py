"""Built-in losses (each module registers itself)."""
