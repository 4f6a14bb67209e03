"""What one call of the model shares with all its layers (as Mesh-TF's `transformer.Context`).

The caller of gpt, gpt_with_cache, gpt_losses, gpt_step or generate builds one Context; the layers
read from it the dims, the config, the mode, the variables' dtype and the seed.
"""
from dataclasses import dataclass
from typing import Any, Optional

from ..meshtf import mtf, tf
from .dims import Dims

FLOAT32 = mtf.VariableDType(tf.float32)


@dataclass(frozen=True)
class Context:
    d: Dims                # this call's dimensions: its batch, its sequence (n_ctx, a prompt, a decode length)
    c: Any                 # the model config (trainer.config.ModelConfig)
    train: bool            # dropout on, MoE's training capacity and second-expert policy
    seed: int              # the initialisers' seeds (with each variable's name), rrelu's slope, sampling's draws
    dtype: mtf.VariableDType = FLOAT32  # the variables' dtypes (gpt.variable_dtype)
    # The attention masks of d.sequence (attention.attention_masks), which a pass over a sequence
    # builds once for all its layers; None in a decoding step, which masks by its position.
    masks: Optional[dict] = None
