"""ccoe: Collaboration of Experts (arXiv 2407.11686).

One frozen backbone causal LM plus experts, each a set of the backbone's decoder layers at chosen
depths fine-tuned on one domain. This package is the pure runtime (torch + transformers +
safetensors + fsspec); the Prefect flows and Lightning modules live beside it and call into it.
"""

__version__ = "0.1.0"
