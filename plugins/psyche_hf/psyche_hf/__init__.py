"""psyche-hf: train any transformers causal LM (``AutoModelForCausalLM``) with psyche.

The model class is :class:`psyche_hf.model.HfCausalLM`; importing this package imports neither
torch nor transformers.
"""

__version__ = "0.1.0"
