"""co's continual multi-head attention modules (subclasses of ``torch.nn.MultiheadAttention``)."""

from .retroactive_mha import RetroactiveMultiheadAttention
from .single_output_mha import SingleOutputMultiheadAttention

__all__ = ["RetroactiveMultiheadAttention", "SingleOutputMultiheadAttention"]
