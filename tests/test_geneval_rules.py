"""GenEval's rules, clause by clause, with hand-built detections."""

import pytest

from lightgen.geneval.rules import check_image, filter_detections, relative_position


def det(box, score=0.95, color=None):
    return {"box": list(box), "score": score, "color": color}


SINGLE = {"tag": "single_object", "include": [{"class": "cat", "count": 1}], "prompt": "a photo of a cat"}
COUNT3 = {"tag": "counting", "include": [{"class": "cat", "count": 3}], "exclude": [{"class": "cat", "count": 4}],
          "prompt": "a photo of three cats"}
RED_CAT = {"tag": "colors", "include": [{"class": "cat", "count": 1, "color": "red"}], "prompt": "a photo of a red cat"}
CAT_LEFT_DOG = {"tag": "position", "prompt": "a photo of a cat left of a dog",
                "include": [{"class": "dog", "count": 1}, {"class": "cat", "count": 1, "position": ["left of", 0]}]}


# ---- filtering: thresholds, sorting, cap --------------------------------------------------------
def test_threshold_03_strict_and_counting_09():
    raw = {"cat": [det((0, 0, 1, 1), 0.3), det((0, 0, 1, 1), 0.31), det((0, 0, 1, 1), 0.9), det((0, 0, 1, 1), 0.91)]}
    assert [o["score"] for o in filter_detections(raw, "single_object")["cat"]] == [0.91, 0.9, 0.31]
    assert [o["score"] for o in filter_detections(raw, "counting")["cat"]] == [0.91]
    assert filter_detections({"cat": [det((0, 0, 1, 1), 0.2)]}, "colors") == {}


def test_at_most_16_most_confident():
    raw = {"cat": [det((i, 0, i + 1, 1), 0.4 + i * 0.01) for i in range(20)]}
    kept = filter_detections(raw, "single_object")["cat"]
    assert len(kept) == 16 and kept[0]["score"] == pytest.approx(0.59) and kept[-1]["score"] == pytest.approx(0.44)


# ---- include counts ---------------------------------------------------------------------------
def test_include_count():
    assert check_image(SINGLE, {"cat": [det((0, 0, 10, 10))]}) == (True, "")
    ok, reason = check_image(SINGLE, {"dog": [det((0, 0, 10, 10))]})
    assert not ok and reason == "expected cat>=1, found 0"
    two = {"tag": "two_object", "include": [{"class": "cat", "count": 1}, {"class": "dog", "count": 1}], "prompt": ""}
    assert check_image(two, {"cat": [det((0, 0, 1, 1))], "dog": [det((5, 5, 6, 6))]})[0]
    assert not check_image(two, {"cat": [det((0, 0, 1, 1))]})[0]


# ---- exclude ----------------------------------------------------------------------------------
def test_counting_include_and_exclude():
    cats = lambda n: {"cat": [det((i * 10, 0, i * 10 + 5, 5)) for i in range(n)]}  # noqa: E731
    assert check_image(COUNT3, cats(3))[0]
    ok, reason = check_image(COUNT3, cats(2))
    assert not ok and "expected cat>=3, found 2" in reason
    ok, reason = check_image(COUNT3, cats(4))
    assert not ok and reason == "expected cat<4, found 4"
    # the counting threshold is applied before counting: a 4th cat at 0.85 does not fail the image
    raw = cats(3)
    raw["cat"].append(det((90, 0, 95, 5), 0.85))
    assert check_image(COUNT3, filter_detections(raw, "counting"))[0]
    assert not check_image(COUNT3, filter_detections(raw, "single_object"))[0]


# ---- colour on the `count` most confident -----------------------------------------------------
def test_color_on_most_confident_only():
    assert check_image(RED_CAT, {"cat": [det((0, 0, 1, 1), 0.9, "red"), det((2, 2, 3, 3), 0.5, "blue")]})[0]
    ok, reason = check_image(RED_CAT, {"cat": [det((0, 0, 1, 1), 0.9, "blue"), det((2, 2, 3, 3), 0.5, "red")]})
    assert not ok and reason.startswith("expected red cat>=1, found 0 red; and 1 blue")


def test_color_fn_used_when_colour_missing():
    calls = []

    def color_fn(cls, objs):
        calls.append((cls, len(objs)))
        return ["red"] * len(objs)

    assert check_image(RED_CAT, {"cat": [det((0, 0, 1, 1)), det((2, 2, 3, 3), 0.5)]}, color_fn)[0]
    assert calls == [("cat", 1)]  # only the `count` most confident are classified
    with pytest.raises(ValueError, match="no colour"):
        check_image(RED_CAT, {"cat": [det((0, 0, 1, 1))]})


# ---- position -----------------------------------------------------------------------------------
def test_relative_position_basic_and_y_down():
    assert relative_position([0, 0, 10, 10], [50, 0, 60, 10]) == {"left of"}
    assert relative_position([50, 0, 60, 10], [0, 0, 10, 10]) == {"right of"}
    assert relative_position([0, 0, 10, 10], [0, 50, 10, 60]) == {"above"}
    assert relative_position([0, 50, 10, 60], [0, 0, 10, 10]) == {"below"}
    assert relative_position([0, 0, 10, 10], [50, 50, 60, 60]) == {"left of", "above"}


def test_position_shrink_rule():
    # centres 12 apart on x; sizes 10+10 -> shrink by 2 -> 10/12 = 0.83 > 0.5: left of
    assert relative_position([0, 0, 10, 10], [12, 0, 22, 10]) == {"left of"}
    # big boxes: shrink 0.1*(100+100)=20 > offset 15 -> clamped at 0 on x -> no relation at all
    assert relative_position([0, 0, 100, 100], [15, 0, 115, 100]) == set()
    # offset (-30,-30): unshrunk each component is 0.71 (left of + above). The wide B (90 px) shrinks x
    # by 0.1*(10+90)=10 -> 20/42.4=0.47 < 0.5: no "left of"; y shrinks by 2 -> 28/42.4=0.66: "above".
    # (the shrunk offset is divided by the length of the UNSHRUNK one)
    assert relative_position([0, 0, 10, 10], [-10, 30, 80, 40]) == {"above"}
    assert relative_position([0, 0, 10, 10], [-10, 30, 80, 40], threshold=0.0) == {"left of", "above"}
    # a diagonal offset whose shrunk x part drops under 0.5 loses the horizontal relation
    assert relative_position([0, 0, 10, 10], [10, 20, 20, 30]) == {"above"}
    # coincident boxes -> offsets < 1e-3 -> no relation
    assert relative_position([0, 0, 10, 10], [0, 0, 10, 10]) == set()


def test_position_clause():
    good = {"dog": [det((50, 0, 60, 10))], "cat": [det((0, 0, 10, 10))]}
    assert check_image(CAT_LEFT_DOG, good) == (True, "")
    ok, reason = check_image(CAT_LEFT_DOG, {"dog": [det((0, 0, 10, 10))], "cat": [det((50, 0, 60, 10))]})
    assert not ok and reason == "expected cat left of target, found right of target"


def test_position_checked_on_most_confident_against_every_target():
    # the target clause counts 2 dogs: cat must be left of both
    spec = {"tag": "position", "prompt": "",
            "include": [{"class": "dog", "count": 2}, {"class": "cat", "count": 1, "position": ["left of", 0]}]}
    dogs = [det((50, 0, 60, 10), 0.9), det((0, 50, 10, 60), 0.8)]  # second dog is below-left of nothing
    assert not check_image(spec, {"dog": dogs, "cat": [det((0, 0, 10, 10))]})[0]
    dogs[1] = det((80, 0, 90, 10), 0.8)
    assert check_image(spec, {"dog": dogs, "cat": [det((0, 0, 10, 10))]})[0]
    # a less confident cat on the wrong side is ignored (count=1 -> only the best cat is checked)
    cats = [det((0, 0, 10, 10), 0.9), det((95, 0, 99, 10), 0.4)]
    assert check_image(spec, {"dog": dogs, "cat": cats})[0]
    # ...but a more confident one on the wrong side fails
    cats = [det((0, 0, 10, 10), 0.4), det((95, 0, 99, 10), 0.9)]
    assert not check_image(spec, filter_detections({"dog": dogs, "cat": cats}, "position"))[0]


def test_failed_target_clause_fails_position():
    ok, reason = check_image(CAT_LEFT_DOG, {"cat": [det((0, 0, 10, 10))]})
    assert not ok and reason.split("\n") == ["expected dog>=1, found 0", "no target for cat to be left of"]
    # a target failing on colour also counts as failed
    spec = {"tag": "position", "prompt": "", "include": [
        {"class": "dog", "count": 1, "color": "red"}, {"class": "cat", "count": 1, "position": ["left of", 0]}]}
    dets = {"dog": [det((50, 0, 60, 10), color="blue")], "cat": [det((0, 0, 10, 10), color="red")]}
    ok, reason = check_image(spec, dets)
    assert not ok and "no target for cat to be left of" in reason
    dets["dog"][0]["color"] = "red"
    assert check_image(spec, dets)[0]


def test_position_not_checked_when_colour_failed():
    spec = {"tag": "position", "prompt": "", "include": [
        {"class": "dog", "count": 1}, {"class": "cat", "count": 1, "color": "red", "position": ["left of", 0]}]}
    ok, reason = check_image(spec, {"dog": [det((0, 0, 10, 10))], "cat": [det((50, 0, 60, 10), color="blue")]})
    assert not ok and "expected red cat" in reason and "left of target" not in reason


def test_position_rule_agrees_with_teacher_layout_rule():
    """The toy teacher places objects with its own copy of the rule; both must agree on random boxes."""
    import numpy as np

    from lightgen.world.toy import relation_holds

    rng = np.random.default_rng(0)
    for _ in range(500):
        a = sorted(rng.uniform(0, 64, 2)), sorted(rng.uniform(0, 64, 2))
        b = sorted(rng.uniform(0, 64, 2)), sorted(rng.uniform(0, 64, 2))
        box_a = [a[0][0], a[1][0], a[0][1], a[1][1]]
        box_b = [b[0][0], b[1][0], b[0][1], b[1][1]]
        rels = relative_position(box_a, box_b)
        for rel in ("left of", "right of", "above", "below"):
            assert (rel in rels) == relation_holds(box_a, box_b, rel)
