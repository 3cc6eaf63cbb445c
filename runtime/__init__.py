"""The container runtime: images, containers, isolation, cgroups, networking.

A library: it knows nothing about probes, the web app or click.
"""
