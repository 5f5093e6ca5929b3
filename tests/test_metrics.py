import math

import pytest
import torch

from pointseg.metrics import ConfusionMatrix, confusion_matrix, format_table, scores


def test_confusion_matrix_by_hand_with_ignore() -> None:
    target = torch.tensor([0, 0, 1, 1, 2, -1, 2, -1])
    pred = torch.tensor([0, 1, 1, 1, 0, 2, 2, 0])
    cm = confusion_matrix(pred, target, num_classes=3, ignore_index=-1)
    expected = torch.tensor([[1, 1, 0], [0, 2, 0], [1, 0, 1]])
    assert torch.equal(cm, expected)
    sc = scores(cm)
    # IoU: c0 = 1/(2+2-1)=1/3, c1 = 2/(2+3-2)=2/3, c2 = 1/(2+1-1)=1/2
    assert sc.iou.tolist() == pytest.approx([1 / 3, 2 / 3, 1 / 2])
    assert sc.miou == pytest.approx((1 / 3 + 2 / 3 + 1 / 2) / 3)
    assert sc.acc.tolist() == pytest.approx([1 / 2, 1.0, 1 / 2])
    assert sc.macc == pytest.approx(2 / 3)
    assert sc.allacc == pytest.approx(4 / 6)


def test_absent_class_is_left_out_of_the_mean() -> None:
    target = torch.tensor([0, 0, 1])
    pred = torch.tensor([0, 0, 1])
    sc = scores(confusion_matrix(pred, target, num_classes=4, ignore_index=255))
    assert math.isnan(sc.iou[2]) and math.isnan(sc.iou[3])
    assert sc.miou == 1.0 and sc.macc == 1.0


def test_class_predicted_but_absent_in_targets_counts_as_zero() -> None:
    target = torch.tensor([0, 0, 0, 0])
    pred = torch.tensor([0, 0, 0, 1])
    sc = scores(confusion_matrix(pred, target, num_classes=2, ignore_index=-1))
    assert sc.iou.tolist() == pytest.approx([0.75, 0.0])
    assert sc.miou == pytest.approx(0.375)
    assert math.isnan(sc.acc[1]) and sc.macc == pytest.approx(0.75)


def test_metric_accumulates_and_does_not_mutate_inputs() -> None:
    m = ConfusionMatrix(3, ignore_index=-1)
    t1, p1 = torch.tensor([0, 1, -1]), torch.tensor([0, 2, 1])
    t2, p2 = torch.tensor([2, 2]), torch.tensor([2, 1])
    t1c, p1c = t1.clone(), p1.clone()
    m.update(p1, t1)
    m.update(p2, t2)
    assert torch.equal(t1, t1c) and torch.equal(p1, p1c)
    expected = confusion_matrix(torch.cat([p1, p2]), torch.cat([t1, t2]), 3, -1)
    assert torch.equal(m.compute(), expected)
    m.reset()
    assert m.compute().sum() == 0


def test_out_of_range_target_raises() -> None:
    with pytest.raises(ValueError, match="outside 0..2"):
        confusion_matrix(torch.tensor([0, 5]), torch.tensor([0, 5]), 3, -1)


def test_table_lists_every_class() -> None:
    sc = scores(torch.tensor([[3, 1], [0, 4]]))
    text = format_table(sc, ["ground", "building"])
    assert "ground" in text and "building" in text and f"{sc.miou:.4f}" in text
