"""``psyche train`` with the toy plugin, for starting under torchrun (or directly) in tests."""

import sys

from psyche_core.cli import main
from psyche_core.plugins import Plugins
from tests.core import toy_plugin

if __name__ == "__main__":
    main(sys.argv[1:], plugins=Plugins.load(entry_points=False, extra=[toy_plugin]))
