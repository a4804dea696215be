"""The version of sah (one place; ``sah.__version__`` and recordings read it)."""

__version__ = "0.1.0"
