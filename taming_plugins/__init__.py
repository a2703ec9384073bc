"""The built-in taming components.

Importing this package registers every built-in component. It is declared as the
``builtin`` entry point of the ``taming.plugins`` group, so the registry loads it
through the same mechanism as third-party plugins.
"""

from __future__ import annotations

import importlib
import pkgutil

#: Sub-packages whose modules register components when imported.
COMPONENT_PACKAGES = (
    "quantizers", "tokenizers", "losses", "discriminators", "priors", "samplers", "conditioning",
    "compat",
)


def _import_all() -> None:
    for pkg_name in COMPONENT_PACKAGES:
        pkg = importlib.import_module(f"{__name__}.{pkg_name}")
        for info in pkgutil.iter_modules(pkg.__path__):
            if not info.name.startswith("_"):
                importlib.import_module(f"{pkg.__name__}.{info.name}")


_import_all()
