"""The runtime's version (pyproject.toml's): here, in the base, so that every layer may name it."""
__version__ = "0.1.0"
