"""Package metadata in co's field names (``cofunc.nn.__about__.__version__`` ...)."""

import time

from .._version import __version__  # noqa: F401  (co's field)
__author__ = "The cofunc authors"
__author_email__ = "cofunc@users.noreply.github.com"
__license__ = "Apache-2.0"
__copyright__ = f"Copyright (c) 2026-{time.strftime('%Y')}, {__author__}"
__homepage__ = "https://github.com/cofunc/cofunc"
__docs__ = "Functional Continual Inference Networks for online inference on temporal streams in PyTorch"
