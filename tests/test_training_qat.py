"""Quantisation-aware fine-tuning: fake quantisation is the quantiser's int8 arithmetic; the CLI."""
import dataclasses
import numpy as np
import pytest

torch = pytest.importorskip("torch", reason="training needs the train extra (torch)")
onnx = pytest.importorskip("onnx", reason="export needs onnx")
ort = pytest.importorskip("onnxruntime", reason="export checks need onnxruntime")
from PIL import Image  # noqa: E402

from tests.conversion_testkit import calib_dir  # noqa: E402

from conversion import executor  # noqa: E402
from conversion.ir import QuantParams  # noqa: E402
from conversion.onnx_import import from_onnx  # noqa: E402
from edge_enhance.errors import ConfigError  # noqa: E402
from quantization.quantize import quantize_weights  # noqa: E402
from training import export as ex  # noqa: E402
from training import qat  # noqa: E402
from training.model import ResidualNet  # noqa: E402
from training.recipes import RECIPES, Recipe  # noqa: E402
from training.train import export_model, train  # noqa: E402


def _images(n=2, size=(40, 44), seed=0):
    rng = np.random.default_rng(seed)
    return [rng.integers(0, 256, (*size, 3)).astype(np.uint8) for _ in range(n)]


def _recipe(scale=2, name="t-qat"):
    return Recipe(name, "sr" if scale > 1 else "denoise", scale, channels=4, convs=3, patch=8, batch=2)


def _steps_apart(a, b):
    d = np.rint(np.asarray(a, np.float64) * 255) - np.rint(np.asarray(b, np.float64) * 255)
    return float(np.mean(d != 0)), float(np.abs(d).max())


def test_fake_quant_is_the_ir_rounding():
    rng = np.random.default_rng(0)
    x = np.concatenate([rng.normal(0, 1, 500), np.arange(-6, 7) * 0.25]).astype(np.float32)  # ties included
    q = QuantParams([0.5], [3])
    got = qat.fake_quant(torch.from_numpy(x), 0.5, 3).numpy()
    np.testing.assert_array_equal(got, q.fake_quantize(x))
    w = rng.normal(0, 0.1, (5, 4, 3, 3)).astype(np.float32)
    w[2] = 0  # a dead channel keeps a tiny scale, as the quantiser's
    want = quantize_weights(w.transpose(0, 2, 3, 1)).fake_quantize(w.transpose(0, 2, 3, 1)).transpose(0, 3, 1, 2)
    np.testing.assert_allclose(qat.fake_quant_weight(torch.from_numpy(w)).numpy(), want, atol=1e-8, rtol=1e-6)


def test_gradients_pass_straight_through_inside_the_range_only():
    x = torch.tensor([0.1, 0.4, 5.0], requires_grad=True)
    qat.fake_quant(x, 0.25, 0, -4, 4).sum().backward()
    assert x.grad.tolist() == [1.0, 1.0, 0.0]


@pytest.mark.parametrize("scale, down, dilations", [(1, 1, None), (2, 1, None), (3, 1, None), (1, 2, None),
                                                     (1, 1, (2, 3, 1))])
def test_fake_quant_forward_equals_int8_simulation(scale, down, dilations):
    r = _recipe(scale)
    torch.manual_seed(scale)
    net = ResidualNet(scale, 4, 3, down=down, dilations=dilations)
    q = qat.QATNet(net)
    qat.finetune(r, q, _images(), steps=3, lr=1e-3)  # EMA ranges from the batches
    assert not torch.isnan(q.lo).any()
    x = torch.rand(1, 3, 14, 12, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        fq, fp = q(x).numpy().transpose(0, 2, 3, 1), net(x).numpy().transpose(0, 2, 3, 1)
    # The same weights exported, quantised by quantization.quantize with the QAT ranges, simulated.
    g = qat.int8_graph(q, from_onnx(ex.build_onnx(net)))
    sim = executor.run(g, {g.inputs[0]: x.numpy().transpose(0, 2, 3, 1)}, simulate_quant=True)[g.outputs[0]]
    share, steps = _steps_apart(fq, sim)
    assert share <= 0.005 and steps <= 1  # float32 torch vs float64 numpy: a rare rounding tie
    assert _steps_apart(fp, sim)[0] > 0.05  # the float forward is not what int8 computes


def test_ranges_from_our_calibration_are_fixed():
    from quantization.calibration import CalibSet

    r = _recipe()
    net = ResidualNet(2, 4, 3)
    xs = [np.random.default_rng(i).random((1, 12, 12, 3), dtype=np.float32) for i in range(3)]
    ranges = qat.calibrated_ranges(net, CalibSet(xs, [None] * 3, "test"), method="minmax")
    assert len(ranges) == 3 and all(lo <= hi for lo, hi in ranges)
    q = qat.QATNet(net)
    q.set_ranges(ranges)
    qat.finetune(r, q, _images(), steps=2, lr=1e-3)
    np.testing.assert_allclose(q.lo.numpy(), [lo for lo, _ in ranges], rtol=1e-6)


@pytest.mark.parametrize("scale", [1, 2])
def test_equalize_net_keeps_the_function_and_evens_channel_peaks(scale):
    from quantization.calibration import CalibSet

    torch.manual_seed(0)
    net = ResidualNet(scale, 6, 3)
    with torch.no_grad():
        for prm in net.parameters():
            prm.add_(0.3 * torch.randn_like(prm))
        net.layers[0].k3.weight[0] *= 20  # one loud channel out of the first conv
    xs = [np.random.default_rng(i).random((1, 12, 12, 3), dtype=np.float32) for i in range(3)]
    x = torch.from_numpy(np.concatenate(xs)).permute(0, 3, 1, 2)

    def first_peaks():
        w, b = net.layers[0].fused()
        return torch.relu(torch.nn.functional.conv2d(x, w, b, padding=1)).amax(dim=(0, 2, 3))

    with torch.no_grad():
        before, p0 = net(x), first_peaks()
        qat.equalize_net(net, CalibSet(xs, [None] * 3, "test"))
        after, p1 = net(x), first_peaks()
    np.testing.assert_allclose(after.numpy(), before.numpy(), atol=1e-4)
    live0, live1 = p0[p0 > 0], p1[p1 > 0]
    assert float(live1.min() / live1.max()) > 2 * float(live0.min() / live0.max())


def test_unset_ranges_are_refused():
    with pytest.raises(ConfigError, match="ranges are not set"):
        qat.QATNet(ResidualNet(2, 4, 3)).eval()(torch.rand(1, 3, 8, 8))


CMD = "python -m training.train t-qat --out DIR --steps 2 --l2-steps 0"  # the tiny run's command line


@pytest.fixture
def tiny(tmp_path, monkeypatch):
    """A tiny registered recipe, its data folder, a checkpoint and an exported ONNX of it."""
    r = _recipe()
    monkeypatch.setitem(RECIPES, r.name, r)
    root = tmp_path / "data"
    for sub in ("train/T91", "train/BSD200"):
        (root / sub).mkdir(parents=True)
        for i, im in enumerate(_images(2, (36, 40), seed=len(sub))):
            Image.fromarray(im).save(root / sub / f"{i}.png")
    net, state = train(r, ckpt_dir=tmp_path / "ck", data_root=root, steps=2, images=_images(), command=lambda st: CMD)
    export_model(r, net, state, tmp_path / "src", data_root=root, evaluate_sets=False, command=CMD)
    return {"root": root, "ckpt": tmp_path / "ck" / "last.pt", "onnx": tmp_path / "src" / f"{r.name}.onnx"}


@pytest.mark.parametrize("source,ranges,extra,want", [
    ("ckpt", "ema", [], "ema ranges"),
    ("onnx", "ema", ["--loss", "l2"], "ema ranges"),
    ("onnx", "calib", [], "calib ranges (percentile)"),
    ("onnx", "calib", ["--method", "mse", "--loss", "l2"], "calib ranges (mse)"),
    ("onnx", "calib", ["--method", "mse", "--act-eq", "--lr", "3e-05"], "calib ranges (mse)"),
])
def test_cli_fine_tunes_and_exports_fp32_onnx(tmp_path, tiny, source, ranges, extra, want):
    out = tmp_path / "out"
    argv = ["t-qat", "--from", str(tiny[source]), "--steps", "3", "--out", str(out), "--data", str(tiny["root"]),
            "--no-eval", "--ranges", ranges] + extra
    if ranges == "calib":
        argv += ["--calib", str(calib_dir(tmp_path))]
    assert qat.main(argv) == 0
    path = out / "t-qat.onnx"
    onnx.checker.check_model(onnx.load(str(path)))
    card = ex.read_card(path)
    assert card.extra["qat"]["steps"] == 3 and card.extra["qat"]["activations"].endswith(want)
    loss = "l2" if "l2" in extra else "l1"
    q = card.extra["qat"]
    assert q["loss"] == loss and f"--loss {loss}" in q["command"] and q["command"].startswith("python -m training.qat")
    assert q["act_eq"] == ("--act-eq" in extra) == ("--act-eq" in q["command"])
    assert ("--lr 3e-05" in q["command"]) == ("--lr" in extra) == (q["lr"] == 3e-5)
    assert q["seconds"] >= 0 and q["device"].startswith("cpu")  # 3 tiny steps may round to 0.0 s
    # The source's own training record is kept, not replaced by the fine-tune's.
    assert card.extra["steps"] == 2 and card.extra["recipe"] == CMD  # from the checkpoint too, not a default
    if source == "onnx":
        src = ex.read_card(tiny["onnx"]).extra
        keys = ("device", "train_seconds")
        assert {k: card.extra[k] for k in keys} == {k: src[k] for k in keys}
    x = np.random.default_rng(0).random((1, 3, 9, 7), dtype=np.float32)
    y = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"]).run(None, {"input": x})[0]
    src = ort.InferenceSession(str(tiny["onnx"]), providers=["CPUExecutionProvider"]).run(None, {"input": x})[0]
    assert y.shape == (1, 3, 18, 14) and not np.array_equal(y, src)  # fine-tuned, still fp32


def test_cli_refuses_bad_sources_and_writes_nothing(tmp_path, tiny, monkeypatch):
    out = tmp_path / "out"
    bad = tmp_path / "bad.pt"
    bad.write_bytes(b"not a checkpoint")
    other = _recipe(3, "t-qat3")
    monkeypatch.setitem(RECIPES, other.name, other)
    cases = [("t-qat", tmp_path / "missing.onnx", "does not exist"),
             ("t-qat", bad, "bad.pt: not a training checkpoint"),
             ("t-qat3", tiny["ckpt"], "checkpoint of recipe 't-qat', not 't-qat3'"),
             ("t-qat3", tiny["onnx"], "are not recipe t-qat3's")]
    for name, src, msg in cases:
        with pytest.raises(ConfigError, match=msg):
            qat.main([name, "--from", str(src), "--steps", "1", "--out", str(out), "--data", str(tiny["root"]),
                      "--no-eval"])
    with pytest.raises(ConfigError, match="--calib applies to --ranges calib or --act-eq only"):
        qat.main(["t-qat", "--from", str(tiny["onnx"]), "--steps", "1", "--out", str(out), "--calib", str(tmp_path)])
    with pytest.raises(ConfigError, match="--method applies to --ranges calib only"):
        qat.main(["t-qat", "--from", str(tiny["onnx"]), "--steps", "1", "--out", str(out), "--method", "mse"])
    assert not out.exists()


def test_bundle_quantises_a_qat_fine_tune_beside_the_shipped_onnx(tmp_path, tiny, monkeypatch):
    from training import bundle as bd

    models = tmp_path / "models"
    models.mkdir()
    shipped = models / "t-qat.onnx"
    shipped.write_bytes(tiny["onnx"].read_bytes())
    data = tmp_path / "eval"
    (data / "tiny").mkdir(parents=True)
    for i, im in enumerate(_images(2, (24, 20), seed=5)):
        Image.fromarray(im).save(data / "tiny" / f"{i}.png")
    monkeypatch.setattr(bd, "MODELS_DIR", models)
    monkeypatch.setattr(bd, "bar_plan", lambda task: [("tiny", "tiny", {})])
    with pytest.raises(ConfigError, match="t-qat.onnx: not a training.qat fine-tune of t-qat.onnx"):
        bd.bundle("t-qat", data, weights=shipped, rounding="nearest")
    assert not (models / "t-qat.int8.tflite").exists()
    out = tmp_path / "qat"
    assert qat.main(["t-qat", "--from", str(shipped), "--steps", "2", "--out", str(out), "--data", str(tiny["root"]),
                     "--no-eval"]) == 0
    # A fine-tune whose card lost the source's training record (an older training.qat wrote its own).
    tuned = out / "t-qat.onnx"
    m, c = onnx.load(str(tuned)), ex.read_card(tuned)
    c.extra.update(device="elsewhere", recipe="python -m training.qat ...", architecture="an older text")
    ex.set_card(m, c)
    onnx.save(m, str(tuned))
    other = tmp_path / "other.onnx"  # a QAT file of another network under the same name: refused
    m2 = onnx.load(str(tuned))
    ex.set_card(m2, dataclasses.replace(c, params=(c.params or 0) + 7))
    onnx.save(m2, str(other))
    with pytest.raises(ConfigError, match="other.onnx: a fine-tune of another network than t-qat.onnx"):
        bd.bundle("t-qat", data, weights=other, rounding="nearest")
    before = shipped.read_bytes()
    rep = bd.bundle("t-qat", data, weights=out / "t-qat.onnx", rounding="nearest")
    assert shipped.read_bytes() == before  # the fp32 file that ships is untouched
    from edge_enhance.backends import read_card

    card = read_card(models / "t-qat.int8.tflite")
    assert card.extra["qat"]["steps"] == 2 and card.extra["quantization"]["rounding"] == "nearest"
    src = ex.read_card(shipped).extra
    assert card.extra["psnr_fp32"] == src.get("psnr") and set(rep["int8"]) == {"tiny"}
    assert card.extra["ssim_fp32"] == src["ssim"] and set(card.extra["ssim"]) == set(card.extra["input_psnr"]) == {"tiny"}
    assert (card.extra["device"], card.extra["recipe"]) == (src["device"], src["recipe"])  # how it was trained
    assert card.extra["architecture"] == src["architecture"]  # as the shipped card says it, not the fine-tune's


def test_cli_takes_a_net_grown_past_its_recipe(tmp_path, tiny):
    r = RECIPES["t-qat"]
    deep = dataclasses.replace(r, convs=r.convs + 1)
    net, state = train(deep, ckpt_dir=tmp_path / "ck-deep", data_root=tiny["root"], steps=1, images=_images())
    export_model(deep, net, state, tmp_path / "deep", data_root=tiny["root"], evaluate_sets=False)
    src = tmp_path / "deep" / "t-qat.onnx"
    argv = ["t-qat", "--from", str(src), "--steps", "1", "--out", str(tmp_path / "out"), "--data", str(tiny["root"]),
            "--no-eval"]
    with pytest.raises(ConfigError, match=rf"t-qat\.onnx: conv weights .* are not recipe t-qat's .*"
                                          rf"the file has {deep.convs} convs: pass --convs {deep.convs}$"):
        qat.main(argv)
    assert qat.main(argv + ["--convs", str(deep.convs)]) == 0
    q = ex.read_card(tmp_path / "out" / "t-qat.onnx").extra["qat"]
    assert q["command"].startswith(f"python -m training.qat t-qat --convs {deep.convs} --from")
    # A dilated net: the file's dilations are checked against the recipe's (they change the forward).
    dil = dataclasses.replace(r, dilations=(1, 2, 1))
    net, state = train(dil, ckpt_dir=tmp_path / "ck-dil", data_root=tiny["root"], steps=1, images=_images())
    export_model(dil, net, state, tmp_path / "dil", data_root=tiny["root"], evaluate_sets=False)
    argv = argv[:2] + [str(tmp_path / "dil" / "t-qat.onnx")] + argv[3:]
    with pytest.raises(ConfigError, match="not a t-qat network as training.export writes it"):
        qat.main(argv)
    assert qat.main(argv + ["--dilations", "1,2,1"]) == 0
    q = ex.read_card(tmp_path / "out" / "t-qat.onnx").extra["qat"]
    assert q["command"].startswith("python -m training.qat t-qat --dilations 1,2,1 --from")
