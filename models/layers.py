"""GPT-Neo's building blocks in Mesh-TF: norms, dense, dropout, embedding lookup, MLP.

Variable scopes and names are checkpoint API (see the original's variable table), so every
scope below is written literally where the variable is created.
"""
import zlib

from ..meshtf import mtf, tf
from . import dims as names
from .activations import activation

LAYER_NORM_EPSILON = 1e-5


def normal_initializer(stddev, name, seed, truncated=False):
    """N(0, stddev) (cut at 2 stddev if `truncated`) seeded from the variable's full name.

    An op-level seed keeps initial values independent of how many ops the graph already has,
    so the same config gives the same weights on every mesh and in every run.
    """
    scope = tf.get_variable_scope().name
    full_name = "%s/%s" % (scope, name) if scope else name
    initializer = tf.truncated_normal_initializer if truncated else tf.random_normal_initializer
    return initializer(stddev=stddev, seed=(zlib.crc32(full_name.encode()) + seed) % (2 ** 31))


def normalized(x, dim):
    """(x - mean) / sqrt(biased variance + 1e-5) over `dim`."""
    x -= mtf.reduce_mean(x, reduced_dim=dim)
    variance = mtf.reduce_mean(mtf.square(x), reduced_dim=dim)
    return x * mtf.rsqrt(variance + LAYER_NORM_EPSILON)


def layer_norm(x, dim, name, dtype):
    """normalized(x) * g + b, with g and b [dim]."""
    with tf.variable_scope(name):
        g = mtf.get_variable(x.mesh, "g", [dim], initializer=tf.ones_initializer(), dtype=dtype)
        b = mtf.get_variable(x.mesh, "b", [dim], initializer=tf.zeros_initializer(), dtype=dtype)
    return normalized(x, dim) * g + b


def scale_norm(x, dim, name, dtype):
    """normalized(x) * g with one scalar g (`scalenorm`: the original's, not the paper's L2 ScaleNorm)."""
    with tf.variable_scope(name):
        g = mtf.get_variable(x.mesh, "g", [], initializer=tf.ones_initializer(), dtype=dtype)
    return normalized(x, dim) * g


def rezero(x, name, dtype):
    """x * g with one scalar g that starts at 0 (ReZero: every residual branch starts switched off)."""
    with tf.variable_scope(name):
        g = mtf.get_variable(x.mesh, "g", [], initializer=tf.zeros_initializer(), dtype=dtype)
    return x * g


def dense(x, in_dim, out_dim, name, stddev, ctx):
    """x @ kernel[in_dim, out_dim] + bias, variables `<name>/kernel` and `<name>/bias`."""
    with tf.variable_scope(name):
        kernel = mtf.get_variable(x.mesh, "kernel", [in_dim, out_dim],
                                  initializer=normal_initializer(stddev, "kernel", ctx.seed), dtype=ctx.dtype)
        bias = mtf.get_variable(x.mesh, "bias", [out_dim], initializer=tf.zeros_initializer(), dtype=ctx.dtype)
    return mtf.einsum([x, kernel], reduced_dims=[in_dim]) + bias


def dropout(x, rate, train):
    return mtf.dropout(x, is_training=True, rate=rate) if train and rate > 0 else x


# ---------------------------------------------------------------------------------------------
# Embedding lookup


def embed(table, ids, dim):
    """Rows of table [dim, ...] at ids [...] -> [..., ...]; an id outside [0, dim) gives zeros.

    The same values as the original's one-hot matmul (GPT-Neo's padding id 50257 embeds as a zero
    vector), without its [tokens, vocab] one-hot operand and vocab-wide matmuls forward and back.
    """
    return _Lookup(table, ids, dim).outputs[0]


def _table_offset(mesh_impl, dim, rows):
    """The first row of each device's slice of a table split along `dim` (0 when not split)."""
    axis = mesh_impl.tensor_dimension_to_mesh_axis(dim)
    if axis is None:
        return 0, None
    return mesh_impl.slicewise(tf.multiply, mesh_impl.laid_out_pcoord(axis), rows), axis


def _local_rows(ids, offset, rows):
    """(ids as rows of this slice, clamped into it; whether each id is in this slice)."""
    local = ids - offset
    inside = tf.logical_and(local >= 0, local < rows)
    return tf.where(inside, local, tf.zeros_like(local)), inside


def _zero_outside(x, inside):
    """x [ids..., rest...] with the rows of ids outside this slice set to zero."""
    mask = tf.cast(inside, x.dtype)
    return x * tf.reshape(mask, mask.shape.as_list() + [1] * (x.shape.ndims - mask.shape.ndims))


class _Lookup(mtf.Operation):
    def __init__(self, table, ids, dim):
        if table.shape.dims[0] != dim:
            raise ValueError("embed: %s must be the table's first dimension" % dim)
        super().__init__([table, ids], name="embedding_lookup")
        self._dim = dim
        self._outputs = [mtf.Tensor(self, mtf.Shape(ids.shape.dims + table.shape.dims[1:]), table.dtype)]

    def gradient(self, grad_ys):
        table, ids = self.inputs
        return [_ScatterAdd(grad_ys[0], ids, table.shape).outputs[0], None]

    def lower(self, lowering):
        mesh_impl = lowering.mesh_impl(self)
        table, ids = self.inputs
        rows = mesh_impl.slice_shape(table.shape)[0]
        offset, axis = _table_offset(mesh_impl, self._dim, rows)

        def lookup(table, ids, offset):
            local, inside = _local_rows(ids, offset, rows)
            # A dense read first: a gather from a resource variable would switch it to copy-on-read.
            return _zero_outside(tf.gather(tf.convert_to_tensor(table), local), inside)

        y = mesh_impl.slicewise(lookup, lowering.tensors[table], lowering.tensors[ids], offset)
        if axis is not None:  # each device found only the rows of its slice
            y = mesh_impl.allreduce(y, [axis], "SUM")
        lowering.set_tensor_lowering(self.outputs[0], y)


class _ScatterAdd(mtf.Operation):
    """The lookup's gradient: dy [ids..., rest...] summed into rows [dim, rest...] of the table's shape."""

    def __init__(self, dy, ids, table_shape):
        super().__init__([dy, ids], name="embedding_lookup_grad")
        self._outputs = [mtf.Tensor(self, table_shape, dy.dtype)]

    def lower(self, lowering):
        mesh_impl = lowering.mesh_impl(self)
        dy, ids = self.inputs
        table_shape = self.outputs[0].shape
        slice_shape = mesh_impl.slice_shape(table_shape)
        offset, _ = _table_offset(mesh_impl, table_shape.dims[0], slice_shape[0])

        def scatter_add(dy, ids, offset):
            local, inside = _local_rows(ids, offset, slice_shape[0])
            return tf.math.unsorted_segment_sum(_zero_outside(dy, inside), local, slice_shape[0])

        y = mesh_impl.slicewise(scatter_add, lowering.tensors[dy], lowering.tensors[ids], offset)
        # Devices holding different ids (e.g. batch slices) each summed their own tokens.
        axes = [mesh_impl.tensor_dimension_to_mesh_axis(dim) for dim in ids.shape.dims]
        axes = [axis for axis in axes if axis is not None]
        if axes:
            # Lazy, as mtf's einsums: added to the output projection's gradient of the same
            # (tied) table first, so the two are all-reduced once.
            y = mtf.LazyAllreduceSum(mesh_impl, y, axes)
        lowering.set_tensor_lowering(self.outputs[0], y)


# ---------------------------------------------------------------------------------------------
# MLP


def mlp(h, ctx, scope="mlp"):
    """c_proj(act(c_fc(h))), the original's `conv1d_main` scopes and init scaling; `act` is
    `activation_fn`, learning its scalars (if any) as `<scope>/activation-<k>`.

    With `mlp_glu`: c_proj(value · act(gate)), c_fc's 2·intermediate columns being [value | gate].
    """
    c, d = ctx.c, ctx.d
    fc_std = 0.02 * (d.embd.size ** -0.5 if c.scale_by_in else 1.0)
    proj_std = 0.02 * (c.n_layer ** -0.5 if c.scale_by_depth else 1.0) * (
        d.intermediate.size ** -0.5 if c.scale_by_in else 1.0)
    with tf.variable_scope(scope):
        with tf.variable_scope("conv1d_main"):
            if c.mlp_glu:
                value, gate = _glu_fc(h, fc_std, ctx)
            else:
                value, gate = None, dense(h, d.embd, d.intermediate, "c_fc", fc_std, ctx)
        x = activation(c.activation_fn, gate, ctx)
        if value is not None:
            x *= value
        with tf.variable_scope("conv1d_main"):
            x = dense(x, d.intermediate, d.embd, "c_proj", proj_std, ctx)
    return dropout(x, c.res_dropout, ctx.train)


def _glu_fc(h, stddev, ctx):
    """GLU's c_fc, kernel [embd, 2·intermediate] and bias [2·intermediate] -> (value, gate) [.., intermediate].

    The weights are halved rather than the activations, after renaming their columns to a name no
    layout splits: mesh-tf cannot split a dimension that the layout splits, and `intermediate_expanded`
    often is. (Where it is, each step gathers these weights; the activations stay split.)
    """
    d = ctx.d
    both = mtf.Dimension(d.intermediate.name, 2 * d.intermediate.size)
    with tf.variable_scope("c_fc"):
        kernel = mtf.get_variable(h.mesh, "kernel", [d.embd, both],
                                  initializer=normal_initializer(stddev, "kernel", ctx.seed), dtype=ctx.dtype)
        bias = mtf.get_variable(h.mesh, "bias", [both], initializer=tf.zeros_initializer(), dtype=ctx.dtype)

    def halves(w):
        w = mtf.rename_dimension(w, d.intermediate.name, "glu_columns")
        return [mtf.rename_dimension(half, "glu_columns", d.intermediate.name)
                for half in mtf.split(w, w.shape.get_dim_by_name("glu_columns"), 2)]

    return [mtf.einsum([h, k], reduced_dims=[d.embd]) + b for k, b in zip(halves(kernel), halves(bias))]
