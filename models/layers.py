"""GPT-Neo's building blocks in Mesh-TF: norms, dense, dropout, embedding lookup, MLP.

Variable scopes and names are checkpoint API (see the original's variable table), so every
scope below is written literally where the variable is created.
"""
import zlib

from ..meshtf import mtf, tf
from tensorflow.python.ops import control_flow_util  # noqa: E402  (after meshtf, which sets TF up)
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
    """(x - mean) / sqrt(biased variance + 1e-5) over `dim`, computed in float32 and rounded once to x's dtype.

    One op each way, that keeps its output and the [..] reciprocal deviations for the gradient (mtf's
    elementwise ops would keep x - mean as well, and run eight ops to this one). A `dim` split over the
    mesh is all-reduced: the sums for the mean and the variance forward, two sums back."""
    return _Normalized(x, dim).outputs[0]


class _Normalized(mtf.Operation):
    ALLREDUCES = 2  # over a split dim, each of x's shape without dim: the sums of x, of (x - mean)²

    def __init__(self, x, dim):
        super().__init__([x], name="normalized")
        self._dim = dim
        reduced = x.shape - [dim]
        # y, and 1 / sqrt(variance + eps) in float32 (x's shape without dim), which the gradient reads.
        self._outputs = [mtf.Tensor(self, x.shape, x.dtype), mtf.Tensor(self, reduced, tf.float32)]
        # x - mean in float32 (in float32 TF turns it into the output in place)
        self.scratch = () if x.dtype == tf.float32 else ((x.shape, tf.float32),)

    def gradient(self, grad_ys):
        return [_NormalizedGrad(self.outputs[0], self.outputs[1], grad_ys[0], self._dim).outputs[0]]

    def lower(self, lowering):
        mesh_impl = lowering.mesh_impl(self)
        x = lowering.tensors[self.inputs[0]]
        axis = self.inputs[0].shape.dims.index(self._dim)
        mesh_axis = mesh_impl.tensor_dimension_to_mesh_axis(self._dim)
        n = float(self._dim.size)
        mean = _mean_over(mesh_impl, x, axis, mesh_axis, n)
        centred = mesh_impl.slicewise(lambda x, m: tf.cast(x, tf.float32) - m, x, mean)
        variance = _mean_over(mesh_impl, mesh_impl.slicewise(tf.square, centred), axis, mesh_axis, n)
        rstd = mesh_impl.slicewise(lambda v: tf.math.rsqrt(v + LAYER_NORM_EPSILON), variance)
        dtype = self.outputs[0].dtype
        lowering.set_tensor_lowering(self.outputs[0], mesh_impl.slicewise(lambda c, r: tf.cast(c * r, dtype),
                                                                          centred, rstd))
        lowering.set_tensor_lowering(self.outputs[1], mesh_impl.slicewise(lambda r: tf.squeeze(r, [axis]), rstd))


def _mean_over(mesh_impl, x, axis, mesh_axis, n):
    """The float32 mean over tensor axis `axis` of laid-out x (size n in all, split over mesh_axis or None) [.., 1, ..]."""
    total = mesh_impl.slicewise(lambda t: tf.reduce_sum(tf.cast(t, tf.float32), axis, keepdims=True), x)
    if mesh_axis is not None:
        total = mesh_impl.allreduce(total, [mesh_axis], "SUM")
    return mesh_impl.slicewise(lambda t: t / n, total)


class _NormalizedGrad(mtf.Operation):
    """dx = rstd · (dy − mean(dy) − y · mean(dy·y)) from the output y, rstd and dy, in float32."""
    ALLREDUCES = 2  # over a split dim: Σ dy, Σ dy·y

    def __init__(self, y, rstd, dy, dim):
        super().__init__([y, rstd, dy], name="normalized_grad")
        self._dim = dim
        self._outputs = [mtf.Tensor(self, y.shape, y.dtype)]
        # dy·y; and y and dy in float32 when they are not
        self.scratch = ((y.shape, tf.float32),) * (1 if y.dtype == tf.float32 else 3)

    def lower(self, lowering):
        mesh_impl = lowering.mesh_impl(self)
        y, rstd, dy = (lowering.tensors[t] for t in self.inputs)
        axis = self.inputs[0].shape.dims.index(self._dim)
        mesh_axis = mesh_impl.tensor_dimension_to_mesh_axis(self._dim)
        n = float(self._dim.size)
        y32, dy32 = (mesh_impl.slicewise(lambda t: tf.cast(t, tf.float32), t) for t in (y, dy))
        mean_dy = _mean_over(mesh_impl, dy32, axis, mesh_axis, n)
        mean_dy_y = _mean_over(mesh_impl, mesh_impl.slicewise(tf.multiply, dy32, y32), axis, mesh_axis, n)
        dtype = self.outputs[0].dtype

        def dx(y, rstd, dy, mean_dy, mean_dy_y):
            return tf.cast(tf.expand_dims(rstd, axis) * (dy - mean_dy - y * mean_dy_y), dtype)

        lowering.set_tensor_lowering(self.outputs[0], mesh_impl.slicewise(dx, y32, rstd, dy32, mean_dy, mean_dy_y))


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


def in_xla():
    """Whether the graph being built is compiled by XLA (on TPU), which has no in-place ops (InplaceUpdate)
    and needs none: it updates buffers in place by itself."""
    return control_flow_util.GraphOrParentsInXlaContext(tf.get_default_graph())


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


def log_z_and_target(logits, labels, vocab):
    """(log Σ_v exp(logits_v), logits at the label) [..., float32] of logits [..., vocab] (any float dtype)
    and labels [...]; a label outside [0, vocab) has a target of 0.

    The values of reduce_logsumexp and a one-hot product, but per slice in a few passes over the
    logits, in their own dtype, without a one-hot operand or float32 copies kept for the backward
    pass: at vocab 50257 each such tensor is as large as all of a 125M model's activations. The
    gradient (`_LogZAndTargetGrad`) recomputes the softmax from the logits.
    """
    op = _LogZAndTarget(logits, labels, vocab)
    return op.outputs[0], op.outputs[1]


def _vocab_reduce(mesh_impl, x, axis, reduction):
    return x if axis is None else mesh_impl.allreduce(x, [axis], reduction)


def _flat_label_indices(labels, rows):
    """[n, 1] indices into a flattened [..., rows] slice of each label row that lies in it, and whether it does."""
    local, inside = _local_rows(labels, 0, rows)
    flat = tf.range(tf.size(labels)) * rows + tf.reshape(local, [-1])
    return flat[:, None], tf.reshape(inside, [-1])


class _LogZAndTarget(mtf.Operation):
    ALLREDUCES = 3  # over a split vocab, each of [...] float32: the maxima, the sums of exponentials, the targets

    def __init__(self, logits, labels, vocab):
        if logits.shape.dims[-1] != vocab or logits.shape.dims[:-1] != labels.shape.dims:
            raise ValueError("log_z_and_target: logits %s must be labels %s + [%s]" % (logits.shape, labels.shape, vocab))
        super().__init__([logits, labels], name="log_z_and_target")
        self._vocab = vocab
        self._outputs = [mtf.Tensor(self, labels.shape, tf.float32) for _ in range(2)]
        # (shape, dtype) of the buffers alive while the op runs (trainer/memory.py counts them): exp(logits - max)
        self.scratch = ((logits.shape, tf.float32),)

    def gradient(self, grad_ys):
        logits, labels = self.inputs
        d_log_z, d_target = (mtf.zeros(logits.mesh, labels.shape) if g is None else g for g in grad_ys)
        return [_LogZAndTargetGrad(logits, labels, self.outputs[0], d_log_z, d_target, self._vocab).outputs[0], None]

    def lower(self, lowering):
        mesh_impl = lowering.mesh_impl(self)
        logits, labels = (lowering.tensors[x] for x in self.inputs)
        rows = mesh_impl.slice_shape(self.inputs[0].shape)[-1]
        offset, axis = _table_offset(mesh_impl, self._vocab, rows)
        top = mesh_impl.slicewise(lambda x: tf.cast(tf.reduce_max(x, -1), tf.float32), logits)
        top = _vocab_reduce(mesh_impl, top, axis, "MAX")

        def sum_exp(x, top):
            return tf.reduce_sum(tf.exp(tf.cast(x, tf.float32) - top[..., None]), -1)

        total = _vocab_reduce(mesh_impl, mesh_impl.slicewise(sum_exp, logits, top), axis, "SUM")
        log_z = mesh_impl.slicewise(lambda top, total: top + tf.math.log(total), top, total)

        def target(x, labels, offset):
            indices, inside = _flat_label_indices(labels - offset, rows)
            picked = tf.gather(tf.reshape(x, [-1]), indices[:, 0])
            return tf.reshape(tf.cast(picked, tf.float32) * tf.cast(inside, tf.float32), tf.shape(labels))

        lowering.set_tensor_lowering(self.outputs[0], log_z)
        lowering.set_tensor_lowering(self.outputs[1], _vocab_reduce(
            mesh_impl, mesh_impl.slicewise(target, logits, labels, offset), axis, "SUM"))


class _LogZAndTargetGrad(mtf.Operation):
    """d logits = softmax(logits) · d_log_z + one_hot(labels) · d_target, in the logits' dtype."""

    def __init__(self, logits, labels, log_z, d_log_z, d_target, vocab):
        super().__init__([logits, labels, log_z, d_log_z, d_target], name="log_z_and_target_grad")
        self._vocab = vocab
        self._outputs = [mtf.Tensor(self, logits.shape, logits.dtype)]
        # The float32 softmax, when the logits are not float32 (else it can become the output).
        self.scratch = () if logits.dtype == tf.float32 else ((logits.shape, tf.float32),)

    def lower(self, lowering):
        mesh_impl = lowering.mesh_impl(self)
        rows = mesh_impl.slice_shape(self.inputs[0].shape)[-1]
        offset, _ = _table_offset(mesh_impl, self._vocab, rows)

        def grad(x, labels, log_z, d_log_z, d_target, offset):
            dx = tf.exp(tf.cast(x, tf.float32) - log_z[..., None]) * d_log_z[..., None]
            indices, inside = _flat_label_indices(labels - offset, rows)
            updates = tf.reshape(d_target, [-1]) * tf.cast(inside, tf.float32)
            return tf.cast(tf.reshape(tf.tensor_scatter_nd_add(tf.reshape(dx, [-1]), indices, updates), tf.shape(x)),
                           x.dtype)

        inputs = [lowering.tensors[x] for x in self.inputs]
        lowering.set_tensor_lowering(self.outputs[0], mesh_impl.slicewise(grad, *inputs, offset))


# ---------------------------------------------------------------------------------------------
# Softmax


def softmax(x, dim):
    """exp(x) / Σ_dim exp(x), as one op each way that keeps only its output for the gradient
    (mtf.softmax, built from elementwise ops, keeps three more tensors of x's shape: for attention
    weights [batch, heads, sequence, memory_length] in every layer, that is most of a step's memory
    at long contexts). A `dim` split over the mesh is all-reduced: the maxima and the sums."""
    return _Softmax(x, dim).outputs[0]


class _Softmax(mtf.Operation):
    ALLREDUCES = 2  # over a split dim, each of x's shape without dim: the maxima, the sums

    def __init__(self, x, dim):
        super().__init__([x], name="softmax")
        self._dim = dim
        self._outputs = [mtf.Tensor(self, x.shape, x.dtype)]

    def gradient(self, grad_ys):
        return [_SoftmaxGrad(self.outputs[0], grad_ys[0], self._dim).outputs[0]]

    def lower(self, lowering):
        mesh_impl = lowering.mesh_impl(self)
        x = lowering.tensors[self.inputs[0]]
        axis = self.inputs[0].shape.dims.index(self._dim)
        mesh_axis = mesh_impl.tensor_dimension_to_mesh_axis(self._dim)
        if mesh_axis is None:
            y = mesh_impl.slicewise(lambda x: tf.nn.softmax(x, axis=axis), x)
        else:
            top = mesh_impl.allreduce(mesh_impl.slicewise(lambda x: tf.reduce_max(x, axis, keepdims=True), x),
                                      [mesh_axis], "MAX")
            e = mesh_impl.slicewise(lambda x, top: tf.exp(x - top), x, top)
            total = mesh_impl.allreduce(mesh_impl.slicewise(lambda e: tf.reduce_sum(e, axis, keepdims=True), e),
                                        [mesh_axis], "SUM")
            y = mesh_impl.slicewise(tf.math.divide, e, total)
        lowering.set_tensor_lowering(self.outputs[0], y)


class _SoftmaxGrad(mtf.Operation):
    """dx = y · (dy − Σ_dim dy·y) from the softmax y and its incoming gradient dy."""
    ALLREDUCES = 1  # over a split dim: Σ dy·y

    def __init__(self, y, dy, dim):
        super().__init__([y, dy], name="softmax_grad")
        self._dim = dim
        self._outputs = [mtf.Tensor(self, y.shape, y.dtype)]
        self.scratch = ((y.shape, y.dtype),)  # dy·y (trainer/memory.py counts it)

    def lower(self, lowering):
        mesh_impl = lowering.mesh_impl(self)
        y, dy = (lowering.tensors[t] for t in self.inputs)
        axis = self.inputs[0].shape.dims.index(self._dim)
        dot = mesh_impl.slicewise(lambda y, dy: tf.reduce_sum(y * dy, axis, keepdims=True), y, dy)
        mesh_axis = mesh_impl.tensor_dimension_to_mesh_axis(self._dim)
        if mesh_axis is not None:
            dot = mesh_impl.allreduce(dot, [mesh_axis], "SUM")
        lowering.set_tensor_lowering(self.outputs[0], mesh_impl.slicewise(lambda y, dy, dot: y * (dy - dot), y, dy, dot))


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
