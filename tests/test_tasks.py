"Tests of sfofusion.tasks and sfofusion.task_metrics: shapes, targets and decoding, NMS, COCO mAP and mIoU, losses and gradients, overfitting, checkpoints, errors."
import io, json, math, os
from pathlib import Path

import cv2
import numpy as np
import pytest
import torch
from torch.autograd import gradcheck

from sfofusion.core import FusionInputError
from sfofusion.data import IGNORE_INDEX, MSRS_SEG_CLASSES, SyntheticPairs, collate_fusion, get_dataset
from sfofusion.task_metrics import batched_nms, box_iou, confusion_matrix, detection_map, nms, segmentation_miou
from sfofusion.tasks import (TASK_CONFIG, TASK_WEIGHTS, TASKS, Detections, Detector, DetectorConfig, Segmenter,
                             SegmenterConfig, TaskHead, build_task, decode_detections, detection_loss, heatmap_targets,
                             load_task, save_task)

SYN_DET = dict(num_classes=2, class_names=SyntheticPairs.class_names)
SYN_SEG = dict(num_classes=3, class_names=('background', 'person', 'car'))
TINY_DET = dict(num_classes=2, class_names=None, widths=(4, 8), head_width=4)
TINY_SEG = dict(num_classes=3, class_names=None, widths=(4, 8), decoder_width=4)


def synthetic_batch(n=4, size=(96, 128), seed=1):
    "A collated batch of synthetic scenes and a stand-in fused image (mean of IR and VIS)."
    ds = SyntheticPairs(n, size, seed=seed)
    b = collate_fusion([ds[i] for i in range(n)])
    return b, (b['ir'] + b['vis']) / 2

def empty_det(n=1):
    return [(torch.zeros(0, 4), torch.zeros(0), torch.zeros(0, dtype=torch.long))] * n

def ideal_outputs(boxes, labels, K, hw, stride):
    "Detector outputs that a perfect network would give for these boxes (one image)."
    t = heatmap_targets(boxes, labels, K, hw, stride)
    n = hw[0] * hw[1]
    heat, size, off = torch.full((1, K, n), -10.), torch.zeros(1, 2, n), torch.zeros(1, 2, n)
    heat[0, t['labels'], t['index']] = 10.
    size[0, :, t['index']], off[0, :, t['index']] = t['log_size'].T, t['offset'].T
    return dict(heatmap=heat.view(1, K, *hw), log_size=size.view(1, 2, *hw), offset=off.view(1, 2, *hw))


# ---------------------------------------------------------------- shapes, parameters, batch independence

@pytest.mark.parametrize('hw', [(240, 320), (61, 83), (32, 32), (17, 9)])
def test_detector_shapes(hw):
    det = Detector()
    with torch.no_grad(): out = det(torch.rand(2, 1, *hw))
    h, w = math.ceil(hw[0] / 4), math.ceil(hw[1] / 4)
    assert {k: tuple(v.shape) for k, v in out.items()} == dict(heatmap=(2, 3, h, w), log_size=(2, 2, h, w), offset=(2, 2, h, w))

@pytest.mark.parametrize('stride', [2, 4, 8, 16])
def test_detector_strides(stride):
    det = Detector(DetectorConfig(stride=stride))
    with torch.no_grad(): out = det(torch.rand(1, 1, 64, 96))
    assert out['heatmap'].shape == (1, 3, 64 // stride, 96 // stride)

@pytest.mark.parametrize('hw', [(240, 320), (61, 83), (17, 9)])
def test_segmenter_shapes(hw):
    with torch.no_grad(): assert Segmenter()(torch.rand(2, 1, *hw))['logits'].shape == (2, 9, *hw)

def test_parameter_counts():
    for head in (Detector(), Segmenter()):
        assert 50_000 < sum(p.numel() for p in head.parameters()) < 300_000
        assert not list(head.buffers())  # GroupNorm: no running statistics to carry through functional_call

@pytest.mark.parametrize('kind', ['detection', 'segmentation'])
def test_batch_independence(kind):
    torch.manual_seed(0)
    head, x = build_task(kind), torch.rand(3, 1, 48, 64)
    with torch.no_grad():
        full = head(x)
        for i in range(3):
            for k, v in head(x[i:i + 1]).items(): torch.testing.assert_close(v, full[k][i:i + 1], atol=1e-5, rtol=1e-5)


# ---------------------------------------------------------------- targets and decoding

def test_heatmap_targets_known_values():
    t = heatmap_targets(torch.tensor([[10., 20, 30, 60], [40, 8, 48, 16], [0, 0, 4, 4]]), torch.tensor([1, 1, 0]), 2, (20, 16), 4)
    assert t['index'].tolist() == [10 * 16 + 5, 3 * 16 + 11, 0]
    torch.testing.assert_close(t['size'], torch.tensor([[5., 10], [2, 2], [1, 1]]))
    torch.testing.assert_close(t['log_size'], t['size'].log())
    torch.testing.assert_close(t['offset'], torch.tensor([[0., 0], [0, 0], [0.5, 0.5]]))
    assert t['heatmap'][0, 0, 0] == 1 and t['heatmap'][1].flatten()[t['index'][:2]].tolist() == [1, 1]
    # box 0: 5 x 10 cells, sigma = (max(0.54 * 5 / 6, 0.5), 0.54 * 10 / 6) = (0.5, 0.9)
    torch.testing.assert_close(t['heatmap'][1, 12, 5], torch.tensor(math.exp(-4 / (2 * 0.9 ** 2))))
    assert t['heatmap'].max() <= 1 and t['heatmap'].min() >= 0

@pytest.mark.parametrize('stride', [2, 4, 8])
def test_encode_decode_roundtrip(stride):
    rng = np.random.default_rng(stride)
    H, W, K = 96, 128, 3
    for _ in range(5):
        n = int(rng.integers(1, 6))
        xy = rng.uniform(0, [W - 20, H - 20], (n, 2))
        wh = rng.uniform(6, 20, (n, 2))
        boxes = torch.tensor(np.concatenate([xy, xy + wh], 1), dtype=torch.float32)
        labels = torch.tensor(rng.integers(0, K, n))
        cfg = DetectorConfig(num_classes=K, stride=stride, nms_iou=1.0)
        hw = (math.ceil(H / stride), math.ceil(W / stride))
        t = heatmap_targets(boxes, labels, K, hw, stride)
        if len(set(zip(t['labels'].tolist(), t['index'].tolist()))) < n: continue  # two centres in one cell: one box is lost by design
        det = decode_detections(ideal_outputs(boxes, labels, K, hw, stride), (H, W), cfg)[0]
        assert len(det.boxes) == n
        iou = box_iou(det.boxes, boxes)
        best = iou.argmax(1)
        assert sorted(best.tolist()) == list(range(n))
        torch.testing.assert_close(det.boxes, boxes[best], atol=1e-4, rtol=0)
        assert det.labels.tolist() == labels[best].tolist()

def test_decode_threshold_and_limits():
    torch.manual_seed(0)
    out = dict(heatmap=torch.randn(2, 3, 30, 40), log_size=torch.randn(2, 2, 30, 40) * 5, offset=torch.rand(2, 2, 30, 40))
    for thr, m in ((0.05, 100), (0.5, 7), (0.9, 100)):
        for d in decode_detections(out, (120, 160), DetectorConfig(score_threshold=thr, max_detections=m)):
            assert len(d.boxes) <= m and (d.scores > thr).all() and (d.scores[:-1] >= d.scores[1:]).all()
            assert (d.boxes[:, 0] >= 0).all() and (d.boxes[:, 2] <= 160).all() and (d.boxes[:, 3] <= 120).all()
            assert d.labels.dtype == torch.long


# ---------------------------------------------------------------- NMS

def test_nms_hand_made():
    b = torch.tensor([[0., 0, 10, 10], [1, 1, 11, 11], [0, 0, 10, 5], [20, 20, 30, 30], [1, 0, 11, 10]])
    s = torch.tensor([0.9, 0.8, 0.7, 0.6, 0.95])
    assert nms(b, s, 0.5).tolist() == [4, 2, 3]
    assert nms(b, s, 0.9).tolist() == [4, 0, 1, 2, 3]
    assert nms(b, s, 0.0).tolist() == [4, 3]  # any overlap suppresses
    assert batched_nms(b, s, torch.tensor([0, 0, 0, 0, 1]), 0.5).tolist() == [4, 0, 2, 3]
    assert nms(b[:1], s[:1], 0.5).tolist() == [0]

def test_nms_properties_random():
    rng = np.random.default_rng(0)
    for trial in range(20):
        n = int(rng.integers(0, 40))
        xy = rng.uniform(0, 50, (n, 2)); wh = rng.uniform(1, 30, (n, 2))
        b = torch.tensor(np.concatenate([xy, xy + wh], 1), dtype=torch.float32)
        s, thr = torch.rand(n), float(rng.uniform(0.2, 0.8))
        keep = nms(b, s, thr)
        kept = set(keep.tolist())
        assert (s[keep][:-1] >= s[keep][1:]).all()
        iou = box_iou(b, b)
        for i in kept:
            for j in kept:
                if i != j: assert iou[i, j] <= thr
        for j in set(range(n)) - kept:  # each dropped box overlaps a kept box that scores at least as high
            assert any(iou[i, j] > thr and s[i] >= s[j] for i in kept)

def test_batched_nms_is_per_class():
    rng = np.random.default_rng(1)
    xy = rng.uniform(0, 40, (30, 2)); wh = rng.uniform(5, 25, (30, 2))
    b = torch.tensor(np.concatenate([xy, xy + wh], 1), dtype=torch.float32)
    s, l = torch.rand(30), torch.tensor(rng.integers(0, 3, 30))
    got = set(batched_nms(b, s, l, 0.4).tolist())
    want = set()
    for k in range(3):
        idx = torch.nonzero(l == k).flatten()
        want |= set(idx[nms(b[idx], s[idx], 0.4)].tolist())
    assert got == want

def test_nms_errors():
    with pytest.raises(FusionInputError, match='expected x2 >= x1'): nms(torch.tensor([[5., 0, 0, 5]]), torch.ones(1), 0.5)
    with pytest.raises(FusionInputError, match='`scores`: expected shape'): nms(torch.zeros(2, 4), torch.ones(3), 0.5)
    with pytest.raises(FusionInputError, match=r'expected a float tensor \(N, 4\)'): nms(torch.zeros(2, 5), torch.ones(2), 0.5)


# ---------------------------------------------------------------- COCO mAP

GT2 = [(torch.tensor([[10., 10, 50, 90], [60, 40, 120, 80]]), torch.tensor([0, 2])), (torch.zeros(0, 4), torch.zeros(0, dtype=torch.long))]

def test_map_perfect_and_empty(capsys):
    perfect = [(GT2[0][0], torch.tensor([0.9, 0.8]), GT2[0][1]), empty_det()[0]]
    r = detection_map(perfect, GT2, 3, ('person', 'bicycle', 'car'))
    assert r['map50'] == pytest.approx(1, abs=1e-12) and r['map'] == pytest.approx(1, abs=1e-12)
    assert math.isnan(r['per_class_map50']['bicycle']) and r['per_class_map']['car'] == pytest.approx(1)
    assert (r['num_images'], r['num_gt'], r['num_det']) == (2, 2, 2)
    z = detection_map(empty_det(2), GT2, 3)
    assert z['map50'] == 0 and z['map'] == 0 and z['per_class_map50']['class0'] == 0
    assert capsys.readouterr().out == ''  # pycocotools' printing is silenced

def test_map_known_values():
    one = [(torch.tensor([[0., 0, 100, 100]]), torch.tensor([0]))]
    two = [(torch.tensor([[0., 0, 10, 10], [20, 20, 30, 30]]), torch.tensor([0, 0]))]
    det = lambda boxes, scores: [(torch.tensor(boxes), torch.tensor(scores), torch.zeros(len(scores), dtype=torch.long))]
    # one of two found: precision 1 up to recall 0.5 -> 51 of 101 recall points
    assert detection_map(det([[0., 0, 10, 10]], [0.9]), two, 1)['map50'] == pytest.approx(51 / 101)
    # a false positive ranked above the only true box: precision 0.5 at every recall point
    assert detection_map(det([[200., 200, 210, 210], [0, 0, 100, 100]], [0.9, 0.8]), one, 1)['map50'] == pytest.approx(0.5)
    # ranked below: it does not hurt (precision is interpolated from the right)
    assert detection_map(det([[200., 200, 210, 210], [0, 0, 100, 100]], [0.7, 0.8]), one, 1)['map50'] == pytest.approx(1)
    # IoU 0.62: a match at thresholds 0.5, 0.55, 0.6 only -> AP@0.5 = 1, AP@0.5:0.95 = 3/10
    r = detection_map(det([[0., 0, 100, 62]], [0.9]), one, 1)
    assert r['map50'] == pytest.approx(1) and r['map'] == pytest.approx(0.3)
    # a duplicate of a matched box is a false positive after the true one: AP stays 1
    assert detection_map(det([[0., 0, 100, 100], [0, 0, 100, 99]], [0.9, 0.8]), one, 1)['map50'] == pytest.approx(1)
    # the wrong class is a miss
    assert detection_map([(torch.tensor([[0., 0, 100, 100]]), torch.tensor([0.9]), torch.tensor([1]))], one, 2)['map50'] == 0

def test_map_classes_and_images_without_ground_truth():
    # person found; the car is detected only in the empty second image: car AP 0, mean over person and car 0.5
    swap = [(GT2[0][0][:1], torch.tensor([0.9]), torch.tensor([0])), (GT2[0][0][1:], torch.tensor([0.8]), torch.tensor([2]))]
    r = detection_map(swap, GT2, 3)
    assert r['map50'] == pytest.approx(0.5) and r['per_class_map50']['class2'] == 0
    # detections of a class without ground truth are not counted
    extra = [(torch.cat([GT2[0][0], torch.tensor([[0., 0, 5, 5]])]), torch.tensor([0.9, 0.8, 0.99]), torch.tensor([0, 2, 1])), empty_det()[0]]
    assert detection_map(extra, GT2, 3)['map50'] == pytest.approx(1)
    assert math.isnan(detection_map(empty_det(2), [GT2[1]] * 2, 3)['map50'])

def test_map_accepts_numpy_and_detections():
    r = detection_map([Detections(GT2[0][0].numpy(), np.array([0.5, 0.4]), GT2[0][1].numpy())], [(GT2[0][0].numpy(), GT2[0][1].numpy())], 3)
    assert r['map50'] == pytest.approx(1)

def test_map_max_dets():
    # 150 false positives scored above the true box: with max_dets=100 the true box is never reached
    fps = torch.tensor([[200. + i, 200, 210 + i, 210] for i in range(150)])
    boxes, scores = torch.cat([fps, torch.tensor([[0., 0, 10, 10]])]), torch.cat([torch.linspace(1, 0.5, 150), torch.tensor([0.1])])
    p = [(boxes, scores, torch.zeros(151, dtype=torch.long))]
    one = [(torch.tensor([[0., 0, 10, 10]]), torch.tensor([0]))]
    assert detection_map(p, one, 1)['map50'] == 0
    assert detection_map(p, one, 1, max_dets=200)['map50'] == pytest.approx(1 / 151)

def test_map_errors():
    with pytest.raises(FusionInputError, match='`preds` has 1 images but `targets` has 2'): detection_map(empty_det(1), GT2, 3)
    with pytest.raises(FusionInputError, match=r'`preds\[0\] scores`: expected 2 finite scores'):
        detection_map([(GT2[0][0], torch.tensor([0.9]), GT2[0][1])], GT2[:1], 3)
    with pytest.raises(FusionInputError, match=r'`targets\[0\] labels`: class ids must be in \[0, 1\]'): detection_map(empty_det(2), GT2, 2)
    with pytest.raises(FusionInputError, match=r'`preds\[0\]`: expected \(boxes, scores, labels\)'): detection_map([GT2[0]], GT2[:1], 3)
    with pytest.raises(FusionInputError, match='`num_classes`'): detection_map(empty_det(2), GT2, 0)


# ---------------------------------------------------------------- mIoU

def test_miou_known_values():
    t, p = torch.tensor([[0, 0], [1, 1]]), torch.tensor([[0, 1], [1, 1]])
    r = segmentation_miou(p, t, 3, class_names=('a', 'b', 'c'))
    assert r['miou'] == pytest.approx(7 / 12) and r['pixel_accuracy'] == pytest.approx(0.75)
    assert r['per_class_iou']['a'] == pytest.approx(0.5) and math.isnan(r['per_class_iou']['c'])
    assert segmentation_miou(t, t, 3)['miou'] == 1 and segmentation_miou(1 - t, t, 3)['miou'] == 0
    assert segmentation_miou(p, torch.tensor([[0, IGNORE_INDEX], [1, 1]]), 3)['miou'] == 1
    assert math.isnan(segmentation_miou(p, torch.full((2, 2), IGNORE_INDEX), 3)['miou'])

def test_miou_pools_over_images():
    # image 1 perfect on class 0 (4 px); image 2 predicts class 1 where it is 0 (1 px): pooled IoU0 = 4/5, IoU1 = 0/1
    t = [torch.zeros(2, 2, dtype=torch.long), torch.zeros(1, 1, dtype=torch.long)]
    p = [torch.zeros(2, 2, dtype=torch.long), torch.ones(1, 1, dtype=torch.long)]
    r = segmentation_miou(p, t, 2)
    assert r['per_class_iou']['class0'] == pytest.approx(0.8) and r['per_class_iou']['class1'] == 0 and r['miou'] == pytest.approx(0.4)

def test_confusion_matrix_matches_brute_force():
    rng = np.random.default_rng(0)
    t = rng.integers(0, 5, (3, 17, 23)); t[rng.random(t.shape) < 0.1] = IGNORE_INDEX
    p = rng.integers(0, 5, (3, 17, 23))
    want = np.zeros((5, 5), np.int64)
    for a, b in zip(t.ravel(), p.ravel()):
        if a != IGNORE_INDEX: want[a, b] += 1
    assert np.array_equal(confusion_matrix(torch.from_numpy(p), torch.from_numpy(t), 5).numpy(), want)

def test_miou_errors():
    t = torch.zeros(4, 4, dtype=torch.long)
    with pytest.raises(FusionInputError, match=r'`pred\[0\]`: class ids must be in \[0, 2\]'): segmentation_miou(t + 3, t, 3)
    with pytest.raises(FusionInputError, match=r'`pred\[0\]` is \(4, 3\) but `target\[0\]` is \(4, 4\)'): segmentation_miou(t[:, :3], t, 3)
    with pytest.raises(FusionInputError, match='`pred` has 2 masks but `target` has 1'): segmentation_miou([t, t], [t], 3)
    with pytest.raises(FusionInputError, match='`target`: expected integer class ids'): segmentation_miou(t, t.float(), 3)


# ---------------------------------------------------------------- losses and gradients

@pytest.mark.parametrize('kind,cfg', [('detection', SYN_DET), ('segmentation', SYN_SEG)])
def test_loss_gradient_wrt_fused(kind, cfg):
    torch.manual_seed(0)
    b, fused = synthetic_batch()
    head = build_task(kind, **cfg)
    fused = fused.requires_grad_()
    loss = head.loss(fused, b)
    g, = torch.autograd.grad(loss, fused)
    assert loss.shape == () and torch.isfinite(loss) and torch.isfinite(g).all() and g.abs().sum() > 0

@pytest.mark.parametrize('kind,cfg', [('detection', TINY_DET), ('segmentation', TINY_SEG)])
def test_gradcheck_float64(kind, cfg):
    torch.manual_seed(0)
    head = build_task(kind, **cfg).double()
    b, _ = synthetic_batch(2, (32, 32), seed=5)
    fused = (0.1 + 0.8 * torch.rand(2, 1, 32, 32, dtype=torch.float64)).requires_grad_()
    assert gradcheck(lambda f: head.loss(f, b), (fused,), eps=1e-6, atol=1e-4, fast_mode=True)

@pytest.mark.parametrize('kind,cfg', [('detection', SYN_DET), ('segmentation', SYN_SEG)])
def test_per_image_losses_are_batch_independent(kind, cfg):
    torch.manual_seed(0)
    b, fused = synthetic_batch(3)
    head = build_task(kind, **cfg)
    per = head.loss(fused, b, reduction='none')
    assert per.shape == (3,)
    for i in range(3):
        sub = {k: v[i:i + 1] for k, v in b.items() if k in ('boxes', 'labels', 'mask')}
        torch.testing.assert_close(head.loss(fused[i:i + 1], sub), per[i], atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(head.loss(fused, b), per.mean())
    torch.testing.assert_close(head.loss(fused, b, reduction='sum'), per.sum())

def test_detection_loss_terms():
    torch.manual_seed(0)
    b, fused = synthetic_batch()
    head = Detector(DetectorConfig(**SYN_DET))
    t = head.loss_terms(fused, b)
    assert set(t) == {'heatmap', 'size', 'offset', 'total'} and all(v.shape == (4,) for v in t.values())
    c = head.config
    torch.testing.assert_close(t['total'], t['heatmap'] + c.size_weight * t['size'] + c.offset_weight * t['offset'])
    # perfect outputs give zero size and offset losses and a near-zero heatmap loss
    out = head(fused)
    K, h, w = out['heatmap'].shape[1:]
    ideal = [ideal_outputs(bx, lb, K, (h, w), 4) for bx, lb in zip(b['boxes'], b['labels'])]
    ideal = {k: torch.cat([o[k] for o in ideal]) for k in ideal[0]}
    z = detection_loss(ideal, b['boxes'], b['labels'], c)  # logits +-10: p = 1 - 4.5e-5 at centres, 4.5e-5 elsewhere
    assert z['size'].abs().max() < 1e-5 and z['offset'].abs().max() < 1e-5 and z['heatmap'].max() < 1e-3
    assert (t['heatmap'] > 100 * z['heatmap']).all()

def test_image_without_objects():
    head = Detector(DetectorConfig(**SYN_DET))
    b = dict(boxes=[torch.zeros(0, 4)], labels=[torch.zeros(0, dtype=torch.long)])
    fused = torch.rand(1, 1, 64, 64, requires_grad=True)
    t = head.loss_terms(fused, b)
    assert t['size'].item() == 0 and t['offset'].item() == 0 and t['heatmap'].item() > 0
    g, = torch.autograd.grad(t['total'].sum(), fused)
    assert torch.isfinite(g).all()

def test_degenerate_and_edge_boxes():
    # a zero-width box, a box on the image border and one reaching past it (clipped by the data loaders within 1 px)
    head = Detector(DetectorConfig(**SYN_DET))
    b = dict(boxes=[torch.tensor([[10., 10, 10, 30], [0, 0, 8, 8], [50, 40, 64.5, 64]])], labels=[torch.tensor([0, 1, 1])])
    fused = torch.rand(1, 1, 64, 64, requires_grad=True)
    loss = head.loss(fused, b)
    g, = torch.autograd.grad(loss, fused)
    assert torch.isfinite(loss) and torch.isfinite(g).all()

def test_segmentation_class_weights():
    torch.manual_seed(0)
    b, fused = synthetic_batch(2)
    a = Segmenter(SegmenterConfig(**SYN_SEG))
    w = Segmenter(SegmenterConfig(**SYN_SEG, class_weights=(1., 1., 1.)))
    w.load_state_dict(a.state_dict())
    torch.testing.assert_close(a.loss(fused, b), w.loss(fused, b))   # unit weights change nothing
    w.config.class_weights = (1e-3, 1., 1.)
    assert not torch.allclose(a.loss(fused, b), w.loss(fused, b))


# ---------------------------------------------------------------- what the meta-learner needs

@pytest.mark.parametrize('kind,cfg', [('detection', SYN_DET), ('segmentation', SYN_SEG)])
def test_functional_params(kind, cfg):
    torch.manual_seed(0)
    b, fused = synthetic_batch(2)
    head = build_task(kind, **cfg)
    params = dict(head.named_parameters())
    torch.testing.assert_close(head.loss(fused, b, params=params), head.loss(fused, b))
    # an inner SGD step taken functionally changes the loss, and the second-order graph reaches the input image
    fused = fused.requires_grad_()
    loss = head.loss(fused, b, params=params)
    grads = torch.autograd.grad(loss, list(params.values()), create_graph=True)
    fast = {k: v - 0.05 * g for (k, v), g in zip(params.items(), grads)}
    after = head.loss(fused, b, params=fast)
    assert after < loss
    g, = torch.autograd.grad(after, fused)
    assert torch.isfinite(g).all() and g.abs().sum() > 0
    assert head.predict(fused, params=fast) is not None

@pytest.mark.parametrize('kind,cfg', [('detection', SYN_DET), ('segmentation', SYN_SEG)])
def test_torch_func_grad(kind, cfg):
    torch.manual_seed(0)
    b, fused = synthetic_batch(2)
    head = build_task(kind, **cfg)
    g = torch.func.grad(lambda f: head.loss(f, b))(fused)
    f = fused.clone().requires_grad_()
    want, = torch.autograd.grad(head.loss(f, b), f)
    torch.testing.assert_close(g, want)

def test_double_backward_wrt_fused():
    # a gradient penalty on the input, as some meta-objectives use: needs second derivatives through the head
    torch.manual_seed(0)
    b, fused = synthetic_batch(2)
    for head in (Detector(DetectorConfig(**SYN_DET)), Segmenter(SegmenterConfig(**SYN_SEG))):
        f = fused.clone().requires_grad_()
        g, = torch.autograd.grad(head.loss(f, b), f, create_graph=True)
        gg, = torch.autograd.grad(g.square().sum(), f)
        assert torch.isfinite(gg).all() and gg.abs().sum() > 0


# ---------------------------------------------------------------- overfitting a tiny set

def _overfit(head, b, fused, steps, lr=3e-3):
    torch.manual_seed(0)
    opt, losses = torch.optim.Adam(head.parameters(), lr=lr), []
    for _ in range(steps):
        loss = head.loss(fused, b)
        opt.zero_grad(); loss.backward(); opt.step()
        losses.append(loss.item())
    return losses

def test_detector_overfits():
    torch.manual_seed(0)
    b, fused = synthetic_batch(4, (64, 96), seed=2)
    head = Detector(DetectorConfig(**SYN_DET))
    before = head.evaluate(fused, b)['map50']
    losses = _overfit(head, b, fused, 100)
    after = head.evaluate(fused, b)
    assert losses[-1] < 0.2 * losses[0], (losses[0], losses[-1])
    assert after['map50'] > max(0.7, before), (before, after)

def test_segmenter_overfits():
    torch.manual_seed(0)
    b, fused = synthetic_batch(4, (64, 96), seed=2)
    head = Segmenter(SegmenterConfig(**SYN_SEG))
    before = head.evaluate(fused, b)['miou']
    losses = _overfit(head, b, fused, 70)
    after = head.evaluate(fused, b)['miou']
    assert losses[-1] < 0.2 * losses[0], (losses[0], losses[-1])
    assert after > max(0.7, before), (before, after)


# ---------------------------------------------------------------- evaluate, build, checkpoints

def test_evaluate_inputs():
    torch.manual_seed(0)
    b, fused = synthetic_batch(3)
    head = Detector(DetectorConfig(**SYN_DET))
    items = [dict(boxes=b['boxes'][i], labels=b['labels'][i]) for i in range(3)]
    r1, r2 = head.evaluate(fused, b), head.evaluate(list(fused), items, batch_size=2)
    assert r1['score'] == r1['map50'] and (r1['map50'] == r2['map50'] or math.isnan(r1['map50']) and math.isnan(r2['map50']))
    # images of different sizes
    imgs = [torch.rand(1, 40, 56), torch.rand(1, 1, 64, 48), torch.rand(1, 40, 56)]
    segh = Segmenter(SegmenterConfig(**SYN_SEG))
    masks = [dict(mask=torch.randint(0, 3, im.shape[-2:])) for im in imgs]
    r = segh.evaluate(imgs, masks)
    assert 0 <= r['score'] <= 1 and r['confusion'].sum() == 2 * 40 * 56 + 64 * 48
    with pytest.raises(FusionInputError, match='`targets`: 2 entries for 3 images'): segh.evaluate(imgs, masks[:2])
    with pytest.raises(FusionInputError, match=r"`targets\[0\]`: expected a dict with \['mask'\]"): segh.evaluate(imgs, items)
    with pytest.raises(FusionInputError, match=r'`fused_images\[1\]`: expected 1 channel'): segh.evaluate([imgs[0], torch.rand(3, 8, 8)], masks[:2])

def test_build_task():
    assert set(TASKS) == {'detection', 'segmentation'}
    assert isinstance(build_task('detection'), Detector) and isinstance(build_task('segmentation'), Segmenter)
    assert all(isinstance(build_task(k), TaskHead) for k in TASKS)
    with pytest.raises(FusionInputError, match="valid kinds: detection, segmentation"): build_task('pose')
    with pytest.raises(FusionInputError, match=r"unknown field\(s\) \['stides'\]"): build_task('detection', stides=4)
    with pytest.raises(FusionInputError, match='`config`: expected a DetectorConfig'): Detector(SegmenterConfig())

@pytest.mark.parametrize('kind,cfg', [('detection', dict(SYN_DET, stride=8, widths=[8, 16, 24])), ('segmentation', dict(SYN_SEG, class_weights=[1, 2, 3]))])
def test_save_load_roundtrip(tmp_path, kind, cfg):
    torch.manual_seed(0)
    head = build_task(kind, **cfg)
    with torch.no_grad():
        for p in head.parameters(): p.add_(0.01 * torch.randn_like(p))  # not the initial values
    save_task(head, tmp_path / 'ck')
    assert sorted(p.name for p in (tmp_path / 'ck').iterdir()) == [TASK_CONFIG, TASK_WEIGHTS]  # no temporary files left
    back = load_task(tmp_path / 'ck')
    assert type(back) is type(head) and back.config == head.config and not back.training
    x = torch.rand(2, 1, 48, 64)
    with torch.no_grad():
        for k, v in head(x).items(): assert torch.equal(back(x)[k], v)
    meta = json.loads((tmp_path / 'ck' / TASK_CONFIG).read_text())
    assert meta['kind'] == kind and meta['format'] == 1
    save_task(back, tmp_path / 'ck')  # overwriting works

def test_load_errors(tmp_path):
    with pytest.raises(FusionInputError, match='has no task.safetensors'): load_task(tmp_path)
    save_task(Detector(), tmp_path)
    (tmp_path / TASK_CONFIG).write_text('{not json')
    with pytest.raises(FusionInputError, match='task.json: not valid JSON'): load_task(tmp_path)
    (tmp_path / TASK_CONFIG).write_text(json.dumps(dict(format=1, kind='pose', config={})))
    with pytest.raises(FusionInputError, match="unknown task 'pose'"): load_task(tmp_path)
    (tmp_path / TASK_CONFIG).write_text(json.dumps(dict(format=1, kind='detection', config=dict(num_classes=2, class_names=None))))
    with pytest.raises(RuntimeError, match='size mismatch'): load_task(tmp_path)  # weights of a 3-class head
    with pytest.raises(FusionInputError, match='`head`: expected a TaskHead'): save_task(torch.nn.Linear(2, 2), tmp_path)


# ---------------------------------------------------------------- bad input

def test_bad_inputs():
    b, fused = synthetic_batch(2, (64, 64))
    det, seg = Detector(DetectorConfig(**SYN_DET)), Segmenter(SegmenterConfig(**SYN_SEG))
    for head in (det, seg):
        with pytest.raises(FusionInputError, match='`fused`: expected 1 channel'): head.loss(fused.repeat(1, 3, 1, 1), b)
        with pytest.raises(FusionInputError, match=r'`fused`: expected values in \[0.0, 1.0\]'): head.loss(fused * 255, b)
        with pytest.raises(FusionInputError, match='`fused`: expected a floating tensor'): head.predict(fused[0])
        with pytest.raises(FusionInputError, match='`fused`: expected finite values'): head.loss(fused * float('nan'), b)
        with pytest.raises(FusionInputError, match='`reduction`'): head.loss(fused, b, reduction='max')
    with pytest.raises(FusionInputError, match=r"`batch\['boxes'\]`: expected a list of 2 per-image tensors, got list of length 1"):
        det.loss(fused, dict(b, boxes=b['boxes'][:1]))
    with pytest.raises(FusionInputError, match=r"`batch\['boxes'\]\[0\]`: expected a float tensor \(N, 4\)"):
        det.loss(fused, dict(b, boxes=[x[:, :3] for x in b['boxes']]))
    with pytest.raises(FusionInputError, match=r"`batch\['labels'\]\[0\]`: expected integer class ids"):
        det.loss(fused, dict(b, labels=[x.float() for x in b['labels']]))
    with pytest.raises(FusionInputError, match="`batch`: expected a dict with 'mask'"): seg.loss(fused, dict(boxes=b['boxes']))
    with pytest.raises(FusionInputError, match=r"`batch\['mask'\]`: expected integer class ids \(2, 64, 64\)"): seg.loss(fused, dict(mask=b['mask'].float()))
    for bad, msg in ((dict(widths=()), 'widths'), (dict(head_width=0), 'head_width'), (dict(score_threshold=2), 'score_threshold'),
                     (dict(peak_kernel=2), 'peak_kernel'), (dict(prior_prob=0), 'prior_prob'), (dict(stride=32), 'stride')):
        with pytest.raises(FusionInputError, match=f'DetectorConfig.{msg}'): DetectorConfig(**bad)
    for bad, msg in ((dict(ignore_index=0), 'ignore_index'), (dict(class_weights=(1, 2)), 'class_weights'), (dict(num_classes=2), 'class_names')):
        with pytest.raises(FusionInputError, match=f'SegmenterConfig.{msg}'): SegmenterConfig(**bad)


# ---------------------------------------------------------------- dataset layouts

def _png(path: Path, arr: np.ndarray):
    path.parent.mkdir(parents=True, exist_ok=True)
    assert cv2.imwrite(str(path), arr)

def test_msrs_segmentation_layout(tmp_path):
    rng = np.random.default_rng(0)
    for i in range(3):
        name = f'{i:05d}N.png'
        _png(tmp_path / 'ir' / name, rng.integers(0, 256, (40, 56), dtype=np.uint8))
        _png(tmp_path / 'vi' / name, rng.integers(0, 256, (40, 56, 3), dtype=np.uint8))
        lab = rng.integers(0, 9, (40, 56)).astype(np.uint8); lab[:4] = IGNORE_INDEX
        _png(tmp_path / 'Segmentation_labels' / name, lab)
    ds = get_dataset('msrs', tmp_path)
    b = collate_fusion([ds[i] for i in range(3)])
    fused = (b['ir'] + b['vis']) / 2
    head = Segmenter()  # MSRS defaults
    assert head.config.class_names == MSRS_SEG_CLASSES
    assert torch.isfinite(head.loss(fused, b))
    r = head.evaluate(fused, b)
    assert r['confusion'].sum() == 3 * 36 * 56 and list(r['per_class_iou']) == list(MSRS_SEG_CLASSES)
    r2 = head.evaluate([ds[i]['vis'] for i in range(3)], [ds[i] for i in range(3)])  # dataset items directly
    assert r2['confusion'].sum() == r['confusion'].sum()

def test_msrs_detection_layout(tmp_path):
    rng = np.random.default_rng(0)
    rows = {'00001D': '0 0.5 0.5 0.25 0.5\n2 0.2 0.3 0.1 0.1\n', '00002D': ''}
    for name, txt in rows.items():
        _png(tmp_path / 'ir' / f'{name}.png', rng.integers(0, 256, (48, 64), dtype=np.uint8))
        _png(tmp_path / 'vi' / f'{name}.png', rng.integers(0, 256, (48, 64, 3), dtype=np.uint8))
        (tmp_path / 'det_labels' / 'fusion').mkdir(parents=True, exist_ok=True)
        (tmp_path / 'det_labels' / 'fusion' / f'{name}.txt').write_text(txt)
    ds = get_dataset('msrs', tmp_path)
    items = [ds[i] for i in range(len(ds))]
    head = Detector()
    r = head.evaluate([it['vis'] for it in items], items)
    assert r['num_gt'] == 2 and 0 <= r['score'] <= 1
    assert torch.isfinite(head.loss(torch.stack([it['vis'] for it in items]), collate_fusion(items)))


@pytest.mark.slow
def test_real_msrs_boxes(shared_path):
    ds = get_dataset('msrs', shared_path('data/MSRS/test').parent, split='test')
    items = [ds[i] for i in range(4)]
    imgs = [torch.nn.functional.interpolate(((it['ir'] + it['vis']) / 2)[None], scale_factor=0.5, mode='area')[0] for it in items]
    tg = [dict(boxes=it['boxes'] * 0.5, labels=it['labels']) for it in items]
    r = Detector().evaluate(imgs, tg)
    assert r['num_images'] == 4 and r['num_gt'] == sum(len(t['boxes']) for t in tg)
    assert torch.isfinite(Detector().loss(torch.stack(imgs), dict(boxes=[t['boxes'] for t in tg], labels=[t['labels'] for t in tg])))


# ---------------------------------------------------------------- devices

@pytest.mark.cuda
@pytest.mark.parametrize('kind,cfg', [('detection', SYN_DET), ('segmentation', SYN_SEG)])
def test_cuda(kind, cfg, tmp_path):
    b, fused = synthetic_batch(2)
    head = build_task(kind, **cfg).cuda()
    f = fused.cuda().requires_grad_()
    gpu = {k: (v.cuda() if isinstance(v, torch.Tensor) else [x.cuda() for x in v] if k in ('boxes', 'labels') else v) for k, v in b.items()}
    loss = head.loss(f, gpu)
    g, = torch.autograd.grad(loss, f)
    assert g.is_cuda and torch.isfinite(g).all()
    torch.testing.assert_close(loss.cpu(), head.cpu().loss(fused, b), atol=1e-4, rtol=1e-4)
    head.cuda()
    r = head.evaluate(f.detach(), gpu)
    assert 'score' in r
    save_task(head, tmp_path)
    assert next(load_task(tmp_path, device='cuda').parameters()).is_cuda
