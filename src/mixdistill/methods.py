"""Every training method by its config name (``method.name``): importing this module imports the offline
distillers and the online methods, which register themselves into ``METHODS``."""

import mixdistill.distill  # noqa: F401  (registration)
import mixdistill.online  # noqa: F401  (registration)
from mixdistill.registry import METHODS

__all__ = ["METHODS"]
