import json

import numpy as np
import pytest
from PIL import Image

pytest.importorskip("onnxruntime")
pytest.importorskip("onnx")

from edge_enhance.cli import main  # noqa: E402
from edge_enhance.enhancer import Enhancer  # noqa: E402
from edge_enhance.evaluation import noisy, psnr, rgb_to_y, shave  # noqa: E402
from tests.onnx_models import residual_sr  # noqa: E402


@pytest.fixture
def dataset(tmp_path):
    d = tmp_path / "set"
    d.mkdir()
    rng = np.random.default_rng(0)
    for name in ("b.png", "a.png"):
        Image.fromarray(rng.integers(0, 256, (27, 24, 3), dtype=np.uint8)).save(d / name)
    return d


def test_sr_eval_matches_the_protocol_by_hand(tmp_path, dataset, capsys):
    m = tmp_path / "m.onnx"
    residual_sr(m)
    assert main(["eval", str(m), "--dataset", str(dataset), "--json"]) == 0
    got = json.loads(capsys.readouterr().out)
    enh = Enhancer(m)
    expect = []
    for name in ("a.png", "b.png"):  # sorted order
        hr = np.asarray(Image.open(dataset / name))[:26, :24]
        lr = np.asarray(Image.fromarray(hr).resize((12, 13), Image.BICUBIC))
        out = enh.enhance(lr)
        expect.append(psnr(shave(rgb_to_y(hr), 2), shave(rgb_to_y(out), 2)))
    assert [r["name"] for r in got["images"]] == ["a.png", "b.png"]
    assert got["psnr"] == pytest.approx(np.mean(expect), abs=1e-9)


def test_denoise_eval_uses_seeded_clipped_noise(tmp_path, dataset, capsys):
    m = tmp_path / "d.onnx"
    residual_sr(m, scale=1)
    assert main(["eval", str(m), "--dataset", str(dataset), "--sigma", "15", "--json", "--no-ssim"]) == 0
    got = json.loads(capsys.readouterr().out)
    clean = np.asarray(Image.open(dataset / "b.png"))
    expect = psnr(clean, noisy(clean, 15, 1))  # b.png is image 1 in sorted order
    assert got["images"][1]["baseline_psnr"] == pytest.approx(expect, abs=1e-9)


def test_eval_tta_is_reported_and_changes_the_score(tmp_path, dataset, capsys):
    m = tmp_path / "m.onnx"
    residual_sr(m)
    runs = []
    for extra in ([], ["--tta"]):
        assert main(["eval", str(m), "--dataset", str(dataset), "--json", "--no-ssim", *extra]) == 0
        runs.append(json.loads(capsys.readouterr().out))
    assert [r["tta"] for r in runs] == [False, True]
    assert runs[0]["psnr"] != runs[1]["psnr"]
    assert main(["eval", str(m), "--dataset", str(dataset), "--no-ssim", "--tta"]) == 0
    assert "(onnxruntime, tta)" in capsys.readouterr().out


def _strict(text):
    """json.loads that refuses NaN / Infinity, as jq and browsers do."""
    def refuse(c):
        raise ValueError(f"not JSON: {c}")
    return json.loads(text, parse_constant=refuse)


def test_eval_without_ssim_writes_strict_json_and_a_dash(tmp_path, dataset, capsys):
    m = tmp_path / "m.onnx"
    residual_sr(m)
    assert main(["eval", str(m), "--dataset", str(dataset), "--json", "--no-ssim"]) == 0
    got = _strict(capsys.readouterr().out)
    assert got["ssim"] is None and all(r["ssim"] is None for r in got["images"]) and got["psnr"] > 0
    assert main(["eval", str(m), "--dataset", str(dataset), "--no-ssim"]) == 0
    out = capsys.readouterr().out
    assert "nan" not in out and out.splitlines()[-1].split()[2] == "-"


def test_strict_json_turns_non_finite_floats_into_null():
    from edge_enhance.cli import strict_json

    got = _strict(strict_json({"a": float("inf"), "b": [np.float64("nan"), 1.5], "c": (2, "x")}))
    assert got == {"a": None, "b": [None, 1.5], "c": [2, "x"]}


def test_eval_task_option_and_a_task_the_model_cannot_do(tmp_path, dataset, capsys):
    """`--task` as the issue spells it; a scale the protocol cannot score is refused before any image."""
    sr, one = tmp_path / "m.onnx", tmp_path / "d.onnx"
    residual_sr(sr)
    residual_sr(one, scale=1)
    assert main(["eval", str(sr), "--dataset", str(dataset), "--task", "enhance", "--json", "--no-ssim"]) == 0
    assert json.loads(capsys.readouterr().out)["task"] == "enhance"
    assert main(["eval", str(one), "--dataset", str(dataset), "--task", "sr"]) == 2
    assert "d.onnx: the sr protocol needs an upscaling model; this model's scale is 1" in capsys.readouterr().err
    assert main(["eval", str(sr), "--dataset", str(dataset), "--task", "denoise"]) == 2
    assert "m.onnx: the denoise protocol needs a scale-1 model" in capsys.readouterr().err


def test_eval_shows_progress_on_a_terminal_and_the_callback_sees_every_image(tmp_path, dataset, capsys,
                                                                              monkeypatch):
    import sys

    from edge_enhance.evaluation import evaluate

    seen = []
    evaluate(lambda x: x, dataset, "denoise", with_ssim=False, on_image=lambda i, n, name: seen.append((i, n, name)))
    assert seen == [(0, 2, "a.png"), (1, 2, "b.png")]
    m = tmp_path / "m.onnx"
    residual_sr(m)
    monkeypatch.setattr(sys.stderr, "isatty", lambda: True)
    assert main(["eval", str(m), "--dataset", str(dataset), "--no-ssim"]) == 0
    out, err = capsys.readouterr()
    assert "[1/2] a.png" in err and "[2/2] b.png" in err and err.endswith("\r\033[K")  # cleared before the table
    assert "mean" in out and "[1/2]" not in out


def test_options_of_another_protocol_are_said_to_do_nothing_and_bad_qualities_refused(tmp_path, dataset, capsys,
                                                                                     caplog):
    m = tmp_path / "m.onnx"
    residual_sr(m, scale=2)
    assert main(["eval", str(m), "--dataset", str(dataset), "--sigma", "10", "--no-ssim"]) == 0
    assert "--sigma applies to the denoise protocol; the sr protocol does not use it" in caplog.text
    for q in ("0", "101"):
        with pytest.raises(SystemExit):
            main(["eval", str(m), "--dataset", str(dataset), "--task", "dejpeg", "--quality", q])
        assert "must be in 1..100" in capsys.readouterr().err
    with pytest.raises(SystemExit):  # one way to name the model: MODEL
        main(["eval", str(m), "--model", "sr-x3", "--dataset", str(dataset)])
    assert "--model" in capsys.readouterr().err


def test_enhance_refuses_a_quality_outside_1_to_100_and_says_temporal_is_for_video(tmp_path, capsys, caplog):
    m = tmp_path / "m.onnx"
    residual_sr(m, scale=2)
    src = tmp_path / "a.png"
    Image.fromarray(np.zeros((8, 8, 3), np.uint8)).save(src)
    for q in ("-5", "150"):
        with pytest.raises(SystemExit):
            main(["enhance", str(src), "--model", str(m), "-o", str(tmp_path / "o.jpg"), "--quality", q])
        assert "must be in 1..100" in capsys.readouterr().err
    assert not (tmp_path / "o.jpg").exists()
    assert main(["enhance", str(src), "--model", str(m), "-o", str(tmp_path / "o.png"), "--temporal", "0.5"]) == 0
    assert "--temporal smooths video frames" in caplog.text


def test_eval_table_columns_line_up_under_wide_and_long_names(tmp_path, dataset, capsys):
    from edge_enhance.cli import _cells

    m = tmp_path / "m.onnx"
    residual_sr(m)
    (dataset / "a.png").rename(dataset / "夕焼けの写真.png")  # 12 columns in a terminal, 9 characters
    (dataset / "b.png").rename(dataset / ("long-" * 7 + ".png"))  # 39 characters, past the 24 of the old column
    assert main(["eval", str(m), "--dataset", str(dataset), "--no-ssim"]) == 0
    lines = capsys.readouterr().out.splitlines()[1:]
    assert [ln.split()[0] for ln in lines] == ["image", "long-" * 7 + ".png", "夕焼けの写真.png", "mean"]
    ends = {_cells(ln[:ln.index(ln.split()[1]) + len(ln.split()[1])]) for ln in lines}  # the PSNR column's right edge
    assert len(ends) == 1


def test_a_task_other_than_the_cards_is_said_and_sr_on_the_enhance_protocol_is_not(tmp_path, dataset, capsys, caplog):
    """dejpeg judged under the denoise protocol scored 21.5 dB without a word (a wrong --sigma is warned of)."""
    one = tmp_path / "d.onnx"
    residual_sr(one, scale=1, card={"name": "d", "task": "dejpeg", "scale": 1, "receptive_field": 9,
                                    "layout": "nchw", "base": "identity"})
    assert main(["eval", str(one), "--dataset", str(dataset), "--task", "denoise", "--no-ssim"]) == 0
    assert "d.onnx: its card says dejpeg, and it is judged under the denoise protocol as --task asks" in caplog.text
    caplog.clear()
    sr = tmp_path / "m.onnx"
    residual_sr(sr)
    assert main(["eval", str(sr), "--dataset", str(dataset), "--task", "enhance", "--no-ssim"]) == 0
    assert "its card says" not in caplog.text


def test_images_of_other_formats_in_a_set_are_said_to_be_left_out(tmp_path, dataset, capsys, caplog):
    """A .webp / .gif / .pgm in the folder was left out of the mean without a word."""
    Image.new("RGB", (24, 24)).save(dataset / "c.webp")
    Image.new("L", (24, 24)).save(dataset / "d.pgm")
    m = tmp_path / "m.onnx"
    residual_sr(m)
    assert main(["eval", str(m), "--dataset", str(dataset), "--no-ssim", "--json"]) == 0
    assert len(json.loads(capsys.readouterr().out)["images"]) == 2
    assert "2 image(s) of other formats left out (c.webp, d.pgm); the protocol reads .png" in caplog.text


def test_a_16_bit_colour_image_is_rounded_to_8_bits_as_a_16_bit_grey_one_is(tmp_path):
    """Pillow's 8-bit decode of 16-bit colour keeps the top byte: 0.12 dB off for the same picture."""
    pytest.importorskip("png")
    from edge_enhance import imageio
    from edge_enhance.evaluation import load_rgb

    rgb16 = np.random.default_rng(1).integers(0, 65536, (9, 11, 3), dtype=np.uint16)
    p = tmp_path / "x16.png"
    imageio.save_image(imageio.Photo(rgb16), p)
    want = np.clip(np.round(rgb16 / 257.0), 0, 255).astype(np.uint8)
    np.testing.assert_array_equal(load_rgb(p), want)
    assert (load_rgb(p) != (rgb16 >> 8)).any()
