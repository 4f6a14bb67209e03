"""Master variables that hold their values only while a checkpoint is read or written.

mtf keeps two copies of a variable whose per-device slices are variables of their own (a mesh of
several devices, or bfloat16 masters of float32 slices): the master (full shape, checkpoint name, on
the host) and the slices that the steps read and update. Here, on a placement mesh (CPUs, GPUs,
clusters), a master is copied to its slices once the session has restored or initialised it, then
emptied (assigned a value with no elements, which frees its buffer); before each save it is rebuilt
from the slices, and emptied again after the save. That is the whole model once more in host memory
for the run (236 MB at 125M in bfloat16; with the optimizer's slots, on a mesh of several devices),
left to the step's tensors instead.

On TPUs (SimdMeshImpl) the masters sit in the TPU host's memory and are kept as mtf keeps them.
"""
from tensorflow.python.ops import gen_resource_variable_ops

from ..meshtf import mtf, tf
from .checkpoints import saved_variables


class Masters:
    """The fill hook and the saver listener of one lowering."""

    def __init__(self, lowering, mesh_impl):
        self._lowering, self._mesh_impl = lowering, mesh_impl
        self._fill = lowering.copy_masters_to_slices()
        placement = isinstance(mesh_impl, mtf.placement_mesh_impl.PlacementMeshImpl)
        # A stacked variable's master is a stack of others' (autostack): kept, as mtf keeps it.
        self._released = [(variable, laid_out) for variable, laid_out in lowering.variables.items()
                          if placement and not laid_out.slice_is_master
                          and not isinstance(variable, mtf.StackedVariable)]
        self._empty = tf.group([_empty(variable.get_master()) for variable, _ in self._released])

    def fill_hook(self):
        """A hook that fills the slices from the masters once the session exists, then empties the masters
        (mtf's MtfRestoreHook, releasing)."""
        return _Fill(self._fill, self._empty)

    def saver_listener(self):
        """A listener that rebuilds the masters from the slices before a save and empties them after it
        (mtf's MtfCheckpointSaverListener, releasing). It must come first among the listeners: the others'
        before_save may read the masters, and none may read them in after_save."""
        released = dict(self._released)
        saved = set(saved_variables())
        # Only what checkpoints hold: a distillation teacher's masters stay empty.
        rebuild = [_rebuild(variable, laid_out, self._mesh_impl) if variable in released
                   else laid_out.copy_slices_to_master
                   for variable, laid_out in self._lowering.variables.items()
                   if variable not in released or variable.get_master() in saved]
        return _Save(tf.group(rebuild), self._empty)


def _empty(master):
    # An unknown static shape passes graph-time shape inference, and validate_shape=False the kernel's check.
    nothing = tf.placeholder_with_default(tf.zeros([0] * master.shape.ndims, master.dtype.base_dtype),
                                          [None] * master.shape.ndims)
    with tf.colocate_with(master):
        return gen_resource_variable_ops.assign_variable_op(master.handle, nothing, validate_shape=False)


def _rebuild(variable, laid_out, mesh_impl):
    master = variable.get_master()
    # Cast on the slices' devices, so a GPU sends the host bfloat16 rather than float32.
    slices = mtf.parallel(mesh_impl.devices, tf.cast, laid_out.laid_out_tensor.all_slices,
                          [variable.master_dtype] * mesh_impl.size)
    with tf.device(variable.master_device):
        whole = mesh_impl.combine_slices(slices, variable.shape, device=variable.master_device)
        # The master may be empty, so its shape is not validated (mtf's own copy would refuse).
        return gen_resource_variable_ops.assign_variable_op(master.handle, whole, validate_shape=False)


class _Fill(tf.train.SessionRunHook):
    def __init__(self, fill, empty):
        self._fill, self._empty = fill, empty

    def after_create_session(self, session, coord):
        session.run(self._fill)
        session.run(self._empty)


class _Save(tf.train.CheckpointSaverListener):
    def __init__(self, rebuild, empty):
        self._rebuild, self._empty = rebuild, empty

    def before_save(self, session, global_step_value):
        session.run(self._rebuild)

    def after_save(self, session, global_step_value):
        session.run(self._empty)
