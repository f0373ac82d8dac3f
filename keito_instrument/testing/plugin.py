"""pytest plugin (registered through the `pytest11` entry point): fixtures of the testing kit."""

from __future__ import annotations
