"""Mixture of experts: the feed-forward of the layers in `moe_layers` (mesh-tf's
`transformer_moe_layer_v1` with top-2 gating, as the original used it).

Tokens are cut into groups; in each group a softmax gate over E experts sends every token to its
best expert and (by `moe_second_policy_*`) its second best, each expert taking at most C tokens
per group (the expert capacity; tokens beyond it skip that expert). An expert is an MLP without
biases, act(x·wi)·wo; a token's output is the gate-weighted sum of its experts' outputs. The
load-balancing loss E²·mean_e(fraction of the group routed first to e × mean gate of e), times
`moe_loss_coef`, is added to the loss.

Layout names: `experts` splits the experts' weights and their work (the standard layout puts it
on the mesh dimension of `batch`); `expert_hidden` their hidden units. Variables (under the
layer's scope): `top_2_gating/kernel` [embd, expert_unsplit], `wi/kernel` [experts, embd,
expert_hidden], `wo/kernel` [experts, expert_hidden, embd].
"""
from dataclasses import dataclass

from ..meshtf import mtf, tf
from . import dims as names
from .activations import activation
from .layers import dropout, normal_initializer, softmax

SECOND_POLICIES = ("all", "none", "threshold", "random")


@dataclass(frozen=True)
class MoeParams:
    """`moe_params`: mesh-tf's defaults with the original's two overrides (min capacity 1, no experts
    attention); key names are mesh-tf's."""

    moe_num_experts: int = 16
    moe_loss_coef: float = 1e-2
    moe_gating: str = "top_2"
    moe_capacity_factor_train: float = 1.25
    moe_capacity_factor_eval: float = 2.0
    moe_capacity_factor_second_level: float = 1.0  # read only by mesh-tf's two-level MoE: no effect here either
    moe_hidden_size: int = 4096
    moe_group_size: int = 1024
    moe_use_second_place_loss: bool = False
    moe_second_policy_train: str = "random"
    moe_second_policy_eval: str = "random"
    moe_second_threshold_train: float = 0.2
    moe_second_threshold_eval: float = 0.2
    moe_dropout_rate: float = 0.0  # on the experts' hidden units; the original required the key
    moe_min_expert_capacity: int = 1
    moe_use_experts_attention: bool = False


def group_size(tokens_per_row, max_size):
    """The largest divisor of a row's tokens that is at most `max_size`.

    Groups never span rows, so which tokens share a group (and so overflow an expert together)
    does not depend on how the layout splits the batch. mesh-tf instead cut the whole batch into
    groups that the mesh dimension of `batch` divides, so its routing changed with the layout.
    """
    return max(size for size in range(1, min(tokens_per_row, max_size) + 1) if tokens_per_row % size == 0)


def moe(x, ctx):
    """Experts over x [batch, (sequence,) embd] -> (output like x, load-balancing loss (float32 scalar)).

    In a decoding step (x [batch, embd]) every token is a group of its own.
    """
    p, d = ctx.c.moe_params, ctx.d
    tokens = x.shape.dims[:-1]
    per_row = x.shape.size // (d.batch.size * d.embd.size)
    size = group_size(per_row, p.moe_group_size)
    # Groups take the name `batch`, so the layout splits them as it splits the batch.
    groups = mtf.Dimension(names.BATCH, x.shape.size // (d.embd.size * size))
    group = mtf.Dimension(names.GROUP, size)
    experts = mtf.Dimension(names.EXPERTS, p.moe_num_experts)
    experts_unsplit = mtf.Dimension(names.EXPERT_UNSPLIT, p.moe_num_experts)
    factor = p.moe_capacity_factor_train if ctx.train else p.moe_capacity_factor_eval
    capacity = mtf.Dimension(names.EXPERT_CAPACITY,
                             max(min(size, int(size * factor / experts.size)), p.moe_min_expert_capacity))

    x = mtf.reshape(x, [groups, group, d.embd])
    dispatch, combine, loss = top_2_gating(x, experts_unsplit, capacity, ctx)
    expert_inputs = mtf.einsum([x, dispatch], output_shape=[experts_unsplit, groups, capacity, d.embd])
    # From tokens split (over batch) to experts split: each device runs its experts on all groups.
    groups_unsplit = mtf.Dimension(names.BATCH_UNSPLIT, groups.size)
    expert_inputs = mtf.reshape(expert_inputs, [experts, groups_unsplit, capacity, d.embd])
    hidden_dim = mtf.Dimension(names.EXPERT_HIDDEN, p.moe_hidden_size)
    with tf.variable_scope("wi"):
        wi = _kernel(x.mesh, [experts, d.embd, hidden_dim], d.embd.size, ctx)
        hidden = activation(ctx.c.moe_activation, mtf.einsum([expert_inputs, wi], reduced_dims=[d.embd]), ctx)
    hidden = dropout(hidden, p.moe_dropout_rate, ctx.train)
    with tf.variable_scope("wo"):
        wo = _kernel(x.mesh, [experts, hidden_dim, d.embd], hidden_dim.size, ctx)
        expert_outputs = mtf.einsum([hidden, wo], reduced_dims=[hidden_dim])
    expert_outputs = mtf.reshape(expert_outputs, [experts_unsplit, groups, capacity, d.embd])
    output = mtf.einsum([expert_outputs, combine], output_shape=[groups, group, d.embd])
    return mtf.reshape(output, tokens + [d.embd]), loss * p.moe_loss_coef


def _kernel(mesh, shape, fan_in, ctx):
    """mesh-tf's dense init: truncated N(0, 1/fan_in)."""
    return mtf.get_variable(mesh, "kernel", shape, dtype=ctx.dtype,
                            initializer=normal_initializer(fan_in ** -0.5, "kernel", ctx.seed, truncated=True))


def top_2_gating(x, experts, capacity, ctx):
    """Route each token of x [groups, group, embd] to its two best experts (float32 throughout).

    Returns (dispatch, combine) [groups, group, experts, capacity] and the load-balancing loss:
    dispatch is 1 where a token takes slot c of expert e, combine is then the token's gate for e
    (the top two gates renormalised to sum to 1).
    """
    p, group = ctx.c.moe_params, x.shape.dims[1]
    with tf.variable_scope("top_2_gating"):
        kernel = _kernel(x.mesh, [x.shape.dims[-1], experts], x.shape.dims[-1].size, ctx)
    gates = softmax(mtf.einsum([mtf.to_float(x), mtf.to_float(kernel)], reduced_dims=[x.shape.dims[-1]]),
                    experts)

    gate_1, index_1 = mtf.top_1(gates, experts)
    mask_1 = mtf.one_hot(index_1, experts, dtype=tf.float32)
    without_first = gates * (1.0 - mask_1)
    gate_2, index_2 = mtf.top_1(without_first, experts)
    mask_2 = mtf.one_hot(index_2, experts, dtype=tf.float32)
    total = gate_1 + gate_2 + 1e-9
    gate_1, gate_2 = gate_1 / total, gate_2 / total

    # Balance: the fraction of tokens each expert gets first, against its mean gate (differentiable).
    loss = mtf.reduce_mean(mtf.reduce_mean(mask_1, reduced_dim=group) * mtf.reduce_mean(gates, reduced_dim=group)) \
        * float(experts.size ** 2)
    if p.moe_use_second_place_loss:
        renormalised = without_first / (mtf.reduce_sum(without_first, reduced_dim=experts) + 1e-9)
        loss += 0.5 * float(experts.size ** 2) * mtf.reduce_mean(
            mtf.reduce_mean(mask_2, reduced_dim=group) * mtf.reduce_mean(renormalised, reduced_dim=group))

    policy = p.moe_second_policy_train if ctx.train else p.moe_second_policy_eval
    threshold = p.moe_second_threshold_train if ctx.train else p.moe_second_threshold_eval
    if policy == "none":
        mask_2 *= 0.0
    elif policy == "threshold":
        mask_2 *= mtf.to_float(mtf.greater(gate_2, threshold))
    elif policy == "random":  # the second expert with probability min(1, gate_2 / threshold)
        mask_2 *= mtf.to_float(mtf.less(mtf.random_uniform(x.mesh, gate_2.shape), gate_2 / max(threshold, 1e-9)))

    # Slots: first choices in token order, then second choices after all first choices.
    position_1 = mtf.cumsum(mask_1, group, exclusive=True) * mask_1
    mask_1 *= mtf.to_float(mtf.less(position_1, float(capacity.size)))
    position_2 = (mtf.cumsum(mask_2, group, exclusive=True) + mtf.reduce_sum(mask_1, reduced_dim=group)) * mask_2
    mask_2 *= mtf.to_float(mtf.less(position_2, float(capacity.size)))

    def routed(gate, mask, index, position):
        kept = mtf.reduce_sum(mask, reduced_dim=experts)
        slot = mtf.to_int32(mtf.reduce_sum(position, reduced_dim=experts))
        where = mtf.one_hot(index, experts, dtype=tf.float32) * mtf.one_hot(slot, capacity, dtype=tf.float32)
        return gate * kept * where

    combine = routed(gate_1, mask_1, index_1, position_1) + routed(gate_2, mask_2, index_2, position_2)
    dispatch = mtf.to_float(mtf.greater(combine, 0.0))
    return mtf.cast(dispatch, x.dtype), mtf.cast(combine, x.dtype), loss
