"""Namespace topologies and capture helpers that both tests/ and bench/ build on.

Not part of the installed package and not test code: tests/ and bench/ import it from
the checkout (pytest has the repository root on its path: `pythonpath = .` in setup.cfg;
bench scripts put the root on sys.path).
"""
