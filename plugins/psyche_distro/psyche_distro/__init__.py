"""psyche-distro: the DisTrO optimizer for psyche.

Each peer keeps a float32 momentum ``delta``, sends only the largest DCT coefficients of it
(a few bytes per 4096 weights) and every peer applies the sign of the decoded average of what
all peers sent. See ``docs/distro.md``.

This module stays free of torch imports so that loading the plugin is cheap; the optimizer lives
in :mod:`psyche_distro.optimizer`.
"""

__version__ = "0.1.0"
