"""What every tuning method is: it owns its trainable parameters and turns them into network hooks.

A method never edits the network: it returns `jaxprompt.models.hooks.Hooks` for each forward pass, and says
which parameters the network runs with (the frozen ones, or its own for model tuning). The train loop, the
compiled steps, checkpoints and evaluation only ever see this interface.
"""
from __future__ import annotations

import abc
import dataclasses
from collections.abc import Mapping
from typing import Any

import jax
import numpy as np

from jaxprompt.models.heads import HeadConfig
from jaxprompt.models.hooks import Hooks
from jaxprompt.models.task_heads import TaskHeads

Array = jax.Array
Params = Mapping[str, Any]
KVRows = Mapping[str, tuple[np.ndarray, np.ndarray]]  # kind -> (key, value), each [layers, Q, heads, head_dim]


@dataclasses.dataclass(frozen=True)
class BankRows:
  """What a prompt bank (`jaxprompt.methods.prompt_bank`) holds of one trained method: an input prompt
  `prompt` [P, d] with its combination mode, and / or K/V prefix rows `kv` with their relative-position mode."""
  prompt: np.ndarray | None = None
  combine: str = 'prefix'
  kv: KVRows = dataclasses.field(default_factory=dict)
  relpos: str | None = None


class Method(abc.ABC):
  """A tuning method. Subclasses are frozen dataclasses: hashable, so jitted steps can close over them."""

  # True when the method trains the network's own weights (model tuning): then there is no frozen tree.
  trains_network: bool = False
  # The task head trained beside the method (`jaxprompt.methods.with_head`), one per task
  # (`jaxprompt.methods.task_heads`), None for none.
  head: HeadConfig | TaskHeads | None = None

  @property
  def uses_dropout(self) -> bool:
    """True when the method has dropout of its own: the train step then gives it an rng even when the network
    has no dropout."""
    return float(getattr(self, 'dropout', 0.0) or 0.0) > 0.0

  @property
  def packing_slots(self) -> int:
    """Encoder positions the data pipeline reserves in front of each packed example for this method's input
    rows (a prompt's copy); 0 when the method adds no input positions."""
    return 0

  @property
  def task_names(self) -> tuple[str, ...]:
    """The tasks a multi-task method serves, in task-id order (a prompt bank's prompts, multi-task training's
    tasks); () for a one-task method. A multi-task method's `hooks` read `task_ids` [b], and every batch it
    sees carries them (feature `task_ids`)."""
    return ()

  @abc.abstractmethod
  def init(self, rng: Array, frozen: Params) -> Params:
    """Initial trainable parameters (host or device arrays). `frozen` is the network's (loaded) tree."""

  @abc.abstractmethod
  def abstract(self, network: Params) -> Params:
    """The trainable tree as boxed abstract values (`nn.Partitioned` of `ShapeDtypeStruct`: logical axes for
    sharding). `network` is the network's boxed abstract parameter tree."""

  def network_params(self, frozen: Params, trainable: Params) -> Params:
    """The parameters the network is applied with."""
    del trainable
    return frozen

  def hooks(self, trainable: Params, *, deterministic: bool = True, rng: Array | None = None,
            task_ids: Array | None = None) -> Hooks:
    """The hooks of one forward pass; `rng` (when not deterministic) feeds the method's own dropout;
    `task_ids` [b] int32 is each row's task (the batch's `task_ids` feature, None when it has none): a
    multi-task method (`task_names`) reads it, the others ignore it."""
    del trainable, deterministic, rng, task_ids
    return Hooks()

  def inference(self, trainable: Params) -> tuple[Method, Params]:
    """The method and parameters to evaluate, decode and export with: a reparameterised method (an MLP or LSTM
    that produces its prompt or prefix while training) returns the plain method holding the computed values;
    the others return themselves unchanged."""
    return self, trainable

  def numpy_copy(self, trainable: Params) -> dict[str, np.ndarray | dict[str, np.ndarray]] | None:
    """Small files to keep beside each checkpoint (`{'prompt.npy': [P, d]}`; a dict value of named arrays is
    written as a `.npz`), or None for none; `jaxprompt.methods.registry` reads them back."""
    del trainable
    return None

  def bank_rows(self, trainable: Params) -> BankRows | None:
    """This (inference-form) method's rows in a prompt bank, or None when a bank cannot serve it."""
    del trainable
    return None

  def from_bank_rows(self, rows: BankRows) -> Params:
    """The inverse of `bank_rows`: this method's parameters holding `rows` (a bank entry run alone)."""
    raise NotImplementedError(f'{type(self).__name__} has no prompt bank rows')
