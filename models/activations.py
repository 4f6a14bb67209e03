"""The MLP activations that `activation_fn` names: the original's registry, as Mesh-TF functions.

Parametric activations learn scalars, created under the caller's variable scope and named
`activation-<k>` in the order the function creates them (the original named them with random
numbers, so its checkpoints could not be restored). Each function below creates its scalars in
the original's order: `param(init)` is a new scalar, `positive(shift)` is softplus(param(0)) + shift.

Where the original's formula overflows or is undefined, the same function is written in a stable
form (noted at each).
"""
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
    "gelu": lambda x, *_: mtf.gelu(x),  # the tanh approximation (HuggingFace's "gelu_new")
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
