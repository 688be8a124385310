"""Checkpoint readers: T5X parameter trees from classic (msgpack + zarr), single-file msgpack and Orbax."""
from jaxprompt.checkpoints.common import flatten_params, kvstore_spec, unflatten_params
from jaxprompt.checkpoints.t5x import (
    detect_format,
    latest_checkpoint,
    load_t5x_checkpoint,
    t5x_checkpoint_step,
)

__all__ = [
    "detect_format",
    "flatten_params",
    "kvstore_spec",
    "latest_checkpoint",
    "load_t5x_checkpoint",
    "t5x_checkpoint_step",
    "unflatten_params",
]
