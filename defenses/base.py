"""Re-export of the defense protocol, so a defense module reads ``from defenses.base import Defense``."""

from bench.methods import Defense

__all__ = ["Defense"]
