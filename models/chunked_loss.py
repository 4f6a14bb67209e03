"""The tied output layer and its cross-entropy as one op over chunks of the vocabulary, for training.

    log_z_t = log Σ_v exp(h_t · wte_v)        target_t = h_t · wte_{label_t}       (float32)

The same values as `layers.log_z_and_target` of the logits h · wteᵀ, but neither the logits
[tokens, vocab] nor their gradient ever exist whole: the forward pass keeps a running maximum
and sum of exponentials over one chunk of each device's rows of wte at a time, and the gradient
recomputes each chunk's logits, so d h and d wte are built chunk by chunk. At vocab 50257 the whole
logits and their gradient are each as large as a 125M model's weights at 1024 tokens; a chunk holds
1/CHUNKS of them. The price is one more pass of the output GEMM in the backward pass.

Chunks run one after another (control dependencies), so one chunk's buffers are alive at a time.
"""
import functools
import math

from ..meshtf import mtf, tf
from .layers import _table_offset, in_xla

CHUNKS = 16  # unrolled in the graph


def tied_log_z_and_target(h, wte, labels, vocab):
    """(log Σ_v exp(logits_v), logits at the label) [..., float32] of logits = h [..., embd] · wte [vocab, embd]ᵀ
    in h's dtype, for labels [...]; a label outside [0, vocab) has a target of 0."""
    op = _TiedLogZAndTarget(h, wte, labels, vocab)
    return op.outputs[0], op.outputs[1]


def chunk_rows(rows):
    """[(start, stop)] of CHUNKS chunks (fewer when there are fewer rows) of a device's `rows` rows of wte."""
    size = math.ceil(rows / CHUNKS)
    return [(start, min(start + size, rows)) for start in range(0, rows, size)]


def _chunk_scratch(labels, vocab, dtype):
    """A buffer of one chunk's logits in `dtype`, for trainer/memory.py: a share of the logits' shape, which
    also makes a layout that could not lay the logits out (vocab and batch on one mesh dimension) fail there."""
    return mtf.Shape(labels.shape.dims + [vocab]), dtype, CHUNKS


class _Slices:
    """The per-slice layout both directions share: h as [tokens, embd], labels as rows of this slice's wte."""

    def __init__(self, lowering, h, wte, labels, vocab):
        self.mesh_impl = mesh_impl = lowering.mesh_impl(h)
        embd = wte.shape.dims[1]
        self.rows, self.width = mesh_impl.slice_shape(wte.shape)
        self.tokens = mesh_impl.slice_shape(labels.shape)
        self.offset, self.vocab_axis = _table_offset(mesh_impl, vocab, self.rows)
        self.embd_axis = mesh_impl.tensor_dimension_to_mesh_axis(embd)
        # Mesh axes h is split over and wte is not: d wte sums over them.
        self.token_axes = [a for a in (mesh_impl.tensor_dimension_to_mesh_axis(x) for x in labels.shape.dims)
                           if a is not None]
        if self.vocab_axis is not None and self.vocab_axis in self.token_axes:
            raise ValueError("tied_log_z_and_target: the layout puts %s and the tokens %s on one mesh dimension; "
                             "split them over different ones"
                             % (vocab, labels.shape))
        self.chunks = chunk_rows(self.rows)
        self.h = mesh_impl.slicewise(lambda x: tf.reshape(x, [-1, self.width]), lowering.tensors[h])
        self.wte = lowering.tensors[wte]
        self.local = mesh_impl.slicewise(lambda y, o: tf.reshape(y - o, [-1]), lowering.tensors[labels], self.offset)

    def logits(self, start, stop, *after):
        """Chunk [start, stop)'s logits [tokens, stop - start] in h's dtype, once `after` are computed."""
        mesh_impl = self.mesh_impl

        def product(h, w, *after):
            with tf.control_dependencies(after):
                return mesh_impl.einsum("tf,vf->tv", h, w[start:stop])

        z = mesh_impl.slicewise(product, self.h, self.wte, *after)
        return z if self.embd_axis is None else mesh_impl.allreduce(z, [self.embd_axis], "SUM")

    def count_einsum(self, lowering, h, wte):
        """Count one GEMM over all chunks as mesh-tf counts an einsum's work."""
        work = mtf.Shape(h.shape.dims[:-1] + wte.shape.dims)
        lowering.add_counter("einsum", self.mesh_impl.laid_out_size(work))
        lowering.add_counter("einsum_unique", work.size)

    def flat(self, x):
        return self.mesh_impl.slicewise(lambda x: tf.reshape(x, [-1]), x)

    def shaped(self, x):
        return self.mesh_impl.slicewise(lambda x: tf.reshape(x, self.tokens), x)


def _label_entries(local, start, stop):
    """[tokens, 2] indices (token, column) of each label in chunk [start, stop) (clamped into it), and whether it is."""
    inside = tf.logical_and(local >= start, local < stop)
    column = tf.where(inside, local - start, tf.zeros_like(local))
    return tf.stack([tf.range(tf.size(local)), column], axis=1), inside


def _accumulate(start, stop, z, local, top, total, target):
    """The running (maximum, Σ exp(z - maximum), target logit) [tokens] after chunk [start, stop)'s logits z."""
    z = tf.cast(z, tf.float32)
    new_top = tf.maximum(top, tf.reduce_max(z, -1))
    total = total * tf.exp(top - new_top) + tf.reduce_sum(tf.exp(z - new_top[:, None]), -1)
    entries, inside = _label_entries(local, start, stop)
    target += tf.where(inside, tf.gather_nd(z, entries), tf.zeros_like(new_top))
    return new_top, total, target


def _lazy_sum(mesh_impl, x, axes):
    axes = [a for a in axes if a is not None]
    return mtf.LazyAllreduceSum(mesh_impl, x, axes) if axes else x


class _TiedLogZAndTarget(mtf.Operation):
    ALLREDUCES = 3  # over a split vocab, each of [...] float32: the maxima, the sums of exponentials, the targets

    def __init__(self, h, wte, labels, vocab):
        if wte.shape.dims[0] != vocab or h.shape.dims != labels.shape.dims + wte.shape.dims[1:]:
            raise ValueError("tied_log_z_and_target: h %s must be labels %s + [embd], wte %s [%s, embd]"
                             % (h.shape, labels.shape, wte.shape, vocab))
        super().__init__([h, wte, labels], name="tied_log_z_and_target")
        self._vocab = vocab
        self._outputs = [mtf.Tensor(self, labels.shape, tf.float32) for _ in range(2)]
        # A chunk's logits, and their exponentials in float32
        self.scratch = (_chunk_scratch(labels, vocab, h.dtype), _chunk_scratch(labels, vocab, tf.float32))

    def gradient(self, grad_ys):
        h, wte, labels = self.inputs
        d_log_z, d_target = (mtf.zeros(h.mesh, labels.shape) if g is None else g for g in grad_ys)
        grad = _TiedLogZAndTargetGrad(h, wte, labels, self.outputs[0], d_log_z, d_target, self._vocab)
        return [grad.outputs[0], grad.outputs[1], None]

    def lower(self, lowering):
        s = _Slices(lowering, *self.inputs, self._vocab)
        mesh_impl = s.mesh_impl

        def start(local):
            zeros = tf.zeros(tf.shape(local), tf.float32)
            return zeros - math.inf, zeros, zeros

        s.count_einsum(lowering, *self.inputs[:2])
        state = mesh_impl.slicewise(start, s.local)
        for chunk in s.chunks:
            state = mesh_impl.slicewise(functools.partial(_accumulate, *chunk), s.logits(*chunk, *state), s.local,
                                        *state)
        top, total, target = state
        if s.vocab_axis is not None:
            local_top, top = top, mesh_impl.allreduce(top, [s.vocab_axis], "MAX")
            total = mesh_impl.allreduce(mesh_impl.slicewise(lambda t, x, m: t * tf.exp(x - m), total, local_top, top),
                                        [s.vocab_axis], "SUM")
            target = mesh_impl.allreduce(target, [s.vocab_axis], "SUM")
        log_z = mesh_impl.slicewise(lambda m, t: m + tf.math.log(t), top, total)
        lowering.set_tensor_lowering(self.outputs[0], s.shaped(log_z))
        lowering.set_tensor_lowering(self.outputs[1], s.shaped(target))


class _TiedLogZAndTargetGrad(mtf.Operation):
    """With g = softmax(logits) · d_log_z + one_hot(labels) · d_target [tokens, vocab] (in h's dtype), chunk
    by chunk: d h = g · wte, summed over the chunks in float32, and d wte = gᵀ · h, each chunk's rows
    written in place."""

    def __init__(self, h, wte, labels, log_z, d_log_z, d_target, vocab):
        super().__init__([h, wte, labels, log_z, d_log_z, d_target], name="tied_log_z_and_target_grad")
        self._vocab = vocab
        self._outputs = [mtf.Tensor(self, h.shape, h.dtype), mtf.Tensor(self, wte.shape, wte.dtype)]
        # A chunk's logits, g in float32 and in h's dtype; d h's float32 sum
        self.scratch = (_chunk_scratch(labels, vocab, h.dtype), _chunk_scratch(labels, vocab, tf.float32),
                        _chunk_scratch(labels, vocab, h.dtype), (h.shape, tf.float32))

    def lower(self, lowering):
        h, wte, labels, log_z, d_log_z, d_target = self.inputs
        s = _Slices(lowering, h, wte, labels, self._vocab)
        mesh_impl = s.mesh_impl
        log_z, d_log_z, d_target = (s.flat(lowering.tensors[x]) for x in (log_z, d_log_z, d_target))
        dtype = h.dtype
        d_h = mesh_impl.slicewise(lambda x: tf.zeros(tf.shape(x), tf.float32), s.h)
        d_wte = mesh_impl.slicewise(lambda w: tf.raw_ops.Empty(shape=tf.shape(w), dtype=w.dtype), s.wte)
        for start, stop in s.chunks:
            def g(z, local, log_z, d_log_z, d_target):
                softmax = tf.exp(tf.cast(z, tf.float32) - log_z[:, None]) * d_log_z[:, None]
                entries, inside = _label_entries(local, start, stop)
                return tf.cast(tf.tensor_scatter_nd_add(softmax, entries, d_target * tf.cast(inside, tf.float32)),
                               dtype)

            grad = mesh_impl.slicewise(g, s.logits(start, stop, d_h, d_wte), s.local, log_z, d_log_z, d_target)

            def add_to_d_h(d_h, grad, w):
                return d_h + tf.cast(mesh_impl.einsum("tv,vf->tf", grad, w[start:stop]), tf.float32)

            def write_d_wte(d_wte, grad, h):
                rows = mesh_impl.einsum("tv,tf->vf", grad, h)
                if in_xla():
                    return tf.tensor_scatter_nd_update(d_wte, tf.range(start, stop)[:, None], rows)
                # (TensorScatterUpdate copied the whole of d wte at every chunk)
                return tf.raw_ops.InplaceUpdate(x=d_wte, i=tf.range(start, stop), v=rows)

            d_h = mesh_impl.slicewise(add_to_d_h, d_h, grad, s.wte)
            d_wte = mesh_impl.slicewise(write_d_wte, d_wte, grad, s.h)
        for _ in range(3):  # the logits again, d h and d wte
            s.count_einsum(lowering, h, wte)
        shape = mesh_impl.slice_shape(h.shape)
        d_h = mesh_impl.slicewise(lambda x: tf.reshape(tf.cast(x, dtype), shape), d_h)
        # Partial sums over a split vocab (d h) and split tokens (d wte), all-reduced lazily as an einsum's are:
        # d wte is added to the embedding lookup's gradient first.
        lowering.set_tensor_lowering(self.outputs[0], _lazy_sum(mesh_impl, d_h, [s.vocab_axis]))
        lowering.set_tensor_lowering(self.outputs[1], _lazy_sum(mesh_impl, d_wte, s.token_axes))
