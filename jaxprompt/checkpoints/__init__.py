"""Checkpoint readers: T5X (classic msgpack + zarr, single-file msgpack, Orbax) and Hugging Face safetensors."""
from jaxprompt.checkpoints.common import flatten_params, kvstore_spec, unflatten_params
from jaxprompt.checkpoints.huggingface import load_hf_t5
from jaxprompt.checkpoints.t5x import (
    detect_format,
    latest_checkpoint,
    load_t5x_checkpoint,
    t5x_checkpoint_step,
)

__all__ = [
    'detect_format',
    'flatten_params',
    'kvstore_spec',
    'latest_checkpoint',
    'load_hf_t5',
    'load_t5x_checkpoint',
    't5x_checkpoint_step',
    'unflatten_params',
]
