"""The package version, in one place (the build reads pyproject.toml's copy)."""

__version__ = "0.1.0"
