"The experiment helpers: cropped detector batches, configuration checks, resumable result rows."
import json

import pytest
import torch

from sfofusion.core import FusionInputError
from sfofusion.experiment import DetectorRecipe, ExperimentConfig, detector_batch, read_rows, summarize, summary_markdown


def _bright_boxes(n=6, h=48, w=64):
    imgs, tgs = torch.zeros(n, 1, h, w), []
    for i in range(n):
        b = torch.tensor([[3., 5., 17., 29.], [30., 10., 55., 22.], [20., 30., 28., 42.]]) + i
        for x1, y1, x2, y2 in b.int().tolist(): imgs[i, 0, y1:y2, x1:x2] = 1
        tgs.append(dict(boxes=b, labels=torch.tensor([0, 1, 2])))
    return imgs, tgs


@pytest.mark.parametrize('crop', [None, 20, 32])
@pytest.mark.parametrize('hflip', [0., 1.])
def test_detector_batch_boxes_follow_pixels(crop, hflip):
    imgs, tgs = _bright_boxes()
    x, boxes, labels = detector_batch(imgs, tgs, DetectorRecipe(batch_size=24, crop=crop, hflip=hflip), torch.Generator().manual_seed(1))
    side = (crop, crop) if crop else (48, 64)
    assert x.shape == (24, 1, *side)
    n = 0
    for k in range(24):
        assert len(boxes[k]) == len(labels[k])
        for x1, y1, x2, y2 in boxes[k].tolist():
            assert 0 <= x1 < x2 <= side[1] and 0 <= y1 < y2 <= side[0]
            assert float(x[k, 0, int(y1):int(y2), int(x1):int(x2)].mean()) == 1.0
            n += 1
    assert n > 10  # boxes survive cropping


def test_detector_batch_without_crop_keeps_the_random_stream():
    imgs, tgs = _bright_boxes()
    g1, g2 = torch.Generator().manual_seed(3), torch.Generator().manual_seed(3)
    x, _, _ = detector_batch(imgs, tgs, DetectorRecipe(batch_size=5), g1)
    idx = torch.randint(len(imgs), (5,), generator=g2)
    flip = torch.rand(5, generator=g2) < 0.5
    assert torch.equal(x, torch.where(flip[:, None, None, None], imgs[idx].flip(-1), imgs[idx]))


def test_experiment_config_checks():
    with pytest.raises(FusionInputError, match='variants'): ExperimentConfig(variants=['ir', 'maxx'])
    with pytest.raises(FusionInputError, match="init_weights"): ExperimentConfig(warm_task=True)


def test_rows_and_summary(tmp_path):
    assert read_rows(tmp_path/'none.jsonl') == []
    base = dict(map=0.1, VIF=0.9, Qabf=0.6, SSIM=0.9, EN=6., SD=30., SF=10., MI=2.)
    rows = [dict(base, variant='fusion', seed=s, map50=0.2 + 0.1 * s, train_s_per_step=1.0) for s in (0, 1)]
    rows += [dict(base, variant='meta', seed=s, map50=0.3, train_s_per_step=2.5) for s in (0, 1)]
    rows += [dict(base, variant='ir', seed=0, map50=0.25)]
    (tmp_path/'rows.jsonl').write_text('\n'.join(json.dumps(r) for r in rows) + '\n\n')
    back = read_rows(tmp_path/'rows.jsonl')
    assert back == rows
    s = {d['variant']: d for d in summarize(back)}
    assert s['fusion']['map50'] == pytest.approx(0.25) and s['fusion']['map50_sd'] == pytest.approx(0.0707107, rel=1e-5)
    assert s['meta']['cost_vs_fusion'] == pytest.approx(2.5) and 'cost_vs_fusion' not in s['ir']
    assert s['ir']['seeds'] == 1 and s['ir']['map50_sd'] == 0.0
    assert '2.50x' in summary_markdown(list(s.values()))


def _msrs_folder(root, names, seed0=0):
    "An MSRS-layout folder (ir/, vi/, det_labels/fusion YOLO boxes) of synthetic pairs."
    from sfofusion.core import save_image
    from sfofusion.data import synthetic_pair
    for d in ('ir', 'vi', 'det_labels/fusion'): (root/d).mkdir(parents=True, exist_ok=True)
    for i, n in enumerate(names):
        p = synthetic_pair(64, 80, seed=seed0 + i, rgb=True)
        save_image(root/'ir'/f'{n}.png', p['ir']); save_image(root/'vi'/f'{n}.png', p['vis_rgb'])
        (root/'det_labels'/'fusion'/f'{n}.txt').write_text('0 0.5 0.5 0.2 0.3\n2 0.25 0.3 0.1 0.1\n')
    return root


@pytest.mark.slow
def test_named_evaluation_pairs_record_and_retest(tmp_path):
    "Evaluation pairs named by eval_names are trained on by nothing; the record has one seed order; retest scores elsewhere."
    from sfofusion.experiment import retest, run_experiment
    names = [f'{i:05d}{"D" if i % 2 else "N"}' for i in range(1, 13)]
    a = _msrs_folder(tmp_path/'A', names)
    b = _msrs_folder(tmp_path/'B', ['90001D', '90002N', '90003D'], seed0=100)
    (tmp_path/'held.txt').write_text('\n'.join(names[:4]) + '\n')
    small = dict(widths=(8, 16, 16, 16), head_width=8)
    cfg = ExperimentConfig(data=f'msrs:{a}', scale=1.0, eval_names=[f"@{tmp_path/'held.txt'}"], holdout=2, seeds=[0, 1],
                           variants=['ir', 'fusion', 'meta'], out_dir=str(tmp_path/'exp'),
                           fusion=dict(steps=2, crop=32, batch_size=2, task_cfg=small, steps_per_epoch=1, warmup_steps=1),
                           recipe=dict(steps=3, batch_size=4, warmup_steps=1, task_cfg=small))
    res = run_experiment(cfg)
    rec = json.loads((tmp_path/'exp'/'downstream.json').read_text())
    assert rec == json.loads(json.dumps(res['downstream']))
    assert rec['metric'] == 'mAP@0.5' and rec['seeds'] == [0, 1] and set(rec['inputs']) == {'ir', 'fusion', 'meta'}
    assert sorted(rec['eval_pairs']) == sorted(names[:4]) and not set(rec['train_pairs']) & set(rec['eval_pairs'])
    assert len(rec['train_pairs']) == 8 and all(len(v) == 2 for v in rec['inputs'].values())
    assert rec['paired_differences']['meta-fusion']['n'] == 2
    cfg_meta = json.loads((tmp_path/'exp'/'seed0'/'meta'/'config.json').read_text())
    assert cfg_meta['exclude'] == [f"@{tmp_path/'held.txt'}"]                # the meta run never saw them either
    again = retest(tmp_path/'exp', f'msrs:{b}')
    assert again['eval_pairs'] == ['90001D', '90002N', '90003D'] and again['seeds'] == [0, 1]
    assert (tmp_path/'exp'/'retest_msrs.json').is_file()
    with pytest.raises(FusionInputError, match='`eval_names`: 1 name'):
        run_experiment(ExperimentConfig(data=f'msrs:{a}', eval_names=['nope'], out_dir=str(tmp_path/'x')))
