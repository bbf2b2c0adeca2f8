"""Defenses: one module per method, registered with ``@register("defense")`` (the class's ``name``)."""

import defenses.controls  # noqa: F401
import defenses.pruning  # noqa: F401
import defenses.recipe  # noqa: F401
from defenses import base  # noqa: F401
