"""The one place that imports TensorFlow 1.x-style graph mode and mesh_tensorflow.

Every module that needs `tf` (the compat.v1 API) or `mtf` imports them from here, so the
TF 2.15 compatibility fix for mesh-tensorflow 0.1.21 and the graph-mode switches happen
exactly once, before any `import mesh_tensorflow`.
"""
import ctypes
import ctypes.util
import os
import platform

# oneDNN / cpu_feature_guard chatter (level 2) and full TF's CUDA probe lines (level 3).
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")

# oneDNN's kernels (matmuls and einsums, fused ops): TF 2.15 turns them on by itself only on x86 CPUs with
# AVX512_VNNI, AVX512_BF16 or AMX. On an AVX2-only AMD EPYC training ran 1.8x faster with them
# (bench/README.md), and every x86 CPU then runs the same kernels. TF_ENABLE_ONEDNN_OPTS=0 turns them off.
if platform.machine().lower() in ("x86_64", "amd64"):
    os.environ.setdefault("TF_ENABLE_ONEDNN_OPTS", "1")

# Tensors of 1 MiB and more get pages of their own, returned when freed (glibc's M_MMAP_THRESHOLD,
# as MALLOC_MMAP_THRESHOLD_=1048576 would set it; a value given there wins). By default glibc raises that
# threshold to the size of each such block freed, up to 32 MiB, and then serves them from its heap,
# where a training step's tensors of every size fragment it: with this, training a 125M model on
# CPU peaked about 0.1 GB lower and ran no slower (bench/README.md).
M_MMAP_THRESHOLD = -3
if "MALLOC_MMAP_THRESHOLD_" not in os.environ and ctypes.util.find_library("c"):
    _libc = ctypes.CDLL(ctypes.util.find_library("c"))
    if hasattr(_libc, "mallopt"):  # glibc
        _libc.mallopt(M_MMAP_THRESHOLD, 1 << 20)

import tensorflow.compat.v1 as tf  # noqa: E402
from tensorflow.python.framework import ops as _tf_ops  # noqa: E402
from tensorflow.python.framework import tensor_conversion_registry as _registry  # noqa: E402
from tensorflow.python.util import deprecation as _deprecation  # noqa: E402

# Must precede disable_v2_behavior(), which itself emits deprecation warnings.
_deprecation._PRINT_DEPRECATION_WARNINGS = False
tf.disable_v2_behavior()
# Ref variables race between the backward pass and the update ops of the same step,
# which makes runs neither repeatable nor equal across meshes.
tf.enable_resource_variables()

# mesh-tensorflow 0.1.21 still calls ops.register_tensor_conversion_function, which
# TF 2.13 moved to tensor_conversion_registry.
if not hasattr(_tf_ops, "register_tensor_conversion_function"):
    _tf_ops.register_tensor_conversion_function = _registry.register_tensor_conversion_function

import mesh_tensorflow as mtf  # noqa: E402
import mesh_tensorflow.placement_mesh_impl  # noqa: E402,F401
import mesh_tensorflow.simd_mesh_impl  # noqa: E402,F401

__all__ = ["tf", "mtf"]
