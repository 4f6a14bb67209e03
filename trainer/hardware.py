"""Where the mesh runs: TPU (SIMD mesh), GPUs or virtual CPU devices (placement mesh).

Chosen once from the flags and the config's `mesh_shape`, before any graph is built, so a
mesh that cannot fit the machine is reported as a one-line error.
"""
import platform
from dataclasses import dataclass
from typing import Optional, Tuple, Union

from absl import flags
from tensorflow.python.util import _pywrap_util_port

from ..meshtf import mtf, tf
from .config import ConfigError

# The host that holds TPU binaries gets this much extra (per replica) before variables are
# balanced over hosts, as in the original.
TPU_HOST0_RESERVED_BYTES = 300 * 1000 * 1000


@dataclass(frozen=True)
class Hardware:
    kind: str                     # "tpu", "gpu" or "cpu"
    devices: Tuple[str, ...] = ()  # one device string per mesh position (placement mesh)
    tpu_name: Optional[str] = None
    # --peak_tflops: TFLOP/s per device (for the machine on CPU) or a device name; see trainer.flops.mesh_peak.
    peak_tflops: Optional[Union[float, str]] = None
    cluster: Optional[object] = None  # a trainer.cluster.Cluster: devices of several processes (--cluster)

    @property
    def use_tpu(self):
        return self.kind == "tpu"

    @property
    def host_is_local(self):
        """Whether the graph's host ops run in this process: everywhere but on a TPU node, whose own host
        runs them (a TPU VM is `--tpu local`)."""
        return not self.use_tpu or self.tpu_name == "local"

    def session_config(self):
        if self.cluster is not None:
            return self.cluster.session_config()
        if self.kind == "cpu":
            # One virtual CPU device per mesh position; all share this machine's cores.
            return tf.ConfigProto(device_count={"CPU": len(self.devices)}, allow_soft_placement=True)
        return tf.ConfigProto(allow_soft_placement=True)

    def cluster_resolver(self):
        if not self.use_tpu:
            return None
        # "colab" means: discover the TPU from the environment; "local" is the TPU VM itself.
        name = None if self.tpu_name == "colab" else self.tpu_name
        try:
            return tf.distribute.cluster_resolver.TPUClusterResolver(tpu=name)
        except Exception as e:  # the resolver raises URL, gRPC and value errors alike
            raise ConfigError("cannot find TPU %r (%s); on a TPU VM pass --tpu local, elsewhere the TPU's "
                              "name in this project and zone" % (self.tpu_name, e)) from None


def select_hardware(mesh_config, tpu=None, gpu_ids=None, visible_gpus=None, peak_tflops=None, cluster=None):
    """TPU if `--tpu` is given; the devices of every task of `cluster` (--cluster); else `--gpu_ids`
    (or all visible GPUs); else virtual CPUs."""
    size = mesh_config.size
    if cluster is not None:
        cluster.check_mesh(mesh_config)
        return Hardware(cluster.kind, cluster.devices, peak_tflops=peak_tflops, cluster=cluster)
    if tpu:
        return Hardware("tpu", tpu_name=tpu, peak_tflops=peak_tflops)
    if visible_gpus is None:
        visible_gpus = len(tf.config.list_physical_devices("GPU"))
    if gpu_ids:
        if len(gpu_ids) != size:
            raise ConfigError("`mesh_shape` %s has %d positions but --gpu_ids lists %d device(s); give "
                              "one device per mesh position or change mesh_shape"
                              % (mesh_config.shape_string, size, len(gpu_ids)))
        if visible_gpus < len(gpu_ids):
            raise ConfigError("--gpu_ids names %d GPU(s) but TensorFlow sees %d; check CUDA_VISIBLE_DEVICES "
                              "and that tensorflow[and-cuda] is installed" % (len(gpu_ids), visible_gpus))
        return Hardware("gpu", tuple(gpu_ids), peak_tflops=peak_tflops)
    if visible_gpus:
        if visible_gpus < size:
            raise ConfigError("`mesh_shape` %s needs %d devices but only %d GPU(s) are visible; shrink "
                              "mesh_shape or pass --gpu_ids" % (mesh_config.shape_string, size, visible_gpus))
        return Hardware("gpu", tuple("/device:GPU:%d" % i for i in range(size)), peak_tflops=peak_tflops)
    return Hardware("cpu", tuple("/cpu:%d" % i for i in range(size)), peak_tflops=peak_tflops)


class _OnDevice:
    """A mesh-tf variable placer that puts every master variable on one device."""

    def __init__(self, device):
        self.device = device

    def device_function(self, op):
        return self.device


class _StatelessRandom:
    """Mesh random ops (dropout, MoE's "random" second-expert policy) from TF's stateless generators.

    mesh-tf's own `random` seeds every op from Python's unseeded `random` and per-process string
    hashing, so masks differed between runs and started over on resume. Here an op's numbers are a
    function of the config's seed, the op's place among the graph's random ops (ops are lowered in
    the order the model built them, the same in every run), the step, and the slice's begin offsets.
    Slices that hold the same part of a tensor (replicas along mesh dimensions it is not split over)
    draw the same numbers; a split tensor draws other numbers than on one device.
    """

    STATELESS = {tf.random.uniform: tf.random.stateless_uniform, tf.random.normal: tf.random.stateless_normal,
                 tf.random.truncated_normal: tf.random.stateless_truncated_normal}

    def __init__(self, *args, seed, step, **kwargs):
        super().__init__(*args, **kwargs)
        self._seed, self._step = seed, step
        self._random_ops = 0

    def random(self, shape, tf_fn, kwargs):
        if tf_fn not in self.STATELESS:
            raise ValueError("no stateless counterpart for mesh random op %s; known: %s" % (
                getattr(tf_fn, "__name__", tf_fn), ", ".join(sorted(f.__name__ for f in self.STATELESS))))
        # int32 keys: XLA (TPU) takes no other.
        op_key = tf.random.experimental.stateless_fold_in(
            tf.constant([self._seed, self._random_ops], tf.int32), tf.cast(self._step, tf.int32))
        self._random_ops += 1
        slice_shape = self.slice_shape(shape)
        coordinates = [0 if axis is None else self.laid_out_pcoord(axis)
                       for axis in self.tensor_layout(shape).tensor_axis_to_mesh_axis]

        def draw(*coordinates):
            key = op_key
            for coordinate, size in zip(coordinates, slice_shape):
                key = tf.random.experimental.stateless_fold_in(key, coordinate * size)
            return self.STATELESS[tf_fn](slice_shape, seed=key, **kwargs)

        return self.slicewise(draw, *coordinates)


def cpu_multiplies_bfloat16():
    """Whether TF's CPU kernels multiply bfloat16 matrices at bfloat16 speed: oneDNN's do (natively with
    AVX512_BF16 or AMX, emulated on other AVX-512) on the CPUs where TF 2.15 gives it bfloat16, x86 ones with
    AVX512F or AVX-NE-CONVERT. Elsewhere TF's Einsum feeds bfloat16 to oneDNN's float32 GEMM in small
    blocks: [1024,768]x[768,3072] ran at 3.6 GFLOP/s against 122 in float32 on an AVX2-only EPYC."""
    if not _pywrap_util_port.IsMklEnabled():
        return False
    if platform.machine().lower() not in ("x86_64", "amd64"):
        return True  # not measured elsewhere: TF's own kernels
    try:
        with open("/proc/cpuinfo") as f:
            flags_line = next((line for line in f if line.startswith("flags")), "")
    except OSError:  # not Linux (macOS, Windows): TF's own kernels
        return True
    return bool(set(flags_line.partition(":")[2].split()) & {"avx512f", "avx_ne_convert"})


class PlacementMeshImpl(_StatelessRandom, mtf.placement_mesh_impl.PlacementMeshImpl):
    """`bfloat16_in_float32`: einsums of bfloat16 slices multiply their float32 casts and round the result
    once, as a bfloat16 GEMM accumulating in float32 does (bfloat16 products are exact in float32), for
    CPUs where TF's bfloat16 matmuls are slow (`cpu_multiplies_bfloat16`). Activations, saved tensors and
    weights stay bfloat16, but a decoding loop holds float32 copies of the weights while it runs."""

    def __init__(self, *args, bfloat16_in_float32=False, **kwargs):
        super().__init__(*args, **kwargs)
        self._bfloat16_in_float32 = bfloat16_in_float32
        self._hoisted = {}

    def einsum(self, equation, *slices):
        if not (self._bfloat16_in_float32 and slices[0].dtype == tf.bfloat16):
            return super().einsum(equation, *slices)
        return tf.cast(tf.einsum(equation, *map(self._float32, slices)), tf.bfloat16)

    def _float32(self, x):
        """x cast to float32; a tensor from before the while loop being built (a weight, in the decoding
        loop) is cast there, once per run rather than once per token, and once for all its uses."""
        if x.graph._get_control_flow_context() is None or x.op._get_control_flow_context() is not None:
            return tf.cast(x, tf.float32)
        if x.ref() not in self._hoisted:
            with tf.control_dependencies(None):  # which also leaves the loop for the top level
                self._hoisted[x.ref()] = tf.cast(x, tf.float32)
        return self._hoisted[x.ref()]


class SimdMeshImpl(_StatelessRandom, mtf.simd_mesh_impl.SimdMeshImpl):
    pass


def mesh_implementation(hardware, mesh_config, params, seed, step):
    """(mesh impl, variable placer) for the model_fn; `params` is what TPUEstimator passes in.

    Random ops draw from `seed` and `step` (an int tensor) as _StatelessRandom describes.
    """
    shape = mtf.convert_to_shape(mesh_config.shape_string)
    layout = mtf.convert_to_layout_rules(mesh_config.layout_string)
    if not hardware.use_tpu:
        options = dict(seed=seed, step=step,
                       bfloat16_in_float32=hardware.kind == "cpu" and not cpu_multiplies_bfloat16())
        if hardware.cluster is None and len(hardware.devices) == 1:
            # The checkpointed (master) variables on the mesh's one device: mesh-tf then uses them as the
            # slices instead of keeping a second copy of the model and its optimizer state there.
            device = tf.DeviceSpec.from_string(hardware.devices[0]).to_string()
            return PlacementMeshImpl(shape, layout, [device], **options), _OnDevice(device)
        impl = PlacementMeshImpl(shape, layout, list(hardware.devices), **options)
        if hardware.cluster is None:
            return impl, None
        # The checkpointed (master) variables are spread over the tasks' memory, so each task saves
        # and restores its own part (model_path is shared storage, trainer/cluster.py).
        return impl, mtf.utils.BalancedVariablePlacer(list(hardware.cluster.host_devices))
    context = params["context"]
    num_hosts = context.num_hosts
    host_devices = [context.tpu_host_placement_function(host_id=i) for i in range(num_hosts)]
    placer = mtf.utils.BalancedVariablePlacer(
        host_devices, [TPU_HOST0_RESERVED_BYTES * num_hosts] + [0] * (num_hosts - 1))
    physical_shape = list(context.device_assignment.topology.mesh_shape)
    # mesh-tf reads an absl flag here; unparsed absl flags would parse our own argv and fail.
    if not flags.FLAGS.is_parsed():
        flags.FLAGS.mark_as_parsed()
    logical_to_physical = mtf.simd_mesh_impl.auto_logical_to_physical_tpu(
        shape.to_integer_list, physical_shape)
    impl = SimdMeshImpl(shape, layout, [""] * shape.size, context.device_assignment,
                        logical_to_physical=logical_to_physical, seed=seed, step=step)
    return impl, placer
