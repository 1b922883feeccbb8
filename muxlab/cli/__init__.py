"""Runs on the operator's machine: the `muxlab` command, lab lifecycle (containerlab, Docker),
images, bootstrap, fault injection, and the client of the managers' API."""
from .main import main

__all__ = ["main"]
