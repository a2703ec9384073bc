"""Default configuration files shipped with taming (``demo.yaml``...)."""
