"""Checks of an assembled `Config` across its keys: ranges, combinations the model cannot run, the
layout against the model's dimensions and the mesh. Each problem is one ConfigError naming the key
and the fix. `validate` runs on every config loaded and again after flags change one.
"""
import dataclasses
import json

from ...errors import ConfigError, did_you_mean
from ...inputs import lambada
from ...models import dims, moe
from ...models.activations import ACTIVATIONS
from .schema import EVAL_TASKS, INPUT_FNS, PRECISIONS, SAMPLING_MODES, replica_tokens


def validate(config):
    """Raise a ConfigError for the first problem of `config`."""
    _check_model(config.model)
    _check_training(config.train, config.data)
    _check_sampling(config.predict)
    for ds in config.data.dataset_configs:
        if ds.n_vocab > config.model.n_vocab:
            raise ConfigError("dataset %r was encoded with n_vocab %d but the model's `n_vocab` is %d; "
                              "set n_vocab >= %d" % (ds.id, ds.n_vocab, config.model.n_vocab, ds.n_vocab))
        # eos reaches the model (between documents, ending samples); padding_id may be n_vocab: it never does.
        if not 0 <= ds.eos_id < config.model.n_vocab:
            raise ConfigError("dataset config %r has eos_id %d, but the model's ids are 0 to n_vocab - 1 = %d; "
                              "set eos_id to the tokenizer's end-of-text id" % (ds.id, ds.eos_id,
                                                                               config.model.n_vocab - 1))
    _check_datasets(config.data)
    _check_supported(config)
    _check_eval_tasks(config)
    _check_mlm(config)
    _check_attention_features(config)
    _check_block(config.model)
    _check_layout(config)
    _check_microbatches(config)
    _check_distill(config)
    _check_chunked_loss(config)


def _check_chunked_loss(config):
    """`chunked_loss` computes the tied output layer's cross-entropy without the logits."""
    m = config.model
    if not m.chunked_loss:
        return
    needs_logits = [key for key, on in (("no_weight_tie", m.no_weight_tie), ("entmax_loss", m.entmax_loss),
                                        ("distill_teacher", config.distill.on)) if on]
    if needs_logits:
        raise ConfigError("`chunked_loss` computes the cross-entropy of the tied output layer without its logits, "
                          "but `%s` needs them; unset chunked_loss or %s" % (needs_logits[0], needs_logits[0]))


def _check_model(m):
    for key in ("n_ctx", "n_embd", "n_head", "n_layer", "n_vocab", "local_attention_radius"):
        if getattr(m, key) < 1:
            raise ConfigError("`%s` must be at least 1, got %d" % (key, getattr(m, key)))
    for key in ("embed_dropout", "attn_dropout", "res_dropout"):
        if not 0 <= getattr(m, key) < 1:
            raise ConfigError("`%s` is a dropout rate and must be in [0, 1), got %g" % (key, getattr(m, key)))
    if m.n_embd % m.n_head:
        raise ConfigError("`n_embd` (%d) must be divisible by `n_head` (%d): head size = n_embd / n_head"
                          % (m.n_embd, m.n_head))
    if len(m.attention_types) != m.n_layer:
        raise ConfigError("`attention_types` expands to %d layers but `n_layer` is %d; make the repeat "
                          "counts add up to n_layer" % (len(m.attention_types), m.n_layer))
    if m.model != "GPT":
        raise ConfigError("`model` must be \"GPT\" (the only model GPT-Neo has), got %r" % m.model)


def _check_training(t, d):
    for key in ("train_batch_size", "iterations", "keep_checkpoint_max", "skip_loss_spike_window"):
        if getattr(t, key) < 1:
            raise ConfigError("`%s` must be at least 1, got %d" % (key, getattr(t, key)))
    if t.train_steps < 0 or t.eval_steps < 0 or t.warmup_steps < 0:
        raise ConfigError("`train_steps`, `eval_steps` and `warmup_steps` must not be negative")
    if t.lr < 0:
        raise ConfigError("`lr` must not be negative, got %g" % t.lr)
    # Random ops are keyed by int32 seeds (TPUs take no wider keys).
    if not 0 <= d.seed < 2 ** 31:
        raise ConfigError("`seed` must be between 0 and 2147483647, got %d" % d.seed)
    if t.lr_decay not in (None, "linear", "cosine"):
        raise ConfigError("`lr_decay` must be \"linear\", \"cosine\" or null, got %r" % t.lr_decay)
    if t.opt_name.lower() not in ("adam", "adafactor"):
        raise ConfigError("`opt_name` must be \"adam\" or \"adafactor\", got %r (the original silently "
                          "chose Adafactor for any other value)" % t.opt_name)
    if t.opt_name.lower() == "adafactor" and t.weight_decay:
        raise ConfigError("`weight_decay` is %g but Adafactor has no weight decay here (the original passed it "
                          "as Adafactor's decay rate by mistake); set it to 0 or use opt_name \"adam\""
                          % t.weight_decay)
    if t.gradient_clipping is not None and t.gradient_clipping <= 0:
        raise ConfigError("`gradient_clipping` must be positive (or omitted for no clipping)")
    if t.keep_checkpoint_every_n_hours < 0:
        raise ConfigError("`keep_checkpoint_every_n_hours` must not be negative (0 = keep none by age)")
    if t.skip_loss_spike_factor and (t.skip_loss_spike_factor <= 1 or t.opt_name.lower() != "adam"):
        raise ConfigError("`skip_loss_spike_factor` must be 0 (off) or above 1, with opt_name \"adam\" (Adafactor "
                          "cannot skip updates yet), got %g with %s" % (t.skip_loss_spike_factor, t.opt_name))


def _check_sampling(p):
    if p.temperature < 0 or p.top_k < 0 or not 0 < p.top_p <= 1 or p.num_samples < 1:
        raise ConfigError("sampling keys out of range: temperature >= 0 (0 = greedy), top_k >= 0 (0 = off), "
                          "0 < top_p <= 1, num_samples >= 1; got temperature %g, top_k %d, top_p %g, num_samples %d"
                          % (p.temperature, p.top_k, p.top_p, p.num_samples))
    if p.entmax_sampling and (p.top_k or p.top_p < 1):
        raise ConfigError("`entmax_sampling` samples from 1.3-entmax, which already gives unlikely tokens probability "
                          "0; top_k and top_p do not apply to it: set them to 0 and 1")
    if p.predict_max_steps is not None and p.predict_max_steps < 1:
        raise ConfigError("`predict_max_steps` must be at least 1 (or null for up to n_ctx)")
    if p.predict_precision not in PRECISIONS:
        raise ConfigError("`predict_precision` must be one of %s, got %s" % (
            ", ".join(map(json.dumps, PRECISIONS)), json.dumps(p.predict_precision)))


def _check_datasets(data):
    """`input_fn`, and the sampling fields of `datasets` entries, which generic_text reads (the
    sequential input reads only the ids)."""
    if data.input_fn not in INPUT_FNS:
        raise ConfigError("`input_fn` must be one of %s, got %r%s" % (
            ", ".join(INPUT_FNS), data.input_fn, did_you_mean(data.input_fn, INPUT_FNS)))
    if data.input_fn != "generic_text":
        return
    for e in data.datasets:
        if e.sampling_mode not in SAMPLING_MODES:
            raise ConfigError("`datasets` entry %r: generic_text needs a sampling_mode of %s, got %s%s" % (
                e.id, ", ".join(SAMPLING_MODES), json.dumps(e.sampling_mode),
                did_you_mean(e.sampling_mode or "", SAMPLING_MODES)))
        if e.sampling_mode != "chunks" and (e.stitch is None or e.stitch < 1):
            raise ConfigError("`datasets` entry %r: %s needs stitch >= 1, the number of documents joined per "
                              "example (stitch x shortest document >= n_ctx + 1), got %s"
                              % (e.id, e.sampling_mode, json.dumps(e.stitch)))
        if e.weight is not None and e.weight <= 0:
            raise ConfigError("`datasets` entry %r: weight must be positive (null = 1), got %g; remove the "
                              "entry to leave the dataset out" % (e.id, e.weight))


def _check_supported(config):
    m = config.model
    if m.precision not in PRECISIONS:
        raise ConfigError("`precision` must be one of %s, got %s (the original silently trained any other value "
                          "in float32)" % (", ".join(map(json.dumps, PRECISIONS)), json.dumps(m.precision)))
    if m.activation_function not in (None, "gelu"):
        raise ConfigError("`activation_function` is %r, but GPT-Neo never read this key (its models "
                          "all use GELU); remove it, and set `activation_fn` to choose an activation"
                          % m.activation_function)


def _check_microbatches(config):
    """`tokens_per_mb_per_replica`: a microbatch holds whole examples, so the key must be a multiple of
    n_ctx dividing the tokens of a replica's batch (the original rounded other values down to such a
    multiple silently)."""
    t, n_ctx = config.train, config.model.n_ctx
    per_microbatch, tokens = t.tokens_per_mb_per_replica, replica_tokens(config)
    if per_microbatch is None:
        return
    if per_microbatch <= 0 or per_microbatch % n_ctx or tokens % per_microbatch:
        replica_batch = tokens // n_ctx
        valid = [examples * n_ctx for examples in range(1, replica_batch + 1) if replica_batch % examples == 0]
        raise ConfigError("`tokens_per_mb_per_replica` (%d) must be a multiple of n_ctx (%d) that divides the %d "
                          "tokens of a replica's batch (train_batch_size %d over %d replica(s) of `batch`): one of %s"
                          % (per_microbatch, n_ctx, tokens, t.train_batch_size, config.mesh.splits_of(dims.BATCH),
                             ", ".join(map(str, valid))))


def _check_eval_tasks(config):
    t = config.train
    for task in t.eval_tasks:
        if task not in EVAL_TASKS:
            raise ConfigError("unknown task %r in `eval_tasks` (known: %s)%s" % (
                task, ", ".join(EVAL_TASKS), did_you_mean(task, EVAL_TASKS)))
    if "lambada" not in t.eval_tasks:
        return
    if not t.lambada_path:
        raise ConfigError("`eval_tasks` lists lambada but `lambada_path` is not set: download %s and set "
                          "lambada_path to the file (local or gs://)" % lambada.URL)
    if config.model.mlm_training:
        raise ConfigError("LAMBADA scores next-word predictions, which a masked-LM model (`mlm_training`) does "
                          "not make; remove lambada from `eval_tasks`")


def _check_mlm(config):
    """The masked-LM keys, read when `mlm_training` is set (see inputs/mlm.py)."""
    m, d = config.model, config.data
    if not m.mlm_training:
        return
    if d.mlm_mask_id is None:
        raise ConfigError("`mlm_training` needs `mlm_mask_id`, the id put in place of masked tokens (e.g. one "
                          "the tokenizer does not use, below n_vocab)")
    for key in ("mlm_mask_id", "mlm_cls_token_id"):
        value = getattr(d, key)
        if value is not None and not 0 <= value < m.n_vocab:
            raise ConfigError("`%s` is %d, but ids must be in [0, n_vocab = %d)" % (key, value, m.n_vocab))
    if not 0 < d.mlm_mask_prob <= 1:
        raise ConfigError("`mlm_mask_prob` is the share of positions masked and must be in (0, 1], got %g"
                          % d.mlm_mask_prob)
    same, random = d.mlm_same_token_prob, d.mlm_random_token_prob
    if min(same, random) < 0 or same + random > 1:
        raise ConfigError("`mlm_same_token_prob` (%g) and `mlm_random_token_prob` (%g) are shares of the masked "
                          "positions: each at least 0 and together at most 1 (the rest get mlm_mask_id)"
                          % (same, random))
    if config.train.predict_steps > 0:
        raise ConfigError("`predict_steps` samples text during training, which a masked-LM model (`mlm_training`) "
                          "does not generate; set it to 0")


def _check_attention_features(config):
    """`axial_pos_emb`, `rotary_emb`, `num_mem_kv` (the original accepted bad values and failed
    inside the graph, or silently ignored them), and the layout of linear attention's decoding state,
    which the training graph preflight checks does not have."""
    m = config.model
    if "linear" in m.attention_types:
        state = (dims.BATCH, dims.HEADS, dims.FEATURES_PER_HEAD_IN, dims.FEATURES_PER_HEAD)
        mesh_dims = [config.mesh.mesh_dim_of(name) for name in state if config.mesh.mesh_dim_of(name)]
        if len(set(mesh_dims)) < len(mesh_dims):
            raise ConfigError("`layout` puts two of %s on one mesh dimension, but linear attention decodes with "
                              "a state that has all four; map them to different mesh dimensions" % ", ".join(state))
    if m.axial_pos_emb is not None:
        if m.rotary_emb:
            raise ConfigError("`axial_pos_emb` and `rotary_emb` are both set, but a model has one kind of "
                              "position embedding (the original silently used rotary); remove one")
        if len(m.axial_pos_emb) != 2 or min(m.axial_pos_emb) < 1:
            raise ConfigError("`axial_pos_emb` must be two positive sizes [rows, columns] of the position "
                              "grid, got %s" % json.dumps(list(m.axial_pos_emb)))
        rows, columns = m.axial_pos_emb
        if rows * columns < m.n_ctx:
            raise ConfigError("`axial_pos_emb` %s has %d positions but `n_ctx` is %d; rows x columns must be "
                              "at least n_ctx" % (json.dumps(list(m.axial_pos_emb)), rows * columns, m.n_ctx))
    if m.rotary_emb:
        if m.head_size % 2:
            raise ConfigError("`rotary_emb` turns pairs of a head's features, but the head size n_embd / n_head "
                              "= %d is odd; choose n_embd and n_head with an even head size" % m.head_size)
        if config.mesh.mesh_dim_of(dims.FEATURES_PER_HEAD):
            raise ConfigError("`rotary_emb` splits each head's features into halves, so `layout` cannot split "
                              "`features_per_head`; remove it from the layout")
    if m.num_mem_kv < 0:
        raise ConfigError("`num_mem_kv` must not be negative, got %d" % m.num_mem_kv)
    if m.num_mem_kv and "global" not in m.attention_types:
        raise ConfigError("`num_mem_kv` adds memory key/values to global attention layers, but "
                          "`attention_types` has none; remove num_mem_kv or add a global layer")


def _check_block(m):
    """Activations, norms and mixture-of-experts keys (the original failed inside the graph on bad
    values, or silently ignored them)."""
    for key in ("activation_fn", "moe_activation"):
        if getattr(m, key) not in ACTIVATIONS:
            raise ConfigError("`%s` %r is not an activation%s; known: %s" % (
                key, getattr(m, key), did_you_mean(getattr(m, key), ACTIVATIONS),
                ", ".join(ACTIVATIONS)))
    if m.rezero and m.scalenorm:
        raise ConfigError("`rezero` and `scalenorm` are both set, but ReZero removes the norms that scalenorm "
                          "replaces (the original silently ignored scalenorm); remove one")
    layers = [i for i in m.moe_layers or () if not 0 <= i < m.n_layer]
    if layers:
        raise ConfigError("`moe_layers` lists layer(s) %s, but the layers are numbered 0 to %d (n_layer - 1)"
                          % (", ".join(map(str, layers)), m.n_layer - 1))
    p = m.moe_params
    for key in ("moe_num_experts", "moe_hidden_size", "moe_group_size", "moe_min_expert_capacity"):
        if getattr(p, key) < 1:
            raise ConfigError("`moe_params` %s must be at least 1, got %d" % (key, getattr(p, key)))
    for key in ("moe_capacity_factor_train", "moe_capacity_factor_eval"):
        if getattr(p, key) <= 0:
            raise ConfigError("`moe_params` %s must be positive (an expert takes group size x factor / "
                              "experts tokens of a group), got %g" % (key, getattr(p, key)))
    if p.moe_loss_coef < 0 or min(p.moe_second_threshold_train, p.moe_second_threshold_eval) < 0:
        raise ConfigError("`moe_params` moe_loss_coef and moe_second_threshold_* must not be negative")
    if not 0 <= p.moe_dropout_rate < 1:
        raise ConfigError("`moe_params` moe_dropout_rate is a dropout rate and must be in [0, 1), got %g"
                          % p.moe_dropout_rate)
    for key in ("moe_second_policy_train", "moe_second_policy_eval"):
        if getattr(p, key) not in moe.SECOND_POLICIES:
            raise ConfigError("`moe_params` %s must be one of %s, got %r" % (
                key, ", ".join(moe.SECOND_POLICIES), getattr(p, key)))
    if p.moe_gating != "top_2":
        raise ConfigError("`moe_params` moe_gating must be \"top_2\" (GPT-Neo's gating), got %r" % p.moe_gating)
    if p.moe_capacity_factor_second_level != moe.MoeParams().moe_capacity_factor_second_level:
        raise ConfigError("`moe_params` moe_capacity_factor_second_level sizes mesh-tf's two-level mixture of experts, "
                          "but GPT-Neo's (transformer_moe_layer_v1) has one level and never reads it; remove it")
    if p.moe_use_experts_attention:
        raise ConfigError("`moe_params` moe_use_experts_attention is not part of GPT-Neo's block; set it to false")


def tensor_dim_sizes(config):
    """Size of each named dimension but `batch` (see `_check_batches`); `heads` has two sizes (n_head on
    activations, n_embd on weights)."""
    m = config.model
    sizes = {dims.SEQUENCE: [m.n_ctx], dims.MEMORY_LENGTH: [m.n_ctx], dims.EMBED_SEQUENCE: [m.n_ctx],
             dims.EMBD: [m.n_embd], dims.HEADS: [m.n_head, m.n_embd],
             dims.FEATURES_PER_HEAD: [m.head_size], dims.VOCAB: [m.n_vocab],
             dims.INTERMEDIATE_EXPANDED: [4 * m.n_embd],
             dims.FEATURES_PER_HEAD_IN: [m.head_size], dims.HALF_FEATURES_PER_HEAD: [m.head_size // 2]}
    if m.num_mem_kv:
        sizes[dims.MEM_KV_SEQUENCE] = [m.num_mem_kv]
    if m.axial_pos_emb:
        sizes[dims.AXIAL_DIM_0], sizes[dims.AXIAL_DIM_1] = [[size] for size in m.axial_pos_emb]
    if m.moe_layers:
        sizes[dims.EXPERTS] = sizes[dims.EXPERT_UNSPLIT] = [m.moe_params.moe_num_experts]
        sizes[dims.EXPERT_HIDDEN] = [m.moe_params.moe_hidden_size]
    return sizes


# Layout names of the original's model family that no tensor here has, and what to lay out instead.
NO_TENSOR_DIMS = {
    "axial_dim": "the original's flattened axial position table; lay out its factors axial_dim_0 and axial_dim_1",
    "outer_batch": "mesh-tf's replicas of the experts, always 1 in GPT-Neo; `experts` splits the experts",
    "d_model_split": "mesh-tf's two-level mixture of experts, which GPT-Neo's is not; `embd` splits the model width",
}
TENSOR_DIMS = tuple(name for name in dims.LAYOUT_DIMS if name not in NO_TENSOR_DIMS)


def _check_layout(config):
    mesh = dict(config.mesh.mesh_shape)
    sizes = tensor_dim_sizes(config)
    for tensor_dim, mesh_dim in config.mesh.layout:
        if tensor_dim in NO_TENSOR_DIMS:
            raise ConfigError("`layout` names %r, which no tensor has (%s); remove it from the layout"
                              % (tensor_dim, NO_TENSOR_DIMS[tensor_dim]))
        if tensor_dim not in TENSOR_DIMS:
            if tensor_dim in mesh:
                hint = "; layout entries are tensor_dim:mesh_dim, did you swap them?"
            else:
                hint = did_you_mean(tensor_dim, TENSOR_DIMS)
            raise ConfigError("`layout` names %r, which is not a model dimension (known: %s)%s" % (
                tensor_dim, ", ".join(dims.MODEL_DIMS), hint))
        if mesh_dim not in mesh:
            raise ConfigError("`layout` puts %r on mesh dimension %r, but `mesh_shape` (%s) has no "
                              "such dimension%s" % (tensor_dim, mesh_dim, config.mesh.shape_string,
                                                    did_you_mean(mesh_dim, mesh)))
        for size in sizes.get(tensor_dim, []):
            if size % mesh[mesh_dim]:
                raise ConfigError("`layout` splits %r (size %d) over mesh dimension %r of size %d, "
                                  "which does not divide it; change the config size or `mesh_shape`"
                                  % (tensor_dim, size, mesh_dim, mesh[mesh_dim]))
    _check_batches(config)


def _check_batches(config):
    """The batches of the modes a run uses split evenly over the mesh dimension `batch` is laid out on:
    training's always, evaluation's when the config evaluates. Sampling needs no check: it decodes with
    its own layout (`MeshConfig.for_decoding`)."""
    t = config.train
    mesh_dim, splits = config.mesh.mesh_dim_of(dims.BATCH), config.mesh.splits_of(dims.BATCH)
    keys = ["train_batch_size"] + (["eval_batch_size"] if t.evaluates else [])
    for key in keys:
        size = getattr(t, key)
        if not size:
            raise ConfigError("`%s` is not set; evaluation (`eval_steps` > 0 or `eval_tasks`) needs it" % key)
        if size % splits:
            raise ConfigError("`%s` (%d) is not divisible by mesh dimension %r (%d) that `layout` splits batch "
                              "over; make it a multiple of %d or change `layout`" % (key, size, mesh_dim, splits,
                                                                                   splits))


def _check_distill(config):
    """The distillation keys and the teacher's config (trainer/distill.py): the teacher scores the
    student's own tokens, so both read the same ids with the same vocabulary and context, and its
    layout must fit this mesh and share the student's split of the batch and positions."""
    k, m = config.distill, config.model
    if not k.on:
        for key in ("distill_teacher_checkpoint", "distill_alpha", "distill_temperature", "distill_top_k"):
            if getattr(k, key) != getattr(type(k)(), key):
                raise ConfigError("`%s` is set but `distill_teacher` is not: set distill_teacher to the teacher's "
                                  "model config, or remove %s" % (key, key))
        return
    if not k.distill_teacher_checkpoint:
        raise ConfigError("`distill_teacher_checkpoint` is not set and the teacher config %s has no model_path: set "
                          "it to the teacher's checkpoint (a model_path or a checkpoint prefix)" % k.distill_teacher)
    if not 0 <= k.distill_alpha <= 1:
        raise ConfigError("`distill_alpha` weighs the distillation loss against the label loss and must be in "
                          "[0, 1], got %g" % k.distill_alpha)
    if not k.distill_temperature > 0:
        raise ConfigError("`distill_temperature` divides the logits and must be positive (1 = as they are), got %g"
                          % k.distill_temperature)
    if not 0 <= k.distill_top_k <= m.n_vocab:
        raise ConfigError("`distill_top_k` must be between 0 (the teacher's whole distribution) and n_vocab (%d), "
                          "got %d" % (m.n_vocab, k.distill_top_k))
    t = k.teacher
    for key in ("n_vocab", "n_ctx"):
        if getattr(t, key) != getattr(m, key):
            raise ConfigError("the teacher (%s) has %s %d but this model has %d; the teacher scores the student's "
                              "tokens, so set %s to %d (distill from a teacher with the same %s)"
                              % (k.distill_teacher, key, getattr(t, key), getattr(m, key), key, getattr(t, key),
                                 "vocabulary" if key == "n_vocab" else "context length"))
    for model, whose in ((m, "this model"), (t, "the teacher")):
        if model.mlm_training or model.entmax_loss:
            raise ConfigError("%s sets `%s`, but distillation matches next-token softmax distributions; "
                              "distill between causal softmax LMs" % (
                                  whose, "mlm_training" if model.mlm_training else "entmax_loss"))
    _check_teacher_layout(config)


def _check_teacher_layout(config):
    """The teacher's `layout` on this config's mesh_shape: its own dimensions (dims.TEACHER_DIMS) split
    as it says, the shared ones (batch, positions) as the student's."""
    k = config.distill
    student = dict(config.mesh.layout)
    for tensor_dim, mesh_dim in k.teacher_layout:
        if tensor_dim not in dims.TEACHER_DIMS and tensor_dim in TENSOR_DIMS and student.get(tensor_dim) != mesh_dim:
            raise ConfigError("the teacher's `layout` (%s) puts %r on %r but this config's puts it on %r; the teacher "
                              "reads the student's batch, so dimensions other than %s are laid out alike: make the "
                              "two layouts agree on %r" % (k.distill_teacher, tensor_dim, mesh_dim,
                                                           student.get(tensor_dim), ", ".join(dims.TEACHER_DIMS),
                                                           tensor_dim))
    teacher = dataclasses.replace(config, model=k.teacher,
                                  mesh=dataclasses.replace(config.mesh, layout=k.teacher_layout))
    try:
        _check_model(k.teacher)
        _check_block(k.teacher)
        _check_attention_features(teacher)
        _check_layout(teacher)
    except ConfigError as e:
        raise ConfigError("teacher config %s (`distill_teacher`), on this config's mesh_shape %s: %s"
                          % (k.distill_teacher, config.mesh.shape_string, e)) from None
