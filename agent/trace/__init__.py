"""`pyinspect trace`: one container's packets through NAT, the bridge and its veth.

The session (session.py) orchestrates; see its docstring for the parts."""

from .session import TraceOptions, TraceSession
from .stale import cleanup_stale
from .summary import format_summary, parse_size

__all__ = ["TraceOptions", "TraceSession", "cleanup_stale", "format_summary", "parse_size"]
