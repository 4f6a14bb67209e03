"""Build the model once, symbolically, before the real graph: check the layout, count parameters.

A tensor may not put two of its dimensions on one mesh dimension (mesh-tf fails deep inside
the lowering otherwise). Which dimensions meet in one tensor depends on the model, so the
model is built in a scratch graph (no memory is allocated) and every tensor is checked.
"""
from meshtf import mtf, tf
from models.context import Context
from models.dims import Dims
from models.gpt import gpt, token_losses
from trainer.config import ConfigError


def preflight(config, mode="train"):
    """Raise ConfigError for a layout conflict; return the number of trainable parameters.

    Sampling ("predict") runs with its own layout (MeshConfig.for_decoding), checked here in its place."""
    mesh_config = config.mesh.for_decoding(config.train.predict_batch_size) if mode == "predict" else config.mesh
    rules = dict(mesh_config.layout)
    with tf.Graph().as_default():
        graph = mtf.Graph()
        mesh = mtf.Mesh(graph, "layout_check")
        d = Dims.build(config.model, config.train.batch_size(mode))
        ids = mtf.zeros(mesh, mtf.Shape([d.batch, d.sequence]), tf.int32)
        logits = gpt(ids, Context(d, config.model, train=False, seed=0))
        token_losses(logits, ids, d, config.model.z_loss)
        for op in graph.operations:
            for tensor in op.outputs:
                _check(tensor, rules)
        return sum(v.size for v in graph.trainable_variables)


def _check(tensor, rules):
    seen = {}
    for dim in tensor.shape.dims:
        mesh_dim = rules.get(dim.name)
        if mesh_dim is None:
            continue
        if mesh_dim in seen:
            raise ConfigError(
                "`layout` puts both %r and %r on mesh dimension %r, but the model has a tensor with both "
                "(%s, shape %s); a tensor can split over a mesh dimension only once: map one of them to "
                "another mesh dimension or leave it unsplit" % (
                    seen[mesh_dim], dim.name, mesh_dim, tensor.operation.name,
                    [(x.name, x.size) for x in tensor.shape.dims]))
        seen[mesh_dim] = dim.name
