"""Mesh-TF dimension names: the vocabulary of `layout` strings.

Users' layouts name these (e.g. "batch:x,heads:y,vocab:y"), so the names are public API and
are defined here once. One size in two roles gets two names: queries run along `sequence`,
keys and values along `memory_length`.
"""
import dataclasses
from dataclasses import dataclass

from ..meshtf import mtf

BATCH = "batch"
SEQUENCE = "sequence"
MEMORY_LENGTH = "memory_length"
EMBED_SEQUENCE = "embed_sequence"
EMBD = "embd"
HEADS = "heads"
FEATURES_PER_HEAD = "features_per_head"
VOCAB = "vocab"
INTERMEDIATE_EXPANDED = "intermediate_expanded"
# Local attention splits the sequence into blocks of queries that see their own block
# and the one before it.
NUM_BLOCKS = "num_blocks"
QUERY_BLOCK_LENGTH = "query_block_length"
MEMORY_BLOCK_LENGTH = "memory_block_length"
# Decoding: a local layer keeps keys and values of its window only, in a ring buffer.
LOCAL_MEMORY_LENGTH = "local_memory_length"

MODEL_DIMS = (BATCH, SEQUENCE, MEMORY_LENGTH, EMBED_SEQUENCE, EMBD, HEADS, FEATURES_PER_HEAD,
              VOCAB, INTERMEDIATE_EXPANDED, NUM_BLOCKS, QUERY_BLOCK_LENGTH, MEMORY_BLOCK_LENGTH,
              LOCAL_MEMORY_LENGTH)
# Learned memory keys and values of global layers (`num_mem_kv`), attended with the context's keys.
MEM_KV_SEQUENCE = "mem_kv_sequence"
# The two factors of an axial position table (`axial_pos_emb`): rows and columns of its grid.
AXIAL_DIM_0 = "axial_dim_0"
AXIAL_DIM_1 = "axial_dim_1"
# Rotary embeddings turn feature i of a head together with feature i + head_size/2, by angle i.
HALF_FEATURES_PER_HEAD = "half_features_per_head"
# Linear attention's key features, in its state sum(phi(k)ᵀ v) [features_per_head_in, features_per_head].
FEATURES_PER_HEAD_IN = "features_per_head_in"
# Mixture of experts (`moe_layers`): the experts on their weights and work, and on tensors split by
# token groups instead (unsplit); each expert's hidden units; an expert's slots per group; the tokens
# of a group; the groups, on tensors split by experts instead (unsplit).
EXPERTS = "experts"
EXPERT_UNSPLIT = "expert_unsplit"
EXPERT_HIDDEN = "expert_hidden"
EXPERT_CAPACITY = "expert_capacity"
GROUP = "group"
BATCH_UNSPLIT = "batch_unsplit"

# Names the original model family also defines (memory key/values, axial and rotary position
# embeddings, linear attention, microbatching, mixture of experts). Layout rules may name
# them; they only take effect in models that have the feature. No tensor here has "axial_dim" (the
# original's flattened axial table: rows are computed from the two factors), nor mesh-tf's MoE names
# "outer_batch" (expert replicas, always 1 in GPT-Neo) and "d_model_split": they are listed so that the
# layout check can refuse them with advice (trainer/config/validation.py, NO_TENSOR_DIMS).
FEATURE_DIMS = (MEM_KV_SEQUENCE, "axial_dim", AXIAL_DIM_0, AXIAL_DIM_1,
                HALF_FEATURES_PER_HEAD, FEATURES_PER_HEAD_IN, "microbatch", EXPERTS,
                EXPERT_UNSPLIT, EXPERT_HIDDEN, EXPERT_CAPACITY, GROUP, "outer_batch",
                BATCH_UNSPLIT, "d_model_split")
LAYOUT_DIMS = MODEL_DIMS + FEATURE_DIMS
# Dimensions along positions. Sampling leaves them whole (trainer.config.MeshConfig.for_decoding): its
# lengths (a prompt's prefill, the decode length) seldom divide a mesh dimension.
# A distillation teacher (trainer/distill.py) runs beside the student in one graph, laid out by its own
# config's `layout`: its dimensions along the model's width and vocabulary get names of their own
# (`teacher_name`). It reads the student's batch, so the dimensions along the batch and positions stay shared.
TEACHER_DIMS = (EMBD, HEADS, FEATURES_PER_HEAD, VOCAB, INTERMEDIATE_EXPANDED, EMBED_SEQUENCE)


def teacher_name(name):
    return "teacher_" + name if name in TEACHER_DIMS else name


LENGTH_DIMS = (SEQUENCE, MEMORY_LENGTH, EMBED_SEQUENCE, NUM_BLOCKS, QUERY_BLOCK_LENGTH, MEMORY_BLOCK_LENGTH,
               LOCAL_MEMORY_LENGTH, "axial_dim", AXIAL_DIM_0, AXIAL_DIM_1)


@dataclass(frozen=True)
class Dims:
    """The model's dimensions for one mode (the batch size differs between modes)."""

    batch: mtf.Dimension
    sequence: mtf.Dimension
    memory_length: mtf.Dimension
    embed_sequence: mtf.Dimension
    embd: mtf.Dimension
    heads: mtf.Dimension              # n_head, on activations
    heads_combined: mtf.Dimension     # n_embd, "heads" x "features_per_head" on q/k/v/o
    features_per_head: mtf.Dimension
    vocab: mtf.Dimension
    intermediate: mtf.Dimension
    local_memory: mtf.Dimension       # local_attention_radius, capped at n_ctx

    @classmethod
    def build(cls, model_config, batch_size, teacher=False):
        """`teacher`: a distillation teacher's dims (see TEACHER_DIMS)."""
        c = model_config
        name = teacher_name if teacher else str
        return cls(
            batch=mtf.Dimension(BATCH, batch_size),
            sequence=mtf.Dimension(SEQUENCE, c.n_ctx),
            memory_length=mtf.Dimension(MEMORY_LENGTH, c.n_ctx),
            embed_sequence=mtf.Dimension(name(EMBED_SEQUENCE), c.n_ctx),
            embd=mtf.Dimension(name(EMBD), c.n_embd),
            heads=mtf.Dimension(name(HEADS), c.n_head),
            # The original keeps the name "heads" for the combined dimension, so one
            # layout rule shards weights and activations alike.
            heads_combined=mtf.Dimension(name(HEADS), c.n_embd),
            features_per_head=mtf.Dimension(name(FEATURES_PER_HEAD), c.n_embd // c.n_head),
            vocab=mtf.Dimension(name(VOCAB), c.n_vocab),
            intermediate=mtf.Dimension(name(INTERMEDIATE_EXPANDED), 4 * c.n_embd),
            local_memory=mtf.Dimension(LOCAL_MEMORY_LENGTH, min(c.local_attention_radius, c.n_ctx)),
        )

    def for_length(self, n):
        """These dims over a sequence of n <= n_ctx positions (a prompt's prefill, a decode length):
        queries and keys alike, and a local layer's decoding window no longer than n."""
        return dataclasses.replace(self, sequence=mtf.Dimension(SEQUENCE, n),
                                   memory_length=mtf.Dimension(MEMORY_LENGTH, n),
                                   local_memory=mtf.Dimension(LOCAL_MEMORY_LENGTH, min(self.local_memory.size, n)))
