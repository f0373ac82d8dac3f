"""Delivery to Keito (filled in by the exporter): notify, flush and shutdown hooks used by the core."""

from __future__ import annotations


def notify() -> None:
    """New pending records are in the spool: start (or wake) the background exporter."""


def flush(timeout: float) -> bool:
    """Wait up to `timeout` seconds for pending records to be delivered; True if none is left."""
    return True


def shutdown(timeout: float) -> bool:
    """Drain within `timeout` seconds and stop the exporter; True if nothing is left pending."""
    return True
