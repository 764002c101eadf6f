import json

import pytest

from edge_enhance.card import ModelCard
from edge_enhance.errors import ModelFormatError

CARD = dict(name="dn", task="denoise", scale=1, receptive_field=33)


def test_align_round_trips_and_old_cards_read_as_one():
    card = ModelCard(**CARD, align=2)
    assert card.to_dict()["align"] == 2 and json.loads(card.to_json())["align"] == 2
    assert ModelCard.from_json(card.to_json()) == card
    assert ModelCard.from_json(json.dumps(CARD)).align == 1


@pytest.mark.parametrize("rf,align,margin", [(33, 1, 16), (33, 2, 16), (35, 2, 18), (15, 4, 8), (1, 2, 0),
                                             (9, 64, 64)])
def test_margin_is_the_radius_rounded_up_to_align(rf, align, margin):
    assert ModelCard(**{**CARD, "receptive_field": rf}, align=align).margin == margin


@pytest.mark.parametrize("align", [0, 65, -2, 2.0, "2", None])
def test_bad_align_is_refused_naming_the_file(align):
    with pytest.raises(ModelFormatError, match=r"^m\.onnx: model card: align .* must be an integer 1\.\.64"):
        ModelCard.from_json(json.dumps({**CARD, "align": align}), "m.onnx")


def test_a_deeply_nested_card_is_a_format_error_not_a_recursion_error():
    import pytest

    from edge_enhance.card import ModelCard
    from edge_enhance.errors import ModelFormatError

    with pytest.raises(ModelFormatError, match="not valid JSON"):
        ModelCard.from_json("[" * 100_000, "deep.onnx")
    # Deep enough to parse but not to copy or print (info ran out of stack): refused when read, named.
    deep = '{"name": "x", "task": "sr", "scale": 2, "receptive_field": 3, "extra": {"d": ' + "[" * 500 + "]" * 500 + "}}"
    with pytest.raises(ModelFormatError, match="deep.onnx: model card is nested more than 32 levels deep"):
        ModelCard.from_json(deep, "deep.onnx")
    ok = '{"name": "x", "task": "sr", "scale": 2, "receptive_field": 3, "extra": {"d": ' + "[" * 30 + "]" * 30 + "}}"
    assert ModelCard.from_json(ok).to_dict()["extra"]["d"]
