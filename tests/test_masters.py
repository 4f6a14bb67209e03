"""Master variables hold values only around checkpoint saves (trainer/masters.py): emptied once the slices
are filled, rebuilt from the slices for a save (what the checkpoint holds), emptied after it. Training,
resuming and evaluating through them run in test_train.py, test_resilience.py and test_precision_microbatch.py."""
import numpy as np
import pytest

from gpt_neo_mtf.meshtf import mtf, tf
from gpt_neo_mtf.trainer.checkpoints import UNSAVED
from gpt_neo_mtf.trainer.masters import Masters

ROWS, COLUMNS = 6, 4


def lowered(devices, dtype, names=None):
    """Two [rows, columns] variables ("w" saved, "teacher" not) with rows split over a mesh x:`devices`
    (named /cpu:i unless `names`), lowered unstacked as training lowers them; their update w += 1 (an op
    the step would run) and the Masters of the lowering."""
    graph = mtf.Graph()
    mesh = mtf.Mesh(graph, "mesh")
    shape = mtf.Shape([mtf.Dimension("rows", ROWS), mtf.Dimension("columns", COLUMNS)])
    initializer = tf.random_normal_initializer(seed=1)
    w = mtf.get_variable(mesh, "w", shape, initializer=initializer, dtype=dtype)
    teacher = mtf.get_variable(mesh, "teacher", shape, initializer=initializer, dtype=dtype, trainable=False)
    update = mtf.assign(w, w + 1.0)
    impl = mtf.placement_mesh_impl.PlacementMeshImpl(mtf.convert_to_shape("x:%d" % devices),
                                                      mtf.convert_to_layout_rules("rows:x"),
                                                      names or ["/cpu:%d" % i for i in range(devices)])
    lowering = mtf.Lowering(graph, {mesh: impl}, autostack=False)
    masters = {v.op.name: v for v in tf.global_variables()}
    tf.add_to_collection(UNSAVED, masters["teacher"])
    return masters, lowering.lowered_operation(update), lowering.export_to_tf_tensor(w), Masters(lowering, impl)


@pytest.mark.parametrize("devices,dtype", [
    (2, tf.float32),  # slices of their own on a mesh of several devices
    (1, mtf.VariableDType(tf.bfloat16, tf.float32, tf.bfloat16)),  # bfloat16 masters of float32 slices
])
def test_masters_are_empty_between_saves_and_a_save_holds_the_slices(tmp_path, devices, dtype):
    with tf.Graph().as_default():
        variables, update, w, masters = lowered(devices, dtype)
        saver = tf.train.Saver([variables["w"]])
        fill, listener = masters.fill_hook(), masters.saver_listener()
        reads = {name: v.read_value() for name, v in variables.items()}

        def sizes():
            return {name: value.size for name, value in session.run(reads).items()}

        with tf.Session(config=tf.ConfigProto(device_count={"CPU": devices})) as session:
            session.run(tf.global_variables_initializer())
            initial = session.run(variables["w"].read_value()).astype(np.float32)
            fill.after_create_session(session, None)
            assert sizes() == {"w": 0, "teacher": 0}
            np.testing.assert_array_equal(session.run(w).astype(np.float32), initial)
            session.run(update)

            listener.before_save(session, 1)
            assert sizes() == {"w": ROWS * COLUMNS, "teacher": 0}  # the teacher is never saved
            saver.save(session, str(tmp_path / "model.ckpt"), global_step=1)
            listener.after_save(session, 1)
            assert sizes() == {"w": 0, "teacher": 0}
            trained = session.run(w)

    saved = tf.train.load_checkpoint(str(tmp_path / "model.ckpt-1")).get_tensor("w")
    assert saved.dtype == np.dtype(variables["w"].dtype.base_dtype.as_numpy_dtype)
    np.testing.assert_allclose(saved.astype(np.float32), initial + 1.0, rtol=2 ** -8)
    np.testing.assert_array_equal(saved, trained.astype(saved.dtype))


def test_a_one_device_mesh_whose_slices_are_the_masters_keeps_them():
    with tf.Graph().as_default():
        # The device where the masters are too (mtf's slice_is_master).
        variables, update, w, masters = lowered(1, tf.float32, names=[""])
        fill, listener = masters.fill_hook(), masters.saver_listener()
        with tf.Session() as session:
            session.run(tf.global_variables_initializer())
            fill.after_create_session(session, None)
            session.run(update)
            listener.before_save(session, 1)
            listener.after_save(session, 1)
            np.testing.assert_array_equal(session.run(variables["w"].read_value()), session.run(w))


def test_on_gpus_slices_are_cast_to_the_master_dtype_on_their_own_device():
    """Graph only (no GPU here): a save sends the host bfloat16 from each GPU, not float32."""
    with tf.Graph().as_default():
        masters = lowered(2, mtf.VariableDType(tf.bfloat16, tf.float32, tf.bfloat16), names=["/gpu:0", "/gpu:1"])[-1]
        listener = masters.saver_listener()
        # What the rebuild of "w" (the only saved variable) runs, back to the slices.
        seen, stack = set(), list(listener._rebuild.control_inputs)
        while stack:
            op = stack.pop()
            if op not in seen:
                seen.add(op)
                stack.extend(t.op for t in op.inputs)
                stack.extend(op.control_inputs)
    casts = [op for op in seen if op.type == "Cast"]
    assert sorted((op.get_attr("DstT"), tf.DeviceSpec.from_string(op.device).to_string()) for op in casts) == \
        [(tf.bfloat16, "/device:GPU:0"), (tf.bfloat16, "/device:GPU:1")]
