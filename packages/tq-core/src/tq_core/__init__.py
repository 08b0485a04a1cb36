"""tq-core: TurboQuant KV-cache compression, the engine-agnostic codec and ops."""

from tq_core.codec import TQCodec
from tq_core.config import TQConfig
from tq_core.errors import TQConfigError, TQError, TQInputError, TQUnsupportedModelError
from tq_core.layout import FORMAT_VERSION, CacheLayout, VectorFormat
from tq_core.rotation import rotate_query, unrotate_output

__version__ = "0.1.0"

__all__ = [
    "FORMAT_VERSION",
    "CacheLayout",
    "TQCodec",
    "TQConfig",
    "TQConfigError",
    "TQError",
    "TQInputError",
    "TQUnsupportedModelError",
    "VectorFormat",
    "rotate_query",
    "unrotate_output",
]
