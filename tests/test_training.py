"""Training recipes: tiny runs, re-parameterisation, ONNX export equal to torch, card round trip."""
import dataclasses
import os
import numpy as np
import pytest

torch = pytest.importorskip("torch", reason="training needs the train extra (torch)")
onnx = pytest.importorskip("onnx", reason="export needs onnx")
ort = pytest.importorskip("onnxruntime", reason="export checks need onnxruntime")
from PIL import Image  # noqa: E402

from edge_enhance.card import CARD_KEY, ModelCard  # noqa: E402
from edge_enhance.errors import ConfigError, ImageInputError  # noqa: E402
from training import export as ex  # noqa: E402
from training.data import PatchSampler, batches  # noqa: E402
from training.model import ResidualNet, depth_to_space_dcr  # noqa: E402
from training.recipes import RECIPES, Recipe, Stage, get  # noqa: E402
from training.train import build_model, export_model, train  # noqa: E402

CONVERTER_OPS = {"Conv", "Relu", "Concat", "Add", "DepthToSpace", "Clip"}


def _images(n=3, size=(40, 44), seed=0):
    rng = np.random.default_rng(seed)
    return [rng.integers(0, 256, (*size, 3)).astype(np.uint8) for _ in range(n)]


def _perturbed(model: ResidualNet, seed=0) -> ResidualNet:
    # Every branch non-trivial so a wrong collapse cannot hide behind near-zero weights.
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in model.parameters():
            p.copy_(torch.randn(p.shape, generator=g) * 0.2)
    return model.eval()


@pytest.fixture
def data_root(tmp_path):
    """A stand-in for ../shared/data with a two-image eval/Set5, so Set5 logging runs in tests."""
    d = tmp_path / "data" / "eval" / "Set5"
    d.mkdir(parents=True)
    for i, im in enumerate(_images(2, (24, 28), seed=1)):
        Image.fromarray(im).save(d / f"{i}.png")
    return tmp_path / "data"


@pytest.mark.parametrize("s", [2, 3])
def test_depth_to_space_dcr_matches_onnx(s):
    x = np.random.default_rng(0).random((1, 3 * s * s, 4, 5), dtype=np.float32)
    node = onnx.helper.make_node("DepthToSpace", ["x"], ["y"], blocksize=s, mode="DCR")
    g = onnx.helper.make_graph([node], "d2s", [onnx.helper.make_tensor_value_info("x", 1, x.shape)],
                               [onnx.helper.make_tensor_value_info("y", 1, None)])
    m = onnx.helper.make_model(g, opset_imports=[onnx.helper.make_opsetid("", 17)])
    m.ir_version = 8
    want = ort.InferenceSession(m.SerializeToString(), providers=["CPUExecutionProvider"]).run(None, {"x": x})[0]
    np.testing.assert_array_equal(depth_to_space_dcr(torch.from_numpy(x), s).numpy(), want)


@pytest.mark.parametrize("scale, channels, convs", [(1, 6, 3), (2, 5, 4), (3, 4, 2), (4, 4, 3)])
def test_reparam_collapse_equals_multi_branch_forward(scale, channels, convs):
    m = _perturbed(ResidualNet(scale, channels, convs))
    x = torch.rand(1, 3, 9, 11, generator=torch.Generator().manual_seed(1)) * 0.2 + 0.4
    with torch.no_grad():
        a, b = m(x), m.forward_collapsed(x)
    assert a.shape == (1, 3, 9 * scale, 11 * scale)
    torch.testing.assert_close(a, b, atol=1e-5, rtol=0)
    assert m.receptive_field == 2 * convs + 1
    assert m.deploy_params() == sum(w.numel() + o.numel() for w, o in m.collapsed())


def test_half_resolution_net_collapses_and_its_receptive_field_is_measured():
    m = _perturbed(ResidualNet(1, 6, 4, down=2))
    assert (m.align, m.receptive_field) == (2, 17)
    assert m.macs_per_pixel() * 4 == sum(w.numel() for w, _ in m.collapsed())
    x = torch.rand(1, 3, 40, 34, generator=torch.Generator().manual_seed(1)) * 0.2 + 0.4
    with torch.no_grad():
        y = m(x)
        torch.testing.assert_close(y, m.forward_collapsed(x), atol=1e-5, rtol=0)
        reach = []
        for py in (20, 21):  # both sub-pixel phases
            x2 = x.clone()
            x2[0, :, py, 17] += 0.3
            rows = torch.nonzero((m.forward_collapsed(x2) - y).abs().sum((0, 1, 3)) > 1e-4).flatten()  # > float noise
            reach += [py - int(rows.min()), int(rows.max()) - py]
    assert max(reach) == m.receptive_field // 2
    with pytest.raises(ValueError, match="scale-1"):
        ResidualNet(2, 4, 3, down=2)


@pytest.mark.parametrize("scale", [1, 2])
def test_dilated_net_collapses_exports_and_its_receptive_field_is_measured(scale):
    m = _perturbed(ResidualNet(scale, 5, 4, dilations=(1, 3, 2, 1)))
    assert m.receptive_field == 2 * (1 + 3 + 2 + 1) + 1
    x = torch.rand(1, 3, 31, 33, generator=torch.Generator().manual_seed(1)) * 0.2 + 0.4
    with torch.no_grad():
        torch.testing.assert_close(m(x), m.forward_collapsed(x), atol=1e-5, rtol=0)
        for q in m.parameters():  # positive weights: no ReLU cuts a path, so the reach is the whole field
            q.abs_()
        x2 = x.clone()
        x2[0, :, 15, 16] += 0.3
        rows = torch.nonzero((m.body(x2) - m.body(x)).abs().sum((0, 1, 3)) > 0).flatten()
    assert int(rows.max()) - int(rows.min()) + 1 == m.receptive_field
    m_onnx = ex.build_onnx(m)
    assert [list(a.ints) for n in m_onnx.graph.node for a in n.attribute if a.name == "dilations"] == \
        [[1, 1], [3, 3], [2, 2], [1, 1]]
    assert ex.max_abs_error(m, m_onnx, size=(1, 3, 20, 22)) < 1e-5
    for bad in ((1, 2, 1), (1, 0, 1, 1)):
        with pytest.raises(ValueError, match="dilations"):
            ResidualNet(scale, 5, 4, dilations=bad)
    with pytest.raises(ConfigError, match=r"dilations \(1, 2\) must be 3 values"):
        Recipe("bad", "denoise", 1, channels=4, convs=3, patch=16, dilations=(1, 2))


def test_deepening_a_dilated_net_keeps_the_dilations_of_the_convs_kept():
    small = _perturbed(ResidualNet(1, 6, 3, dilations=(2, 3, 1)))
    big = ResidualNet(1, 6, 5, dilations=(2, 3, 4, 4, 1)).eval()
    assert big.load_deepened(small.state_dict(), small.dilations) == 3
    x = torch.rand(1, 3, 30, 28)
    assert torch.allclose(big(x), small(x), atol=1e-6)
    with pytest.raises(ValueError, match=r"dilations \(2, 3, 1\) do not match"):
        ResidualNet(1, 6, 5).load_deepened(small.state_dict(), small.dilations)
    with pytest.raises(ValueError, match="dilations"):
        ResidualNet(1, 6, 5, dilations=(2, 3, 1, 1, 1)).load_deepened(small.state_dict())  # all 1 by default


@pytest.mark.parametrize("scale", [1, 2, 3])
def test_zero_residual_is_the_nearest_or_identity_base(scale):
    m = _perturbed(ResidualNet(scale, 4, 3))
    with torch.no_grad():
        for conv in (m.layers[-1].k3, m.layers[-1].k1):
            conv.weight.zero_()
            conv.bias.zero_()
    x = torch.rand(1, 3, 5, 6)
    want = torch.nn.functional.interpolate(x, scale_factor=scale, mode="nearest") if scale > 1 else x
    torch.testing.assert_close(m(x), want)


def test_every_recipe_fits_its_budget():
    for r in RECIPES.values():
        for i in range(len(r.stages) + 1):  # every run of it: a later stage may grow the net
            m = build_model(r.stage(i))
            if r.max_params:
                assert m.deploy_params() <= r.max_params, r.name
            if r.max_macs:
                assert m.macs_per_pixel() <= r.max_macs, r.name
    assert RECIPES["denoise"].stage(2).convs == 12 and RECIPES["denoise"].stage(2).lr == RECIPES["denoise"].lr
    assert (RECIPES["denoise"].stage(4).batch, RECIPES["denoise"].stage(1).batch) == (128, 16)  # a stage's own
    with pytest.raises(ConfigError, match="colour_perm 2 must be 0 or 1"):
        Recipe("bad", "sr", 2, channels=4, convs=2, patch=16, stages=(Stage(steps=2, colour_perm=2),)).stage(1)
    for bad in (Stage(convs=1, steps=5), Stage(), Stage(steps=-1, l2_steps=3), Stage(lr=0.0, steps=2)):
        with pytest.raises(ConfigError, match="stage 1 must keep or grow"):
            Recipe("bad", "sr", 2, channels=4, convs=2, patch=16, stages=(bad,))
    with pytest.raises(ConfigError, match="exceed the budget"):
        build_model(Recipe("big", "sr", 2, channels=64, convs=8, patch=16, max_params=50_000))
    with pytest.raises(ConfigError, match="scale 1"):
        Recipe("bad", "denoise", 2, channels=4, convs=2, patch=16)
    with pytest.raises(ConfigError, match="even patch"):
        Recipe("bad", "denoise", 1, channels=4, convs=2, patch=15, down=2)


@pytest.mark.parametrize("task, scale", [("sr", 2), ("denoise", 1), ("dejpeg", 1), ("enhance", 2)])
def test_sampler_shapes_and_range(task, scale):
    r = Recipe(f"t-{task}", task, scale, channels=4, convs=2, patch=8, batch=3)
    x, y = PatchSampler(r, _images(2, (60, 64)), seed=0).sample()
    assert x.shape == (3, 3, 8, 8) and y.shape == (3, 3, 8 * scale, 8 * scale)
    assert 0 <= float(x.min()) and float(x.max()) <= 1
    assert not torch.equal(x, y[:, :, ::scale, ::scale])  # the input is degraded


def test_denoise_sampler_draws_sigma_up_to_the_recipes_sigma_max():
    def patch_sigmas(sigma_max):
        r = Recipe("t-s", "denoise", 1, channels=4, convs=2, patch=8, batch=64, sigma_max=sigma_max)
        x, y = PatchSampler(r, _images(2, (60, 64)), seed=0).sample()
        return ((x - y) * 255).flatten(1).std(dim=1)

    assert float(patch_sigmas(1e-3).max()) == 0  # rounded to uint8: no noise at all
    assert float(patch_sigmas(10).max()) < 12 < 30 < float(patch_sigmas(60).max())
    with pytest.raises(ConfigError, match="sigma_max -1 must be positive"):
        Recipe("bad", "denoise", 1, channels=4, convs=2, patch=16, sigma_max=-1)


def test_grey_noise_gives_that_share_of_patches_the_same_noise_in_r_g_and_b():
    # a camera's noise is largely luma noise; trained on independent channels alone, denoise left it in place
    def grey_share(share):
        r = Recipe("t-g", "denoise", 1, channels=4, convs=2, patch=8, batch=200, sigma_max=20, grey_noise=share)
        mid = [np.full((60, 64, 3), 128, np.uint8) + np.array([-10, 0, 10], np.int8).astype(np.uint8)]  # no clipping
        x, y = PatchSampler(r, mid, seed=0).sample()
        n = ((x - y) * 255).round()
        noisy = n.flatten(1).abs().amax(dim=1) > 2
        grey = (n[:, 0] == n[:, 1]).flatten(1).all(dim=1) & (n[:, 1] == n[:, 2]).flatten(1).all(dim=1)
        return float((grey & noisy).sum() / noisy.sum())

    assert grey_share(0) == 0
    assert 0.15 < grey_share(0.3) < 0.45
    assert grey_share(1) == 1
    r0 = Recipe("t-g", "denoise", 1, channels=4, convs=2, patch=8, batch=8)  # no share: the same draws as before
    ra = Recipe("t-g", "denoise", 1, channels=4, convs=2, patch=8, batch=8, grey_noise=0.0)
    assert torch.equal(PatchSampler(r0, _images(2, (60, 64)), seed=3).sample()[0],
                       PatchSampler(ra, _images(2, (60, 64)), seed=3).sample()[0])


@pytest.mark.parametrize("task, scale", [("sr", 2), ("dejpeg", 1), ("enhance", 2)])
def test_colour_perm_reorders_each_patchs_channels_alike_in_input_and_target(task, scale):
    # photos hold saturated reds far more often than saturated blues: enhance-x2 trained without it
    # turned (0, 0, 255) into (6, 0, 149)
    flat = [np.zeros((60, 64, 3), np.uint8) + np.array([20, 120, 230], np.uint8)]
    r = Recipe(f"t-{task}", task, scale, channels=4, convs=2, patch=8, batch=24, colour_perm=1)
    x, y = PatchSampler(r, flat, seed=0).sample()
    order = lambda t: tuple(int(i) for i in t.mean(dim=(2, 3)).argsort(dim=1)[0])  # noqa: E731
    orders = {(order(x[i:i + 1]), order(y[i:i + 1])) for i in range(24)}
    assert all(a == b for a, b in orders) and len(orders) >= 4  # the same order in both, several orders drawn
    r0 = Recipe(f"t-{task}", task, scale, channels=4, convs=2, patch=8, batch=24)
    x0, _ = PatchSampler(r0, flat, seed=0).sample()
    assert {order(x0[i:i + 1]) for i in range(24)} == {(0, 1, 2)}
    with pytest.raises(ConfigError, match="colour_perm 2 must be 0 or 1"):
        Recipe("bad", "sr", 2, channels=4, convs=2, patch=16, colour_perm=2)


def test_y_loss_adds_the_luma_error_the_sr_metric_scores():
    import torch.nn.functional as F

    from edge_enhance.evaluation import rgb_to_y
    from training.train import with_y_term

    assert with_y_term(F.mse_loss, 0.0) is F.mse_loss
    g = torch.Generator().manual_seed(0)
    out, target = torch.rand(2, 3, 5, 6, generator=g), torch.rand(2, 3, 5, 6, generator=g)
    y_err = (rgb_to_y(out.permute(0, 2, 3, 1).numpy() * 255) - rgb_to_y(target.permute(0, 2, 3, 1).numpy() * 255)) / 255
    want = float(F.mse_loss(out, target)) + 2.0 * float(np.mean(y_err ** 2))
    assert float(with_y_term(F.mse_loss, 2.0)(out, target)) == pytest.approx(want, rel=1e-5)
    # an error of no luma (red up, green down in the ratio of their Y weights) adds nothing
    chroma = out + torch.tensor([0.5041, -0.2568, 0.0]).view(1, 3, 1, 1) * 0.1
    assert float(with_y_term(F.mse_loss, 2.0)(chroma, out)) == pytest.approx(float(F.mse_loss(chroma, out)), rel=1e-4)


def test_worker_batches_are_reproducible_per_start_step_and_differ_between_workers():
    r = Recipe("t-w", "enhance", 2, channels=4, convs=2, patch=8, batch=2)
    sampler = PatchSampler(r, _images(2, (60, 64)), seed=3)

    def draw(start, n=4):
        it = batches(sampler, workers=2, start=start)
        out = [next(it)[0] for _ in range(n)]
        it.close()
        return out

    a, b, c = draw(5), draw(5), draw(6)
    assert all(torch.equal(x, y) for x, y in zip(a, b))  # same seed, start and workers: same stream
    assert not torch.equal(a[0], a[1])  # the two workers draw different batches
    assert not any(torch.equal(x, y) for x, y in zip(a, c))  # another resume point, another stream
    state = sampler.rng.bit_generator.state
    next(batches(sampler))  # in-process: the sampler's own (checkpointed) rng advances
    assert sampler.rng.bit_generator.state != state


@pytest.mark.parametrize("task, scale, down", [("sr", 2, 1), ("denoise", 1, 1), ("dejpeg", 1, 1), ("enhance", 2, 1),
                                               ("denoise", 1, 2)])
def test_train_few_steps_logs_set5_checkpoints_and_resumes(tmp_path, data_root, task, scale, down):
    r = Recipe(f"t-{task}", task, scale, channels=4, convs=3, patch=8, batch=2, eval_every=2, down=down)
    ck = tmp_path / "ck"
    images = _images(2, (60, 64))
    m, state = train(r, ckpt_dir=ck, data_root=data_root, steps=3, images=images)
    assert state["step"] == 3 and (ck / "last.pt").exists()
    assert [h[0] for h in state["history"]] == [2] and np.isfinite(state["history"][0][2])
    before = [p.detach().clone() for p in m.parameters()]
    m2, state2 = train(r, ckpt_dir=ck, data_root=data_root, steps=5, images=images, workers=int(task == "enhance"))
    assert state2["step"] == 5 and [h[0] for h in state2["history"]] == [2, 4]
    assert any(not torch.equal(a, b) for a, b in zip(before, m2.parameters()))


def test_l2_fine_tune_runs_after_the_l1_budget_resumes_and_is_carded(tmp_path, data_root):
    r = Recipe("t-l2", "sr", 2, channels=4, convs=3, patch=8, batch=2, eval_every=2)
    ck, images = tmp_path / "ck", _images(2, (60, 64))
    m, st = train(r, ckpt_dir=ck, data_root=data_root, steps=3, images=images, l2_steps=2)
    assert (st["step"], st["l2_step"]) == (3, 2) and [h[0] for h in st["history"]] == [2, 4]
    before = [p.detach().clone() for p in m.parameters()]
    m, st = train(r, ckpt_dir=ck, data_root=data_root, steps=3, images=images, l2_steps=4)  # L1 done: L2 only
    assert (st["step"], st["l2_step"]) == (3, 4)
    assert any(not torch.equal(a, b) for a, b in zip(before, m.parameters()))
    card = export_model(r, m, st, tmp_path / "out", data_root=data_root, evaluate_sets=False)
    assert card.extra["steps"] == 7 and card.extra["l2_finetune"]["steps"] == 4


@pytest.mark.parametrize("task, scale, down", [("sr", 2, 1), ("sr", 4, 1), ("denoise", 1, 1), ("dejpeg", 1, 2)])
def test_export_equals_torch_and_card_parses(tmp_path, data_root, task, scale, down):
    r = Recipe(f"t-{task}", task, scale, channels=5, convs=3, patch=8, batch=2, down=down)
    m = _perturbed(ResidualNet(scale, 5, 3, down=down), seed=3)
    state = {"step": 7, "elapsed": 12.0, "history": []}
    card = export_model(r, m, state, tmp_path / "out", data_root=data_root, evaluate_sets=False)
    path = tmp_path / "out" / f"t-{task}.onnx"
    model = onnx.load(str(path))
    onnx.checker.check_model(model)
    assert {n.op_type for n in model.graph.node} <= CONVERTER_OPS
    assert all(o.version == 17 for o in model.opset_import)
    d2s = [n for n in model.graph.node if n.op_type == "DepthToSpace"]
    assert len(d2s) == (scale > 1 or down > 1)
    assert all(a.s == b"DCR" for n in d2s for a in n.attribute if a.name == "mode")
    x = torch.rand(1, 3, 14, 10)
    with torch.no_grad():
        want = m(x).numpy()
    got = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"]).run(None, {"input": x.numpy()})[0]
    assert got.shape == (1, 3, 14 * scale, 10 * scale)
    assert np.abs(got - want).max() < 1e-5
    props = {p.key: p.value for p in model.metadata_props}
    parsed = ModelCard.from_json(props[CARD_KEY])
    assert parsed == card
    assert (parsed.task, parsed.scale, parsed.receptive_field, parsed.layout) == (task, scale, 7 if down == 1 else 13, "nchw")
    assert parsed.base == ("identity" if scale == 1 else "nearest")
    assert parsed.align == down and parsed.margin == parsed.receptive_field // 2
    assert parsed.params == m.deploy_params() and parsed.macs_per_pixel == m.macs_per_pixel()
    assert parsed.extra["steps"] == 7 and "recipe" in parsed.extra
    assert not list((tmp_path / "out").glob("*.tmp"))  # atomic write leaves no temp file


def test_export_refuses_a_graph_that_disagrees_with_torch(tmp_path, data_root, monkeypatch):
    r = Recipe("t-sr", "sr", 2, channels=4, convs=2, patch=8)
    m = _perturbed(ResidualNet(2, 4, 2))
    monkeypatch.setattr(ex, "max_abs_error", lambda *a, **k: 1e-3)
    with pytest.raises(ConfigError, match="differs from torch"):
        export_model(r, m, {"step": 1, "elapsed": 1.0, "history": []}, tmp_path, data_root=data_root, evaluate_sets=False)
    assert not (tmp_path / "t-sr.onnx").exists()


def test_report_table_lists_exported_models(tmp_path, data_root, capsys):
    from training.report import table

    r = Recipe("t-sr", "sr", 2, channels=4, convs=2, patch=8)
    m = _perturbed(ResidualNet(2, 4, 2))
    export_model(r, m, {"step": 3, "elapsed": 60.0, "history": []}, tmp_path, data_root=data_root, evaluate_sets=False)
    rows = table(tmp_path).splitlines()
    assert len(rows) == 3 and rows[2].startswith("| t-sr |") and f"| {m.deploy_params()} |" in rows[2]
    assert rows[2].endswith("| 3 | 1.0 |")
    grown = {"step": 0, "elapsed": 0.0, "l2_step": 5, "l2_elapsed": 30.0,
             "init": {"checkpoint": "t-sr.onnx", "steps": 3, "train_minutes": 1.0}}
    export_model(r, m, grown, tmp_path, data_root=data_root, evaluate_sets=False)
    assert table(tmp_path).splitlines()[2].endswith("| 3 + 5 | 1.0 + 0.5 |")  # the source's, then its own
    with pytest.raises(ConfigError, match="nothing: no such folder"):
        table(tmp_path / "nothing")
    with pytest.raises(ConfigError, match="ck: no exported .onnx models in it"):
        (tmp_path / "ck").mkdir()
        table(tmp_path / "ck")
    (tmp_path / "junk.onnx").write_bytes(b"not a model")  # a broken file is named and left out, the rest listed
    import onnx
    bare = onnx.load(str(tmp_path / "t-sr.onnx"))
    del bare.metadata_props[:]
    onnx.save(bare, str(tmp_path / "bare.onnx"))
    rows = table(tmp_path).splitlines()
    err = capsys.readouterr().err
    assert len(rows) == 3 and "junk.onnx: unreadable (DecodeError); left out" in err
    assert "bare.onnx: no model card in it; left out" in err


@pytest.mark.parametrize("argv, message", [(["--only", "sr-x9"], "invalid choice: 'sr-x9'"),
                                           (["--factor", "0"], "--factor must be a positive number, got 0"),
                                           (["--factor", "nan"], "--factor must be a positive number, got nan")])
def test_queue_refuses_unknown_names_and_budgets_that_train_nothing(tmp_path, capsys, argv, message):
    from training.queue import main

    with pytest.raises(SystemExit) as e:
        main(["--out", str(tmp_path / "o"), "--ckpt", str(tmp_path / "ck"), *argv])
    assert e.value.code == 2 and message in capsys.readouterr().err and not any(tmp_path.iterdir())


def test_queue_trains_exports_then_skips_on_restart(tmp_path, monkeypatch):
    from training import queue

    root = tmp_path / "data"
    for sub, n in (("train/T91", 2), ("train/BSD200", 1), ("eval/Set5", 1), ("eval/Set14", 1), ("eval/BSD100", 1)):
        (root / sub).mkdir(parents=True)
        for i, im in enumerate(_images(n, (36, 40), seed=len(sub))):
            Image.fromarray(im).save(root / sub / f"{i}.png")
    r = Recipe("t-q", "sr", 2, channels=4, convs=2, patch=8, batch=2, minutes=0.01, l2_minutes=0.005,
               eval_every=10_000)
    monkeypatch.setattr(queue, "QUEUE", ("t-q",))
    monkeypatch.setattr(queue, "get", lambda name: r)
    args = ["--out", str(tmp_path / "out"), "--ckpt", str(tmp_path / "ck"), "--data", str(root)]
    assert queue.main(args) == 0
    out = tmp_path / "out" / "t-q.onnx"
    card = ex.read_card(out)
    assert set(card.extra["psnr"]) == {"Set5", "Set14", "BSD100"} and card.extra["steps"] >= 1
    assert card.extra["l2_finetune"]["steps"] >= 1 and card.extra["recipe"].endswith("--l2-minutes 0.005")
    stamp = out.stat().st_mtime_ns
    assert queue.main(args) == 0  # budget already covered: nothing retrained or rewritten
    assert out.stat().st_mtime_ns == stamp
    # A larger budget resumes and re-exports (factor from the time spent: a busy CPU overshoots).
    factor = card.extra["train_seconds"] / 0.6 + 2
    assert queue.main(args + ["--factor", str(factor)]) == 0
    assert ex.read_card(out).extra["steps"] > card.extra["steps"]


def test_queue_runs_a_recipes_stages_each_from_the_export_before(tmp_path, monkeypatch, caplog):
    from training import queue

    root = tmp_path / "data"
    for sub in ("train/T91", "train/BSD200", "eval/Set5", "eval/Set14", "eval/BSD100"):
        (root / sub).mkdir(parents=True)
        Image.fromarray(_images(1, (36, 40), seed=len(sub))[0]).save(root / sub / "0.png")
    r = Recipe("t-s", "sr", 2, channels=4, convs=2, patch=8, batch=2, minutes=0.005, eval_every=10_000,
               stages=(Stage(convs=3, lr=5e-4, steps=2, l2_steps=1), Stage(l2_steps=2, batch=3, patch=10)))
    monkeypatch.setattr(queue, "QUEUE", ("t-s",))
    monkeypatch.setattr(queue, "get", lambda name: r)
    args = ["--out", str(tmp_path / "out"), "--ckpt", str(tmp_path / "ck"), "--data", str(root)]
    assert queue.main(args) == 0
    first, grown, last = (tmp_path / "out" / "stages" / "t-s.0" / "t-s.onnx",
                          tmp_path / "out" / "stages" / "t-s.1" / "t-s.onnx", tmp_path / "out" / "t-s.onnx")
    c0, c1, c2 = (ex.read_card(p) for p in (first, grown, last))
    assert (c1.extra["steps"], c1.extra["grown_from"]["convs"], c1.receptive_field) == (3, 2, 7)
    assert c1.extra["recipe"].endswith(f"--convs 3 --lr 0.0005 --init-from {first} --steps 2 --l2-steps 1")
    assert c2.extra["l2_finetune"] == {"steps": 2, "minutes": c2.extra["train_minutes"], "lr": r.lr / 10}
    assert (c1.extra["batch"], c1.extra["patch"], c2.extra["batch"], c2.extra["patch"]) == (2, 8, 3, 10)  # its own
    assert "--convs 3 --batch 3 --patch 10 --init-from" in c2.extra["recipe"]
    assert c2.extra["grown_from"]["steps"] == c0.extra["steps"] + 3  # the whole lineage, nested
    assert c2.extra["grown_from"]["grown_from"]["checkpoint"] == str(first) and c2.extra["psnr"]
    stamps = [p.stat().st_mtime_ns for p in (first, grown, last)]
    assert queue.main(args) == 0  # every budget covered: nothing retrained or rewritten
    assert [p.stat().st_mtime_ns for p in (first, grown, last)] == stamps
    # A later stage whose source is newer than it is redone (from that source, not its old checkpoint).
    os.utime(grown, ns=(stamps[2] + 10**9, stamps[2] + 10**9))
    with caplog.at_level("INFO", logger="training"):
        assert queue.main(args) == 0
    assert "t-s.2/last.pt predates its source" in caplog.text and "t-s.1/t-s.onnx already exported" in caplog.text
    assert first.stat().st_mtime_ns == stamps[0] and last.stat().st_mtime_ns > stamps[2]
    assert ex.read_card(last).extra["steps"] == 2


def test_train_cli_rejects_a_non_positive_eval_interval(tmp_path, capsys):
    from training.train import main

    with pytest.raises(SystemExit) as e:
        main(["sr-x2", "--out", str(tmp_path), "--eval-every", "0"])
    assert e.value.code == 2 and "--eval-every must be positive" in capsys.readouterr().err
    assert not any(tmp_path.iterdir())


@pytest.mark.parametrize("flag, value", [("--steps", "-5"), ("--l2-steps", "-1"), ("--minutes", "-2"),
                                         ("--l2-minutes", "-0.5"), ("--workers", "-1"), ("--minutes", "nan"),
                                         ("--l2-minutes", "inf"), ("--seed", "-1")])
def test_train_cli_rejects_a_negative_budget(tmp_path, capsys, flag, value):
    from training.train import main

    with pytest.raises(SystemExit) as e:
        main(["sr-x2", "--out", str(tmp_path), "--ckpt", str(tmp_path / "ck"), flag, value])
    assert e.value.code == 2 and f"{flag} must be a finite number >= 0, got {float(value):g}" in capsys.readouterr().err
    assert not any(tmp_path.iterdir())


def test_training_tools_name_a_missing_data_folder_without_a_traceback(tmp_path, capsys):
    import subprocess
    import sys

    from training.train import main

    missing = tmp_path / "nodata"
    with pytest.raises(ImageInputError, match=f"{missing}: data folder does not exist"):
        main(["sr-x2", "--out", str(tmp_path / "o"), "--ckpt", str(tmp_path / "ck"), "--data", str(missing),
              "--steps", "1"])
    (missing / "eval" / "Set5").mkdir(parents=True)  # no train/ in it
    with pytest.raises(ImageInputError, match=f"{missing / 'train' / 'T91'}: dataset folder does not exist"):
        main(["sr-x2", "--out", str(tmp_path / "o"), "--ckpt", str(tmp_path / "ck"), "--data", str(missing),
              "--steps", "1", "--no-eval"])
    with pytest.raises(ImageInputError, match=r"eval: BSD100, Set14 missing, needed for the Set5 log and the final measurement"):
        main(["sr-x2", "--out", str(tmp_path / "o"), "--ckpt", str(tmp_path / "ck"), "--data", str(missing),
              "--steps", "1"])  # found before any training, not after it
    p = subprocess.run([sys.executable, "-m", "training.train", "sr-x2", "--out", str(tmp_path / "o"),
                        "--data", str(tmp_path / "nowhere")], capture_output=True, text=True, timeout=120)
    assert p.returncode == 1 and "nowhere: data folder does not exist" in p.stderr and "Traceback" not in p.stderr
    p = subprocess.run([sys.executable, "-m", "training.queue", "--only", "sr-x2", "--out", str(tmp_path / "o"),
                        "--ckpt", str(tmp_path / "ck"), "--data", str(missing)],
                       capture_output=True, text=True, timeout=120)
    assert p.returncode == 1 and "dataset folder does not exist" in p.stderr, p.stderr
    assert "Traceback" not in p.stderr


@pytest.mark.parametrize("argv, message", [
    (["sr-x2", "--channels", "64"], "exceed the budget 50000"),
    (["denoise", "--convs", "1"], "out of range"),
    (["denoise", "--batch", "0"], "out of range"),
    (["denoise", "--dilations", "1,2,3"], "dilations (1, 2, 3) must be 8 values"),
    (["denoise", "--dilations", "1,x"], "'1,x' is not a comma-separated list of integers"),
    (["denoise", "--sigma-max", "0"], "sigma_max 0.0 must be positive"),
    (["sr-x2", "--sigma-max", "55"], "--sigma-max is an option of the denoise task's noise, not of sr-x2"),
    (["dejpeg", "--grey-noise", "0.2"], "--grey-noise is an option of the denoise task's noise, not of dejpeg"),
    (["denoise", "--grey-noise", "1.5"], "grey_noise 1.5 must be in 0..1"),
    (["enhance-x2", "--y-loss", "-1"], "y_loss -1.0 must not be negative"),
])
def test_train_cli_architecture_options_keep_the_budget(tmp_path, capsys, argv, message):
    from training.train import main

    with pytest.raises(SystemExit) as e:
        main(argv[:1] + ["--out", str(tmp_path)] + argv[1:])
    assert e.value.code == 2 and message in capsys.readouterr().err
    assert not any(tmp_path.iterdir())


def test_resuming_a_checkpoint_as_another_run_is_refused_naming_the_option(tmp_path, data_root):
    import torch

    r = Recipe("t-arch", "sr", 2, channels=4, convs=3, patch=8, batch=2, eval_every=100)
    ck, images = tmp_path / "ck", _images(2, (60, 64))
    train(r, ckpt_dir=ck, data_root=data_root, steps=3, images=images)
    for changed, kw, message in [
            (dataclasses.replace(r, channels=6), {}, r"last\.pt: this checkpoint was trained with --channels 4 \(now 6\)"),
            (dataclasses.replace(r, dilations=(1, 2, 1)), {}, r"--dilations none \(now 1,2,1\)"),
            (dataclasses.replace(r, patch=10, batch=3), {}, r"--patch 8 \(now 10\), --batch 2 \(now 3\)"),
            (dataclasses.replace(r, name="t-other"), {}, r"recipe t-arch \(now t-other\)"),
            (r, {"seed": 7}, r"--seed 0 \(now 7\)"),
            (r, {"init_from": tmp_path / "x.onnx"}, r"--init-from none \(now .*x\.onnx\)"),
            (r, {"steps": 2}, r"at 3 of those steps already, past --steps 2")]:
        with pytest.raises(ConfigError, match=message):
            train(changed, ckpt_dir=ck, data_root=data_root, images=images, **{"steps": 4, **kw})
    _, state = train(dataclasses.replace(r, lr=1e-3), ckpt_dir=ck, data_root=data_root, steps=4, images=images)
    assert state["step"] == 4  # the same run with a larger budget resumes
    old = torch.load(ck / "last.pt", weights_only=False)
    del old["run"]  # a checkpoint from before runs were recorded: the recipe name is still checked
    torch.save(old, ck / "last.pt")
    with pytest.raises(ConfigError, match=r"recipe t-arch \(now t-other\)"):
        train(dataclasses.replace(r, name="t-other"), ckpt_dir=ck, data_root=data_root, steps=5, images=images)


def test_stage_runs_get_their_own_default_checkpoints(tmp_path):
    from training.train import DEFAULT_CKPT, default_ckpt_dir

    r = get("denoise")
    assert default_ckpt_dir(r) == DEFAULT_CKPT / "denoise"  # the plain recipe: the documented folder
    grown = dataclasses.replace(r, convs=12, lr=3e-4)
    dirs = {default_ckpt_dir(r, 1), default_ckpt_dir(grown, 0, tmp_path / "D/denoise.onnx"),
            default_ckpt_dir(dataclasses.replace(r, convs=12), 0, tmp_path / "D2/denoise.onnx"), DEFAULT_CKPT / "denoise"}
    assert len(dirs) == 4 and all(d.name.startswith("denoise-") for d in dirs - {DEFAULT_CKPT / "denoise"})
    assert default_ckpt_dir(grown, 0, tmp_path / "D/denoise.onnx") == default_ckpt_dir(grown, 0, tmp_path / "D/denoise.onnx")


def test_ctrl_c_saves_the_checkpoint_between_steps_and_the_resumed_run_is_the_uninterrupted_one(
        tmp_path, data_root, monkeypatch):
    """A signal landing mid-step skipped the batch being drawn or counted an update twice, so the resumed
    run differed from an uninterrupted one. The first is honoured between two steps; a second at once."""
    import os
    import signal

    from training import train as tr

    r = Recipe("t-int", "sr", 2, channels=4, convs=3, patch=8, batch=2, eval_every=100)
    images = _images(2, (60, 64))
    whole, _ = train(r, ckpt_dir=tmp_path / "whole", data_root=data_root, steps=6, images=images)
    real, calls = tr.with_y_term, []

    def signalling(at):
        def wrap(loss_fn, w):
            inner = real(loss_fn, w)

            def loss(out, target):
                calls.append(1)
                for _ in range(at.get(len(calls), 0)):
                    os.kill(os.getpid(), signal.SIGINT)  # Ctrl-C arrives in the middle of this step
                return inner(out, target)
            return loss
        return wrap

    monkeypatch.setattr(tr, "with_y_term", signalling({4: 1}))
    with pytest.raises(tr.Interrupted, match=r"interrupted at step 4; checkpoint saved to .*ck/last\.pt"):
        train(r, ckpt_dir=tmp_path / "ck", data_root=data_root, steps=6, images=images)
    resumed, state = train(r, ckpt_dir=tmp_path / "ck", data_root=data_root, steps=6, images=images)
    assert state["step"] == 6 and len(calls) == 6  # step 4 finished, none redone or skipped
    for a, b in zip(whole.state_dict().values(), resumed.state_dict().values()):
        assert torch.equal(a, b)
    calls.clear()
    monkeypatch.setattr(tr, "with_y_term", signalling({2: 2}))  # a second Ctrl-C: at once, nothing saved mid-step
    with pytest.raises(tr.Interrupted, match="stopped at once; no checkpoint was saved yet"):
        train(r, ckpt_dir=tmp_path / "ck2", data_root=data_root, steps=10, images=images)
    assert not (tmp_path / "ck2" / "last.pt").exists()
    assert signal.getsignal(signal.SIGINT) is signal.default_int_handler  # the handlers are given back


def test_zero_budgets_without_a_source_are_refused_and_l2_steps_0_means_none(tmp_path, data_root):
    r = Recipe("t-zero", "sr", 2, channels=4, convs=3, patch=8, batch=2, eval_every=100, l2_minutes=2)
    images = _images(2, (60, 64))
    with pytest.raises(ConfigError, match="nothing to train"):
        train(r, ckpt_dir=tmp_path / "a", data_root=data_root, steps=0, l2_steps=0, images=images)
    _, state = train(r, ckpt_dir=tmp_path / "b", data_root=data_root, steps=2, l2_steps=0, l2_minutes=2, images=images)
    assert state["step"] == 2 and state["l2_step"] == 0  # --l2-steps 0 wins over the L2 minutes
    from training.train import command
    assert command("sr-x2", minutes=19, steps=2, l2_minutes=2, l2_steps=0).endswith("--steps 2 --l2-steps 0")


def test_card_command_records_architecture_overrides():
    from training.train import command

    assert command("denoise", minutes=19, l2_minutes=2) == "python -m training.train denoise --out DIR --minutes 19 --l2-minutes 2"
    assert command("denoise", minutes=19, steps=5000, overrides={"channels": 40, "batch": 64}) == \
        "python -m training.train denoise --out DIR --channels 40 --batch 64 --steps 5000 --l2-minutes 0"
    assert command("denoise", minutes=19, overrides={"dilations": (1, 2, 1)}) == \
        "python -m training.train denoise --out DIR --dilations 1,2,1 --minutes 19 --l2-minutes 0"
    assert command("denoise", minutes=19, overrides={"sigma_max": 55.0}) == \
        "python -m training.train denoise --out DIR --sigma-max 55.0 --minutes 19 --l2-minutes 0"
    assert command("enhance-x2", minutes=19, overrides={"y_loss": 3.0}) == \
        "python -m training.train enhance-x2 --out DIR --y-loss 3.0 --minutes 19"
    assert command("denoise", minutes=19, steps=5000, seed=2) == \
        "python -m training.train denoise --out DIR --seed 2 --steps 5000 --l2-minutes 0"
    # a recipe without an L2 phase records none
    assert command("dejpeg", minutes=5) == "python -m training.train dejpeg --out DIR --minutes 5"


def test_train_seed_sets_the_run_and_repeats_it(tmp_path, data_root):
    r = Recipe("t-seed", "denoise", 1, channels=4, convs=3, patch=8, batch=2, eval_every=100)
    images = _images(2, (60, 64))

    def weights(seed, name):
        model, _ = train(r, ckpt_dir=tmp_path / name, data_root=data_root, steps=2, images=images, seed=seed)
        return torch.cat([p.detach().flatten() for p in model.parameters()])

    a, b, c = weights(0, "a"), weights(0, "b"), weights(1, "c")
    assert torch.equal(a, b) and not torch.allclose(a, c)


@pytest.mark.parametrize("scale,down", [(2, 1), (1, 2)])
def test_deepening_keeps_what_the_trained_net_computes(scale, down):
    small = _perturbed(ResidualNet(scale, 6, 3, down=down))
    big = ResidualNet(scale, 6, 5, down=down)
    assert big.load_deepened(small.state_dict()) == 3
    big.eval()
    x = torch.rand(2, 3, 12, 16)
    assert torch.allclose(big(x), small(x), atol=1e-6) and torch.allclose(big.forward_collapsed(x), small(x), atol=1e-5)
    assert big.receptive_field == small.receptive_field + 4 * down
    # The inserted convs are trainable: their 3x3 branch gets a gradient at once.
    big.train()
    big(x).sum().backward()
    assert big.layers[2].k3.weight.grad.abs().sum() > 0
    with pytest.raises(ValueError, match="holds 5 convs; this net has 3"):
        ResidualNet(scale, 6, 3, down=down).load_deepened(big.state_dict())
    with pytest.raises(RuntimeError):
        ResidualNet(scale, 8, 5, down=down).load_deepened(small.state_dict())


def test_train_grows_a_checkpoint_and_the_card_says_so(tmp_path, data_root):
    r = Recipe("t-grow", "sr", 2, channels=4, convs=2, patch=8, batch=2, eval_every=100)
    images = _images(2, (60, 64))
    train(r, ckpt_dir=tmp_path / "a", data_root=data_root, steps=3, images=images)
    deep = dataclasses.replace(r, convs=4)
    src = tmp_path / "a" / "last.pt"
    model, state = train(deep, ckpt_dir=tmp_path / "b", data_root=data_root, steps=2, images=images, init_from=src)
    assert state["step"] == 2 and state["init"]["convs"] == 2 and state["init"]["steps"] == 3
    card = export_model(deep, model, state, tmp_path / "out", data_root=data_root, evaluate_sets=False)
    assert card.extra["grown_from"]["recipe"] == "t-grow" and card.receptive_field == 9
    # Resuming the grown run uses its own checkpoint, not the source again.
    _, state = train(deep, ckpt_dir=tmp_path / "b", data_root=data_root, steps=4, images=images, init_from=src)
    assert state["step"] == 4 and state["init"]["steps"] == 3
    with pytest.raises(ConfigError, match=r"nope\.pt: no such checkpoint"):
        train(deep, ckpt_dir=tmp_path / "c", data_root=data_root, steps=1, images=images, init_from=tmp_path / "nope.pt")
    with pytest.raises(ConfigError, match=r"last\.pt: cannot grow it into 4 convs x 6 channels: its widths"):
        train(dataclasses.replace(deep, channels=6), ckpt_dir=tmp_path / "c", data_root=data_root, steps=1,
              images=images, init_from=src)
    with pytest.raises(ConfigError, match="cannot grow it into 2 convs x 4 channels: it holds 4 convs"):
        train(r, ckpt_dir=tmp_path / "c", data_root=data_root, steps=1, images=images,
              init_from=tmp_path / "b" / "last.pt")
    junk = tmp_path / "junk.pt"
    junk.write_bytes(b"not a checkpoint")
    with pytest.raises(ConfigError, match=r"junk\.pt: not a training checkpoint"):
        train(deep, ckpt_dir=tmp_path / "c", data_root=data_root, steps=1, images=images, init_from=junk)
    assert not (tmp_path / "c").exists()


def test_train_grows_an_exported_onnx_and_fine_tunes_it_with_l2_only(tmp_path, data_root):
    import onnxruntime as ort

    r = Recipe("t-grow", "sr", 2, channels=4, convs=2, patch=8, batch=2, eval_every=100)
    images = _images(2, (60, 64))
    small, st = train(r, ckpt_dir=tmp_path / "a", data_root=data_root, steps=3, images=images)
    export_model(r, small, st, tmp_path / "src", data_root=data_root, evaluate_sets=False)
    src = tmp_path / "src" / "t-grow.onnx"
    deep = dataclasses.replace(r, convs=4)
    # No L1 steps, no L2 steps: the grown net computes exactly what the file does.
    model, state = train(deep, ckpt_dir=tmp_path / "b", data_root=data_root, steps=0, l2_steps=0, images=images,
                         init_from=src)
    assert state["step"] == 0 and state["init"]["convs"] == 2 and state["init"]["steps"] == 3
    assert state["init"]["recipe"] == "python -m training.train t-grow --out DIR"
    x = np.random.default_rng(0).random((1, 3, 10, 12), np.float32)
    want = ort.InferenceSession(str(src), providers=["CPUExecutionProvider"]).run(None, {"input": x})[0]
    with torch.no_grad():
        np.testing.assert_allclose(model(torch.from_numpy(x)).numpy(), want, atol=1e-5)
    # An L2-only fine-tune of the same depth: the L1 phase is skipped.
    _, state = train(r, ckpt_dir=tmp_path / "c", data_root=data_root, steps=0, l2_steps=2, images=images, init_from=src)
    assert (state["step"], state["l2_step"], state["init"]["convs"]) == (0, 2, 2)
    # Grown again from that fine-tune's export: the lineage adds up (3 steps, then 2) and stays nested.
    tuned, state = train(r, ckpt_dir=tmp_path / "c", data_root=data_root, steps=0, l2_steps=2, images=images)
    export_model(r, tuned, state, tmp_path / "tuned", data_root=data_root, evaluate_sets=False)
    _, state = train(deep, ckpt_dir=tmp_path / "e", data_root=data_root, steps=0, l2_steps=0, images=images,
                     init_from=tmp_path / "tuned" / "t-grow.onnx")
    assert state["init"]["steps"] == 5 and state["init"]["grown_from"]["steps"] == 3
    with pytest.raises(ConfigError, match=r"t-grow\.onnx: cannot grow it into 4 convs x 6 channels"):
        train(dataclasses.replace(deep, channels=6), ckpt_dir=tmp_path / "d", data_root=data_root, steps=1,
              images=images, init_from=src)
    junk = tmp_path / "junk.onnx"
    junk.write_bytes(b"not a model")
    with pytest.raises(ConfigError, match=r"junk\.onnx: not a readable ONNX model"):
        train(deep, ckpt_dir=tmp_path / "d", data_root=data_root, steps=1, images=images, init_from=junk)


def test_train_cli_takes_a_learning_rate_and_a_source_to_grow(tmp_path, capsys):
    from training.train import command, main

    with pytest.raises(SystemExit) as e:
        main(["denoise", "--out", str(tmp_path), "--lr", "0"])
    assert e.value.code == 2 and "lr and minutes must be positive" in capsys.readouterr().err
    assert command("denoise", minutes=19, steps=9, overrides={"convs": 11, "lr": 0.0003}, init_from="ck/last.pt") == \
        "python -m training.train denoise --out DIR --convs 11 --lr 0.0003 --init-from ck/last.pt --steps 9 --l2-minutes 0"
    assert command("enhance-x2", minutes=230, steps=0, l2_steps=500, init_from="m.onnx") == \
        "python -m training.train enhance-x2 --out DIR --init-from m.onnx --steps 0 --l2-steps 500"


def test_train_cli_checks_its_output_and_data_before_training_and_the_card_names_the_data(tmp_path, data_root, capsys):
    from training.train import main

    (tmp_path / "afile").write_text("x")
    with pytest.raises(SystemExit) as e:
        main(["sr-x2", "--out", str(tmp_path / "afile"), "--steps", "1", "--data", str(data_root)])
    assert e.value.code == 2 and f"--out {tmp_path / 'afile'}: is a file" in capsys.readouterr().err
    for s in ("T91", "BSD200"):
        (data_root / "train" / s).mkdir(parents=True)
        Image.fromarray(_images(1, (40, 44))[0]).save(data_root / "train" / s / "a.png")
    with pytest.raises(ConfigError, match=r"data/train: no training image is at least 200 pixels .*patch 100 x scale 2"):
        main(["sr-x2", "--out", str(tmp_path / "o"), "--ckpt", str(tmp_path / "ck"), "--data", str(data_root),
              "--patch", "100", "--steps", "1", "--no-eval"])
    assert main(["sr-x2-rt", "--out", str(tmp_path / "o"), "--ckpt", str(tmp_path / "ck2"), "--data", str(data_root),
                 "--patch", "16", "--batch", "2", "--steps", "2", "--l2-steps", "0", "--no-eval"]) == 0
    card = ex.read_card(tmp_path / "o" / "sr-x2-rt.onnx")
    assert f"({data_root}/train)" in card.extra["data"] and f"--data {data_root}" in card.extra["recipe"]
    assert card.extra["steps"] == 2 and "l2_finetune" not in card.extra


def test_the_cards_architecture_names_depth_to_space_only_where_the_net_has_one():
    from training.train import _architecture_text

    for name in ("sr-x2", "denoise", "dejpeg"):
        r = RECIPES[name]
        graph = ex.build_onnx(build_model(dataclasses.replace(r, convs=2))).graph
        has = "DepthToSpace" in {n.op_type for n in graph.node}
        assert ("DepthToSpace" in _architecture_text(r)) == has == (r.scale > 1), name


def test_checkpoint_files_that_cannot_be_read_or_written_are_named_not_a_traceback(tmp_path, data_root, monkeypatch,
                                                                                    capsys):
    from training import train as tr
    from training.train import main

    r = Recipe("t-ck", "sr", 2, channels=4, convs=3, patch=8, batch=2, eval_every=100)
    images = _images(2, (60, 64))
    for i, junk in enumerate((b"", b"PK\x03\x04 cut short", b"not a checkpoint")):
        (tmp_path / f"bad{i}").mkdir()
        (tmp_path / f"bad{i}" / "last.pt").write_bytes(junk)
        with pytest.raises(tr.CheckpointError, match=rf"bad{i}/last\.pt: not a readable checkpoint .* another --ckpt"):
            train(r, ckpt_dir=tmp_path / f"bad{i}", data_root=data_root, steps=2, images=images)
    train(r, ckpt_dir=tmp_path / "ck", data_root=data_root, steps=2, images=images)
    before = (tmp_path / "ck" / "last.pt").read_bytes()

    def short_write(obj, f):  # what torch's zip writer raises when the disk fills or ulimit -f is reached
        raise RuntimeError("[enforce fail at inline_container.cc:672] . unexpected pos 487424 vs 487312")
    monkeypatch.setattr(tr.torch, "save", short_write)
    with pytest.raises(tr.CheckpointError, match=r"ck/last\.pt: cannot save the checkpoint .*the one there before is kept"):
        train(r, ckpt_dir=tmp_path / "ck", data_root=data_root, steps=3, images=images)
    assert (tmp_path / "ck" / "last.pt").read_bytes() == before and os.listdir(tmp_path / "ck") == ["last.pt"]
    (tmp_path / "afile").write_text("x")  # an --out or --ckpt that cannot be a folder: said before any training
    for flag in ("--ckpt", "--out"):
        argv = ["sr-x2", "--out", str(tmp_path / "o"), "--ckpt", str(tmp_path / "c"), "--data", str(data_root),
                "--steps", "1", "--no-eval"]
        argv[argv.index(flag) + 1] = str(tmp_path / "afile" / "sub")
        with pytest.raises(SystemExit) as e:
            main(argv)
        assert e.value.code == 2 and f"{flag} {tmp_path / 'afile' / 'sub'}: cannot make the folder" in capsys.readouterr().err


def test_workers_are_recorded_in_the_checkpoint_and_the_card_command_and_a_change_is_said(tmp_path, data_root, caplog):
    from training.train import command

    assert command("sr-x2", minutes=19, steps=100, workers=6) == "python -m training.train sr-x2 --out DIR --workers 6 --steps 100 --l2-minutes 0"
    r = Recipe("t-w", "sr", 2, channels=4, convs=3, patch=8, batch=2, eval_every=100)
    images = _images(2, (60, 64))
    train(r, ckpt_dir=tmp_path / "ck", data_root=data_root, steps=2, images=images)
    assert torch.load(tmp_path / "ck" / "last.pt", weights_only=False)["workers"] == 0
    train(r, ckpt_dir=tmp_path / "ck", data_root=data_root, steps=3, images=images, workers=1)
    assert "drawn with --workers 0; with 1 the batches from here on differ" in caplog.text
