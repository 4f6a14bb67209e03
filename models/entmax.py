"""1.3-entmax and its loss (`entmax_loss`), the sparse alternative to softmax cross-entropy.

α-entmax(z)_i = [(α−1)·z_i − τ]_+^(1/(α−1)), with τ the threshold at which the probabilities sum
to 1; tokens below it get probability exactly 0 (Peters, Niculae & Martins, 2019). The original's
α is 1.3, and it finds τ by 50 bisection steps; so does this.

The loss is the entmax loss of that paper, (p − e_y)·z + (1 − Σ_i p_i^α) / (α(α−1)) with
p = entmax(z): never negative, 0 when p puts all its mass on the target, gradient p − e_y. The
original minimised −log entmax(z)_y instead, which is infinite (and its gradient NaN) whenever the
target gets probability 0, which happens from the first step.
"""
from ..meshtf import mtf, tf

ALPHA = 1.3
BISECTION_STEPS = 50


def entmax(z, dim, alpha=ALPHA):
    """α-entmax of z over `dim` (float32, no gradient: the loss needs none through it)."""
    z = mtf.stop_gradient(mtf.to_float(z)) * (alpha - 1.0)

    def probabilities(threshold):
        return mtf.pow(mtf.relu(z - threshold), 1.0 / (alpha - 1.0))

    top = mtf.reduce_max(z, reduced_dim=dim)
    # The sum is >= 1 at τ = max − 1 (the top term alone is 1) and <= 1 at τ = max − (1/n)^(α−1).
    low, width = top - 1.0, 1.0 - (1.0 / dim.size) ** (alpha - 1.0)
    for _ in range(BISECTION_STEPS):
        width /= 2.0
        middle = low + width
        low = mtf.where(mtf.greater_equal(mtf.reduce_sum(probabilities(middle), reduced_dim=dim), 1.0), middle, low)
    p = probabilities(low)
    return p / mtf.reduce_sum(p, reduced_dim=dim)


def entmax_loss(logits, labels, dim, alpha=ALPHA):
    """Per-token entmax loss [..] of logits [.., dim] for int labels [..] (float32).

    A label outside [0, dim) has no target term, only p·z + the entropy term.
    """
    z = mtf.to_float(logits)
    p = entmax(z, dim, alpha)
    target = mtf.one_hot(labels, dim, dtype=tf.float32)
    tsallis_entropy = (1.0 - mtf.reduce_sum(mtf.pow(p, alpha), reduced_dim=dim)) / (alpha * (alpha - 1.0))
    return mtf.reduce_sum((p - target) * z, reduced_dim=dim) + tsallis_entropy
