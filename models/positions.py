"""Where a token is: learned position embeddings (`wpe`, or the axial pair) added to the input, or
rotary embeddings that turn each head's queries and keys by angles proportional to the position.

Learned tables are read by position, so a training sequence (positions 0..n-1) and a decoding
step (one position) share the same lookup. Variable names are checkpoint API.
"""
import math

from ..meshtf import mtf, tf
from . import dims as names
from .layers import embed, normal_initializer

# Rotary frequencies: feature pair i of a head turns by p · ROTARY_BASE^(-2i / head_size).
ROTARY_BASE = 10000


def position_embedding(positions, ctx):
    """Learned embeddings of int `positions` [...] -> [..., embd]: rows of `wpe` [n_ctx, embd], or with
    `axial_pos_emb` = [rows, columns] the axial table.

    The axial table is the rows × columns grid of (axial_wpe_1[a] + axial_wpe_2[b]) / 2 flattened
    row-major, so position p = a·columns + b; a position's row is computed from its two factors
    without building the grid.
    """
    def table(name, dim):
        return mtf.get_variable(positions.mesh, name, [dim, ctx.d.embd],
                                initializer=normal_initializer(0.01, name, ctx.seed), dtype=ctx.dtype)

    if ctx.c.axial_pos_emb:
        rows, columns = ctx.c.axial_pos_emb
        row_dim = mtf.Dimension(names.AXIAL_DIM_0, rows)
        column_dim = mtf.Dimension(names.AXIAL_DIM_1, columns)
        wpe_1, wpe_2 = table("axial_wpe_1", row_dim), table("axial_wpe_2", column_dim)
        return (embed(wpe_1, positions // columns, row_dim) + embed(wpe_2, positions % columns, column_dim)) / 2
    return embed(table("wpe", ctx.d.embed_sequence), positions, ctx.d.embed_sequence)


def rotary_angles(positions, d):
    """angle[p, i] = p · ROTARY_BASE^(-2i / head_size) for int `positions` [...] -> [..., half_features_per_head]
    (float32; i < head_size / 2)."""
    half = mtf.Dimension(names.HALF_FEATURES_PER_HEAD, d.features_per_head.size // 2)
    exponent = mtf.range(positions.mesh, half, tf.float32) * (-2.0 * math.log(ROTARY_BASE) / d.features_per_head.size)
    return mtf.cast(positions, tf.float32) * mtf.exp(exponent)


def rotate(x, angles):
    """x [..., features_per_head] with feature i and feature i + head_size/2 of every head turned as one
    pair by angle[i] (the original's x·cos + rotate_half(x)·sin, with the angles repeated twice):

        (x_i, x_{i+h}) -> (x_i·cos − x_{i+h}·sin,  x_{i+h}·cos + x_i·sin)

    Every feature turns (no partial rotation). `features_per_head` must not be split by the layout
    (the config check says so): its halves are slices.
    """
    half = angles.shape.get_dim_by_name(names.HALF_FEATURES_PER_HEAD)

    def feature_half(start):
        part = mtf.slice(x, start, half.size, names.FEATURES_PER_HEAD)
        return mtf.rename_dimension(part, names.FEATURES_PER_HEAD, half.name)

    first, second = feature_half(0), feature_half(half.size)
    cos, sin = mtf.cast(mtf.cos(angles), x.dtype), mtf.cast(mtf.sin(angles), x.dtype)
    turned = [first * cos - second * sin, second * cos + first * sin]
    return mtf.concat([mtf.rename_dimension(t, half.name, names.FEATURES_PER_HEAD) for t in turned],
                      names.FEATURES_PER_HEAD)
