"""Built-in conditioning (each module registers itself)."""
