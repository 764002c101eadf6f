"""ONNX export built directly with onnx.helper from the collapsed weights (opset 17).

Graph: Conv(3x3, pad d, dilation d; d = 1 but in dilated nets) [+ Relu] per layer; for scale s > 1,
Concat of s*s copies of the input, Add, DepthToSpace (mode DCR, matching model.depth_to_space_dcr),
Clip(0, 1); for s = 1, Add + Clip.
Half-resolution models (down = 2): the first Conv is 4x4 stride 2 pad 1 and the residual goes
through DepthToSpace(2) before Add + Clip; H and W must be even.
Input "input" [1, 3, H, W] float32 RGB in [0, 1]; output "output" [1, 3, H*s, W*s].
"""
from __future__ import annotations

import json
import os
import tempfile
from pathlib import Path

import numpy as np
import onnx
import torch
from onnx import TensorProto, helper, numpy_helper

from edge_enhance.card import CARD_KEY, ModelCard

from .model import ResidualNet

OPSET = 17


def build_onnx(model: ResidualNet, card: ModelCard | None = None) -> onnx.ModelProto:
    s = model.scale
    inits, nodes = [], []
    h = "input"
    convs = model.collapsed()
    for i, ((w, b), d) in enumerate(zip(convs, model.dilations)):
        wn, bn, out = f"conv{i}.weight", f"conv{i}.bias", f"conv{i}"
        inits.append(numpy_helper.from_array(w.detach().cpu().numpy().astype(np.float32), wn))
        inits.append(numpy_helper.from_array(b.detach().cpu().numpy().astype(np.float32), bn))
        k = int(w.shape[-1])
        st = 2 if k == 4 else 1
        nodes.append(helper.make_node("Conv", [h, wn, bn], [out], name=out, kernel_shape=[k, k],
                                      pads=[d] * 4, strides=[st, st], dilations=[d, d], group=1))
        h = out
        if i < len(convs) - 1:
            nodes.append(helper.make_node("Relu", [h], [f"relu{i}"], name=f"relu{i}"))
            h = f"relu{i}"
    if model.down == 2:
        nodes.append(helper.make_node("DepthToSpace", [h], ["residual"], name="depth_to_space",
                                      blocksize=2, mode="DCR"))
        nodes.append(helper.make_node("Add", ["input", "residual"], ["sum"], name="add"))
        h = "sum"
    elif s > 1:
        nodes.append(helper.make_node("Concat", ["input"] * (s * s), ["base"], name="base", axis=1))
        nodes.append(helper.make_node("Add", ["base", h], ["sum"], name="add"))
        nodes.append(helper.make_node("DepthToSpace", ["sum"], ["upsampled"], name="depth_to_space",
                                      blocksize=s, mode="DCR"))
        h = "upsampled"
    else:
        nodes.append(helper.make_node("Add", ["input", h], ["sum"], name="add"))
        h = "sum"
    inits.append(numpy_helper.from_array(np.array(0.0, np.float32), "clip_min"))
    inits.append(numpy_helper.from_array(np.array(1.0, np.float32), "clip_max"))
    nodes.append(helper.make_node("Clip", [h, "clip_min", "clip_max"], ["output"], name="clip"))
    out_h, out_w = ("H", "W") if s == 1 else (f"H*{s}", f"W*{s}")
    graph = helper.make_graph(
        nodes, card.name if card else "edge_enhance",
        [helper.make_tensor_value_info("input", TensorProto.FLOAT, [1, 3, "H", "W"])],
        [helper.make_tensor_value_info("output", TensorProto.FLOAT, [1, 3, out_h, out_w])],
        initializer=inits,
    )
    m = helper.make_model(graph, opset_imports=[helper.make_opsetid("", OPSET)],
                          producer_name="edge-enhance training")
    m.ir_version = 8  # readable by onnxruntime >= 1.14
    if card is not None:
        set_card(m, card)
    onnx.checker.check_model(m)
    return m


def set_card(m: onnx.ModelProto, card: ModelCard) -> None:
    for p in list(m.metadata_props):
        if p.key == CARD_KEY:
            m.metadata_props.remove(p)
    helper.set_model_props(m, {CARD_KEY: card.to_json()})


def ort_session(m: onnx.ModelProto, threads: int = 2):
    import onnxruntime as ort

    so = ort.SessionOptions()
    so.intra_op_num_threads = threads
    so.inter_op_num_threads = 1
    return ort.InferenceSession(m.SerializeToString(), so, providers=["CPUExecutionProvider"])


def aligned(fn, align: int, scale: int = 1):
    """``fn`` on HxW reflect-padded at the bottom / right to multiples of ``align``, output cropped."""
    if align == 1:
        return fn

    def padded(rgb: np.ndarray) -> np.ndarray:
        h, w = rgb.shape[:2]
        ph, pw = -h % align, -w % align
        return fn(np.pad(rgb, ((0, ph), (0, pw), (0, 0)), mode="reflect"))[: h * scale, : w * scale]
    return padded


def ort_fn(session, align: int = 1, scale: int = 1):
    """RGB uint8 HxWx3 -> RGB uint8 through an ONNX session (the evaluation's model function)."""
    def fn(rgb: np.ndarray) -> np.ndarray:
        x = (rgb.astype(np.float32) / 255.0).transpose(2, 0, 1)[None]
        y = session.run(None, {"input": x})[0][0].transpose(1, 2, 0)
        return np.clip(np.round(y * 255.0), 0, 255).astype(np.uint8)
    return aligned(fn, align, scale)


def max_abs_error(model: ResidualNet, m: onnx.ModelProto, size=(1, 3, 24, 18), seed: int = 0) -> float:
    """Largest |torch multi-branch forward - onnxruntime| on a random input."""
    x = torch.rand(size, generator=torch.Generator().manual_seed(seed))
    with torch.no_grad():
        ref = model.eval()(x).numpy()
    got = ort_session(m).run(None, {"input": x.numpy()})[0]
    return float(np.abs(ref - got).max())


def write_atomic(m: onnx.ModelProto, path: Path) -> Path:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=path.name + ".", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(m.SerializeToString())
        os.chmod(tmp, 0o644)  # mkstemp makes 0600; a model file is meant to be shared
        os.replace(tmp, path)
    except BaseException:
        os.unlink(tmp)
        raise
    return path


def read_card(path) -> ModelCard:
    m = onnx.load(str(path), load_external_data=False)
    props = {p.key: p.value for p in m.metadata_props}
    return ModelCard.from_json(props[CARD_KEY], source=str(path))


def card_json_pretty(card: ModelCard) -> str:
    return json.dumps(card.to_dict(), indent=2, sort_keys=True)
