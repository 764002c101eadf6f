"""Structured pruning: shapes preserved, MAC budgets met, least-squares reconstruction helps, ONNX round trip."""
from __future__ import annotations

import numpy as np
import pytest

from tests.conversion_testkit import residual_sr_model, run_ort

from conversion import executor
from conversion.onnx_import import from_onnx
from quantization import prune as pr
from quantization.calibration import CalibSet
from quantization.errors import CalibrationError, ConfigError


def _calib(n=4, hw=(12, 10), seed=0):
    rng = np.random.default_rng(seed)
    xs = [rng.uniform(0, 1, (1, *hw, 3)).astype(np.float32) for _ in range(n)]
    return CalibSet(xs, [np.zeros((hw[0] * 2, hw[1] * 2, 3), np.uint8)] * n, "synthetic")


@pytest.fixture
def model():
    return residual_sr_model(np.random.default_rng(11), scale=2, feat=12)


def _out(g, x):
    return executor.run(g, {g.inputs[0]: x})[g.outputs[0]]


def test_prune_channels_keeps_pairs_consistent():
    rng = np.random.default_rng(0)
    w1, b1, w2 = rng.standard_normal((6, 3, 3, 4)), rng.standard_normal(6), rng.standard_normal((5, 3, 3, 6))
    keep = np.array([0, 2, 5])
    a, b, c = pr.prune_channels(w1, b1, w2, keep)
    assert a.shape == (3, 3, 3, 4) and b.shape == (3,) and c.shape == (5, 3, 3, 3)
    np.testing.assert_array_equal(c[..., 1], w2[..., 2])


def test_least_squares_recovers_an_exact_linear_map():
    rng = np.random.default_rng(1)
    x = rng.standard_normal((500, 7))
    w = rng.standard_normal((3, 7))
    y = x @ w.T + np.array([0.5, -1.0, 2.0])
    wf, bf = pr.least_squares(x, y, ridge=0.0)
    np.testing.assert_allclose(wf, w, atol=1e-8)
    np.testing.assert_allclose(bf, [0.5, -1.0, 2.0], atol=1e-8)


@pytest.mark.parametrize("target,multiple", [(0.7, 1), (0.5, 2), (0.4, 4)])
def test_pruning_meets_the_budget_and_preserves_shapes(model, target, multiple):
    g = from_onnx(model)
    c = _calib()
    res = pr.prune_graph(g, c, target, multiple=multiple, evaluate=False)
    p = res.graph
    assert res.report.macs_after <= target * res.report.macs_before + 1e-6
    assert pr.total_macs(p) == pytest.approx(res.report.macs_after)
    for a, b in pr.conv_pairs(p):
        assert p.tensors[a.inputs[1]].data.shape[0] == p.tensors[b.inputs[1]].data.shape[3]
        assert p.tensors[a.inputs[2]].data.shape == (p.tensors[a.inputs[1]].data.shape[0],)
    for k, (before, after) in res.report.widths.items():
        assert (before - after) % multiple == 0 and after >= 2
    for t in p.tensors.values():
        if t.is_const:
            assert t.shape == t.data.shape, t.name
    x = np.random.default_rng(2).uniform(0, 1, (1, 9, 7, 3)).astype(np.float32)
    env = executor.run(p, {p.inputs[0]: x}, keep_all=True)
    for name, v in env.items():  # declared activation shapes (what writers emit) match the real ones
        assert all(d is None or d == e for d, e in zip(p.tensors[name].shape, v.shape)), name
    assert _out(p, x).shape == _out(g, x).shape == (1, 18, 14, 3)
    assert p.tensors[p.inputs[0]].shape == g.tensors[g.inputs[0]].shape


@pytest.mark.parametrize("criterion", ["l1", "contribution"])
def test_least_squares_reconstruction_beats_plain_removal(model, criterion):
    g = from_onnx(model)
    c = _calib()
    fit = pr.prune_graph(g, c, 0.5, criterion=criterion, multiple=1, evaluate=False).graph
    plain = pr.prune_graph(g, c, 0.5, criterion=criterion, multiple=1, reconstruct=False, evaluate=False).graph
    held_out = _calib(3, (11, 13), seed=9).inputs  # not the data the fit saw
    err = lambda h: sum(float(np.mean((_out(h, x) - _out(g, x)) ** 2)) for x in held_out)
    assert err(fit) < err(plain)
    # And the last refitted layer's own pre-activation error, which least squares minimises directly
    # (its outputs are not pruned, so it compares with the original's one to one):
    a, b = pr.conv_pairs(fit)[-1]
    x = c.inputs[0]
    ref = pr._pre_activation(g, b, executor.run(g, {g.inputs[0]: x}, keep_all=True)[b.inputs[0]])
    e = lambda h: float(np.mean((pr._pre_activation(h, b, executor.run(h, {h.inputs[0]: x}, keep_all=True)[b.inputs[0]]) - ref) ** 2))
    assert e(fit) < e(plain)


def test_plan_widths_does_not_overshoot_the_target():
    # conv 3 -> a -> b -> 3: a step on a removes MACs of two convs; a 0.6 target was met at 0.44
    rng = np.random.default_rng(0)
    imp = {"a": rng.uniform(0.5, 1.5, 16), "b": rng.uniform(0.5, 1.5, 16)}
    macs = lambda w: 3 * w["a"] + w["a"] * w["b"] + w["b"] * 3  # noqa: E731
    target = 0.6 * macs({"a": 16, "b": 16})
    plan = pr.plan_widths({"a": 16, "b": 16}, imp, macs, target, multiple=4)
    assert macs(plan) <= target
    assert all(plan[k] == 16 or macs({**plan, k: plan[k] + 4}) > target for k in plan)  # nothing more fits


def test_plan_widths_spends_the_budget_on_the_least_important_channels():
    imp = {"a": np.array([5.0, 4, 3, 0.01]), "b": np.array([1.0, 1, 1, 1])}
    plan = pr.plan_widths({"a": 4, "b": 4}, imp, lambda w: w["a"] + w["b"], 7)
    assert plan == {"a": 3, "b": 4}  # a's dead channel goes first
    with pytest.raises(ConfigError, match="minimum width"):
        pr.plan_widths({"a": 4, "b": 4}, imp, lambda w: w["a"] + w["b"], 1)


def test_pruned_onnx_round_trip_matches_the_ir(model, tmp_path):
    pytest.importorskip("onnxruntime")
    import onnx

    src = tmp_path / "m.onnx"
    onnx.save(model, str(src))
    g = from_onnx(src)
    p = pr.prune_graph(g, _calib(), 0.6, multiple=1, evaluate=False).graph
    out = pr.write_pruned_onnx(src, p, tmp_path / "p.onnx")
    assert out.stat().st_size < src.stat().st_size
    x = np.random.default_rng(3).uniform(0, 1, (1, 3, 8, 6)).astype(np.float32)
    y = run_ort(onnx.load(str(out)), x)
    np.testing.assert_allclose(y, _out(p, x.transpose(0, 2, 3, 1)), atol=1e-5)


@pytest.mark.parametrize("reconstruct", [True, False])
def test_the_report_says_whether_it_reconstructed_and_the_card_gives_the_new_widths(model, tmp_path, reconstruct):
    """--no-reconstruct said 'with LS reconstruction'; the pruned card kept the source's '12 ch'."""
    import json

    import onnx

    from edge_enhance.card import CARD_KEY

    card = {"name": "m", "task": "sr", "scale": 2, "receptive_field": 7,
            "extra": {"architecture": "3 x conv3x3 (12 ch), ReLU, DepthToSpace"}}
    model.metadata_props.add(key=CARD_KEY, value=json.dumps(card))
    src = tmp_path / "m.onnx"
    onnx.save(model, str(src))
    res = pr.prune_graph(from_onnx(src), _calib(), 0.6, multiple=1, reconstruct=reconstruct)
    said = "\n".join(res.report.lines())
    assert ("with LS reconstruction" in said) == reconstruct and ("no LS reconstruction" in said) != reconstruct
    out = pr.write_pruned_onnx(src, res.graph, tmp_path / "p.onnx")
    written = json.loads({p.key: p.value for p in onnx.load(str(out)).metadata_props}[CARD_KEY])
    widths = "/".join(str(b) for _, b in res.report.widths.values())
    assert widths != "12/12"
    assert written["extra"]["architecture"] == f"3 x conv3x3 ({widths} ch, pruned from 12), ReLU, DepthToSpace"


def test_bad_pruning_requests(model):
    g = from_onnx(model)
    with pytest.raises(ConfigError):
        pr.prune_graph(g, _calib(), 1.5)
    with pytest.raises(ConfigError):
        pr.prune_graph(g, _calib(), 0.7, multiple=0)
    with pytest.raises(CalibrationError):
        pr.prune_graph(g, CalibSet([], [], "empty"), 0.7)
    with pytest.raises(ConfigError, match="criterion"):
        pr.channel_importance(g, _calib(), "random")


def test_magnitude_sparsity_report_and_sparsify(model):
    g = from_onnx(model)
    rows = pr.magnitude_sparsity(g, levels=(0.5, 0.9), bits=16)
    n = sum(g.tensors[nd.inputs[1]].data.size for nd in g.nodes if nd.op == "Conv")
    (lv, dense, sparse), (_, _, sparse90) = rows
    assert dense == n * 2 and sparse < dense and sparse90 < sparse
    assert sparse == pytest.approx(n / 8 + (n - sum(int(0.5 * g.tensors[nd.inputs[1]].data.size)
                                                   for nd in g.nodes if nd.op == "Conv")) * 2)
    s = pr.sparsify(g, 0.5)
    for nd in s.nodes:
        if nd.op == "Conv":
            w = s.tensors[nd.inputs[1]].data
            assert np.mean(w == 0) >= 0.5


def test_a_net_with_nothing_to_prune_is_named_with_the_reason(tmp_path, capsys):
    """A PReLU between the convs: the message named the ONNX graph ('main_graph'), not the file, nor why."""
    import onnx
    from onnx import helper as oh, numpy_helper as nh

    from edge_enhance.cli import main

    rng = np.random.default_rng(0)
    inits = {"w1": rng.normal(0, 0.1, (8, 3, 3, 3)), "w2": rng.normal(0, 0.1, (3, 8, 3, 3)), "a": np.full((8, 1, 1), 0.2)}
    g = oh.make_graph([oh.make_node("Conv", ["x", "w1"], ["c"], pads=[1] * 4), oh.make_node("PRelu", ["c", "a"], ["p"]),
                       oh.make_node("Conv", ["p", "w2"], ["y"], pads=[1] * 4)], "main_graph",
                      [oh.make_tensor_value_info("x", 1, [1, 3, "H", "W"])], [oh.make_tensor_value_info("y", 1, [1, 3, "H", "W"])],
                      [nh.from_array(v.astype(np.float32), k) for k, v in inits.items()])
    src = tmp_path / "p.onnx"
    onnx.save(oh.make_model(g, opset_imports=[oh.make_opsetid("", 13)]), str(src))
    assert main(["prune", str(src), "--target-macs", "0.7", "--card-task", "denoise", "-q"]) == 2
    err = capsys.readouterr().err
    assert f"{src}: no Conv -> ReLU -> Conv chain to prune" in err and "PReLU" in err


def test_what_the_importer_folded_is_written_once(tmp_path):
    """A bias-free conv, a BatchNorm and a CRD PixelShuffle (PyTorch's) are folded into the IR's convs
    on import; the pruned file must compute the pruned IR, not apply the BN or the CRD order twice."""
    pytest.importorskip("onnxruntime")
    import onnx

    from tests.conversion_testkit import h, make_model, rand

    rng = np.random.default_rng(5)
    m = make_model([
        h.make_node("Conv", ["x", "w1"], ["c1"], pads=[1, 1, 1, 1], name="c1"),
        h.make_node("BatchNormalization", ["c1", "g", "be", "mu", "var"], ["bn"], name="bn"),
        h.make_node("Relu", ["bn"], ["r"], name="relu"),
        h.make_node("Conv", ["r", "w2", "b2"], ["c2"], pads=[1, 1, 1, 1], name="c2"),
        h.make_node("DepthToSpace", ["c2"], ["y"], blocksize=2, mode="CRD", name="ps"),
    ], {"w1": rand(rng, 16, 3, 3, 3), "g": rng.uniform(0.5, 2, 16).astype(np.float32),
        "be": rand(rng, 16), "mu": rand(rng, 16), "var": rng.uniform(0.5, 2, 16).astype(np.float32),
        "w2": rand(rng, 12, 16, 3, 3), "b2": rand(rng, 12)}, [1, 3, "h", "w"])
    src = tmp_path / "m.onnx"
    onnx.save(m, str(src))
    x = rng.uniform(0, 1, (1, 3, 8, 6)).astype(np.float32)
    for target in (1.0, 0.6):
        p = pr.prune_graph(from_onnx(src), _calib(), target, multiple=1, reconstruct=False, evaluate=False).graph
        out = pr.write_pruned_onnx(src, p, tmp_path / f"p{target}.onnx")
        y = run_ort(onnx.load(str(out)), x)
        np.testing.assert_allclose(y, _out(p, x.transpose(0, 2, 3, 1)), atol=1e-4)
        if target == 1.0:  # nothing removed: the source's own output
            np.testing.assert_allclose(y, run_ort(m, x), atol=1e-4)
