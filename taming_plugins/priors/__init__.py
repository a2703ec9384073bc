"""Built-in priors (each module registers itself)."""
