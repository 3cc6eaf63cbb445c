"""pyinspect: network and kernel-level observability for Linux containers."""

__version__ = "0.1.0"
