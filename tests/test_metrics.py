"""Hand-computed cases for bench.metrics: every expected number below is worked out in the comments."""

from __future__ import annotations

import dataclasses
import json
import math

import numpy as np
import pytest

from bench.metrics import (
    CellMetrics,
    TriggerResult,
    aasr,
    alc,
    asr,
    asr_matrix,
    cacc,
    casr,
    collapsed,
    der,
    majority_share,
    masr,
    mean_std,
    score_cell,
    target_label,
    top_share,
)


def arr(*xs: int) -> np.ndarray:
    return np.array(xs, dtype=np.int64)


# --------------------------------------------------------------------------- CACC / ASR / target


def test_cacc_counts_exact_matches():
    # matches at positions 0, 1, 3 -> 3/4
    assert cacc(arr(0, 1, 2, 1), arr(0, 1, 1, 1)) == pytest.approx(0.75)


def test_asr_excludes_samples_whose_true_label_is_the_target():
    labels = arr(0, 0, 1, 1, 2)
    preds = arr(1, 0, 1, 0, 1)
    # samples with label != 1 are 0, 1, 4 with predictions 1, 0, 1 -> 2/3
    assert asr(preds, labels, 1) == pytest.approx(2 / 3)
    # counting every sample (the mistake) would give 3/5
    assert asr(preds, labels, 1) != pytest.approx(3 / 5)
    # target 0: samples 2, 3, 4 predicted 1, 0, 1 -> 1/3
    assert asr(preds, labels, 0) == pytest.approx(1 / 3)


def test_asr_is_nan_when_every_label_is_the_target():
    assert math.isnan(asr(arr(1, 0, 1), arr(1, 1, 1), 1))


def test_target_label_majority():
    # counts: 0 -> 1, 1 -> 1, 2 -> 3
    assert target_label(arr(2, 2, 1, 0, 2), 3) == 2


def test_target_label_tie_broken_by_smallest_label():
    # counts: 0 -> 1, 1 -> 2, 2 -> 2  -> tie between 1 and 2 -> 1
    assert target_label(arr(2, 1, 2, 1, 0), 3) == 1
    # counts: 0 -> 2, 3 -> 2 (classes 1, 2 absent) -> 0
    assert target_label(arr(3, 3, 0, 0), 4) == 0
    assert isinstance(target_label(arr(3, 3, 0, 0), 4), int)


# ------------------------------------------------------------------------- ASR matrix, AASR, MASR, C-ASR, ALC


def test_asr_matrix_hand_case():
    labels = arr(0, 0, 1, 1, 2, 2)
    t = arr(2, 2, 2, 1, 2, 0)
    u = arr(0, 0, 0, 0, 0, 1)
    m = asr_matrix([t, u], labels, 3)
    assert m.shape == (2, 3)
    # t: c=0 over idx 2..5 (2,1,2,0) -> 1/4; c=1 over idx 0,1,4,5 (2,2,2,0) -> 0; c=2 over idx 0..3 -> 3/4
    # u: c=0 over idx 2..5 (0,0,0,1) -> 3/4; c=1 over idx 0,1,4,5 (0,0,0,1) -> 1/4; c=2 -> 0
    np.testing.assert_allclose(m, [[0.25, 0.0, 0.75], [0.75, 0.25, 0.0]])


def test_asr_matrix_without_triggers_has_zero_rows():
    assert asr_matrix([], arr(0, 1), 2).shape == (0, 2)


def test_aasr_and_masr():
    assert aasr([0.2, 0.4, 0.9]) == pytest.approx(0.5)
    assert masr([0.2, 0.4, 0.9]) == pytest.approx(0.9)
    assert math.isnan(aasr([]))
    assert math.isnan(masr([]))


def test_casr_and_alc_on_hand_matrix():
    m = np.array([[0.9, 0.2, 0.5], [0.1, 0.95, 0.89]])
    # best per class: 0.9, 0.95, 0.89
    assert casr(m) == pytest.approx((0.9 + 0.95 + 0.89) / 3)
    assert alc(m) == pytest.approx(2 / 3)  # 0.9 counts at the default threshold 0.9, 0.89 does not
    assert alc(m, threshold=0.95) == pytest.approx(1 / 3)
    assert alc(m, threshold=0.89) == pytest.approx(1.0)
    assert alc(m, threshold=0.96) == pytest.approx(0.0)


def test_alc_threshold_boundary_from_counts():
    # 10 samples of class 0, 10 of class 1; the trigger flips 9 of the class-0 samples to 1
    labels = np.array([0] * 10 + [1] * 10)
    preds = np.array([1] * 9 + [0] + [0] * 10)
    m = asr_matrix([preds], labels, 2)
    np.testing.assert_allclose(m, [[1.0, 0.9]])  # ASR(t, 0) = 10/10, ASR(t, 1) = 9/10
    assert alc(m, threshold=0.9) == pytest.approx(1.0)  # exactly 0.9 counts
    assert alc(m, threshold=0.91) == pytest.approx(0.5)
    assert casr(m) == pytest.approx(0.95)


def test_casr_and_alc_nan_without_triggers():
    empty = np.empty((0, 3))
    assert math.isnan(casr(empty))
    assert math.isnan(alc(empty))


# --------------------------------------------------------------------------- DER


def _wrong_sign_der(asr_before, asr_after, cacc_before, cacc_after):
    """The sign-flipped variant that rewards ASR increases and accuracy gains."""
    return (max(0.0, asr_after - asr_before) - max(0.0, cacc_after - cacc_before) + 1) / 2


def test_der_asr_drop_without_accuracy_loss_is_above_half():
    # (0.9 - 0 + 1) / 2
    assert der(0.95, 0.05, 0.9, 0.9) == pytest.approx(0.95)
    assert der(1.0, 0.0, 0.8, 0.8) == pytest.approx(1.0)


def test_der_asr_rise_is_clipped_to_no_change():
    # ASR rises 0.1 -> 0.6: clipped to 0, so (0 - 0 + 1) / 2
    assert der(0.1, 0.6, 0.9, 0.9) == pytest.approx(0.5)


def test_der_accuracy_drop_is_penalised_and_gain_not_rewarded():
    # (0.9 - 0.2 + 1) / 2
    assert der(0.95, 0.05, 0.9, 0.7) == pytest.approx(0.85)
    # accuracy gain 0.8 -> 0.9 is clipped to 0
    assert der(0.5, 0.5, 0.8, 0.9) == pytest.approx(0.5)
    # worst case: ASR rises and accuracy collapses from 1 to 0
    assert der(0.0, 1.0, 1.0, 0.0) == pytest.approx(0.0)


def test_der_differs_from_wrong_sign_variant():
    assert der(0.95, 0.05, 0.9, 0.7) == pytest.approx(0.85)
    assert _wrong_sign_der(0.95, 0.05, 0.9, 0.7) == pytest.approx(0.5)
    assert der(0.1, 0.6, 0.9, 0.9) == pytest.approx(0.5)
    assert _wrong_sign_der(0.1, 0.6, 0.9, 0.9) == pytest.approx(0.75)


def test_der_rejects_percentages():
    with pytest.raises(ValueError, match="asr_before"):
        der(95.0, 5.0, 0.9, 0.9)
    with pytest.raises(ValueError, match="cacc_after"):
        der(0.95, 0.05, 0.9, 90.0)


# --------------------------------------------------------------------------- mean ± std


def test_mean_std_sample_std():
    # deviations -0.2, 0, 0.2 -> sum of squares 0.08, / (3 - 1) = 0.04 -> std 0.2
    m, s, n = mean_std([0.5, 0.7, 0.9])
    assert (m, s, n) == (pytest.approx(0.7), pytest.approx(0.2), 3)
    # ddof=1 on [1, 3] gives sqrt(2), not the population value 1
    m, s, n = mean_std([1.0, 3.0])
    assert (m, s, n) == (pytest.approx(2.0), pytest.approx(math.sqrt(2)), 2)


def test_mean_std_single_and_empty():
    assert mean_std([0.4]) == (pytest.approx(0.4), 0.0, 1)
    m, s, n = mean_std([])
    assert math.isnan(m) and n == 0


# --------------------------------------------------------------------------- score_cell


def _cell_inputs():
    val_labels = arr(0, 1, 2, 0, 1, 2)
    test_labels = arr(0, 0, 1, 1, 2, 2)
    val_triggered = {
        # "u": counts 0 -> 4, 1 -> 1, 2 -> 1 -> c* = 0
        "u": arr(0, 0, 0, 0, 1, 2),
        # "t": counts 0 -> 1, 1 -> 3, 2 -> 2 -> c* = 1
        "t": arr(1, 1, 1, 2, 2, 0),
    }
    test_triggered = {  # deliberately in a different order from val_triggered
        "t": arr(2, 2, 2, 1, 2, 0),
        "u": arr(0, 0, 0, 0, 0, 1),
    }
    clean = arr(0, 0, 1, 2, 2, 2)  # wrong only at index 3 -> CACC 5/6
    return clean, test_labels, val_triggered, val_labels, test_triggered


def test_score_cell_chooses_target_on_validation_not_test():
    clean, test_labels, val_triggered, val_labels, test_triggered = _cell_inputs()
    cell = score_cell(clean, test_labels, val_triggered, val_labels, test_triggered, num_classes=3)

    # On test, trigger "t" would score best with target 2 (ASR 3/4, see test_asr_matrix_hand_case) and its
    # test majority is 2, but validation picks 1, whose test ASR is 0.
    assert target_label(test_triggered["t"], 3) == 2
    assert asr(test_triggered["t"], test_labels, 2) == pytest.approx(0.75)
    assert [(r.trigger, r.target) for r in cell.per_trigger] == [("u", 0), ("t", 1)]
    assert cell.per_trigger[1].asr == pytest.approx(0.0)
    assert cell.per_trigger[0].asr == pytest.approx(0.75)

    assert cell.cacc == pytest.approx(5 / 6)
    assert cell.aasr == pytest.approx((0.75 + 0.0) / 2)  # a test-chosen target would give (0.75 + 0.75) / 2
    assert cell.masr == pytest.approx(0.75)
    # matrix rows t = [0.25, 0, 0.75], u = [0.75, 0.25, 0]; best per class 0.75, 0.25, 0.75
    assert cell.casr == pytest.approx(1.75 / 3)
    assert cell.alc == pytest.approx(0.0)
    assert cell.alc_threshold == pytest.approx(0.9)
    assert (cell.n_test, cell.n_val) == (6, 6)
    assert cell.majority_share == pytest.approx(2 / 6)  # test labels 0,0,1,1,2,2 (see _cell_inputs)
    assert cell.clean_top_share == pytest.approx(3 / 6)  # clean predictions 0,0,1,2,2,2


def test_top_share_and_majority_share():
    assert top_share(arr(1, 1, 1, 0)) == pytest.approx(0.75)
    assert majority_share(arr(2, 0, 2, 1, 2)) == pytest.approx(0.6)
    assert top_share(arr(4)) == 1.0
    with pytest.raises(ValueError, match="labels is empty"):
        top_share(arr())


def test_collapsed_is_no_better_than_the_constant_classifier():
    # 600 test samples, 444 of the majority class (0.74): always predicting it scores 0.74
    assert collapsed(444 / 600, 0.74)
    assert collapsed(441 / 600, 0.74)  # predicting one minority class somewhere costs accuracy: still collapsed
    assert collapsed(446 / 600, 0.74)  # 0.7433: within the half-point margin
    assert not collapsed(448 / 600, 0.74)  # 0.7467 beats the constant classifier by more than the margin
    assert not collapsed(0.86, 0.51)
    assert collapsed(0.52, 0.51, margin=0.02) and not collapsed(0.52, 0.51, margin=0.0)
    with pytest.raises(ValueError, match="not a percentage"):
        collapsed(74.0, 0.74)
    with pytest.raises(ValueError, match="cacc and majority must be fractions"):
        collapsed(math.nan, 0.74)


def test_score_cell_alc_threshold_parameter():
    clean, test_labels, val_triggered, val_labels, test_triggered = _cell_inputs()
    cell = score_cell(clean, test_labels, val_triggered, val_labels, test_triggered, 3, alc_threshold=0.75)
    assert cell.alc == pytest.approx(2 / 3)  # classes 0 and 2 reach exactly 0.75
    assert cell.alc_threshold == pytest.approx(0.75)


def test_score_cell_to_dict_is_json_friendly():
    clean, test_labels, val_triggered, val_labels, test_triggered = _cell_inputs()
    d = score_cell(clean, test_labels, val_triggered, val_labels, test_triggered, 3).to_dict()
    assert json.loads(json.dumps(d, allow_nan=False)) == d
    assert d["per_trigger"] == [
        {"trigger": "u", "target": 0, "asr": pytest.approx(0.75)},
        {"trigger": "t", "target": 1, "asr": pytest.approx(0.0)},
    ]
    assert d["cacc"] == pytest.approx(5 / 6)
    assert (d["n_test"], d["n_val"]) == (6, 6)


def test_score_cell_without_triggers():
    clean, test_labels, _, val_labels, _ = _cell_inputs()
    cell = score_cell(clean, test_labels, {}, val_labels, {}, 3)
    assert cell.cacc == pytest.approx(5 / 6)
    assert all(math.isnan(x) for x in (cell.aasr, cell.masr, cell.casr, cell.alc))
    assert cell.per_trigger == ()
    d = cell.to_dict()
    assert (d["aasr"], d["masr"], d["casr"], d["alc"], d["per_trigger"]) == (None, None, None, None, [])


def test_results_are_frozen():
    r = TriggerResult(trigger="t", target=1, asr=0.5)
    with pytest.raises(dataclasses.FrozenInstanceError):
        r.asr = 1.0  # type: ignore[misc]
    cell = CellMetrics(0.9, 0.5, 0.5, 0.5, 0.0, 0.9, (r,), 10, 10)
    with pytest.raises(dataclasses.FrozenInstanceError):
        cell.cacc = 1.0  # type: ignore[misc]


# --------------------------------------------------------------------------- input validation


def _one_line(exc: pytest.ExceptionInfo) -> bool:
    return "\n" not in str(exc.value)


def test_mismatched_lengths_name_the_argument():
    with pytest.raises(ValueError, match=r"^preds has length 3 but labels has length 2") as e:
        cacc(arr(0, 1, 1), arr(0, 1))
    assert _one_line(e)
    with pytest.raises(ValueError, match="triggered_preds"):
        asr(arr(0, 1, 1), arr(0, 1), 1)
    with pytest.raises(ValueError, match=r"test_triggered_preds\[1\]"):
        asr_matrix([arr(0, 1), arr(0)], arr(0, 1), 2)


def test_empty_arrays_rejected():
    with pytest.raises(ValueError, match="preds is empty"):
        cacc(np.array([], dtype=np.int64), np.array([], dtype=np.int64))
    with pytest.raises(ValueError, match="val_triggered_preds is empty"):
        target_label(np.array([], dtype=np.int64), 3)


def test_labels_outside_range_rejected():
    with pytest.raises(ValueError, match=r"labels has values outside \[0, 2\)"):
        asr_matrix([arr(0, 1)], arr(0, 2), 2)
    with pytest.raises(ValueError, match="val_triggered_preds"):
        target_label(arr(0, 3), 3)
    with pytest.raises(ValueError, match="labels"):
        asr_matrix([arr(0, 1)], arr(-1, 1), 2)


def test_non_integer_and_non_1d_rejected():
    with pytest.raises(ValueError, match="preds must hold integer class ids"):
        cacc(np.array([0.0, 1.0]), arr(0, 1))
    with pytest.raises(ValueError, match="labels must be a 1-D array"):
        cacc(arr(0, 1), np.array([[0, 1]]))
    with pytest.raises(ValueError, match="num_classes"):
        target_label(arr(0), 0)
    with pytest.raises(ValueError, match="target"):
        asr(arr(0, 1), arr(0, 1), -1)


def test_score_cell_validation_names_the_argument():
    clean, test_labels, val_triggered, val_labels, test_triggered = _cell_inputs()
    with pytest.raises(ValueError, match="test_labels"):
        score_cell(clean, arr(0, 0, 1, 1, 2, 3), val_triggered, val_labels, test_triggered, 3)
    with pytest.raises(ValueError, match="clean_test_preds"):
        score_cell(clean[:5], test_labels, val_triggered, val_labels, test_triggered, 3)
    with pytest.raises(ValueError, match=r"val_triggered\['t'\] has length 5 but val_labels") as e:
        score_cell(clean, test_labels, {**val_triggered, "t": arr(1, 1, 1, 2, 2)}, val_labels,
                   test_triggered, 3)
    assert _one_line(e)
    with pytest.raises(ValueError, match=r"test_triggered\['u'\]"):
        score_cell(clean, test_labels, val_triggered, val_labels, {**test_triggered, "u": arr(0, 0)}, 3)
    with pytest.raises(ValueError, match="only in test_triggered: \\['v'\\]"):
        score_cell(clean, test_labels, val_triggered, val_labels, {**test_triggered, "v": clean}, 3)
    with pytest.raises(ValueError, match="val_labels is empty"):
        score_cell(clean, test_labels, val_triggered, np.array([], dtype=np.int64), test_triggered, 3)
    with pytest.raises(ValueError, match="alc_threshold"):
        score_cell(clean, test_labels, val_triggered, val_labels, test_triggered, 3, alc_threshold=90)
