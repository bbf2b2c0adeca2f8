"""Attacks: one module per method, registered with ``@register("attack")`` (the class's ``name``)."""

import attacks.badpre  # noqa: F401
import attacks.neuba  # noqa: F401
import attacks.neuba_vision  # noqa: F401
import attacks.por  # noqa: F401
from attacks import base  # noqa: F401
