"""isales-watcher: drop an outbound-call list into a folder; it is checked and imported once."""

__all__ = ("__version__",)

__version__ = "0.1.0"
