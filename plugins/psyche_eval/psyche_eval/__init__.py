"""psyche-eval: ``psyche eval`` and :func:`psyche_eval.harness.evaluate`, running
lm-evaluation-harness tasks on any psyche :class:`~psyche_core.model.CausalLM`.

Importing this package imports neither torch nor lm-eval.
"""

__version__ = "0.1.0"
