"""IR -> clean ONNX (NCHW, opset 17): fp32, fp16 weights cast back to float32 at load, or int8 QDQ.

The result has no Identity / Dropout / BatchNormalization, folded constants, fused-activation
ops expanded back to Relu / Clip, and pixel shuffle as DepthToSpace (DCR). fp16 stores every
float constant as float16 followed by a Cast, so any runtime (CPU EP included) runs it and the
model's float32 image I/O is unchanged. int8 takes a quantised IR (quantization.quantize): every
quantised activation gets QuantizeLinear -> DequantizeLinear (uint8), conv weights are int8 per output
channel (zero point 0) behind a DequantizeLinear, biases int32 at scale s_in * s_w; runtimes fuse
this into integer kernels, and it computes what ``executor.run(..., simulate_quant=True)`` does.
"""
from __future__ import annotations

import copy
from pathlib import Path

import numpy as np

from edge_enhance.card import CARD_KEY

from .errors import ConfigError
from .ir import QDTYPES, Graph
from .tflite_writer import warn_saturated_bias, write_atomic

OPSET = 17


def _nchw_const(arr):
    arr = np.asarray(arr, np.float32)
    if arr.ndim == 4:
        return np.ascontiguousarray(arr.transpose(0, 3, 1, 2))
    if arr.ndim in (1, 3) and arr.size > 1:  # [C] / [1, 1, C] broadcast over channels
        return arr.reshape(-1, 1, 1)
    return arr.reshape(())


def to_onnx_model(graph: Graph, *, precision: str = "fp32", layout: str = "nchw"):
    """``layout``: of the written model's input and output tensors; "nhwc" (a TensorFlow export's, whose
    layout transposes the import took out) puts them back, so the file keeps its source's interface."""
    import json

    import onnx
    from onnx import helper as h
    from onnx import numpy_helper as nh

    if precision not in ("fp32", "fp16", "int8"):
        raise ConfigError(f"ONNX precision {precision!r} is not one of fp32, fp16, int8")
    g = graph
    qdq = precision == "int8"
    if qdq:
        _check_quantised(g)
    nodes, inits = [], []
    made = set()

    def dq_const(name, q, scale, zp, axis, dtype):
        """Integer initializer + DequantizeLinear producing the float tensor ``name``."""
        made.add(name)
        shape = (-1,) if np.asarray(scale).size > 1 else ()
        inits.append(nh.from_array(np.ascontiguousarray(q).astype(dtype), name + "_q"))
        inits.append(nh.from_array(np.asarray(scale, np.float32).reshape(shape), name + "_scale"))
        inits.append(nh.from_array(np.asarray(zp).astype(dtype).reshape(shape), name + "_zp"))
        nodes.append(h.make_node("DequantizeLinear", [name + "_q", name + "_scale", name + "_zp"], [name],
                                 name=name + "_dq", **({"axis": axis} if shape else {})))
        return name

    def const(name, arr):
        if name in made:
            return name
        made.add(name)
        arr = np.asarray(arr)
        if precision == "fp16" and arr.dtype == np.float32:
            inits.append(nh.from_array(arr.astype(np.float16), name + "_fp16"))
            nodes.append(h.make_node("Cast", [name + "_fp16"], [name], to=onnx.TensorProto.FLOAT, name=name + "_cast"))
        else:
            inits.append(nh.from_array(arr, name))
        return name

    def operand(name):
        t = g.tensors[name]
        if not t.is_const:
            return name
        if qdq and t.quant is not None:  # e.g. an Add constant: the value the int8 model sees
            return const(name, _nchw_const(t.quant.fake_quantize(t.data)))
        return const(name, _nchw_const(t.data))

    def act(out, kind, name):
        if kind == "none":
            return
        pre = out + "_pre"
        nodes[-1].output[0] = pre
        if kind == "relu":
            nodes.append(h.make_node("Relu", [pre], [out], name=name + "_relu"))
        else:
            lo, hi = {"relu6": (0.0, 6.0), "relu_n1_to_1": (-1.0, 1.0)}[kind]
            nodes.append(h.make_node("Clip", [pre, const(name + "_lo", np.float32(lo)), const(name + "_hi", np.float32(hi))],
                                     [out], name=name + "_clip"))

    for n in g.nodes:
        a, out = n.attrs, n.outputs[0]
        if n.op in ("Conv", "ConvTranspose"):
            w = g.tensors[n.inputs[1]].data
            if n.op == "Conv":
                wt = w.transpose(0, 3, 1, 2)
                kw = dict(strides=list(a["strides"]), dilations=list(a["dilations"]), group=a["group"],
                          pads=[a["pads"][0], a["pads"][1], a["pads"][2], a["pads"][3]])
            else:
                wt = w.transpose(3, 0, 1, 2)
                kw = dict(strides=list(a["strides"]), pads=list(a["pads"]), output_padding=list(a["output_padding"]))
            if qdq and n.inputs[1] not in made:
                # int8 weights per output channel (ONNX axis 0 for Conv, 1 for ConvTranspose), zero point
                # 0; int32 bias at s_in * s_w so runtimes can fuse an integer conv.
                wq, xq = g.tensors[n.inputs[1]].quant, g.tensors[n.inputs[0]].quant
                order = (0, 3, 1, 2) if n.op == "Conv" else (3, 0, 1, 2)
                ax = 0 if n.op == "Conv" else 1
                q = wq.quantize(np.asarray(w, np.float64)).transpose(order)
                wn = dq_const(n.inputs[1], q, wq.scale, wq.zero_point, ax, np.int8)
                bs = xq.scale[0] * np.broadcast_to(wq.scale, (wt.shape[ax],))
                b = np.asarray(g.tensors[n.inputs[2]].data, np.float64)
                warn_saturated_bias(g, n.inputs[2], b, bs)
                bq = np.clip(np.round(b / bs), *QDTYPES["int32"])
                bn = dq_const(n.inputs[2], bq, bs, np.zeros(bs.size), 0, np.int32)
            else:
                wn = const(n.inputs[1], np.ascontiguousarray(wt))
                bn = const(n.inputs[2], g.tensors[n.inputs[2]].data)
            nodes.append(h.make_node(n.op, [n.inputs[0], wn, bn], [out], name=n.name,
                                     kernel_shape=list(wt.shape[2:]), **kw))
            act(out, a["activation"], n.name)
        elif n.op in ("Add", "Mul", "Minimum", "Maximum"):
            op = {"Minimum": "Min", "Maximum": "Max"}.get(n.op, n.op)
            nodes.append(h.make_node(op, [operand(i) for i in n.inputs], [out], name=n.name))
            act(out, a.get("activation", "none"), n.name)
        elif n.op == "Concat":
            nodes.append(h.make_node("Concat", list(n.inputs), [out], axis=[0, 2, 3, 1][a["axis"]], name=n.name))
        elif n.op == "Pad":
            pt, pl, pb, pr = a["pads"]
            inits.append(nh.from_array(np.array([0, 0, pt, pl, 0, 0, pb, pr], np.int64), n.name + "_pads"))
            nodes.append(h.make_node("Pad", [n.inputs[0], n.name + "_pads"], [out], mode=a["mode"], name=n.name))
        elif n.op in ("Relu", "Sigmoid", "Tanh"):
            nodes.append(h.make_node(n.op, [n.inputs[0]], [out], name=n.name))
        elif n.op == "LeakyRelu":
            nodes.append(h.make_node("LeakyRelu", [n.inputs[0]], [out], alpha=float(a["alpha"]), name=n.name))
        elif n.op == "PRelu":
            nodes.append(h.make_node("PRelu", [n.inputs[0], operand(n.inputs[1])], [out], name=n.name))
        elif n.op == "Clip":
            ins = [n.inputs[0], "", ""]
            if a["min"] is not None:
                ins[1] = const(n.name + "_min", np.float32(a["min"]))
            if a["max"] is not None:
                ins[2] = const(n.name + "_max", np.float32(a["max"]))
            nodes.append(h.make_node("Clip", ins, [out], name=n.name))
        elif n.op == "DepthToSpace":
            nodes.append(h.make_node("DepthToSpace", [n.inputs[0]], [out], blocksize=a["block_size"], mode="DCR",
                                     name=n.name))
        elif n.op == "Resize":
            if a["align_corners"]:
                ctm = "align_corners"
            elif a["half_pixel_centers"]:
                ctm = "half_pixel" if a["mode"] == "bilinear" else "tf_half_pixel_for_nn"
            else:
                ctm = "asymmetric"
            kw = dict(mode="linear" if a["mode"] == "bilinear" else "nearest", coordinate_transformation_mode=ctm)
            if a["mode"] == "nearest":
                kw["nearest_mode"] = "round_prefer_ceil" if a["align_corners"] else "floor"
            if a["scales"] is not None:
                sc = nh.from_array(np.array([1, 1, *a["scales"]], np.float32), n.name + "_scales")
                inits.append(sc)
                ins = [n.inputs[0], "", n.name + "_scales"]
            else:
                sz = g.tensors[out].shape
                inits.append(nh.from_array(np.array([sz[0], sz[3], sz[1], sz[2]], np.int64), n.name + "_sizes"))
                ins = [n.inputs[0], "", "", n.name + "_sizes"]
            nodes.append(h.make_node("Resize", ins, [out], name=n.name, **kw))
        else:
            raise ConfigError(f"ONNX writer: no lowering for IR op {n.op} ({n.name})")

    def vi(name):
        nb, hh, ww, c = g.tensors[name].shape
        dims = [d if d is not None else f"{name}_{k}" for d, k in zip((nb, c, hh, ww), "nchw")]
        if layout == "nhwc":
            dims = [dims[0], dims[2], dims[3], dims[1]]
        return h.make_tensor_value_info(name, onnx.TensorProto.FLOAT, dims)

    if qdq:
        nodes = _insert_activation_qdq(g, nodes, inits)
    if layout == "nhwc":  # the graph runs NCHW between a Transpose after each input and one before each output
        for name in g.inputs:
            for n in nodes:
                n.input[:] = [name + "_nchw" if t == name else t for t in n.input]
            nodes.insert(0, h.make_node("Transpose", [name], [name + "_nchw"], perm=[0, 3, 1, 2], name=name + "_to_nchw"))
        for name in g.outputs:
            for n in nodes:
                n.output[:] = [name + "_nchw" if t == name else t for t in n.output]
                n.input[:] = [name + "_nchw" if t == name else t for t in n.input]
            nodes.append(h.make_node("Transpose", [name + "_nchw"], [name], perm=[0, 2, 3, 1], name=name + "_to_nhwc"))
    graph_proto = h.make_graph(nodes, g.name, [vi(i) for i in g.inputs], [vi(o) for o in g.outputs], inits)
    model = h.make_model(graph_proto, opset_imports=[h.make_opsetid("", OPSET)], ir_version=8,
                         producer_name="edge-enhance")
    for k, v in g.metadata.items():
        if k == CARD_KEY:
            d = json.loads(v)
            d["layout"] = layout
            v = json.dumps(d, sort_keys=True)
        model.metadata_props.add(key=k, value=v)
    onnx.checker.check_model(model)
    return model


def _check_quantised(g: Graph, what: str = "int8 ONNX") -> None:
    need = list(g.inputs) + [n.outputs[0] for n in g.nodes]
    need += [n.inputs[1] for n in g.nodes if n.op in ("Conv", "ConvTranspose")]
    missing = [t for t in need if g.tensors[t].quant is None]
    if missing:
        raise ConfigError(f"{what} needs a quantised graph (quantization.quantize.quantize_model): "
                          f"{len(missing)} tensor(s) without quantisation parameters, e.g. {missing[0]}")
    other = sorted({g.tensors[t].quant.dtype for t in need} - {"int8", "uint8"})
    if other:
        raise ConfigError(f"{what} writes 8-bit tensors only; the graph has {', '.join(other)} "
                          "(16x8 layers): write those as TFLite")
    for n in g.nodes:
        wq = g.tensors[n.inputs[1]].quant if n.op in ("Conv", "ConvTranspose") else None
        if wq is not None and (wq.dtype != "int8" or np.any(wq.zero_point != 0) or wq.quantized_dimension != 0):
            raise ConfigError(f"{n.name}: {what} needs symmetric int8 weights per output channel")


def _insert_activation_qdq(g: Graph, nodes: list, inits: list) -> list:
    """QuantizeLinear -> DequantizeLinear after every quantised activation (graph inputs, node outputs).

    Consumers read the dequantised tensor; a graph output keeps its name (the producer is renamed).
    """
    from onnx import helper as h
    from onnx import numpy_helper as nh

    out = list(nodes)
    for name in list(g.inputs) + [n.outputs[0] for n in g.nodes]:
        q = g.tensors[name].quant
        # Activations as uint8 (an int8 grid's zero point + 128: the same values), ONNX Runtime's own QDQ
        # layout (U8S8): its int8 -> uint8 rewrite missed the graph input, and the first Conv ran in float.
        zero = int(q.zero_point[0]) + (128 if q.dtype == "int8" else 0)
        scale, zp = name + "_act_scale", name + "_act_zp"
        inits.append(nh.from_array(np.asarray(q.scale[0], np.float32), scale))
        inits.append(nh.from_array(np.asarray(zero, np.uint8), zp))
        prod = next((i for i, nd in enumerate(out) if name in nd.output), -1)
        if name in g.outputs:
            src, dst = name + "_float", name
            out[prod].output[list(out[prod].output).index(name)] = src
        else:
            src, dst = name, name + "_dq"
            for nd in out:
                nd.input[:] = [dst if i == name else i for i in nd.input]
        out[prod + 1:prod + 1] = [h.make_node("QuantizeLinear", [src, scale, zp], [name + "_q"], name=name + "_quantize"),
                                  h.make_node("DequantizeLinear", [name + "_q", scale, zp], [dst],
                                              name=name + "_dequantize")]
    return out


def to_onnx(graph: Graph, path, *, precision: str = "fp32", layout: str = "nchw") -> Path:
    """Write ``graph`` as ONNX atomically."""
    return write_atomic(path, to_onnx_model(copy.deepcopy(graph), precision=precision, layout=layout)
                        .SerializeToString())
