"""Re-export of the attack protocol, so an attack module reads ``from attacks.base import Attack``."""

from bench.methods import Attack

__all__ = ["Attack"]
