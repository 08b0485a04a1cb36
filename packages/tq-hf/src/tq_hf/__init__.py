"""tq-hf: TurboQuant compressed KV cache for Hugging Face transformers."""

from tq_hf.attention import register, tq_attention_forward, use_tq_attention
from tq_hf.cache import TQCache, TQLayer

__all__ = ["TQCache", "TQLayer", "register", "tq_attention_forward", "use_tq_attention"]
__version__ = "0.1.0"
