import pytest

from psyche_core.plugins import Plugins
from tests.core import toy_plugin


@pytest.fixture
def plugins() -> Plugins:
    """Built-ins plus the toy plugin; installed entry points do not leak in."""
    return Plugins.load(entry_points=False, extra=[toy_plugin])
