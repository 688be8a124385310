"""T5X-compatible T5 models."""
from jaxprompt.models.config import CONFIGS, T5Config, get_config
from jaxprompt.models.t5 import Transformer

__all__ = ['CONFIGS', 'T5Config', 'Transformer', 'get_config']
