"""Kernel probes (eBPF via bcc, netlink, conntrack) that yield typed event records.

A library: it knows nothing about container names, the web app or click.
"""
