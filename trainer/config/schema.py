"""The typed config: frozen dataclasses whose fields are the original's JSON keys, and the sizes
derived from them. `trainer.config.loading` fills them from files, `trainer.config.validation`
checks them; the rest of the program reads only these. The sampling group (`predict`) is
models.sampling.PredictConfig, which decoding reads as it is.
"""
import dataclasses
from dataclasses import dataclass
from typing import Optional, Tuple

from ...models import dims
from ...models.moe import MoeParams
from ...models.sampling import PredictConfig

# The values of keys that name a choice.
ATTENTION_KINDS = ("global", "local", "linear", "none")
INPUT_FNS = ("sequential_input", "generic_text")
SAMPLING_MODES = ("chunks", "documents_fixed", "documents_random")
EVAL_TASKS = ("lambada",)
PRECISIONS = ("float32", "bfloat16")  # see models.gpt.variable_dtype


@dataclass(frozen=True)
class ModelConfig:
    n_ctx: int
    n_embd: int
    n_head: int
    n_layer: int
    n_vocab: int
    attention_types: Tuple[str, ...]  # expanded, one entry per layer
    model: str = "GPT"
    local_attention_radius: int = 256
    embed_dropout: float = 0.0
    attn_dropout: float = 0.0
    res_dropout: float = 0.0
    activation_fn: str = "gelu"
    scale_by_depth: bool = False
    scale_by_in: bool = False
    z_loss: float = 1e-4
    precision: str = "float32"
    recompute_grad: bool = False
    chunked_loss: bool = False  # training's output layer and loss over vocabulary chunks (models/chunked_loss.py)
    # Experimental features of the original (see trainer.config.validation).
    mlm_training: bool = False  # masked-LM objective (inputs/mlm.py); attention sees both ways
    moe_layers: Optional[Tuple[int, ...]] = None
    moe_params: MoeParams = MoeParams()  # parsed from the key's JSON object (mesh-tf's hyper-parameters)
    moe_activation: str = "relu"
    axial_pos_emb: Optional[Tuple[int, ...]] = None
    rotary_emb: bool = False
    num_mem_kv: int = 0
    mlp_glu: bool = False
    scalenorm: bool = False
    rezero: bool = False
    macaron: bool = False
    share_parameters: bool = False
    no_weight_tie: bool = False
    entmax_loss: bool = False
    # The original's configs carry this key but never read it (all its models use GELU).
    activation_function: Optional[str] = None

    @property
    def head_size(self):
        return self.n_embd // self.n_head


@dataclass(frozen=True)
class TrainConfig:
    train_batch_size: int
    train_steps: int
    lr: float
    opt_name: str
    iterations: int
    eval_batch_size: Optional[int] = None
    predict_batch_size: int = 1
    eval_steps: int = 0
    predict_steps: int = 0
    warmup_steps: int = 0
    lr_decay: Optional[str] = None
    lr_decay_end: Optional[int] = None
    beta1: float = 0.9
    beta2: float = 0.999
    epsilon: float = 1e-8
    ada_epsilon1: float = 1e-30
    ada_epsilon2: float = 1e-3
    weight_decay: float = 0.0
    gradient_clipping: Optional[float] = None
    tokens_per_mb_per_replica: Optional[int] = None
    log_grads: bool = False
    eval_tasks: Tuple[str, ...] = ()
    lambada_path: Optional[str] = None  # new key: the LAMBADA JSONL, local or gs:// (inputs/lambada.py)
    # New keys: checkpoints kept (the original's fixed saver settings are the defaults).
    keep_checkpoint_max: int = 10
    keep_checkpoint_every_n_hours: float = 2.0  # also keep one per this many hours; 0 = none
    # New keys: skip the update of a step whose loss > factor × the mean of the previous `window` steps
    # (trainer/spikes.py); 0 = off.
    skip_loss_spike_factor: float = 0.0
    skip_loss_spike_window: int = 100

    def batch_size(self, mode):
        return {"train": self.train_batch_size, "eval": self.eval_batch_size,
                "predict": self.predict_batch_size}[mode]

    @property
    def evaluates(self):
        """Whether training stops every steps_per_checkpoint steps to evaluate."""
        return self.eval_steps > 0 or bool(self.eval_tasks)


@dataclass(frozen=True)
class DatasetConfig:
    """One `configs/dataset_configs/<id>.json`."""

    id: str
    n_vocab: int
    path: Optional[str] = None
    eval_path: Optional[str] = None
    tokenizer_path: Optional[str] = None
    tokenizer_is_pretrained: bool = False
    eos_id: int = 1
    padding_id: int = 0
    lambada_tokens_path: Optional[str] = None


@dataclass(frozen=True)
class DatasetEntry:
    """One entry of the model config's `datasets` list: [id, stitch, sampling_mode, weight]."""

    id: str
    stitch: Optional[int] = None
    sampling_mode: Optional[str] = None
    weight: Optional[float] = None


@dataclass(frozen=True)
class DataConfig:
    datasets: Tuple[DatasetEntry, ...]
    dataset_configs: Tuple[DatasetConfig, ...] = ()  # resolved, in `datasets` order, unique
    input_fn: str = "sequential_input"
    seed: int = 1
    shuffle_input_filenames: bool = True
    no_dataset: bool = False
    # Inherited from the last dataset config, overriding the model config (as the original).
    eos_id: int = 1
    padding_id: int = 0
    mlm_mask_id: Optional[int] = None
    mlm_cls_token_id: Optional[int] = None
    mlm_mask_prob: float = 0.15
    mlm_same_token_prob: float = 0.10
    mlm_random_token_prob: float = 0.0
    mlm_mask_ignore_ids: Tuple[int, ...] = ()


@dataclass(frozen=True)
class MeshConfig:
    mesh_shape: Tuple[Tuple[str, int], ...]   # (mesh dim name, size), in order
    layout: Tuple[Tuple[str, str], ...]       # (tensor dim name, mesh dim name)

    @property
    def size(self):
        n = 1
        for _, size in self.mesh_shape:
            n *= size
        return n

    @property
    def shape_string(self):
        return ",".join("%s:%d" % pair for pair in self.mesh_shape)

    @property
    def layout_string(self):
        return ",".join("%s:%s" % pair for pair in self.layout)

    def mesh_dim_of(self, tensor_dim):
        return dict(self.layout).get(tensor_dim)

    def splits_of(self, tensor_dim):
        """Into how many pieces `layout` cuts `tensor_dim`: the size of its mesh dimension, else 1."""
        mesh_dim = self.mesh_dim_of(tensor_dim)
        return dict(self.mesh_shape)[mesh_dim] if mesh_dim else 1

    def for_decoding(self, batch_size):
        """The layout sampling runs with, on the same mesh: this one without splits of lengths
        (dims.LENGTH_DIMS), so caches split by batch and heads as laid out, and without the split of
        `batch` when `batch_size` (predict_batch_size) does not divide over it: every device then
        samples the whole batch. Checkpoints store whole variables, so any layout restores them."""
        sizes = dict(self.mesh_shape)
        kept = tuple((t, m) for t, m in self.layout
                     if t not in dims.LENGTH_DIMS and not (t == dims.BATCH and batch_size % sizes[m]))
        return dataclasses.replace(self, layout=kept)


@dataclass(frozen=True)
class DistillConfig:
    """Knowledge distillation (docs/distillation.md): the student, this config's model, learns from a
    frozen teacher's output distribution as well as from the labels. Off without `distill_teacher`."""

    distill_teacher: Optional[str] = None             # the teacher's model config JSON, local or gs://
    distill_teacher_checkpoint: Optional[str] = None  # its checkpoint (prefix or directory); default: its model_path
    distill_alpha: float = 0.5        # loss = (1 - alpha) · label loss + alpha · T² · KL(teacher_T || student_T)
    distill_temperature: float = 1.0  # T
    distill_top_k: int = 0            # keep the teacher's k most likely tokens, renormalised; 0 = all
    # Read from the teacher's config file on loading (not keys).
    teacher: Optional[ModelConfig] = None
    teacher_layout: Tuple[Tuple[str, str], ...] = ()  # its `layout`, on this config's mesh_shape

    @property
    def on(self):
        return self.teacher is not None


@dataclass(frozen=True)
class Config:
    name: str           # the model config's file stem; names logs
    model_path: str
    model: ModelConfig
    train: TrainConfig
    data: DataConfig
    mesh: MeshConfig
    predict: PredictConfig = PredictConfig()
    distill: DistillConfig = DistillConfig()



# ---------------------------------------------------------------------------------------------
# Sizes derived from the config


def replica_tokens(config):
    """The tokens of one replica's training batch: train_batch_size / the splits of `batch`, × n_ctx."""
    return config.train.train_batch_size // config.mesh.splits_of(dims.BATCH) * config.model.n_ctx


def training_mesh(config):
    """The MeshConfig a training step is laid out with: `mesh`, plus with a distillation teacher the
    teacher's own `layout` for its dimensions (dims.TEACHER_DIMS, named apart from the student's; validation
    makes its layout of the shared ones, batch and positions, the student's)."""
    teacher = tuple((dims.teacher_name(t), m) for t, m in config.distill.teacher_layout if t in dims.TEACHER_DIMS)
    return dataclasses.replace(config.mesh, layout=config.mesh.layout + teacher) if teacher else config.mesh


def microbatches(config):
    """Training microbatches per step: the tokens of one replica's batch / `tokens_per_mb_per_replica`,
    whose gradients a step sums; 1 without the key. (Validation makes the key a multiple of n_ctx that
    divides those tokens: a microbatch holds whole examples.)"""
    per_microbatch = config.train.tokens_per_mb_per_replica
    return 1 if per_microbatch is None else replica_tokens(config) // per_microbatch

