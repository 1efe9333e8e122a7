from .ops import available_backends, selective_scan  # noqa: F401
