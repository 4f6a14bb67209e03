"""Learning-rate schedule, global-norm clipping and the two optimizers of GPT-Neo (in Mesh-TF).

Slot variables are created in the root variable scope, so they are named after the full
variable name (`gpt2/h0/attn/q/adam_m`), which HuggingFace's loader knows to skip.
"""
import math
import re

from ..meshtf import mtf, tf

# Adam's decoupled weight decay skips variables whose name matches these (the original's rule:
# norm_1/norm_2 and all biases are excluded; ln_f, embeddings and kernels are decayed).
WEIGHT_DECAY_EXCLUDE = ("norm", "bias")


def learning_rate(train_config, global_step):
    """Decay to 10% of `lr` at `lr_decay_end` (linear or cosine), times a linear warmup.

    As the original, warmup multiplies the already-decayed value: lr(s) = decayed(s) * s / W.
    """
    t = train_config
    step = tf.cast(global_step, tf.float32)
    lr = tf.constant(t.lr, tf.float32)
    end = float(t.lr_decay_end or t.train_steps or 1)
    progress = tf.minimum(step, end) / end
    if t.lr_decay == "linear":
        lr = (lr - 0.1 * lr) * (1.0 - progress) + 0.1 * lr
    elif t.lr_decay == "cosine":
        lr = lr * (0.9 * 0.5 * (1.0 + tf.cos(math.pi * progress)) + 0.1)
    if t.warmup_steps > 0:
        lr = tf.where(step < t.warmup_steps, lr * step / float(t.warmup_steps), lr)
    return lr


def global_norm(grads):
    return mtf.sqrt(mtf.add_n([mtf.reduce_sum(mtf.square(g)) for g in grads]))


def gradient_norms(grads):
    """Each gradient's L2 norm (for `log_grads`)."""
    return [mtf.sqrt(mtf.reduce_sum(mtf.square(g))) for g in grads]


class AdamWeightDecay(mtf.optimize.Optimizer):
    """Adam without bias correction plus decoupled weight decay (update += wd * w).

    Unlike mesh-tensorflow's AdamWeightDecayOptimizer this also works when the variable's
    activation dtype is bfloat16: the weight is read as float32 before it joins the update.
    """

    def __init__(self, learning_rate, weight_decay, beta1, beta2, epsilon, applies=None, fused=False):
        self.learning_rate = learning_rate
        self.weight_decay = weight_decay
        self.beta1 = beta1
        self.beta2 = beta2
        self.epsilon = epsilon
        self.applies = applies  # an mtf scalar, 0.0 for a step to skip (trainer/spikes.py), or None
        self.fused = fused  # one FusedAdamStep per variable (placement meshes) instead of mtf's elementwise ops

    def decays(self, name):
        return bool(self.weight_decay) and not any(re.search(p, name) for p in WEIGHT_DECAY_EXCLUDE)

    def apply_grads(self, grads, variables):
        if not self.fused:
            return super().apply_grads(grads, variables)
        # No combining into grouped Assign operations: those exist for mesh-tf's variable stacking,
        # which training on a placement mesh does not use (see FusedAdamStep).
        return [op for grad, var in zip(grads, variables) for op in self.apply_grad(grad, var)]

    def apply_grad(self, grad, var):
        grad = mtf.to_float(grad)
        m = mtf.get_variable(var.mesh, var.name + "/adam_m", var.shape,
                             initializer=tf.zeros_initializer(), trainable=False)
        v = mtf.get_variable(var.mesh, var.name + "/adam_v", var.shape,
                             initializer=tf.zeros_initializer(), trainable=False)
        if self.fused:
            return [FusedAdamStep(self, var, m, v, grad)]
        next_m = self.beta1 * m + (1.0 - self.beta1) * grad
        next_v = self.beta2 * v + (1.0 - self.beta2) * mtf.square(grad)
        update = next_m / (mtf.sqrt(next_v) + self.epsilon)
        if self.decays(var.name):
            update += self.weight_decay * mtf.to_float(var.value)
        step = self.learning_rate * update
        if self.applies is not None:
            # A skipped step leaves the weight and both slots as they were. For finite values
            # x * 1 + y * 0 == x exactly, so an applied step is bit-identical to one without skipping.
            step = step * self.applies
            next_m = next_m * self.applies + m * (1.0 - self.applies)
            next_v = next_v * self.applies + v * (1.0 - self.applies)
        return [mtf.assign_sub(var, step), mtf.assign(m, next_m), mtf.assign(v, next_v)]


class FusedAdamStep(mtf.Operation):
    """`AdamWeightDecay`'s update of one variable `w` and its slots, lowered on a placement mesh (CPU, GPU):
    per slice w *= 1 - lr·wd (when `w` decays), then TF's fused Adam kernel updates m, v and w in place
    (ResourceApplyAdam; beta powers of 0 turn its bias correction off, as this Adam has none).

    The same update as mtf's elementwise ops, which on TF's executor cost time and memory: beta1·m,
    beta2·v and wd·w need no gradient, so they run when the step starts and are kept, each as large as
    the model, until the update; and each op is a pass over the model (about 15; here 2). On TPU XLA
    fuses those ops, so the SIMD mesh keeps them (and mesh-tf's variable stacking, which needs Assign ops).
    """

    def __init__(self, optimizer, var, m, v, grad):
        applies = [] if optimizer.applies is None else [optimizer.applies]
        super().__init__([grad, optimizer.learning_rate] + applies, var.mesh, name="adam_step")
        self._optimizer = optimizer
        self._variables = (var, m.operation, v.operation)  # get_variable returns the variable's output
        self._decays = optimizer.decays(var.name)
        self._outputs = []

    def lower(self, lowering):
        slices = [lowering.variables[x].laid_out_tensor.all_slices for x in self._variables]
        inputs = [lowering.tensors[x].to_laid_out_tensor().all_slices for x in self.inputs]
        devices = lowering.mesh_impl(self).devices
        lowering.operations[self] = tf.group(mtf.parallel(devices, self._update, *(slices + inputs)))

    def _update(self, w, m, v, grad, lr, applies=None):
        o = self._optimizer

        def update():
            # After the gradient: the decayed copy of w would otherwise be made, and kept, at the step's start.
            with tf.control_dependencies([grad]):
                decay = [w.assign(w.value() * (1.0 - lr * o.weight_decay), read_value=False)] if self._decays else []
            with tf.control_dependencies(decay):
                step = tf.raw_ops.ResourceApplyAdam(
                    var=w.handle, m=m.handle, v=v.handle, beta1_power=0.0, beta2_power=0.0, lr=lr, beta1=o.beta1,
                    beta2=o.beta2, epsilon=o.epsilon, grad=grad)
            with tf.control_dependencies([step]):
                return tf.constant(True)

        if applies is None:
            return update()
        # A skipped step (a loss spike) leaves the weight and both slots as they were.
        return tf.cond(applies > 0, update, lambda: tf.constant(False))


def make_optimizer(train_config, lr, applies=None, fused=False):
    t = train_config
    if t.opt_name.lower() == "adam":
        return AdamWeightDecay(lr, t.weight_decay, t.beta1, t.beta2, t.epsilon, applies, fused)
    # The original gave Adafactor the raw `lr` and passed `weight_decay` as its second-moment
    # decay rate; here it follows the schedule and keeps mesh-tf's default decay rate.
    return mtf.optimize.AdafactorOptimizer(
        learning_rate=lr, beta1=t.beta1, epsilon1=t.ada_epsilon1, epsilon2=t.ada_epsilon2)


def gradients(loss, variables):
    """float32 gradients of `loss` for the mtf `variables`: the backward pass, and nothing after it."""
    grads = mtf.gradients([loss], [v.outputs[0] for v in variables])
    return [mtf.to_float(g) for g in grads]


def loss_and_gradients(loss_fn, inputs, batch_dim, num_microbatches):
    """`objective_and_gradients` of a `loss_fn` that returns the loss alone: (loss, gradients)."""
    loss, grads, _ = objective_and_gradients(lambda *x: (loss_fn(*x), []), inputs, batch_dim, num_microbatches)
    return loss, grads


def objective_and_gradients(loss_fn, inputs, batch_dim, num_microbatches):
    """(loss, float32 gradients of the trainable variables, metrics) of `loss_fn(*inputs)` -> (loss,
    [scalar metrics]), a mean over `batch_dim` (dimension 0 of every input; a microbatch's is named alike
    but smaller) and other means over it to report (a distillation step's two terms).

    With num_microbatches > 1 the batch runs as that many microbatches one after another (a mtf while
    loop), so only one microbatch's activations are alive at a time: the loop runs one iteration at a
    time, since TensorFlow would otherwise start the next microbatch's forward pass during this one's
    backward pass (1.2-1.35 times the memory, measured on CPU). Each microbatch's loss and metrics are
    divided by num_microbatches, and summed over them with the gradients: the means over the whole batch.
    Gradients are summed in float32 (mtf.serialize_training_step would sum bfloat16 ones).
    MoE's balancing loss, a mean over groups of one row, is divided like the rest, so a step's objective
    does not depend on the split (the original had mesh-tf divide it by num_microbatches once more).
    """
    graph = inputs[0].graph
    if num_microbatches == 1:
        loss, metrics = loss_fn(*inputs)
        return loss, gradients(loss, graph.trainable_variables), list(metrics)
    microbatch_dim = mtf.Dimension("microbatch", num_microbatches)
    smaller_batch_dim = mtf.Dimension(batch_dim.name, batch_dim.size // num_microbatches)

    def body(i):
        # Microbatch i is rows i, i + n, i + 2n, ... (n microbatches): rows of each replica's own
        # contiguous share of the batch when `batch` is split over the mesh, so nothing moves between devices.
        sliced = [mtf.gather(mtf.replace_dimensions(x, batch_dim, [smaller_batch_dim, microbatch_dim]),
                             i, microbatch_dim) for x in inputs]
        loss, metrics = loss_fn(*sliced)
        loss = loss / num_microbatches
        # Building the body creates the model's variables (mtf moves them out of the loop).
        return ([i + 1, loss] + gradients(loss, graph.trainable_variables)
                + [m / num_microbatches for m in metrics])

    outputs = mtf.while_loop(lambda i: mtf.less(i, num_microbatches), body,
                             [mtf.constant(inputs[0].mesh, 0, dtype=tf.int32)], has_accumulators=True,
                             parallel_iterations=1)
    grads = len(graph.trainable_variables)
    return outputs[1], outputs[2:2 + grads], outputs[2 + grads:]


def minimize(grads, variables, train_config, global_step, applies=None, fused=False):
    """Optional clipping of `grads` (of `variables`) and the optimizer's update ops; returns (updates, lr, grad norm).

    `applies`: an mtf scalar, 0.0 to leave the variables as they are (Adam only, see trainer/spikes.py).
    `fused`: Adam's update as one FusedAdamStep per variable, for a placement mesh lowered without autostack.
    """
    norm = global_norm(grads)
    clip = train_config.gradient_clipping
    if clip:  # g * clip / max(||g||, clip) over all gradients together
        grads = [g * (clip / mtf.maximum(norm, clip)) for g in grads]
    lr = learning_rate(train_config, global_step)
    mtf_lr = mtf.import_fully_replicated(norm.mesh, lr, mtf.Shape([]), name="learning_rate")
    optimizer = make_optimizer(train_config, mtf_lr, applies, fused)
    updates = optimizer.apply_grads(grads, variables)
    return updates, lr, norm
