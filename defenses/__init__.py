"""Defenses: one module per method, registered with ``@register("defense", name)``."""

from defenses import base  # noqa: F401
