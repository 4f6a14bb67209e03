"""The MLP activations that `activation_fn` names: the original's registry, as Mesh-TF functions.

Parametric activations learn scalars, created under the caller's variable scope and named
`activation-<k>` in the order the function creates them (the original named them with random
numbers, so its checkpoints could not be restored). Each function below creates its scalars in
the original's order: `param(init)` is a new scalar, `positive(shift)` is softplus(param(0)) + shift.

Where the original's formula overflows or is undefined, the same function is written in a stable
form (noted at each).
"""
import math
import random

from ..meshtf import mtf, tf

# Keeps the base of a fractional power positive where x = 0 (so neither it nor its gradient is NaN).
_TINY = 1e-30
SELU_SCALE, SELU_ALPHA = 1.0507009873554805, 1.6732632423543772


# mesh-tf's softplus, sin, cos, elu and selu leave their gradients to tf.gradients on each slice, which
# fails to lower when the slices' incoming gradient is a pending all-reduce: these say theirs.
def _softplus(x):
    return mtf.cwise(tf.math.softplus, [x], grad_function=lambda op, dy: [dy * mtf.sigmoid(op.inputs[0])])


def _sin(x):
    return mtf.cwise(tf.sin, [x], grad_function=lambda op, dy: [dy * _cos(op.inputs[0])])


def _cos(x):
    return mtf.cwise(tf.cos, [x], grad_function=lambda op, dy: [-dy * _sin(op.inputs[0])])


def _elu(x):
    def grad(op, dy):  # 1 above 0, elu(x) + 1 = eˣ below
        return [dy * mtf.where(mtf.greater(op.inputs[0], 0.0), mtf.ones_like(dy), op.outputs[0] + 1.0)]
    return mtf.cwise(tf.nn.elu, [x], grad_function=grad)


def _selu(x):
    def grad(op, dy):  # scale above 0, selu(x) + scale·alpha = scale·alpha·eˣ below
        below = op.outputs[0] + SELU_SCALE * SELU_ALPHA
        return [dy * mtf.where(mtf.greater(op.inputs[0], 0.0), SELU_SCALE * mtf.ones_like(dy), below)]
    return mtf.cwise(tf.nn.selu, [x], grad_function=grad)


# tanh GELU: 0.5·x·(1 + tanh(c·(x + a·x³))), HuggingFace's "gelu_new".
_GELU_C, _GELU_A = math.sqrt(2 / math.pi), 0.044715


def _gelu(x):
    """The tanh GELU as one op each way. Built from mtf's elementwise ops (mtf.gelu), its gradient kept
    eight [.., intermediate] tensors per layer, the most memory of any activation in a GPT; this keeps
    only x, and its gradient recomputes from x. Both compute in float32 and round once to x's dtype."""
    def grad(op, dy):
        return [_with_scratch(mtf.cwise(_gelu_grad_slice, [op.inputs[0], dy], name="gelu_grad"), 1)]
    return _with_scratch(mtf.cwise(_gelu_slice, [x], grad_function=grad, name="gelu"), int(x.dtype != tf.float32))


def _with_scratch(y, buffers):
    """y, its op declaring the float32 intermediates of y's shape alive while it runs besides its output
    (trainer/memory.py counts them; TF writes a float32 chain's last steps into the output's buffer)."""
    y.operation.scratch = ((y.shape, tf.float32),) * buffers
    return y


def _tanh_term(x):
    return tf.tanh(_GELU_C * (x + _GELU_A * x * x * x))


def _gelu_slice(x):
    x32 = tf.cast(x, tf.float32)
    return tf.cast(x32 * (0.5 * (1.0 + _tanh_term(x32))), x.dtype)


def _gelu_grad_slice(x, dy):
    """dy · d gelu/dx = dy · (0.5·(1 + t) + 0.5·x·(1 − t²)·c·(1 + 3a·x²)), t = tanh(c·(x + a·x³))."""
    # Not before dy: TF would run every layer's slope as soon as the forward pass made its x, and keep them all.
    with tf.control_dependencies([dy]):
        x32 = tf.cast(tf.identity(x), tf.float32)
    t = _tanh_term(x32)
    slope = 0.5 * (1.0 + t) + 0.5 * x32 * (1.0 - t * t) * _GELU_C * (1.0 + 3.0 * _GELU_A * x32 * x32)
    return tf.cast(tf.cast(dy, tf.float32) * slope, dy.dtype)


def _arcsinh(x):
    # log(x + sqrt(1 + x²)) loses all precision for large negative x; arcsinh is odd.
    return mtf.sign(x) * mtf.log(mtf.abs(x) + mtf.sqrt(1.0 + mtf.square(x)))


def _elish(x):
    """x > 0: x / (1 + eˣ) (the original's formula, not the paper's x·σ(x)); x <= 0: (eˣ − 1)·σ(x).

    Each branch is written so that it stays finite on the other side of 0 (mtf.where multiplies both)."""
    positive = x * mtf.sigmoid(-x)
    negative = (mtf.exp(mtf.minimum(x, 0.0)) - 1.0) * mtf.sigmoid(x)
    return mtf.where(mtf.greater(x, 0.0), positive, negative)


def _sign(x):
    # mtf.sign has no gradient at all, which would leave c_fc without one: its gradient is 0.
    return mtf.cwise(tf.sign, [x], grad_function=lambda op, dy: [mtf.zeros_like(dy)])


def _rrelu(x, slope):
    """(s·|x| + x) / (1 + s): slope 1 for x > 0, (1 − s) / (1 + s) below."""
    return (slope * mtf.abs(x) + x) / (1.0 + slope)


def _prelu(x, slope):
    return mtf.where(mtf.greater(x, 0.0), x, slope * x)


def _power(base, exponent):
    """base ** exponent for base >= 0 (mtf.pow is exp(log(base) · exponent))."""
    return mtf.pow(base + _TINY, exponent)


def _aria(x, param, positive):
    a, b, c, d, e, f = param(0), param(1), positive(0), param(1), param(-1), positive(1)
    # The original's exp(e·x) ** (1/f), as one exponential.
    return x * (a + b / (c + d * mtf.exp(e * x / f)))


def _proottanh(x, positive):
    """(|x|^a + b)^(1/c) · tanh x. The original raised x itself to the fractional power a, which is
    NaN for every negative x."""
    a, b, c = positive(2), positive(1), positive(3)
    return _power(_power(mtf.square(x), a / 2.0) + b, 1.0 / c) * mtf.tanh(x)


def _parcsinh(x, param, positive):
    scale = param(1)
    return scale * _arcsinh(x * positive(1))


def _psoftplus(x, param):
    scale, slope, shift = param(1), param(1), param(0)
    return scale * _softplus(x * slope) + shift


# name -> f(x, param, positive, rrelu_slope)
ACTIVATIONS = {
    "gelu": lambda x, *_: _gelu(x),
    "relu": lambda x, *_: mtf.relu(x),
    "sigmoid": lambda x, *_: mtf.sigmoid(x),
    "tanh": lambda x, *_: mtf.tanh(x),
    "selu": lambda x, *_: _selu(x),
    "elu": lambda x, *_: _elu(x),
    "abs": lambda x, *_: mtf.abs(x),
    "sin": lambda x, *_: _sin(x),
    "cos": lambda x, *_: _cos(x),
    "sign": lambda x, *_: _sign(x),
    "silu": lambda x, *_: mtf.swish(x),
    "softplus": lambda x, *_: _softplus(x),
    "lrelu001": lambda x, *_: mtf.leaky_relu(x, alpha=0.01),
    "lrelu020": lambda x, *_: mtf.leaky_relu(x, alpha=0.20),
    "id": lambda x, *_: x,
    "triangle_relax": lambda x, *_: _sin(x) - _sin(3 * x) / 9 + _sin(5 * x) / 25 - _sin(7 * x) / 49,
    "square_relax": lambda x, *_: _cos(x) - _cos(3 * x) / 3 + _cos(5 * x) / 5 - _cos(7 * x) / 7,
    "spike": lambda x, *_: 1.0 / (1.0 + mtf.square(x)),
    "spike2": lambda x, *_: mtf.exp(-mtf.square(x)),
    "tanhshrink": lambda x, *_: x - mtf.tanh(x),  # the original referenced an undefined name here
    "softsign": lambda x, *_: x / (mtf.abs(x) + 1.0),
    "softmax": lambda x, *_: mtf.softmax(x, x.shape.dims[-1]),  # over the hidden units
    "logsoftmax": lambda x, *_: mtf.log_softmax(x, x.shape.dims[-1]),
    "bipolarsigmoid": lambda x, *_: mtf.sigmoid(x) * 2.0 - 1.0,
    "rrelu": lambda x, param, positive, slope: _rrelu(x, slope),
    "elish": lambda x, *_: _elish(x),
    "arcsinh": lambda x, *_: _arcsinh(x),
    "aria": lambda x, param, positive, _: _aria(x, param, positive),
    "prelu": lambda x, param, *_: _prelu(x, param(0.2)),
    "parcsinh": lambda x, param, positive, _: _parcsinh(x, param, positive),
    "psoftplus": lambda x, param, *_: _psoftplus(x, param),
    "proottanh": lambda x, param, positive, _: _proottanh(x, positive),
    "maxsig": lambda x, *_: mtf.maximum(x, mtf.sigmoid(x)),
    "cosid": lambda x, *_: _cos(x) - x,
    "minsin": lambda x, *_: mtf.minimum(x, _sin(x)),
    "maxtanh": lambda x, *_: mtf.maximum(x, mtf.tanh(x)),
    "mish": lambda x, *_: x * mtf.tanh(_softplus(x)),
    "tanhexp": lambda x, *_: x * mtf.tanh(mtf.exp(x)),
    "lisht": lambda x, *_: x * mtf.tanh(x),
    "seagull": lambda x, *_: mtf.log(1.0 + mtf.square(x)),
    "snake": lambda x, *_: x + mtf.square(_sin(x)),
    "roottanh": lambda x, *_: _power(mtf.square(x) + 1.0, 1.0 / 3.0) * mtf.tanh(x),
    "softplusmone": lambda x, *_: _softplus(x) - 1.0,
}


def activation(name, x, ctx):
    """ACTIVATIONS[name](x); learned scalars (if any) become variables of the current scope."""
    scalars = []

    def param(init):
        scalars.append(mtf.get_variable(x.mesh, "activation-%d" % len(scalars), [],
                                        initializer=tf.constant_initializer(init), dtype=ctx.dtype))
        return scalars[-1]

    def positive(shift):
        return _softplus(param(0)) + shift

    return ACTIVATIONS[name](x, param, positive, rrelu_slope(ctx.seed))


def rrelu_slope(seed):
    """rrelu's negative-side parameter s, uniform in [0, 1). The original drew it anew at every graph
    build (so training and evaluation graphs differed); here it follows the config's `seed`."""
    return random.Random(seed).random()
