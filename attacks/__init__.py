"""Attacks: one module per method, registered with ``@register("attack", name)``."""

from attacks import base  # noqa: F401
