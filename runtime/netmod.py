"""The bridge network module, imported only when a container needs it (`--net none`
and `--net host` work without it)."""

from types import ModuleType

from pyinspect.errors import UnavailableError


def network_module() -> ModuleType:
    """pyinspect.runtime.network, or UnavailableError when it cannot be imported."""
    try:
        from . import network
    except ImportError as exc:
        raise UnavailableError(
            f"bridge networking is unavailable: {exc}", "use --net none or --net host"
        ) from None
    return network
