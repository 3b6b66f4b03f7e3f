import pytest

for name in ("psyche_llama", "psyche_data", "psyche_distro"):
    pytest.importorskip(name, reason=f"{name} is not installed (pip install -r requirements.txt)")
