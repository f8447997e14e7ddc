"""distrib's version (its own module, so any layer can read it without importing the rest)."""

__version__ = "0.1.0"
