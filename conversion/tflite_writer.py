"""IR -> .tflite flatbuffer, written directly with the ``tflite`` schema builders (no TensorFlow).

NHWC end to end, no TRANSPOSE; fused activations; DEPTH_TO_SPACE for pixel shuffle (or an exact
0/1 TRANSPOSE_CONV with ``d2s_as_transpose_conv``); the model card in ``Model.metadata``; one
signature ``serving_default``. Precisions:

* ``fp32``: float everything.
* ``fp16``: float16 constants, each followed by a DEQUANTIZE to float32 (TFLite's fp16 scheme).
* ``int8``: full-integer. Every activation tensor needs :class:`~conversion.ir.QuantParams`
  (from calibration); weights are quantised here per output channel (symmetric int8, zero point
  0) unless they carry params; biases are int32 with scale ``in_scale * w_scale``. ``io`` picks the
  model's I/O: ``"int8"``, ``"uint8"`` or ``"float"`` (QUANTIZE / DEQUANTIZE at the edges).
  Call :func:`apply_int8_constraints` after calibration so the IR (and its fake-quant simulation)
  obeys TFLite's int8 rules; where rules still differ the writer inserts an int8 requantise.
"""
from __future__ import annotations

import copy
import importlib
import json
import logging
from pathlib import Path

import numpy as np

from edge_enhance.atomic import write_bytes
from edge_enhance.card import CARD_KEY
from edge_enhance.tiling import check_aligned

from .errors import ConfigError, ModelFormatError, UnsupportedOpError
from .ir import QDTYPES, Graph, Node, QuantParams, Tensor, infer_shape, subpixel_phases, upsample_taps

log = logging.getLogger(__name__)

PRECISIONS = ("fp32", "fp16", "int8")
IO_TYPES = ("float", "int8", "uint8")
T_FLOAT32, T_FLOAT16, T_INT32, T_UINT8, T_INT16, T_INT8 = 0, 1, 2, 3, 7, 9
_NP = {T_FLOAT32: np.float32, T_FLOAT16: np.float16, T_INT32: np.int32, T_UINT8: np.uint8, T_INT16: np.int16,
       T_INT8: np.int8}
_QTYPE = {"int8": T_INT8, "uint8": T_UINT8, "int16": T_INT16, "int32": T_INT32}
_ACT = {"none": 0, "relu": 1, "relu_n1_to_1": 2, "relu6": 3}
SAME, VALID = 0, 1
# Ops every mainstream delegate (GPU, NNAPI, XNNPACK, most NPUs) takes in float and int8.
DELEGATE_FRIENDLY = {
    "CONV_2D", "DEPTHWISE_CONV_2D", "TRANSPOSE_CONV", "ADD", "MUL", "CONCATENATION", "DEPTH_TO_SPACE", "RELU",
    "RELU6", "PRELU", "LEAKY_RELU", "LOGISTIC", "TANH", "RESIZE_NEAREST_NEIGHBOR", "RESIZE_BILINEAR", "QUANTIZE",
    "DEQUANTIZE", "MINIMUM", "MAXIMUM", "PAD",
}


def _mod(name):
    return importlib.import_module(f"tflite.{name}")


def _builtin(name: str) -> int:
    return getattr(_mod("BuiltinOperator").BuiltinOperator, name)


def _opts(kind: str, **fields):
    """Deferred builder for a ``*Options`` table: ``_opts("AddOptions", FusedActivationFunction=1)``."""
    m = _mod(kind)

    def build(b):
        m.Start(b)
        for k, v in fields.items():
            getattr(m, "Add" + k)(b, v)
        return m.End(b)

    return getattr(_mod("BuiltinOptions").BuiltinOptions, kind), build


# Operator versions matching the kernels' feature use (int8 per-channel, bias inputs, fp16 dequant).
# int16 activations (16x8; TFLite's tools/versioning/op_version.cc): ADD is v3 for its general-scale kernel
# (pot_scale_int16 false), QUANTIZE to / DEQUANTIZE from int16 v2 / v3. CONV_2D / TRANSPOSE_CONV keep v3.
_VERSIONS_INT16 = {"ADD": 3, "MUL": 4, "MAXIMUM": 4, "MINIMUM": 4, "CONCATENATION": 3, "PAD": 3, "MIRROR_PAD": 3,
                   "RELU": 3, "RELU6": 3, "LEAKY_RELU": 2, "TANH": 3, "LOGISTIC": 3, "RESIZE_BILINEAR": 4,
                   "RESIZE_NEAREST_NEIGHBOR": 4, "QUANTIZE": 2, "DEQUANTIZE": 3}
_VERSIONS_INT8 = {"CONV_2D": 3, "DEPTHWISE_CONV_2D": 3, "TRANSPOSE_CONV": 3, "ADD": 2, "MUL": 2,
                  "CONCATENATION": 2, "DEPTH_TO_SPACE": 2, "RESIZE_BILINEAR": 2, "RESIZE_NEAREST_NEIGHBOR": 2,
                  "LOGISTIC": 2, "TANH": 2, "LEAKY_RELU": 2, "RELU": 2, "RELU6": 2, "MINIMUM": 2, "MAXIMUM": 2,
                  "QUANTIZE": 1, "DEQUANTIZE": 2, "PAD": 2, "MIRROR_PAD": 2, "PRELU": 1, "RELU_0_TO_1": 1}


class _FB:
    """Collects tensors, buffers and operators, then serialises them in one builder pass."""

    def __init__(self):
        self.tensors, self.buffers, self.ops, self.opcodes = [], [b""], [], {}

    def tensor(self, name, shape, ttype, data=None, quant=None):
        shape = list(shape)
        sig = [-1 if d is None else int(d) for d in shape]
        buf = 0
        if data is not None:
            self.buffers.append(np.ascontiguousarray(np.asarray(data, dtype=_NP[ttype])).tobytes())
            buf = len(self.buffers) - 1
        self.tensors.append(dict(name=name, shape=[1 if d is None else int(d) for d in shape], sig=sig,
                                 type=ttype, buffer=buf, quant=quant))
        return len(self.tensors) - 1

    def op(self, name, inputs, outputs, options=None, version=1):
        if name in _VERSIONS_INT16 and self.tensors[(outputs if name == "QUANTIZE" else inputs)[0]]["type"] == T_INT16:
            version = max(version, _VERSIONS_INT16[name])  # 16x8: what op_version.cc gives int16 kernels
        code = _builtin(name)
        if code not in self.opcodes:
            self.opcodes[code] = (len(self.opcodes), version, name)
        elif version > self.opcodes[code][1]:
            self.opcodes[code] = (self.opcodes[code][0], version, name)
        self.ops.append((code, list(inputs), list(outputs), options))

    def _vec(self, b, start, items, kind="int32"):
        start(b, len(items))
        for v in reversed(items):
            {"int32": b.PrependInt32, "uoff": b.PrependUOffsetTRelative, "int64": b.PrependInt64,
             "float": b.PrependFloat32}[kind](v)
        return b.EndVector()

    def _bytes(self, b, data: bytes):
        # Constant data 16-byte aligned so kernels may read it in place.
        b.assertNotNested()
        b.nested = True
        b.Prep(16, len(data))
        b.head = b.head - len(data)
        b.Bytes[b.head: b.head + len(data)] = data
        b.vectorNumElems = len(data)
        return b.EndVector()

    def serialize(self, inputs, outputs, metadata: dict, sig_names: tuple) -> bytes:
        import flatbuffers

        M = {k: _mod(k) for k in ("Model", "SubGraph", "Tensor", "Operator", "OperatorCode", "Buffer",
                                   "QuantizationParameters", "Metadata", "SignatureDef", "TensorMap")}
        b = flatbuffers.Builder(1024 + sum(len(x) for x in self.buffers))
        buffers = list(self.buffers)
        meta_idx = {}
        for k, v in metadata.items():
            buffers.append(v)
            meta_idx[k] = len(buffers) - 1
        buf_offs = []
        for data in buffers:
            d = self._bytes(b, data) if data else None
            M["Buffer"].Start(b)
            if d is not None:
                M["Buffer"].AddData(b, d)
            buf_offs.append(M["Buffer"].End(b))
        t_offs = []
        for t in self.tensors:
            name = b.CreateString(t["name"])
            shape = self._vec(b, M["Tensor"].StartShapeVector, t["shape"])
            sig = self._vec(b, M["Tensor"].StartShapeSignatureVector, t["sig"]) if -1 in t["sig"] else None
            q = None
            if t["quant"] is not None:
                qp = t["quant"]
                Q = M["QuantizationParameters"]
                sc = self._vec(b, Q.StartScaleVector, [float(s) for s in qp.scale], "float")
                zp = self._vec(b, Q.StartZeroPointVector, [int(z) for z in qp.zero_point], "int64")
                Q.Start(b)
                Q.AddScale(b, sc)
                Q.AddZeroPoint(b, zp)
                Q.AddQuantizedDimension(b, int(qp.quantized_dimension))
                q = Q.End(b)
            T = M["Tensor"]
            T.Start(b)
            T.AddShape(b, shape)
            if sig is not None:
                T.AddShapeSignature(b, sig)
            T.AddType(b, t["type"])
            T.AddBuffer(b, t["buffer"])
            T.AddName(b, name)
            if q is not None:
                T.AddQuantization(b, q)
            t_offs.append(T.End(b))
        op_offs = []
        for code, ins, outs, options in self.ops:
            O = M["Operator"]
            iv = self._vec(b, O.StartInputsVector, ins)
            ov = self._vec(b, O.StartOutputsVector, outs)
            opt = options[1](b) if options else None
            O.Start(b)
            O.AddOpcodeIndex(b, self.opcodes[code][0])
            O.AddInputs(b, iv)
            O.AddOutputs(b, ov)
            if options:
                O.AddBuiltinOptionsType(b, options[0])
                O.AddBuiltinOptions(b, opt)
            op_offs.append(O.End(b))
        S = M["SubGraph"]
        tv = self._vec(b, S.StartTensorsVector, t_offs, "uoff")
        iv = self._vec(b, S.StartInputsVector, inputs)
        ov = self._vec(b, S.StartOutputsVector, outputs)
        opv = self._vec(b, S.StartOperatorsVector, op_offs, "uoff")
        sname = b.CreateString("main")
        S.Start(b)
        S.AddTensors(b, tv)
        S.AddInputs(b, iv)
        S.AddOutputs(b, ov)
        S.AddOperators(b, opv)
        S.AddName(b, sname)
        sub = S.End(b)
        oc_offs = []
        for code, (idx, ver, _) in sorted(self.opcodes.items(), key=lambda kv: kv[1][0]):
            C = M["OperatorCode"]
            C.Start(b)
            C.AddDeprecatedBuiltinCode(b, min(code, 127))
            C.AddBuiltinCode(b, code)
            C.AddVersion(b, ver)
            oc_offs.append(C.End(b))
        md_offs = []
        for k, idx in meta_idx.items():
            nm = b.CreateString(k)
            M["Metadata"].Start(b)
            M["Metadata"].AddName(b, nm)
            M["Metadata"].AddBuffer(b, idx)
            md_offs.append(M["Metadata"].End(b))

        def tmaps(idxs, names):
            offs = []
            for i, n in zip(idxs, names):
                nm = b.CreateString(n)
                M["TensorMap"].Start(b)
                M["TensorMap"].AddName(b, nm)
                M["TensorMap"].AddTensorIndex(b, i)
                offs.append(M["TensorMap"].End(b))
            return offs

        SD = M["SignatureDef"]
        si = self._vec(b, SD.StartInputsVector, tmaps(inputs, sig_names[0]), "uoff")
        so = self._vec(b, SD.StartOutputsVector, tmaps(outputs, sig_names[1]), "uoff")
        key = b.CreateString("serving_default")
        SD.Start(b)
        SD.AddInputs(b, si)
        SD.AddOutputs(b, so)
        SD.AddSignatureKey(b, key)
        SD.AddSubgraphIndex(b, 0)
        sd = SD.End(b)
        Mo = M["Model"]
        ocv = self._vec(b, Mo.StartOperatorCodesVector, oc_offs, "uoff")
        sgv = self._vec(b, Mo.StartSubgraphsVector, [sub], "uoff")
        bv = self._vec(b, Mo.StartBuffersVector, buf_offs, "uoff")
        mdv = self._vec(b, Mo.StartMetadataVector, md_offs, "uoff")
        sdv = self._vec(b, Mo.StartSignatureDefsVector, [sd], "uoff")
        desc = b.CreateString("edge-enhance conversion")
        Mo.Start(b)
        Mo.AddVersion(b, 3)
        Mo.AddOperatorCodes(b, ocv)
        Mo.AddSubgraphs(b, sgv)
        Mo.AddDescription(b, desc)
        Mo.AddBuffers(b, bv)
        Mo.AddMetadata(b, mdv)
        Mo.AddSignatureDefs(b, sdv)
        b.Finish(Mo.End(b), file_identifier=b"TFL3")
        return bytes(b.Output())


# --------------------------------------------------------------------------- quantisation helpers
def symmetric_per_channel(w: np.ndarray, axis: int, dtype: str = "int8") -> QuantParams:
    """Per-channel symmetric weight params (zero point 0), TFLite's int8 weight scheme.

    An all-zero channel (what structured pruning leaves) gets scale 1, as TFLite's converter gives
    it: its int32 bias, at ``in_scale * w_scale``, then holds any bias the channel keeps.

    >>> symmetric_per_channel(np.array([[1.0, -2.0], [0.5, 0.25], [0.0, 0.0]]), 0).scale.round(5).tolist()
    [0.01575, 0.00394, 1.0]
    """
    qmax = 127 if dtype == "int8" else 32767
    m = np.max(np.abs(np.moveaxis(np.asarray(w, np.float64), axis, 0).reshape(w.shape[axis], -1)), axis=1)
    scale = np.where(m > 0, m / qmax, 1.0)
    return QuantParams(scale, np.zeros(len(scale), np.int64), axis, dtype)


def warn_saturated_bias(g: Graph, name: str, bias, scale) -> None:
    """Warn, naming the layer, where ``bias / scale`` lies past the int32 bias's range (it is clipped
    there, so the layer's output is off by the rest)."""
    limit = QDTYPES["int32"][1]
    over = np.abs(np.asarray(bias, np.float64)) / np.asarray(scale, np.float64) > limit
    if over.any():
        layer = next((n.name for n in g.nodes if name in n.inputs), name)
        log.warning("%s: %d bias value(s) do not fit the integer bias (bias / (input scale x weight scale) > %d, "
                    "channel(s) %s): clipped, so the quantised layer's output is off there", layer,
                    int(over.sum()), limit, ", ".join(str(c) for c in np.nonzero(over)[0][:8]))


def affine_from_range(lo: float, hi: float, dtype: str = "int8") -> QuantParams:
    """Per-tensor asymmetric params covering [lo, hi] (widened to include 0, as TFLite needs).

    >>> q = affine_from_range(0.0, 1.0); float(q.scale[0]) == 1 / 255, int(q.zero_point[0])
    (True, -128)
    """
    from .ir import QDTYPES

    qmin, qmax = QDTYPES[dtype]
    lo, hi = min(float(lo), 0.0), max(float(hi), 0.0)
    scale = (hi - lo) / (qmax - qmin) if hi > lo else 1.0
    zp = int(np.clip(np.round(qmin - lo / scale), qmin, qmax))
    return QuantParams([scale], [zp], 0, dtype)


def apply_int8_constraints(g: Graph) -> None:
    """Make IR quant params obey TFLite's int8 kernels, in place (call after calibration).

    LOGISTIC outputs are 1/256 with zero point -128, TANH 1/128 with 0; data-movement ops (DepthToSpace, Resize,
    Concat of one repeated input) and Minimum/Maximum keep their input's params.
    """
    for n in g.nodes:
        out = g.tensors[n.outputs[0]]
        if out.quant is None:
            continue
        if n.op == "Sigmoid":
            out.quant = QuantParams([1 / 256], [-128])
        elif n.op == "Tanh":
            out.quant = QuantParams([1 / 128], [0])
        elif n.op in ("DepthToSpace", "Resize", "Pad") or (n.op == "Concat" and len(set(n.inputs)) == 1):
            src = g.tensors[n.inputs[0]].quant
            if src is not None:
                out.quant = copy.deepcopy(src)


def drop_covered_clips(g: Graph) -> None:
    """Remove, in place, each quantised Clip that cannot change a value: its input has its output's
    params and the clip's bounds hold every level those params can express (a residual net's final
    Clip(0, 1) on a tensor calibrated to 0..1). Left in, it is one more op at the graph's end, and one
    (RELU_0_TO_1) that many NPU delegates lack, so the partition ended on the CPU. The input tensor
    takes the output's name, so the model's output keeps its name."""
    for n in [n for n in g.nodes if n.op == "Clip"]:
        x, out = n.inputs[0], n.outputs[0]
        a, b = g.tensors[x].quant, g.tensors[out].quant
        if a is None or b is None or x in g.inputs or x in g.outputs or a.scale.size != 1 or not (
                a.dtype == b.dtype and np.allclose(a.scale, b.scale, rtol=1e-6) and
                np.array_equal(a.zero_point, b.zero_point)):
            continue
        qmin, qmax = QDTYPES[a.dtype]
        half = 0.5 * float(a.scale[0])
        lo, hi = (float(a.scale[0]) * (q - int(a.zero_point[0])) for q in (qmin, qmax))
        if (n.attrs["min"] is not None and n.attrs["min"] > lo + half) or \
                (n.attrs["max"] is not None and n.attrs["max"] < hi - half):
            continue
        g.nodes.remove(n)
        for m in g.nodes:
            m.inputs = [out if i == x else i for i in m.inputs]
            m.outputs = [out if o == x else o for o in m.outputs]
        del g.tensors[x]


def transpose_convs_as_subpixel(g: Graph) -> None:
    """Rewrite, in place, each ConvTranspose with an unknown spatial size (TRANSPOSE_CONV takes its
    output shape as a constant) whose output is exactly ``stride`` times its input (FSRCNN's last
    layer) as a Conv to s*s*C_out channels + DEPTH_TO_SPACE. Exact: output row s*q + a is
    sum_u x[q + u] * w[a + pad_top - s*u], the same taps for every q, so phase a is a plain conv
    and DCR DepthToSpace interleaves the phases. Others are left to the writer's error."""
    for n in list(g.nodes):
        if n.op != "ConvTranspose" or all(d is not None for d in g.tensors[n.outputs[0]].shape[1:3]):
            continue
        w, b = g.tensors[n.inputs[1]].data, g.tensors[n.inputs[2]].data  # OHWI
        co, kh, kw, ci = w.shape
        (sh, sw), (pt, pl, pb, pr), (oph, opw) = n.attrs["strides"], n.attrs["pads"], n.attrs["output_padding"]
        if sh != sw or kh + oph - pt - pb != sh or kw + opw - pl - pr != sw:
            continue
        s = sh
        lo = [min(-((k - 1 - a - p) // s) for a in range(s)) for k, p in ((kh, pt), (kw, pl))]  # ceil((a+p-k+1)/s)
        hi = [max((a + p) // s for a in range(s)) for p in (pt, pl)]
        if lo[0] > 0 or lo[1] > 0 or hi[0] < 0 or hi[1] < 0:
            continue
        ky_n, kx_n = hi[0] - lo[0] + 1, hi[1] - lo[1] + 1
        wc = np.zeros((s * s * co, ky_n, kx_n, ci), np.float32)
        for a in range(s):
            for bb in range(s):
                o = (a * s + bb) * co
                for uy in range(lo[0], hi[0] + 1):
                    for ux in range(lo[1], hi[1] + 1):
                        ky, kx = a + pt - s * uy, bb + pl - s * ux
                        if 0 <= ky < kh and 0 <= kx < kw:
                            wc[o:o + co, uy - lo[0], ux - lo[1]] = w[:, ky, kx]
        conv = Node("Conv", g.unique(n.name + "_subpixel"), [n.inputs[0], g.add_const(n.name + "_subpixel_w", wc),
                                                              g.add_const(n.name + "_subpixel_b", np.tile(b, s * s))],
                    [], dict(strides=(1, 1), dilations=(1, 1), pads=(-lo[0], -lo[1], hi[0], hi[1]), group=1,
                             activation=n.attrs["activation"]))
        mid = g.unique(n.outputs[0] + "_phases")
        conv.outputs = [mid]
        g.tensors[mid] = Tensor(mid, infer_shape(g, conv), quant=copy.deepcopy(g.tensors[n.outputs[0]].quant))
        d2s = Node("DepthToSpace", n.name, [mid], list(n.outputs), dict(block_size=s))
        i = g.nodes.index(n)
        g.nodes[i:i + 1] = [conv, d2s]


def bilinear_resizes_as_subpixel(g: Graph) -> None:
    """Rewrite, in place, each bilinear Resize by one integer s >= 2 with an unknown spatial size
    (RESIZE_BILINEAR takes its output size as a constant) as edge Pad + Conv + DEPTH_TO_SPACE: each
    output phase mixes the same two input pixels per axis with fixed weights (``ir.upsample_taps``),
    the edge pad clamping at the border as the resize does. Exact; align_corners is left alone."""
    for n in list(g.nodes):
        a = n.attrs
        sc = a.get("scales") if n.op == "Resize" else None
        if (not sc or a["mode"] != "bilinear" or a["align_corners"] or sc[0] != sc[1] or sc[0] != int(sc[0])
                or sc[0] < 2 or all(d is not None for d in g.tensors[n.outputs[0]].shape[1:3])):
            continue
        s, i = int(sc[0]), g.nodes.index(n)
        g.nodes.remove(n)
        start = len(g.nodes)
        k, r = upsample_taps(s, False, bool(a["half_pixel_centers"]))
        mid = subpixel_phases(g, n.inputs[0], s, k, r, n.name)
        new = g.nodes[start:]
        del g.nodes[start:]
        g.tensors[new[0].outputs[0]].quant = copy.deepcopy(g.tensors[n.inputs[0]].quant)  # the edge pad
        g.tensors[mid].quant = copy.deepcopy(g.tensors[n.outputs[0]].quant)
        g.nodes[i:i] = new + [Node("DepthToSpace", n.name, [mid], list(n.outputs), dict(block_size=s))]


# --------------------------------------------------------------------------- lowering
def _pad_mode(in_hw, k, s, d, pads, align=1):
    """SAME / VALID when the IR's explicit pads equal TFLite's rule, else None (emit a PAD).

    ``align``: a dynamic size is known to be a multiple of it (the model input, by its card), so
    for a stride dividing it SAME pads k_eff - stride in all: 4x4 stride 2 pads 1 and 1.
    """
    if not any(pads):
        return VALID
    for ax in range(2):
        k_eff = (k[ax] - 1) * d[ax] + 1
        if s[ax] == 1:
            total = k_eff - 1
        elif in_hw[ax] is None and align % s[ax] == 0:
            total = max(k_eff - s[ax], 0)
        elif in_hw[ax] is None:
            return None
        else:
            total = max((-(-in_hw[ax] // s[ax]) - 1) * s[ax] + k_eff - in_hw[ax], 0)
        if (pads[ax], pads[ax + 2]) != (total // 2, total - total // 2):
            return None
    return SAME


class _Emitter:
    def __init__(self, g: Graph, precision: str, io: str, d2s_as_transpose_conv: bool):
        self.g, self.p, self.io, self.d2s_tc = g, precision, io, d2s_as_transpose_conv
        self.fb = _FB()
        self.idx: dict = {}  # IR activation name -> tflite tensor index
        self.int8 = precision == "int8"

    # tensors --------------------------------------------------------------------------
    def shape(self, name):
        return self.g.tensors[name].shape

    def qparams(self, name) -> QuantParams:
        q = self.g.tensors[name].quant
        if q is None:
            raise ConfigError(f"int8: tensor {name!r} has no quantisation parameters (calibrate first)")
        return q

    def act(self, name):
        if name in self.idx:
            return self.idx[name]
        t = self.g.tensors[name]
        if t.is_const:  # a constant activation operand (rare): emit as a weight-like constant
            return self.const_operand(name, t.data)
        if self.int8:
            self.idx[name] = self.fb.tensor(name, t.shape, _QTYPE[self.qparams(name).dtype], quant=self.qparams(name))
        else:
            self.idx[name] = self.fb.tensor(name, t.shape, T_FLOAT32)
        return self.idx[name]

    def float_const(self, name, arr):
        """A float constant: fp32 as is, fp16 stored half and DEQUANTIZEd."""
        arr = np.asarray(arr, np.float32)
        if self.p == "fp16":
            h = self.fb.tensor(name + "_fp16", arr.shape, T_FLOAT16, arr.astype(np.float16))
            f = self.fb.tensor(name, arr.shape, T_FLOAT32)
            self.fb.op("DEQUANTIZE", [h], [f], version=3)
            return f
        return self.fb.tensor(name, arr.shape, T_FLOAT32, arr)

    def const_operand(self, name, arr, like: str | None = None, want: str = "int8"):
        """Constant operand of an elementwise op; int8 uses ``like``'s params or its own range; ``want``
        "int16": the op runs 16x8."""
        arr = np.asarray(arr, np.float32)
        if not self.int8:
            return self.float_const(name, arr)
        q = self.g.tensors[name].quant if name in self.g.tensors else None
        if q is None:
            q = copy.deepcopy(self.qparams(like)) if like else affine_from_range(arr.min(), arr.max())
        if want == "int16" and q.dtype != "int16":  # a 16x8 ADD / MUL takes both operands in int16 (zero point 0)
            m = max(float(np.abs(arr).max()), 1e-8)
            q = QuantParams([m / 32767], [0], 0, "int16")
        return self.fb.tensor(name, arr.shape, _QTYPE[q.dtype], q.quantize(arr), q)

    def weight(self, name, arr, axis, graph_axis=None):
        """``graph_axis``: where the graph's per-channel params are, if the caller moved that axis to ``axis``
        (a depthwise [O, kh, kw, 1] written as [1, kh, kw, O]: the same channels)."""
        arr = np.asarray(arr, np.float32)
        if not self.int8:
            return self.float_const(name, arr), None
        q = self.g.tensors[name].quant if name in self.g.tensors else None
        if q is not None and graph_axis is not None and q.quantized_dimension == graph_axis and q.scale.size > 1:
            q = QuantParams(q.scale, q.zero_point, axis, q.dtype)
        if q is None or q.quantized_dimension != axis:
            q = symmetric_per_channel(arr, axis)
        return self.fb.tensor(name, arr.shape, T_INT8, q.quantize(arr), q), q

    def bias(self, name, arr, in_name, wq):
        arr = np.asarray(arr, np.float32)
        if not self.int8:
            return self.float_const(name, arr)
        s = self.qparams(in_name).scale[0] * wq.scale
        q = QuantParams(s, np.zeros(len(s), np.int64), 0, "int32")
        warn_saturated_bias(self.g, name, arr, s)
        return self.fb.tensor(name, arr.shape, T_INT32, q.quantize(arr), q)

    def requant_to(self, src_idx, src_name, q: QuantParams, name):
        """int8 -> int8 QUANTIZE so an operand matches the params an op requires."""
        t = self.fb.tensor(name, self.shape(src_name), _QTYPE[q.dtype], quant=q)
        self.fb.op("QUANTIZE", [src_idx], [t], version=self.v("QUANTIZE"))  # int16 out: v2, set in op()
        return t

    def same_params(self, src, dst):
        a, b = self.g.tensors[src].quant, self.g.tensors[dst].quant
        return (a.dtype == b.dtype and np.allclose(a.scale, b.scale, rtol=1e-6)
                and np.array_equal(a.zero_point, b.zero_point))

    def matched(self, src, dst, tag):
        """The input tensor, requantised to ``dst``'s params where an int8 kernel needs equal ones."""
        i = self.act(src)
        if self.int8 and not self.same_params(src, dst):
            i = self.requant_to(i, src, self.qparams(dst), f"{src}_rq_{tag}")
        return i

    def v(self, name):
        return _VERSIONS_INT8.get(name, 1) if self.int8 else 1

    # ops --------------------------------------------------------------------------------
    def emit(self, n):
        getattr(self, "op_" + n.op)(n)

    def op_Conv(self, n):
        x, wname, bname = n.inputs
        a = n.attrs
        w, b = self.g.tensors[wname].data, self.g.tensors[bname].data
        o, kh, kw, ig = w.shape
        c = self.shape(x)[3]
        xi = self.act(x)
        in_hw = self.shape(x)[1:3]
        mode = _pad_mode(in_hw, (kh, kw), a["strides"], a["dilations"], a["pads"],
                         self.g.align if x in self.g.inputs else 1)
        if mode is None:
            pt, pl, pb, pr = a["pads"]
            padded = self.shape(x)[:1] + tuple(None if d is None else d + p for d, p in
                                               zip(in_hw, (pt + pb, pl + pr))) + (c,)
            pads = self.fb.tensor(n.name + "_pads", (4, 2), T_INT32, [[0, 0], [pt, pb], [pl, pr], [0, 0]])
            t = self.fb.tensor(x + "_padded", padded, self.fb.tensors[xi]["type"],
                               quant=self.fb.tensors[xi]["quant"])
            self.fb.op("PAD", [xi, pads], [t], _opts("PadOptions"), version=self.v("PAD"))
            xi, mode = t, VALID
        act = _ACT[a["activation"]]
        g = a["group"]
        sh, sw = a["strides"]
        dh, dw = a["dilations"]
        if g > 1 and g == c and ig == 1:
            wd = np.ascontiguousarray(w.transpose(3, 1, 2, 0))  # [1, kh, kw, O]
            wi, wq = self.weight(wname, wd, 3, graph_axis=0)
            bi = self.bias(bname, b, x, wq) if self.int8 else self.float_const(bname, b)
            opts = _opts("DepthwiseConv2DOptions", Padding=mode, StrideW=sw, StrideH=sh, DepthMultiplier=o // c,
                         FusedActivationFunction=act, DilationWFactor=dw, DilationHFactor=dh)
            self.fb.op("DEPTHWISE_CONV_2D", [xi, wi, bi], [self.act(n.outputs[0])], opts,
                       self.v("DEPTHWISE_CONV_2D"))
            return
        if g > 1:
            # Grouped conv as one dense conv with block-diagonal weights: exact, and every
            # delegate takes CONV_2D whereas grouped CONV_2D support is patchy.
            dense = np.zeros((o, kh, kw, c), np.float32)
            og = o // g
            for gi in range(g):
                dense[gi * og:(gi + 1) * og, :, :, gi * ig:(gi + 1) * ig] = w[gi * og:(gi + 1) * og]
            w = dense
        wi, wq = self.weight(wname, w, 0)
        bi = self.bias(bname, b, x, wq) if self.int8 else self.float_const(bname, b)
        opts = _opts("Conv2DOptions", Padding=mode, StrideW=sw, StrideH=sh, FusedActivationFunction=act,
                     DilationWFactor=dw, DilationHFactor=dh)
        self.fb.op("CONV_2D", [xi, wi, bi], [self.act(n.outputs[0])], opts, self.v("CONV_2D"))

    def _transpose_conv(self, name, x, xi, w, b, strides, pads, out_name, wname, bname):
        out_shape = self.shape(out_name)
        if any(d is None for d in out_shape[1:3]):
            raise UnsupportedOpError(f"{name}: TRANSPOSE_CONV needs a fixed input size; convert with --tile HxW")
        pt, pl = pads[0], pads[1]
        if pt == 0 and pl == 0:
            mode = VALID
        else:
            # TFLite derives SAME padding from the output size; zero rows/columns appended to the
            # kernel move its split until the top/left pad equals ONNX's (zeros add nothing).
            mode, extra = SAME, []
            for ax, (d_out, s, p) in enumerate(((out_shape[1], strides[0], pt), (out_shape[2], strides[1], pl))):
                k = w.shape[1 + ax]
                e = next((e for e in range(2 * (k + s) + 2)
                          if max((-(-d_out // s) - 1) * s + k + e - d_out, 0) // 2 == p), None)
                if e is None:
                    raise UnsupportedOpError(f"{name}: ConvTranspose pads {pads} have no TFLite SAME/VALID form")
                extra.append(e)
            w = np.pad(w, ((0, 0), (0, extra[0]), (0, extra[1]), (0, 0)))
        os_ = self.fb.tensor(name + "_output_shape", (4,), T_INT32, [1 if d is None else d for d in out_shape])
        wi, wq = self.weight(wname, w, 0)
        bi = self.bias(bname, b, x, wq) if self.int8 else self.float_const(bname, b)
        opts = _opts("TransposeConvOptions", Padding=mode, StrideW=strides[1], StrideH=strides[0])
        self.fb.op("TRANSPOSE_CONV", [os_, wi, xi, bi], [self.act(out_name)], opts, 3)  # v3: bias input

    def op_ConvTranspose(self, n):
        x, wname, bname = n.inputs
        w, b = self.g.tensors[wname].data, self.g.tensors[bname].data
        if n.attrs["activation"] != "none":
            raise UnsupportedOpError(f"{n.name}: fused activation on ConvTranspose")
        self._transpose_conv(n.name, x, self.act(x), w, b, n.attrs["strides"], n.attrs["pads"], n.outputs[0],
                             wname, bname)

    def _binary(self, n, op, opt_kind):
        ins = []
        for i in n.inputs:
            t = self.g.tensors[i]
            oq = self.g.tensors[n.outputs[0]].quant
            want = oq.dtype if oq is not None else "int8"
            ins.append(self.const_operand(i, t.data, want=want) if t.is_const else self.act(i))
        extra = {}
        if op == "ADD" and self.int8 and self.qparams(n.outputs[0]).dtype == "int16":
            extra["PotScaleInt16"] = False  # scales are calibrated, not powers of two: the general kernel
        opts = _opts(opt_kind, FusedActivationFunction=_ACT[n.attrs["activation"]], **extra)
        self.fb.op(op, ins, [self.act(n.outputs[0])], opts, self.v(op))

    def op_Add(self, n):
        self._binary(n, "ADD", "AddOptions")

    def op_Mul(self, n):
        self._binary(n, "MUL", "MulOptions")

    def op_Concat(self, n):
        out = n.outputs[0]
        ins = [self.matched(i, out, f"cat{k}") for k, i in enumerate(n.inputs)]
        self.fb.op("CONCATENATION", ins, [self.act(out)], _opts("ConcatenationOptions", Axis=n.attrs["axis"]),
                   self.v("CONCATENATION"))

    def op_Relu(self, n):
        self.fb.op("RELU", [self.act(n.inputs[0])], [self.act(n.outputs[0])], version=self.v("RELU"))

    def op_Sigmoid(self, n):
        self.fb.op("LOGISTIC", [self.act(n.inputs[0])], [self.act(n.outputs[0])], version=self.v("LOGISTIC"))

    def op_Pad(self, n):
        pt, pl, pb, pr = n.attrs["pads"]
        if n.attrs["mode"] == "edge":
            self._edge_pad(n, (pt, pl, pb, pr))
            return
        pads = self.fb.tensor(n.name + "_pads", (4, 2), T_INT32, [[0, 0], [pt, pb], [pl, pr], [0, 0]])
        if n.attrs["mode"] == "reflect":
            self.fb.op("MIRROR_PAD", [self.act(n.inputs[0]), pads], [self.act(n.outputs[0])],
                       _opts("MirrorPadOptions", Mode=0), self.v("MIRROR_PAD"))  # REFLECT
        else:
            self.fb.op("PAD", [self.act(n.inputs[0]), pads], [self.act(n.outputs[0])], _opts("PadOptions"),
                       self.v("PAD"))

    def _edge_pad(self, n, pads):
        """Replicate padding, which TFLite lacks: SYMMETRIC mirror padding by 1 repeats the edge pixel,
        so k of them in a row pad k copies of it."""
        x, left = self.act(n.inputs[0]), list(pads)
        step = 0
        while any(left):
            now = [min(v, 1) for v in left]
            left = [v - d for v, d in zip(left, now)]
            pt, pl, pb, pr = now
            pads = self.fb.tensor(f"{n.name}_pads{step}", (4, 2), T_INT32, [[0, 0], [pt, pb], [pl, pr], [0, 0]])
            if any(left):
                shape = self.shape(n.inputs[0])
                done = [p - v for p, v in zip(n.attrs["pads"], left)]
                shape = (shape[0], None if shape[1] is None else shape[1] + done[0] + done[2],
                         None if shape[2] is None else shape[2] + done[1] + done[3], shape[3])
                out = self.fb.tensor(f"{n.outputs[0]}_edge{step}", shape, self.fb.tensors[x]["type"],
                                     quant=self.fb.tensors[x]["quant"])
            else:
                out = self.act(n.outputs[0])
            self.fb.op("MIRROR_PAD", [x, pads], [out], _opts("MirrorPadOptions", Mode=1), self.v("MIRROR_PAD"))
            x, step = out, step + 1

    def op_Tanh(self, n):
        self.fb.op("TANH", [self.act(n.inputs[0])], [self.act(n.outputs[0])], version=self.v("TANH"))

    def op_LeakyRelu(self, n):
        self.fb.op("LEAKY_RELU", [self.act(n.inputs[0])], [self.act(n.outputs[0])],
                   _opts("LeakyReluOptions", Alpha=float(n.attrs["alpha"])), self.v("LEAKY_RELU"))

    def op_PRelu(self, n):
        x, s = n.inputs
        alpha = np.asarray(self.g.tensors[s].data, np.float32)
        alpha = alpha.reshape(alpha.shape[-3:] if alpha.ndim >= 3 else alpha.shape)  # drop batch: [1, 1, C]
        if self.int8:
            q = self.g.tensors[s].quant or affine_from_range(alpha.min(), alpha.max())
            ai = self.fb.tensor(s, alpha.shape, _QTYPE[q.dtype], q.quantize(alpha), q)
        else:
            ai = self.float_const(s, alpha)
        self.fb.op("PRELU", [self.act(x), ai], [self.act(n.outputs[0])], version=self.v("PRELU"))

    def op_Clip(self, n):
        lo, hi = n.attrs["min"], n.attrs["max"]
        x, out = n.inputs[0], n.outputs[0]
        named = {(0.0, 6.0): "RELU6", (0.0, 1.0): "RELU_0_TO_1", (-1.0, 1.0): "RELU_N1_TO_1", (0.0, None): "RELU"}
        if (lo, hi) in named:
            self.fb.op(named[(lo, hi)], [self.act(x)], [self.act(out)], version=self.v(named[(lo, hi)]))
            return
        cur = self.act(x)
        steps = [(op, v) for op, v in (("MAXIMUM", lo), ("MINIMUM", hi)) if v is not None]
        for k, (op, v) in enumerate(steps):
            last = k == len(steps) - 1
            if last:
                dst = self.act(out)
            else:
                q = copy.deepcopy(self.qparams(out)) if self.int8 else None
                dst = self.fb.tensor(f"{out}_{op.lower()}", self.shape(out), T_INT8 if self.int8 else T_FLOAT32,
                                     quant=q)
            if self.int8 and k == 0 and not self.same_params(x, out):
                cur = self.requant_to(cur, x, self.qparams(out), f"{x}_rq_clip")
            c = self.const_operand(f"{n.name}_{op.lower()}_bound", np.array([v], np.float32), like=out)
            self.fb.op(op, [cur, c], [dst], version=self.v(op))
            cur = dst

    def _minmax(self, n, op):
        out = n.outputs[0]
        ins = []
        for k, i in enumerate(n.inputs):
            t = self.g.tensors[i]
            ins.append(self.const_operand(i, t.data, like=out if self.int8 else None) if t.is_const
                       else self.matched(i, out, f"mm{k}"))
        self.fb.op(op, ins, [self.act(out)], version=self.v(op))

    def op_Minimum(self, n):
        self._minmax(n, "MINIMUM")

    def op_Maximum(self, n):
        x, floor = (self.g.tensors[i] for i in n.inputs)
        if self.int8 and floor.is_const and float(np.max(floor.data)) <= -1e29 and not x.is_const:
            # quantize.insert_precision_boundaries' int8 <-> int16 converter, an identity on real values: the
            # QUANTIZE that requantises it is all it takes (a MAXIMUM after it changed nothing)
            self.fb.op("QUANTIZE", [self.act(n.inputs[0])], [self.act(n.outputs[0])], version=self.v("QUANTIZE"))
            return
        self._minmax(n, "MAXIMUM")

    def op_DepthToSpace(self, n):
        x, out = n.inputs[0], n.outputs[0]
        r = n.attrs["block_size"]
        xi = self.matched(x, out, "d2s")
        if self.d2s_tc:
            c = self.shape(out)[3]
            w = np.zeros((c, r, r, c * r * r), np.float32)
            for dy in range(r):
                for dx in range(r):
                    w[np.arange(c), dy, dx, (dy * r + dx) * c + np.arange(c)] = 1.0
            # xi is already on out's grid (``matched``): bias scale must use those params.
            src = x if not self.int8 or self.same_params(x, out) else out
            self._transpose_conv(n.name, src, xi, w, np.zeros(c, np.float32), (r, r), (0, 0, 0, 0), out,
                                 n.name + "_d2s_w", n.name + "_d2s_b")
            return
        self.fb.op("DEPTH_TO_SPACE", [xi], [self.act(out)], _opts("DepthToSpaceOptions", BlockSize=r),
                   self.v("DEPTH_TO_SPACE"))

    def op_Resize(self, n):
        x, out = n.inputs[0], n.outputs[0]
        a = n.attrs
        xi = self.matched(x, out, "resize")
        oh, ow = self.shape(out)[1:3]
        if oh is None or ow is None:
            sc = a["scales"]
            k = int(round(sc[0])) if sc else 0
            if a["mode"] == "nearest" and sc and sc[0] == sc[1] == k >= 1 and not a["align_corners"]:
                # Integer nearest upscale for any input size: k*k copies + DEPTH_TO_SPACE (DCR) is
                # exactly floor(y / k) indexing, and keeps the model shape-agnostic.
                c = self.shape(out)[3]
                cat = self.fb.tensor(out + "_rep", self.shape(x)[:3] + (c * k * k,), self.fb.tensors[xi]["type"],
                                     quant=self.fb.tensors[xi]["quant"])
                self.fb.op("CONCATENATION", [xi] * (k * k), [cat], _opts("ConcatenationOptions", Axis=3),
                           self.v("CONCATENATION"))
                self.fb.op("DEPTH_TO_SPACE", [cat], [self.act(out)], _opts("DepthToSpaceOptions", BlockSize=k),
                           self.v("DEPTH_TO_SPACE"))
                return
            raise UnsupportedOpError(f"{n.name}: {a['mode']} resize by {sc} needs a fixed input size; convert with "
                                     "--tile HxW")
        size = self.fb.tensor(n.name + "_size", (2,), T_INT32, [oh, ow])
        if a["mode"] == "nearest":
            op, kind = "RESIZE_NEAREST_NEIGHBOR", "ResizeNearestNeighborOptions"
        else:
            op, kind = "RESIZE_BILINEAR", "ResizeBilinearOptions"
        self.fb.op(op, [xi, size], [self.act(out)],
                   _opts(kind, AlignCorners=bool(a["align_corners"]), HalfPixelCenters=bool(a["half_pixel_centers"])),
                   self.v(op) if not a["half_pixel_centers"] else max(self.v(op), 3))

    # I/O --------------------------------------------------------------------------------
    def io_tensor(self, name, is_input):
        """The model-facing tensor for an IR input/output, with QUANTIZE / DEQUANTIZE as needed."""
        inner = self.act(name)
        if not self.int8 or self.io == "int8":
            return inner
        q = self.qparams(name)
        # The model-facing tensor keeps the source's name whatever --io and --precision are (an app binding
        # by name, as NNAPI / C code do, works with every build); the int8 one behind it is renamed.
        self.fb.tensors[inner]["name"] = f"{name}_{q.dtype}"
        if self.io == "float":
            outer = self.fb.tensor(name, self.shape(name), T_FLOAT32)
        else:  # uint8: the same real grid shifted by 128
            uq = QuantParams(q.scale, q.zero_point + 128, 0, "uint8")
            outer = self.fb.tensor(name, self.shape(name), T_UINT8, quant=uq)
        op = "QUANTIZE" if is_input or self.io != "float" else "DEQUANTIZE"
        src, dst = (outer, inner) if is_input else (inner, outer)
        self.fb.op(op, [src], [dst], version=self.v(op))  # versions as op_version.cc gives them (the table)
        return outer


def _check(g: Graph, precision: str, io: str):
    if precision not in PRECISIONS:
        raise ConfigError(f"precision {precision!r} is not one of {', '.join(PRECISIONS)}")
    if io not in IO_TYPES:
        raise ConfigError(f"io {io!r} is not one of {', '.join(IO_TYPES)}")
    if precision != "int8" and io != "float":
        raise ConfigError(f"io {io!r} needs precision int8 (got {precision})")
    if precision == "int8":
        missing = [t for t in list(g.inputs) + [o for n in g.nodes for o in n.outputs] if g.tensors[t].quant is None]
        if missing:
            raise ConfigError(f"int8: {len(missing)} activation tensor(s) lack quantisation parameters "
                              f"(calibrate first): {', '.join(missing[:8])}")


def to_tflite_bytes(graph: Graph, *, precision: str = "fp32", io: str = "float", tile: tuple | None = None,
                    d2s_as_transpose_conv: bool = False) -> bytes:
    """Serialise ``graph``; ``tile`` (h, w) fixes the input's spatial size, else dynamic dims stay -1."""
    g = copy.deepcopy(graph)
    if tile is not None:
        if len(g.inputs) != 1:
            raise ConfigError("tile needs a single-input model")
        check_aligned([tile], g.align, "tile")
        n_, _, _, c = g.tensors[g.inputs[0]].shape
        g.retype({g.inputs[0]: (1 if n_ is None else n_, int(tile[0]), int(tile[1]), c)})
    transpose_convs_as_subpixel(g)
    bilinear_resizes_as_subpixel(g)
    _check(g, precision, io)
    if precision == "int8":
        apply_int8_constraints(g)
        drop_covered_clips(g)
    em = _Emitter(g, precision, io, d2s_as_transpose_conv)
    ins = [em.io_tensor(i, True) for i in g.inputs]
    for n in g.nodes:
        em.emit(n)
    outs = [em.io_tensor(o, False) for o in g.outputs]
    meta = {}
    if CARD_KEY in g.metadata:
        card = g.metadata[CARD_KEY]
        try:  # the file's own tensors are NHWC whatever the source model's layout was
            d = json.loads(card)
            d["layout"] = "nhwc"
            if tile is not None:
                d["tile"] = [int(tile[0]), int(tile[1])]
            card = json.dumps(d, sort_keys=True)
        except ValueError:
            raise ModelFormatError(f"model card metadata is not valid JSON: {card[:60]!r}") from None
        meta[CARD_KEY] = card.encode("utf-8")
    return em.fb.serialize(ins, outs, meta, ([i for i in g.inputs], [o for o in g.outputs]))


def write_atomic(path, data: bytes) -> Path:
    path = Path(path)
    if not path.parent.is_dir():
        raise ConfigError(f"{path}: output folder {path.parent} does not exist")
    return write_bytes(path, data)


def to_tflite(graph: Graph, path, *, precision: str = "fp32", io: str = "float", tile: tuple | None = None,
              d2s_as_transpose_conv: bool = False) -> Path:
    """Write ``graph`` as a .tflite file atomically (nothing is left behind on failure)."""
    data = to_tflite_bytes(graph, precision=precision, io=io, tile=tile, d2s_as_transpose_conv=d2s_as_transpose_conv)
    return write_atomic(path, data)


def tflite_ops(path_or_bytes) -> list:
    """Operator names of a .tflite file, in execution order (for summaries and tests)."""
    import tflite

    data = Path(path_or_bytes).read_bytes() if not isinstance(path_or_bytes, (bytes, bytearray)) else path_or_bytes
    m = tflite.Model.GetRootAsModel(data, 0)
    names = {v: k for k, v in vars(_mod("BuiltinOperator").BuiltinOperator).items() if not k.startswith("_")}
    sg = m.Subgraphs(0)
    out = []
    for i in range(sg.OperatorsLength()):
        oc = m.OperatorCodes(sg.Operators(i).OpcodeIndex())
        out.append(names[max(oc.BuiltinCode(), oc.DeprecatedBuiltinCode())])
    return out


def tflite_metadata(path_or_bytes) -> dict:
    """Model.metadata entries of a .tflite file as name -> bytes."""
    import tflite

    data = Path(path_or_bytes).read_bytes() if not isinstance(path_or_bytes, (bytes, bytearray)) else path_or_bytes
    m = tflite.Model.GetRootAsModel(data, 0)
    out = {}
    for i in range(m.MetadataLength()):
        md = m.Metadata(i)
        buf = m.Buffers(md.Buffer())
        out[md.Name().decode()] = buf.DataAsNumpy().tobytes() if buf.DataLength() else b""
    return out


def replace_metadata(data: bytes, name: str, value: bytes) -> bytes:
    """``data`` (a .tflite file) with metadata entry ``name`` set to ``value`` in place, the rest of the
    file byte for byte as it was: ``value`` is padded with spaces to the old entry's length (a JSON
    card reads the same), and one longer than that is refused (the file would have to be rebuilt)."""
    import tflite

    m = tflite.Model.GetRootAsModel(data, 0)
    for i in range(m.MetadataLength()):
        md = m.Metadata(i)
        if md.Name().decode() != name:
            continue
        buf = m.Buffers(md.Buffer())
        n = buf.DataLength()
        if len(value) > n:
            raise ConfigError(f"metadata {name}: the new value is {len(value)} bytes, the file has room for {n}")
        start = buf._tab.Vector(buf._tab.Offset(4))  # where the data starts (as Buffer.Data reads it)
        return bytes(data[:start]) + value.ljust(n, b" ") + bytes(data[start + n:])
    raise ConfigError(f"no metadata entry {name!r} in the file")
