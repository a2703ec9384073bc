"""One module per ``taming`` sub-command; see :mod:`taming_plugins.cli`."""
