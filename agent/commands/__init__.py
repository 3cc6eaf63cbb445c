"""Thin click commands, one module per command group; loaded lazily by pyinspect.cli."""
