"""16x8 (int16 activations, int8 weights) support on top of conversion's TFLite writer.

TFLite's 16x8 CONV_2D / DEPTHWISE_CONV_2D / TRANSPOSE_CONV need an **int64** bias (scale
``in_scale * w_scale``, zero point 0); with an int32 bias LiteRT 2.3 prepares the op and then
computes garbage (outputs saturate). conversion's writer emits int32 biases only, so until it does
this itself (the change: in ``_Emitter.bias``, when ``self.qparams(in_name).dtype == "int16"``,
write the values as TensorType INT64 = 4, ``np.int64``), :func:`writer_with_int64_bias` swaps in an
emitter subclass for the duration of one write. Graphs without int16 tensors never use it.
"""
from __future__ import annotations

import contextlib
import threading

import numpy as np

from conversion import tflite_writer as tw
from conversion.ir import QuantParams

T_INT64 = 4
_lock = threading.Lock()


class _Emitter16x8(tw._Emitter):
    def bias(self, name, arr, in_name, wq):
        if not (self.int8 and self.qparams(in_name).dtype == "int16"):
            return super().bias(name, arr, in_name, wq)
        s = self.qparams(in_name).scale[0] * wq.scale
        q = QuantParams(s, np.zeros(len(s), np.int64), 0, "int32")  # params only: the buffer is int64
        vals = np.floor(np.abs(np.asarray(arr, np.float64) / s) + 0.5) * np.sign(arr)
        return self.fb.tensor(name, np.shape(arr), T_INT64, vals.astype(np.int64), q)


@contextlib.contextmanager
def writer_with_int64_bias():
    with _lock:
        saved_emitter, had = tw._Emitter, T_INT64 in tw._NP
        tw._NP.setdefault(T_INT64, np.int64)
        tw._Emitter = _Emitter16x8
        try:
            yield
        finally:
            tw._Emitter = saved_emitter
            if not had:
                tw._NP.pop(T_INT64, None)


def has_int16(g) -> bool:
    return any(t.quant is not None and t.quant.dtype == "int16" for t in g.tensors.values())
