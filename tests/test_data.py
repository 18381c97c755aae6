"Tests of sfofusion.data: label readers, dataset layouts, synthetic pairs, crops, download and dataset checks."
import hashlib, http.server, io, os, re, socket, tarfile, threading, warnings, zipfile
from pathlib import Path

import cv2
import numpy as np
import pytest
import torch
from torch.utils.data import DataLoader

from sfofusion.core import FusionInputError, Pair, rgb_to_ycbcr
from sfofusion.data.crops import _pad_reflect      # a private helper, tested where it lives
from sfofusion.data import (BOX_TOL_PX, DATASET_SOURCES, DATASETS, FMB, IGNORE_INDEX, LLVIP, M3FD, MSRS, TNO,
                            BoxLines, DatasetDownloadError, FusionCrops, Layout, MergedLabels, PairFolder, RoadScene,
                            SkippedDataWarning, SyntheticPairs, VocLabels, YoloLabels, check_dataset,
                            collate_fusion, crop_boxes, default_dataset_dir, detect_dataset, download, extract_archive,
                            fetch_dataset, get_dataset, inspect_pair, open_box_source, read_class_names, read_mask,
                            synthetic_pair)


# ---------------------------------------------------------------- helpers

def png(path: Path, arr: np.ndarray) -> Path:
    "Write `arr` (H, W) or (H, W, 3) RGB uint8 as PNG, creating folders."
    path.parent.mkdir(parents=True, exist_ok=True)
    a = arr[..., ::-1] if arr.ndim == 3 else arr
    assert cv2.imwrite(str(path), np.ascontiguousarray(a))
    return path

def ramp(h: int, w: int, k: int=0) -> np.ndarray:
    "A distinct uint8 test image."
    return ((np.arange(h)[:, None] * 3 + np.arange(w)[None] * 5 + k * 17) % 256).astype(np.uint8)

def voc(objs, w=None, h=None) -> str:
    "PASCAL-VOC XML text for objects (name, x1, y1, x2, y2)."
    size = f"<size><width>{w}</width><height>{h}</height><depth>1</depth></size>" if w else ""
    o = ''.join(f"<object><name>{n}</name><bndbox><xmin>{a}</xmin><ymin>{b}</ymin><xmax>{c}</xmax><ymax>{d}</ymax></bndbox></object>"
                for n, a, b, c, d in objs)
    return f"<annotation><filename>x.jpg</filename>{size}{o}</annotation>"

def make_msrs(root: Path, names=('00001D', '00002N'), split='train', h=24, w=32, masks=True) -> Path:
    "A tiny MSRS split: ir/, vi/ (RGB), Segmentation_labels/, det_labels/fusion + classes.txt."
    base = root/split
    for k, n in enumerate(names):
        png(base/'ir'/f'{n}.png', ramp(h, w, k))
        png(base/'vi'/f'{n}.png', np.stack([ramp(h, w, k), ramp(h, w, k + 1), ramp(h, w, k + 2)], -1))
        if masks: png(base/'Segmentation_labels'/f'{n}.png', (np.arange(h * w).reshape(h, w) % 9).astype(np.uint8))
        (base/'det_labels'/'fusion').mkdir(parents=True, exist_ok=True)
        (base/'det_labels'/'fusion'/f'{n}.txt').write_text("2 0.5 0.5 0.25 0.5\n0 0.125 0.25 0.25 0.5\n" if k == 0 else "")
    (base/'det_labels'/'classes.txt').write_text("0 person\n1 bicycle\n2 car\n")
    return root


# ---------------------------------------------------------------- label readers

def test_yolo_reads_pixels_and_clips_within_tolerance(tmp_path):
    (tmp_path/'a.txt').write_text("1 0.5 0.5 0.5 0.5\n\n0 0.05 0.5 0.1 0.2\n")
    b, l = YoloLabels(tmp_path, ('p', 'c')).read('a', 40, 20)
    torch.testing.assert_close(b, torch.tensor([[10., 5, 30, 15], [0, 8, 4, 12]]))
    assert l.dtype == torch.int64 and l.tolist() == [1, 0]
    # overshooting by less than BOX_TOL_PX is clipped, more is an error naming the file and the line
    (tmp_path/'b.txt').write_text(f"0 {(40 - 2 + 0.5 * BOX_TOL_PX) / 40} 0.5 {4 / 40} 0.2\n")
    assert YoloLabels(tmp_path, ('p',)).read('b', 40, 20)[0][0, 2] == 40
    (tmp_path/'c.txt').write_text("0 0.99 0.5 0.2 0.2\n")
    with pytest.raises(FusionInputError, match=r"c\.txt.*line 1: box .* outside the 40x20 image"):
        YoloLabels(tmp_path, ('p',)).read('c', 40, 20)

def test_yolo_issues_are_listed_per_line(tmp_path):
    (tmp_path/'a.txt').write_text("0 0.5 0.5 0.1 0.1\n3 0.5 0.5 0.1 0.1\n0 0.5 0.5 0.1\n0.5 0.5 0.5 0.1 0.1\n0 a b c d\n0 0.5 0.5 0 0.1\n-1 0.5 0.5 0.1 0.1\n")
    b, l, issues = YoloLabels(tmp_path, ('p', 'c', 'x')).parse('a', 100, 100)
    assert len(b) == 1 and len(issues) == 6
    assert [int(re.match(r'line (\d+)', s).group(1)) for s in issues] == [2, 3, 4, 5, 6, 7]
    assert 'class id 3 outside [0, 2]' in issues[0] and 'expected 5 fields' in issues[1] and 'empty box' in issues[4]
    with pytest.raises(FusionInputError, match=r'a\.txt: 6 bad box'):
        YoloLabels(tmp_path, ('p', 'c', 'x')).read('a', 100, 100)

def test_yolo_missing_file_and_classes_txt_ignored(tmp_path):
    (tmp_path/'classes.txt').write_text("person\ncar\n")
    src = YoloLabels(tmp_path, ('person', 'car'))
    assert src.names() == set()
    with pytest.raises(FusionInputError, match="no box annotation for 'x'"): src.read('x', 10, 10)
    assert read_class_names(tmp_path/'classes.txt') == ('person', 'car')
    (tmp_path/'c2.txt').write_text("0 person\n1 bicycle\n2 car\n")
    assert read_class_names(tmp_path/'c2.txt') == ('person', 'bicycle', 'car')
    (tmp_path/'c3.txt').write_text("0 person\n2 car\n")
    with pytest.raises(FusionInputError, match='expected class id 1'): read_class_names(tmp_path/'c3.txt')

def test_voc_reader(tmp_path):
    (tmp_path/'a.xml').write_text(voc([('Person', 1, 2, 11, 22), ('car', 0, 0, 5, 5)], 40, 30))
    b, l = VocLabels(tmp_path, ('person', 'Car')).read('a', 40, 30)
    assert b.tolist() == [[1, 2, 11, 22], [0, 0, 5, 5]] and l.tolist() == [0, 1]
    (tmp_path/'b.xml').write_text(voc([('dog', 1, 2, 11, 22), ('person', 5, 5, 3, 9), ('person', 1, 1, 60, 9)], 50, 30))
    _, _, issues = VocLabels(tmp_path, ('person',)).parse('b', 40, 30)
    assert len(issues) == 4
    assert "says 50x30" in issues[0] and "unknown class 'dog'" in issues[1] and 'empty box' in issues[2] and 'outside' in issues[3]
    (tmp_path/'c.xml').write_text("<annotation><object>")
    assert 'not readable XML' in VocLabels(tmp_path, ('person',)).parse('c', 40, 30)[2][0]

def test_box_lines_reader(tmp_path):
    f = tmp_path/'boxes.txt'
    f.write_text("010001.jpg 287,428,351,662,0 351,391,424,642,0\n010002.jpg\n010003.jpg 1,2,3\n010003.jpg 1,2,3,4,0\n010004.jpg 5,5,9,9,1\n")
    src = BoxLines(f, ('person',))
    assert src.names() == {'010001', '010002', '010003', '010004'}
    b, l = src.read('010001', 1280, 1024)
    assert b.tolist() == [[287, 428, 351, 662], [351, 391, 424, 642]] and l.tolist() == [0, 0]
    assert src.read('010002', 1280, 1024)[0].shape == (0, 4)  # listed without boxes: no object
    issues = src.parse('010003', 1280, 1024)[2]
    assert any('2 lines' in s for s in issues) and any("expected `x1,y1,x2,y2,cls`" in s for s in issues)
    assert 'class id 1 outside' in src.parse('010004', 1280, 1024)[2][0]

def test_open_box_source_sniffs_format(tmp_path):
    (tmp_path/'x').mkdir(); (tmp_path/'x'/'a.xml').write_text(voc([]))
    (tmp_path/'y').mkdir(); (tmp_path/'y'/'a.txt').write_text("")
    (tmp_path/'z.txt').write_text("a.png 1,1,2,2,0\n")
    (tmp_path/'e').mkdir()
    assert isinstance(open_box_source(tmp_path/'x', ('p',)), VocLabels)
    assert isinstance(open_box_source(tmp_path/'y', ('p',)), YoloLabels)
    assert isinstance(open_box_source(tmp_path/'z.txt', ('p',)), BoxLines)
    with pytest.raises(FusionInputError, match='neither'): open_box_source(tmp_path/'e', ('p',))
    with pytest.raises(FusionInputError, match='does not exist'): open_box_source(tmp_path/'nope', ('p',))

def test_read_mask(tmp_path):
    m = (np.arange(30).reshape(5, 6) % 9).astype(np.uint8)
    m[0, 0] = IGNORE_INDEX
    t = read_mask(png(tmp_path/'m.png', m), 9)
    assert t.dtype == torch.int64 and t.tolist() == m.astype(np.int64).tolist()
    assert read_mask(png(tmp_path/'g3.png', np.stack([m] * 3, -1)), 9).shape == (5, 6)  # grey stored as RGB
    with pytest.raises(FusionInputError, match=r'class ids \[9\] outside \[0, 8\]'):
        read_mask(png(tmp_path/'bad.png', np.full((5, 6), 9, np.uint8)), 9)
    col = np.zeros((5, 6, 3), np.uint8); col[..., 0] = 200
    with pytest.raises(FusionInputError, match='colour image'): read_mask(png(tmp_path/'c.png', col), 9)


# ---------------------------------------------------------------- datasets

def test_msrs_layout_with_splits_boxes_masks_cbcr(tmp_path):
    root = make_msrs(tmp_path/'MSRS')
    make_msrs(root, names=('00003D',), split='test')
    with pytest.raises(FusionInputError, match=r"holds the splits \['test', 'train'\]; pass split="): MSRS(root)
    with pytest.raises(FusionInputError, match="no split 'val'"): MSRS(root, 'val')
    ds = MSRS(root, 'train', cbcr=True)
    assert len(ds) == 2 and ds.names == ['00001D', '00002N']
    it = ds[0]
    assert set(it) == {'name', 'ir', 'vis', 'cbcr', 'boxes', 'labels', 'mask'}
    assert it['ir'].shape == (1, 24, 32) and it['vis'].shape == (1, 24, 32) and it['cbcr'].shape == (2, 24, 32)
    assert it['ir'].dtype == torch.float32 and 0 <= it['ir'].min() and it['ir'].max() <= 1
    torch.testing.assert_close(it['ir'][0] * 255, torch.from_numpy(ramp(24, 32, 0)).float())
    rgb = torch.from_numpy(np.stack([ramp(24, 32, 0), ramp(24, 32, 1), ramp(24, 32, 2)])).float()[None] / 255
    torch.testing.assert_close(torch.cat([it['vis'], it['cbcr']]), rgb_to_ycbcr(rgb)[0])
    torch.testing.assert_close(it['boxes'], torch.tensor([[12., 6, 20, 18], [0, 0, 8, 12]]))
    assert it['labels'].tolist() == [2, 0] and it['mask'].dtype == torch.int64 and it['mask'].shape == (24, 32)
    assert ds[1]['boxes'].shape == (0, 4)  # empty YOLO file: no object
    assert set(MSRS(root, 'train', boxes=False, masks=False)[0]) == {'name', 'ir', 'vis'}
    assert MSRS(root/'test').names == ['00003D']  # a split folder given directly
    with pytest.raises(FusionInputError, match=r"unknown option\(s\) \['nonsense'\] \(valid: \['box_set'\]\)"): MSRS(root, 'train', nonsense=1)
    with pytest.raises(FusionInputError, match='`box_set`'): MSRS(root, 'train', box_set='lidar')
    with pytest.raises(FusionInputError, match='found no box labels'): MSRS(root, 'train', box_set='infrared', boxes=True)

def test_msrs_box_sets_and_grey_vis_cbcr(tmp_path):
    root = make_msrs(tmp_path, masks=False)
    png(root/'train'/'vi'/'00001D.png', ramp(24, 32, 5))  # grey VIS
    (root/'train'/'det_labels'/'infrared').mkdir()
    for n in ('00001D', '00002N'): (root/'train'/'det_labels'/'infrared'/f'{n}.txt').write_text("1 0.5 0.5 0.5 0.5\n")
    it = MSRS(root, 'train', box_set='infrared', cbcr=True)[0]
    assert it['labels'].tolist() == [1] and 'mask' not in it
    assert torch.equal(it['cbcr'], torch.full((2, 24, 32), 0.5))
    with pytest.raises(FusionInputError, match='masks=True'): MSRS(root, 'train', masks=True)

def test_default_raises_naming_the_file(tmp_path):
    root = make_msrs(tmp_path)
    (root/'train'/'ir'/'00002N.png').write_bytes(b'broken')
    ds = MSRS(root, 'train')  # construction reads names only
    with pytest.raises(FusionInputError, match=r'00002N\.png: cannot decode'): ds[1]
    (root/'train'/'det_labels'/'fusion'/'00001D.txt').write_text("7 0.5 0.5 0.1 0.1\n")
    with pytest.raises(FusionInputError, match=r'fusion/00001D\.txt: 1 bad box.*class id 7'): ds[0]
    png(root/'train'/'ir'/'00009D.png', ramp(24, 32))
    with pytest.raises(FusionInputError, match=r'unmatched files: 1 file\(s\) in .*ir without a VIS counterpart: 00009D'):
        MSRS(root, 'train')
    (root/'train'/'det_labels'/'fusion'/'00002N.txt').unlink()
    (root/'train'/'ir'/'00009D.png').unlink()
    with pytest.raises(FusionInputError, match=r'1 of 2 pair\(s\) lack a label .*00002N \(no box annotation\).*boxes=False'):
        MSRS(root, 'train')

def test_skip_bad_warns_listing_every_skipped_file(tmp_path):
    root = make_msrs(tmp_path, names=('a', 'b', 'c', 'd', 'e'))
    base = root/'train'
    (base/'ir'/'b.png').write_bytes(b'broken')
    png(base/'vi'/'c.png', ramp(20, 32))                      # size mismatch
    (base/'det_labels'/'fusion'/'d.txt').write_text("x\n")   # malformed
    png(base/'Segmentation_labels'/'e.png', np.full((24, 32), 50, np.uint8))  # bad class id
    png(base/'ir'/'lonely.png', ramp(24, 32))
    with pytest.warns(SkippedDataWarning) as rec:
        ds = MSRS(root, 'train', skip_bad=True)
    assert ds.names == ['a']
    msg = str(rec[0].message)
    for s in ('lonely', 'b (', 'b.png: cannot decode', 'c (', 'is 32x24 but', 'd (', 'expected 5 fields', 'e (', 'class ids [50]'):
        assert s in msg, s
    (tmp_path/'z'/'ir').mkdir(parents=True); (tmp_path/'z'/'ir'/'a.png').write_bytes(b'')
    png(tmp_path/'z'/'vi'/'a.png', ramp(8, 8))
    with pytest.warns(SkippedDataWarning, match='1 bad pair'), pytest.raises(FusionInputError, match='no usable pair'):
        PairFolder(tmp_path/'z', skip_bad=True)


def test_fmb_m3fd_llvip_roadscene_tno_layouts(tmp_path):
    # FMB: Infrared/ Visible/ Label/ under split folders, 15 classes
    for s in ('train', 'test'):
        png(tmp_path/'FMB'/s/'Infrared'/'0001.png', ramp(16, 20)); png(tmp_path/'FMB'/s/'Visible'/'0001.png', ramp(16, 20, 1))
        png(tmp_path/'FMB'/s/'Label'/'0001.png', np.full((16, 20), 14, np.uint8))
    it = FMB(tmp_path/'FMB', 'test')[0]
    assert it['mask'].unique().tolist() == [14] and 'boxes' not in it
    assert FMB.splits(tmp_path/'FMB') == ['test', 'train']
    # M3FD: Ir/ Vis/ Annotation/ (VOC, capitalised class names)
    png(tmp_path/'M3FD'/'Ir'/'00000.png', ramp(30, 40)); png(tmp_path/'M3FD'/'Vis'/'00000.png', ramp(30, 40, 2))
    (tmp_path/'M3FD'/'Annotation').mkdir(); (tmp_path/'M3FD'/'Annotation'/'00000.xml').write_text(voc([('Truck', 2, 3, 20, 25)], 40, 30))
    it = M3FD(tmp_path/'M3FD')[0]
    assert it['labels'].tolist() == [5] and it['boxes'].tolist() == [[2, 3, 20, 25]]
    # LLVIP official: infrared/<split>/, visible/<split>/, Annotations/ shared by the splits
    for s in ('train', 'test'):
        png(tmp_path/'LLVIP'/'infrared'/s/f'{s}1.jpg', ramp(32, 40)); png(tmp_path/'LLVIP'/'visible'/s/f'{s}1.jpg', ramp(32, 40, 3))
        (tmp_path/'LLVIP'/'Annotations').mkdir(exist_ok=True)
        (tmp_path/'LLVIP'/'Annotations'/f'{s}1.xml').write_text(voc([('person', 1, 1, 9, 9)], 40, 32))
    assert LLVIP.splits(tmp_path/'LLVIP') == ['test', 'train']
    with pytest.raises(FusionInputError, match='pass split='): LLVIP(tmp_path/'LLVIP')
    ds = LLVIP(tmp_path/'LLVIP', 'train')
    assert ds.names == ['train1'] and ds[0]['boxes'].tolist() == [[1, 1, 9, 9]]
    # RoadScene as published, TNO with IR stored as 3 equal channels
    png(tmp_path/'RS'/'cropinfrared'/'FLIR_1.jpg', ramp(20, 24)); png(tmp_path/'RS'/'crop_LR_visible'/'FLIR_1.jpg', ramp(20, 24))
    assert RoadScene(tmp_path/'RS').names == ['FLIR_1']
    g = ramp(12, 14)
    png(tmp_path/'TNO'/'ir'/'01.png', np.stack([g] * 3, -1)); png(tmp_path/'TNO'/'vi'/'01.png', g)
    it = TNO(tmp_path/'TNO')[0]
    assert it['ir'].shape == (1, 12, 14) and torch.equal(it['ir'], it['vis'])

def test_llvip_merged_sources_and_explicit_labels(tmp_path):
    root = tmp_path/'LLVIP'
    for n in ('010001', '010005', '010006'):
        png(root/'ir'/f'{n}.jpg', ramp(64, 80)); png(root/'vi'/f'{n}.jpg', ramp(64, 80, 1))
    (root/'labels'/'Annotations').mkdir(parents=True)
    (root/'labels'/'Annotations'/'010005.xml').write_text(voc([('person', 10, 11, 20, 30)], 80, 64))
    (root/'labels'/'boxes.txt').write_text("010001.jpg 1,2,3,4,0 5,6,7,8,0\n")
    with pytest.warns(SkippedDataWarning, match=r'010006 \(no box annotation\)'):
        ds = LLVIP(root, skip_bad=True)
    assert isinstance(ds.layout.boxes, MergedLabels) and ds.names == ['010001', '010005']
    assert ds[0]['boxes'].shape == (2, 4) and ds[1]['boxes'].tolist() == [[10, 11, 20, 30]]
    assert len(LLVIP(root, boxes=False)) == 3
    # labels= points at another source; ir_dir/vi_dir bypass the layout search
    with pytest.warns(SkippedDataWarning, match='2 bad pair'):
        ds = PairFolder(ir_dir=root/'ir', vi_dir=root/'vi', labels=root/'labels'/'boxes.txt', skip_bad=True)
    assert ds.names == ['010001']

def test_registry_and_detection(tmp_path):
    assert set(DATASETS) == {'msrs', 'fmb', 'm3fd', 'llvip', 'tno', 'roadscene', 'pairs'}
    with pytest.raises(FusionInputError, match='valid names: msrs, fmb, m3fd, llvip, tno, roadscene, pairs'):
        get_dataset('kaist', tmp_path)
    root = make_msrs(tmp_path/'x')
    assert isinstance(get_dataset('MSRS', root, split='train'), MSRS)
    assert detect_dataset(root) == 'msrs' and detect_dataset(root/'train') == 'msrs'
    png(tmp_path/'y'/'Infrared'/'a.png', ramp(8, 8)); png(tmp_path/'y'/'Visible'/'a.png', ramp(8, 8))
    assert detect_dataset(tmp_path/'y') == 'fmb'
    png(tmp_path/'z'/'ir'/'a.png', ramp(8, 8)); png(tmp_path/'z'/'vi'/'a.png', ramp(8, 8))
    assert detect_dataset(tmp_path/'z') == 'pairs' and detect_dataset(tmp_path/'TNO_copy') == 'tno'


# ---------------------------------------------------------------- synthetic pairs

def test_synthetic_pair_properties():
    for seed in range(6):
        d = synthetic_pair(96, 128, seed=seed, n_targets=(2, 4), rgb=True)
        assert d['ir'].shape == d['vis'].shape == (1, 96, 128) and d['vis_rgb'].shape == (3, 96, 128)
        for k in ('ir', 'vis', 'vis_rgb'): assert d[k].dtype == torch.float32 and 0 <= d[k].min() and d[k].max() <= 1
        assert 2 <= len(d['boxes']) <= 4 and d['boxes'].shape[1] == 4 and d['labels'].dtype == torch.int64
        assert set(d['mask'].unique().tolist()) <= {0, 1, 2}
        tgt = d['mask'] > 0
        assert d['ir'][0][tgt].mean() - d['ir'][0][~tgt].mean() > 0.3          # warm targets in IR
        assert abs(d['vis'][0][tgt].mean() - d['vis'][0][~tgt].mean()) < 0.1  # camouflaged in VIS
        torch.testing.assert_close(rgb_to_ycbcr(d['vis_rgb'][None])[0, :1], d['vis'], atol=1e-6, rtol=0)
        for b, l in zip(d['boxes'], d['labels']):
            x1, y1, x2, y2 = b.long().tolist()
            assert 0 <= x1 < x2 <= 128 and 0 <= y1 < y2 <= 96
            region = d['mask'][y1:y2, x1:x2] == l + 1
            assert region.any(0).all() or region.any(1).all()  # the box is tight on its target (one axis at least)

def test_synthetic_is_a_function_of_the_seed():
    a, b, c = synthetic_pair(64, 64, seed=(1, 2)), synthetic_pair(64, 64, seed=(1, 2)), synthetic_pair(64, 64, seed=(1, 3))
    assert all(torch.equal(a[k], b[k]) for k in a)
    assert not torch.equal(a['ir'], c['ir'])
    ds = SyntheticPairs(4, (48, 64), seed=7, cbcr=True)
    it = ds[2]
    assert it['name'] == 'synthetic_00002' and it['cbcr'].shape == (2, 48, 64)
    assert torch.equal(it['ir'], synthetic_pair(48, 64, seed=(7, 2))['ir'])
    with pytest.raises(IndexError): ds[4]
    with pytest.raises(FusionInputError, match='at least 32x32'): synthetic_pair(16, 64)


# ---------------------------------------------------------------- crops and collate

class Items(torch.utils.data.Dataset):
    "A dataset serving given items."
    def __init__(self, items): self.items = items
    def __len__(self): return len(self.items)
    def __getitem__(self, i): return self.items[i]

def marked_item(h=40, w=60, box=(10., 5., 20., 25.)):
    "An item whose IR is 1 inside `box` and 0 elsewhere, VIS a ramp, mask the box as class 1."
    ir, mask = torch.zeros(1, h, w), torch.zeros(h, w, dtype=torch.int64)
    x1, y1, x2, y2 = map(int, box)
    ir[:, y1:y2, x1:x2] = 1; mask[y1:y2, x1:x2] = 1
    vis = torch.linspace(0, 1, h * w).reshape(1, h, w)
    return dict(name='m', ir=ir, vis=vis, boxes=torch.tensor([box]), labels=torch.tensor([0]), mask=mask)

def box_of(img: torch.Tensor) -> list:
    "xyxy extent of the nonzero pixels of a (1, H, W) image."
    ys, xs = torch.nonzero(img[0] > 0.5, as_tuple=True)
    return [xs.min().item(), ys.min().item(), xs.max().item() + 1, ys.max().item() + 1]

@pytest.mark.parametrize('hflip,vflip', [(0., 0.), (1., 0.), (0., 1.), (1., 1.)])
def test_crops_move_boxes_with_the_pixels(hflip, vflip):
    crops = FusionCrops(Items([marked_item()] * 20), size=(30, 36), seed=3, hflip=hflip, vflip=vflip, min_box_frac=0.)
    for i in range(20):
        it = crops[i]
        assert it['ir'].shape == (1, 30, 36) and it['vis'].shape == (1, 30, 36) and it['mask'].shape == (30, 36)
        if it['ir'].max() > 0:
            assert it['boxes'].tolist() == [box_of(it['ir'])]
            assert torch.equal(it['mask'] == 1, it['ir'][0] > 0.5)
        else: assert it['boxes'].shape == (0, 4)

def test_crop_boxes_filtering():
    b, l = torch.tensor([[0., 0, 10, 10], [20, 20, 30, 30], [8, 0, 30, 10]]), torch.tensor([0, 1, 2])
    cb, cl = crop_boxes(b, l, x0=5, y0=0, w=10, h=10, min_frac=0.25, min_px=2)
    assert cb.tolist() == [[0, 0, 5, 10], [3, 0, 10, 10]] and cl.tolist() == [0, 2]
    cb, cl = crop_boxes(b, l, x0=5, y0=0, w=10, h=10, min_frac=0.5, min_px=2)
    assert cl.tolist() == [0]  # box 2 keeps 7/22 of its area
    assert crop_boxes(b[:0], l[:0], 0, 0, 5, 5)[0].shape == (0, 4)

def test_crops_deterministic_in_seed_epoch_index():
    base = SyntheticPairs(6, (64, 80), seed=2)
    c1, c2 = FusionCrops(base, 40, seed=5), FusionCrops(base, 40, seed=5)
    for i in (0, 3, 5): assert torch.equal(c1[i]['ir'], c2[i]['ir'])
    order = [c1[i]['vis'] for i in (5, 0, 3)]  # independent of access order
    assert all(torch.equal(a, c2[i]['vis']) for a, i in zip(order, (5, 0, 3)))
    c2.set_epoch(1)
    assert sum(torch.equal(c1[i]['ir'], c2[i]['ir']) for i in range(6)) < 3
    assert not torch.equal(FusionCrops(base, 40, seed=6)[0]['ir'], c1[0]['ir']) or not torch.equal(FusionCrops(base, 40, seed=6)[1]['ir'], c1[1]['ir'])

def test_dataloader_two_workers_matches_single_process():
    crops = FusionCrops(SyntheticPairs(10, (56, 72), seed=1), 48, seed=9, vflip=0.5)
    crops.set_epoch(2)
    kw = dict(batch_size=3, shuffle=False, collate_fn=collate_fusion)
    b0 = list(DataLoader(crops, num_workers=0, **kw))
    b2 = list(DataLoader(crops, num_workers=2, **kw))
    assert len(b0) == len(b2) == 4
    for x, y in zip(b0, b2):
        assert x['name'] == y['name']
        for k in ('ir', 'vis', 'mask'): assert torch.equal(x[k], y[k])
        assert all(torch.equal(p, q) for p, q in zip(x['boxes'], y['boxes']))
    assert b0[0]['ir'].shape == (3, 1, 48, 48) and b0[0]['mask'].shape == (3, 48, 48) and isinstance(b0[0]['boxes'], list)

def test_small_images_reflect_or_resize():
    it = marked_item(h=20, w=16, box=(2., 3., 6., 9.))
    r = FusionCrops(Items([it]), size=(48, 40), hflip=0.)[0]
    assert r['ir'].shape == (1, 48, 40)
    assert (r['mask'][20:] == IGNORE_INDEX).all() and (r['mask'][:, 16:] == IGNORE_INDEX).all()
    assert (r['mask'][:20, :16] == it['mask']).all()
    np.testing.assert_array_equal(r['vis'][0].numpy(), np.pad(it['vis'][0].numpy(), ((0, 28), (0, 24)), mode='reflect'))
    assert r['boxes'].tolist() == [[2, 3, 6, 9]]
    z = FusionCrops(Items([it]), size=(40, 40), hflip=0., small='resize')[0]  # scale 2.5 -> 50 x 40: one random offset
    assert z['ir'].shape == (1, 40, 40) and z['mask'].max() <= 1
    if len(z['boxes']): assert z['boxes'][0, 2] - z['boxes'][0, 0] == pytest.approx(10.)
    assert _pad_reflect(torch.ones(1, 1, 3), 5, 2).shape == (1, 6, 5)  # one row: replicated
    with pytest.raises(FusionInputError, match='`small`'): FusionCrops(Items([it]), small='crop')
    with pytest.raises(FusionInputError, match='`hflip`'): FusionCrops(Items([it]), hflip=2)

def test_rgb_vis_converted_and_swap():
    it = marked_item()
    rgb = torch.rand(3, 40, 60)
    c = FusionCrops(Items([dict(it, vis=rgb)]), size=40, hflip=0.)[0]
    assert c['vis'].shape == (1, 40, 40) and c['cbcr'].shape == (2, 40, 40)
    x0 = (it['ir'][0] > 0.5).nonzero()[:, 1].min().item() - c['boxes'][0, 0].item()  # the crop offset
    torch.testing.assert_close(c['vis'], rgb_to_ycbcr(rgb[None])[0, :1, :, int(x0):int(x0) + 40])
    s = FusionCrops(Items([it]), size=40, hflip=0., swap=1.)[0]
    n = FusionCrops(Items([it]), size=40, hflip=0., swap=0.)[0]
    assert s['swapped'] is True and 'swapped' not in n
    assert torch.equal(s['ir'], n['vis']) and torch.equal(s['vis'], n['ir'])

def test_collate():
    items = [dict(name=f'n{i}', ir=torch.rand(1, 4, 5), boxes=torch.zeros(i, 4), labels=torch.zeros(i, dtype=torch.long),
                  mask=torch.zeros(4, 5, dtype=torch.long), swapped=bool(i % 2)) for i in range(3)]
    b = collate_fusion(items)
    assert b['name'] == ['n0', 'n1', 'n2'] and b['ir'].shape == (3, 1, 4, 5) and b['mask'].shape == (3, 4, 5)
    assert [x.shape[0] for x in b['boxes']] == [0, 1, 2] and b['swapped'].tolist() == [False, True, False]
    with pytest.raises(FusionInputError, match='item 1 has keys'): collate_fusion([items[0], {'name': 'x'}])


# ---------------------------------------------------------------- download and extraction

class _Handler(http.server.BaseHTTPRequestHandler):
    "Serves `server.files`; honours `Range: bytes=N-` unless `server.honour_range` is False; may cut a body short."
    def do_GET(self):
        srv = self.server
        srv.log.append(dict(path=self.path, range=self.headers.get('Range')))
        data = srv.files.get(self.path)
        if data is None: self.send_error(404, 'Not Found'); return
        start, rng = 0, self.headers.get('Range')
        if rng and srv.honour_range:
            start = int(re.fullmatch(r'bytes=(\d+)-', rng).group(1))
            if start >= len(data):
                self.send_response(416); self.send_header('Content-Range', f'bytes */{len(data)}'); self.send_header('Content-Length', '0')
                self.end_headers(); return
            self.send_response(206); self.send_header('Content-Range', f'bytes {start}-{len(data) - 1}/{len(data)}')
        else: self.send_response(200)
        body = data[start:]
        self.send_header('Content-Length', str(len(body))); self.end_headers()
        cut = srv.cut_after if srv.cut_after is not None else len(body)
        srv.sent += min(cut, len(body)); self.wfile.write(body[:cut])  # count first: the client may finish reading before write() returns
        if cut < len(body): self.close_connection = True
    def log_message(self, *a): pass

@pytest.fixture
def server(monkeypatch):
    for v in ('http_proxy', 'HTTP_PROXY', 'https_proxy', 'HTTPS_PROXY', 'all_proxy', 'ALL_PROXY'): monkeypatch.delenv(v, raising=False)
    srv = http.server.ThreadingHTTPServer(('127.0.0.1', 0), _Handler)
    srv.files, srv.log, srv.honour_range, srv.sent, srv.cut_after = {}, [], True, 0, None
    srv.url = lambda p: f"http://127.0.0.1:{srv.server_address[1]}{p}"
    t = threading.Thread(target=srv.serve_forever, daemon=True); t.start()
    yield srv
    srv.shutdown(); srv.server_close(); t.join(5)

def roadscene_zip(n=3, h=20, w=24) -> bytes:
    "A zip in the published RoadScene layout (RoadScene-master/cropinfrared, crop_LR_visible), with extra files."
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, 'w') as z:
        for i in range(n):
            for sub, k in (('cropinfrared', 0), ('crop_LR_visible', 1)):
                z.writestr(f'RoadScene-master/{sub}/FLIR_{i:05d}.jpg', cv2.imencode('.jpg', ramp(h, w, i + k))[1].tobytes())
        z.writestr('RoadScene-master/crop_HR_visible/FLIR_00000.jpg', b'')
        z.writestr('RoadScene-master/README.md', 'readme')
    return buf.getvalue()

def sha(b: bytes) -> str: return hashlib.sha256(b).hexdigest()

def test_fetch_downloads_verifies_and_arranges(server, tmp_path, capsys):
    data = roadscene_zip()
    server.files['/rs/master.zip'] = data
    to = fetch_dataset('roadscene', tmp_path/'RoadScene', url=server.url('/rs/master.zip'), sha256=sha(data), progress=False)
    assert to == tmp_path/'RoadScene'
    assert sorted(p.name for p in to.iterdir()) == ['ir', 'vi'] and len(RoadScene(to)) == 3
    assert sorted(p.name for p in tmp_path.iterdir()) == ['RoadScene']  # archive and temporary folder removed
    assert check_dataset(to).ok
    # a second call finds the dataset and does nothing
    fetch_dataset('roadscene', to, url=server.url('/missing.zip'), progress=False)
    assert 'RoadScene: already present' in capsys.readouterr().out

def test_fetch_prints_hash_when_unknown_and_keeps_archive(server, tmp_path, capsys):
    data = roadscene_zip(1)
    server.files['/a.zip'] = data
    fetch_dataset('roadscene', tmp_path/'RS', url=server.url('/a.zip'), progress=False, keep_archive=True)
    assert f"sha256 {sha(data)}" in capsys.readouterr().out
    assert (tmp_path/'RS-a.zip').read_bytes() == data

def test_download_resumes_a_partial_file(server, tmp_path):
    data = bytes(np.random.default_rng(0).integers(0, 256, 300_000, dtype=np.uint8))
    server.files['/big.bin'] = data
    dest = tmp_path/'big.bin'
    (tmp_path/'big.bin.part').write_bytes(data[:123_456])
    assert download(server.url('/big.bin'), dest, sha256=sha(data), progress=False) == dest
    assert dest.read_bytes() == data and not (tmp_path/'big.bin.part').exists()
    assert server.log[-1]['range'] == 'bytes=123456-' and server.sent == len(data) - 123_456

def test_download_interrupted_then_resumed(server, tmp_path):
    data = bytes(range(256)) * 1000
    server.files['/f.bin'] = data
    server.cut_after = 100_000
    with pytest.raises(DatasetDownloadError, match=r'(interrupted|incomplete).*resumes on the next run'):
        download(server.url('/f.bin'), tmp_path/'f.bin', progress=False)
    assert (tmp_path/'f.bin.part').stat().st_size == 100_000
    server.cut_after = None
    download(server.url('/f.bin'), tmp_path/'f.bin', sha256=sha(data), progress=False)
    assert (tmp_path/'f.bin').read_bytes() == data and server.log[-1]['range'] == 'bytes=100000-'

def test_download_server_ignoring_range_restarts(server, tmp_path):
    data = b'abcdefghij' * 5000
    server.files['/f.bin'] = data
    server.honour_range = False
    (tmp_path/'f.bin.part').write_bytes(b'XXXXX')  # not a prefix of the file: must not be kept
    download(server.url('/f.bin'), tmp_path/'f.bin', sha256=sha(data), progress=False)
    assert (tmp_path/'f.bin').read_bytes() == data

def test_download_complete_part_gets_416(server, tmp_path):
    data = b'0123456789' * 10
    server.files['/f.bin'] = data
    (tmp_path/'f.bin.part').write_bytes(data)
    download(server.url('/f.bin'), tmp_path/'f.bin', sha256=sha(data), progress=False)
    assert (tmp_path/'f.bin').read_bytes() == data and server.sent == 0

def test_checksum_mismatch_removes_the_file(server, tmp_path):
    server.files['/rs.zip'] = roadscene_zip(1)
    with pytest.raises(DatasetDownloadError, match=r'checksum mismatch .*expected sha256 0{64}, got [0-9a-f]{64}; the file was removed'):
        fetch_dataset('roadscene', tmp_path/'RS', url=server.url('/rs.zip'), sha256='0' * 64, progress=False)
    assert list(tmp_path.iterdir()) == []  # neither the archive, nor its .part, nor the dataset folder

def test_unreachable_and_missing_urls_give_advice(server, tmp_path):
    s = socket.socket(); s.bind(('127.0.0.1', 0)); port = s.getsockname()[1]; s.close()
    url = f"http://127.0.0.1:{port}/x.zip"
    with pytest.raises(DatasetDownloadError, match=re.escape(f"could not reach {url}") + r'.*--archive PATH'):
        fetch_dataset('msrs', tmp_path/'MSRS', url=url, progress=False, timeout=5)
    with pytest.raises(DatasetDownloadError, match=r'HTTP 404.*--archive PATH'):
        download(server.url('/nope.zip'), tmp_path/'n.zip', progress=False)
    for name, src in DATASET_SOURCES.items():
        if src.url is None:
            with pytest.raises(DatasetDownloadError, match=re.escape(src.homepage) + r'.*--archive PATH'): fetch_dataset(name, tmp_path/name)
    assert not any(tmp_path.iterdir())

def test_fetch_from_local_archive_tar_and_layout_errors(tmp_path):
    src = tmp_path/'src'
    for n in ('a', 'b'):
        png(src/'LLVIP'/'infrared'/'train'/f'{n}.jpg', ramp(16, 16)); png(src/'LLVIP'/'visible'/'train'/f'{n}.jpg', ramp(16, 16))
    (src/'LLVIP'/'Annotations').mkdir()
    for n in ('a', 'b'): (src/'LLVIP'/'Annotations'/f'{n}.xml').write_text(voc([('person', 1, 1, 5, 5)], 16, 16))
    with tarfile.open(tmp_path/'llvip.tar.gz', 'w:gz') as t: t.add(src/'LLVIP', arcname='LLVIP')
    arch = tmp_path/'llvip.tar.gz'
    with pytest.raises(FusionInputError, match='`archive`: checksum mismatch'): fetch_dataset('llvip', tmp_path/'L0', archive=arch, sha256='1' * 64)
    assert arch.exists()  # the user's own file is never deleted
    to = fetch_dataset('llvip', tmp_path/'data'/'LLVIP', archive=arch, sha256=sha(arch.read_bytes()))
    assert LLVIP(to, 'train')[1]['boxes'].tolist() == [[1, 1, 5, 5]]
    with pytest.raises(FusionInputError, match=r"`archive`: .*llvip.tar.gz: the archive has no 'cropinfrared'.*pass layout="):
        fetch_dataset('roadscene', tmp_path/'RS', archive=arch)
    assert not (tmp_path/'RS').exists()
    with pytest.raises(FusionInputError, match='`archive`'): fetch_dataset('llvip', tmp_path/'X', archive=tmp_path/'none.zip')
    (tmp_path/'plain.zip').write_bytes(b'hello')
    with pytest.raises(FusionInputError, match='`archive`: .*plain.zip is neither a zip nor a tar'):
        fetch_dataset('llvip', tmp_path/'Y', archive=tmp_path/'plain.zip')
    with pytest.raises(FusionInputError, match="unknown dataset 'kaist'"): fetch_dataset('kaist', tmp_path/'K')

@pytest.mark.parametrize('kind', ['dotdot', 'absolute', 'zipsymlink', 'tarsymlink', 'tardotdot'])
def test_extraction_rejects_unsafe_members(tmp_path, kind):
    arch = tmp_path/('a.tar' if kind.startswith('tar') else 'a.zip')
    if kind == 'dotdot':
        with zipfile.ZipFile(arch, 'w') as z: z.writestr('top/ok.txt', 'x'); z.writestr('top/../../evil.txt', 'x')
    elif kind == 'absolute':
        with zipfile.ZipFile(arch, 'w') as z: z.writestr('/tmp/evil.txt', 'x')
    elif kind == 'zipsymlink':
        with zipfile.ZipFile(arch, 'w') as z:
            zi = zipfile.ZipInfo('top/link'); zi.external_attr = (0o120777 << 16); z.writestr(zi, '/etc/passwd')
    else:
        with tarfile.open(arch, 'w') as t:
            ti = tarfile.TarInfo('top/link' if kind == 'tarsymlink' else '../evil.txt')
            if kind == 'tarsymlink': ti.type, ti.linkname = tarfile.SYMTYPE, '/etc/passwd'; t.addfile(ti)
            else: ti.size = 1; t.addfile(ti, io.BytesIO(b'x'))
    with pytest.raises(DatasetDownloadError, match='unsafe path|symbolic link|link or special'):
        extract_archive(arch, tmp_path/'out')
    assert not (tmp_path/'out').exists() and not (tmp_path.parent/'evil.txt').exists()
    with pytest.raises(FusionInputError, match='`archive`: .*(unsafe path|symbolic link|link or special)'):
        fetch_dataset('tno', tmp_path/'TNO', archive=arch)
    assert sorted(p.name for p in tmp_path.iterdir()) == [arch.name]  # no dataset, no temporary folder


# ---------------------------------------------------------------- fetch: where the dataset goes, mistakes, interruptions

def listing(folder: Path) -> list:
    "Every path under `folder`, relative, sorted (hidden ones included)."
    return sorted(str(p.relative_to(folder)) for p in folder.rglob('*'))

def test_default_dataset_dir_and_fetch_without_to(tmp_path, monkeypatch):
    assert {k: str(default_dataset_dir(k)) for k in DATASET_SOURCES} == dict(
        msrs='data/MSRS', roadscene='data/RoadScene', tno='data/TNO', llvip='data/LLVIP', m3fd='data/M3FD', fmb='data/FMB')
    assert default_dataset_dir('RoadScene', tmp_path/'sets') == tmp_path/'sets'/'RoadScene'
    with pytest.raises(FusionInputError, match="^`name`: unknown dataset 'kaist'; valid names: msrs, roadscene, tno, llvip, m3fd, fmb$"):
        default_dataset_dir('kaist')
    (tmp_path/'rs.zip').write_bytes(roadscene_zip(2))
    monkeypatch.chdir(tmp_path)
    assert fetch_dataset('roadscene', archive='rs.zip') == Path('data/RoadScene')
    assert len(RoadScene(tmp_path/'data'/'RoadScene')) == 2

def test_fetch_into_a_folder_holding_other_files_raises_and_changes_nothing(server, tmp_path):
    data = tmp_path/'data'  # a fresh clone's data/
    (data/'splits').mkdir(parents=True)
    (data/'README.md').write_text('# data/\n'); (data/'splits'/'msrs_val50.txt').write_text('00001D\n')
    before = listing(tmp_path)
    server.files['/rs.zip'] = roadscene_zip(1)
    with pytest.raises(FusionInputError) as e:
        fetch_dataset('roadscene', data, url=server.url('/rs.zip'), progress=False)
    assert str(e.value) == (f"`to`: {data} is not empty (it has README.md, splits/) but no RoadScene pairs; "
                            f"give a new or empty folder, e.g. {data/'RoadScene'}")
    assert server.log == [] and listing(tmp_path) == before and (data/'README.md').read_text() == '# data/\n'
    make_msrs(tmp_path/'MSRS')  # another dataset's folder is not this one
    with pytest.raises(FusionInputError, match=r"`to`: .*MSRS is not empty \(it has train/\) but no LLVIP pairs; give a new or empty folder, e.g. .*MSRS/LLVIP$"):
        fetch_dataset('llvip', tmp_path/'MSRS')
    assert fetch_dataset('roadscene', data/'RoadScene', url=server.url('/rs.zip'), progress=False) == data/'RoadScene'  # the advice works
    (tmp_path/'RoadScene').mkdir(); (tmp_path/'RoadScene'/'notes.txt').write_text('mine')  # already named for the dataset: no e.g.
    with pytest.raises(FusionInputError, match=r"RoadScene is not empty \(it has notes\.txt\) but no RoadScene pairs; give a new or empty folder$"):
        fetch_dataset('roadscene', tmp_path/'RoadScene', url=server.url('/rs.zip'), progress=False)
    assert (tmp_path/'RoadScene'/'notes.txt').read_text() == 'mine'

def test_fetch_into_a_folder_holding_the_dataset_says_already_present(tmp_path, capsys):
    to = tmp_path/'RoadScene'
    png(to/'ir'/'FLIR_1.jpg', ramp(8, 8)); png(to/'vi'/'FLIR_1.jpg', ramp(8, 8))
    (tmp_path/'RoadScene-master.zip.part').write_bytes(b'PK')  # a partial download no run can use any more
    assert fetch_dataset('roadscene', to) == to                   # no network: nothing to fetch
    part = tmp_path/'RoadScene-master.zip.part'
    assert capsys.readouterr().out == (f"removed {part}: a partial download that is no longer needed\n"
                                       f"RoadScene: already present in {to} (1 pair); nothing fetched\n")
    assert listing(tmp_path) == ['RoadScene', 'RoadScene/ir', 'RoadScene/ir/FLIR_1.jpg', 'RoadScene/vi', 'RoadScene/vi/FLIR_1.jpg']
    root = make_msrs(tmp_path/'MSRS', names=('a', 'b', 'c'))
    make_msrs(root, names=('d',), split='test')
    fetch_dataset('msrs', root, archive=None)
    assert capsys.readouterr().out == f"MSRS: already present in {root} (4 pairs); nothing fetched\n"

class _CtrlC:
    "A progress bar that is interrupted (KeyboardInterrupt) at its first update, after the first chunk was written."
    def __init__(self, *a): pass
    def update(self, n): raise KeyboardInterrupt
    def close(self): pass

def big_roadscene_zip() -> bytes:
    "A RoadScene zip of a few MiB (stored, not compressed), so that a download takes several chunks."
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, 'w') as z:
        z.writestr('RoadScene-master/cropinfrared/FLIR_00001.jpg', cv2.imencode('.jpg', ramp(20, 24))[1].tobytes())
        z.writestr('RoadScene-master/crop_LR_visible/FLIR_00001.jpg', cv2.imencode('.jpg', ramp(20, 24, 1))[1].tobytes())
        z.writestr('RoadScene-master/padding.bin', bytes(np.random.default_rng(0).integers(0, 256, 3 << 20, dtype=np.uint8)))
    return buf.getvalue()

def test_interrupted_fetch_resumes_and_cleans_up(server, tmp_path, monkeypatch):
    data = big_roadscene_zip()
    server.files['/rs.zip'] = data
    to, url = tmp_path/'RoadScene', server.url('/rs.zip')
    # Ctrl-C while downloading: the .part file stays, to be resumed
    monkeypatch.setattr('sfofusion.data.fetch._progress', _CtrlC)
    with pytest.raises(KeyboardInterrupt): fetch_dataset('roadscene', to, url=url, sha256=sha(data))
    assert listing(tmp_path) == ['RoadScene-rs.zip.part'] and (tmp_path/'RoadScene-rs.zip.part').stat().st_size == 1 << 20
    # fetches killed while extracting (no `finally` ran) left their temporary folders; one fetch is still running
    (tmp_path/'.RoadScene.999999999-abcd1234.tmp'/'x'/'ir').mkdir(parents=True)
    (tmp_path/'.RoadScene.k3j_x9qz.tmp'/'out').mkdir(parents=True)  # named as before the pid was added
    running = tmp_path/f'.RoadScene.{os.getpid()}-zzzz0000.tmp'
    running.mkdir()
    monkeypatch.undo()
    assert fetch_dataset('roadscene', to, url=url, sha256=sha(data), progress=False) == to
    assert server.log[-1]['range'] == f'bytes={1 << 20}-'  # resumed
    assert listing(tmp_path) == [running.name, 'RoadScene', 'RoadScene/ir', 'RoadScene/ir/FLIR_00001.jpg',
                                 'RoadScene/vi', 'RoadScene/vi/FLIR_00001.jpg']

def test_interrupted_extraction_reuses_the_download(server, tmp_path, monkeypatch):
    data = roadscene_zip(2)
    server.files['/rs.zip'] = data
    to, url = tmp_path/'RS', server.url('/rs.zip')
    def ctrl_c(*a): raise KeyboardInterrupt
    monkeypatch.setattr('sfofusion.data.fetch._apply_layout', ctrl_c)
    with pytest.raises(KeyboardInterrupt): fetch_dataset('roadscene', to, url=url, sha256=sha(data), progress=False)
    assert listing(tmp_path) == ['RS-rs.zip']  # the verified download, no temporary folder, no half dataset
    monkeypatch.undo()
    n_requests = len(server.log)
    fetch_dataset('roadscene', to, url=url, sha256=sha(data), progress=False)
    assert len(server.log) == n_requests and len(RoadScene(to)) == 2 and listing(tmp_path)[0] == 'RS'
    assert not (tmp_path/'RS-rs.zip').exists()

def test_bad_download_is_removed_unless_a_rerun_can_use_it(server, tmp_path):
    good = roadscene_zip(2)
    server.files['/rs.zip'] = good[:len(good) // 2]  # truncated by the server; no checksum to catch it
    with pytest.raises(DatasetDownloadError, match=r"RS-rs\.zip is neither a zip nor a tar archive \(.*it starts like a zip: "
                                                   r"truncated or damaged\?\); the download .*RS-rs\.zip was removed: run again"):
        fetch_dataset('roadscene', tmp_path/'RS', url=server.url('/rs.zip'), progress=False)
    assert listing(tmp_path) == []
    server.files['/rs.zip'] = good
    assert len(RoadScene(fetch_dataset('roadscene', tmp_path/'RS', url=server.url('/rs.zip'), progress=False))) == 2
    # an archive in another layout is kept: the next run, with layout=, uses it without downloading again
    server.files['/other.zip'] = good
    with pytest.raises(DatasetDownloadError, match=r"no 'ir'.*pass layout=.*stays in .*T-other\.zip and is reused"):
        fetch_dataset('roadscene', tmp_path/'T', url=server.url('/other.zip'), progress=False, layout={'ir': 'ir', 'vi': 'vi'})
    n_requests = len(server.log)
    fetch_dataset('roadscene', tmp_path/'T', url=server.url('/other.zip'), progress=False)
    assert len(server.log) == n_requests and len(RoadScene(tmp_path/'T')) == 2

def test_fetch_argument_errors_are_one_line_and_change_nothing(server, tmp_path):
    server.files['/rs.zip'] = roadscene_zip(1)
    url = server.url('/rs.zip')
    (tmp_path/'RS-rs.zip').write_bytes(b'a complete earlier download')  # a typo in --sha256 must not delete it
    (tmp_path/'afile').write_text('x'); (tmp_path/'folder').mkdir()
    before = listing(tmp_path)
    cases = [(dict(name='kaist'), "`name`: unknown dataset 'kaist'; valid names: msrs, roadscene, tno, llvip, m3fd, fmb"),
             (dict(sha256='abc'), "`sha256`: expected 64 hex digits, got 'abc' (3 characters)"),
             (dict(url='data/rs.zip'), "`url`: expected an http:// or https:// address, got 'data/rs.zip'"),
             (dict(url=None, archive=tmp_path/'none.zip'), f"`archive`: expected an archive file (.zip, .tar, .tar.gz, ...), but {tmp_path/'none.zip'} does not exist"),
             (dict(url=None, archive=tmp_path/'folder'), f"`archive`: expected an archive file (.zip, .tar, .tar.gz, ...), but {tmp_path/'folder'} is a folder"),
             (dict(to=tmp_path/'afile'), f"`to`: {tmp_path/'afile'} is a file; expected a dataset folder to create"),
             (dict(to=tmp_path/'afile'/'RS'), f"`to`: {tmp_path/'afile'} is a file, so {tmp_path/'afile'/'RS'} cannot be created inside it")]
    for kw, msg in cases:
        kw = dict(dict(name='roadscene', to=tmp_path/'RS', url=url, progress=False), **kw)
        with pytest.raises(FusionInputError) as e: fetch_dataset(**kw)
        assert str(e.value) == msg, kw
    assert listing(tmp_path) == before and server.log == []
    with pytest.raises(FusionInputError, match='`url`: expected an http'): download('ftp://example.org/a.zip', tmp_path/'a.zip')

def damaged_archives(tmp_path: Path) -> dict:
    "Archives a user might hand over by mistake: name -> (path, what the message must say)."
    rnd = bytes(np.random.default_rng(1).integers(0, 256, 200_000, dtype=np.uint8))
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, 'w', zipfile.ZIP_DEFLATED) as z:
        z.writestr('t/cropinfrared/a.jpg', rnd); z.writestr('t/crop_LR_visible/a.jpg', rnd)
    crc = bytearray(buf.getvalue()); crc[len(crc) // 3] ^= 0xFF
    tb = io.BytesIO()
    with tarfile.open(fileobj=tb, mode='w:gz') as t:
        ti = tarfile.TarInfo('t/cropinfrared/a.jpg'); ti.size = len(rnd); t.addfile(ti, io.BytesIO(rnd))
    unsafe = io.BytesIO()
    with zipfile.ZipFile(unsafe, 'w') as z: z.writestr('../evil.txt', 'x')
    other = io.BytesIO()
    with zipfile.ZipFile(other, 'w') as z: z.writestr('docs/readme.txt', 'x')
    files = dict(crc=(bytes(crc), r'is damaged or truncated \((BadZipFile|error): .*\); nothing was extracted'),
                 truncated_tgz=(tb.getvalue()[:len(tb.getvalue()) // 2], r'is damaged or truncated'),
                 text=(b'<html>Sign in to Google Drive</html>', r"is neither a zip nor a tar archive \(it starts with b'<html>Si'\)"),
                 unsafe=(unsafe.getvalue(), r"unsafe path in archive: '\.\./evil\.txt'"),
                 other=(other.getvalue(), r"the archive has no 'cropinfrared' \(found \['readme\.txt'\]\): another dataset's archive"))
    out = {}
    for k, (b, msg) in files.items(): (tmp_path/f'{k}.bin').write_bytes(b); out[k] = (tmp_path/f'{k}.bin', msg)
    return out

def test_user_archive_problems_name_it_and_keep_it(tmp_path):
    archives = damaged_archives(tmp_path)
    before = {p: p.read_bytes() for p, _ in archives.values()}
    for k, (arch, msg) in archives.items():
        with pytest.raises(FusionInputError, match=f"^`archive`: {re.escape(str(arch))}:? {msg}") as e:
            fetch_dataset('roadscene', tmp_path/'RS', archive=arch, progress=False)
        assert '\n' not in str(e.value), k
    good = tmp_path/'good.zip'; good.write_bytes(roadscene_zip(1))
    with pytest.raises(FusionInputError, match=f"^`archive`: checksum mismatch for {re.escape(str(good))}: expected sha256 0{{64}}, got"):
        fetch_dataset('roadscene', tmp_path/'RS', archive=good, sha256='0' * 64)
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted([p.name for p in before] + ['good.zip'])  # no dataset, no temporary folder
    assert all(p.read_bytes() == b for p, b in before.items())  # the user's files are untouched

def test_extract_archive_removes_what_it_wrote_from_a_damaged_archive(tmp_path):
    for k, (arch, msg) in damaged_archives(tmp_path).items():
        if k in ('other',): continue
        with pytest.raises(DatasetDownloadError, match=re.escape(str(arch)) + ':? ' + msg):
            extract_archive(arch, tmp_path/'out'/k)
        assert not (tmp_path/'out'/k).exists(), k


# ---------------------------------------------------------------- check_dataset

def test_check_dataset_reports_every_kind(tmp_path):
    root = make_msrs(tmp_path/'MSRS', names=('a', 'b', 'c', 'd', 'e', 'f'))
    base = root/'train'
    (base/'ir'/'b.png').write_bytes(b'')
    png(base/'vi'/'c.png', ramp(24, 30))
    (base/'det_labels'/'fusion'/'d.txt').write_text("0 0.5 0.5 0.2 0.2\n0 0.5\n4 0.5 0.5 0.2 0.2\n0 1.2 0.5 0.2 0.2\n")
    png(base/'Segmentation_labels'/'e.png', np.full((24, 32), 9, np.uint8))
    png(base/'Segmentation_labels'/'a.png', np.zeros((20, 32), np.uint8))
    (base/'det_labels'/'fusion'/'f.txt').unlink()
    png(base/'ir'/'g.png', ramp(24, 32)); png(base/'vi'/'h.png', ramp(24, 32))
    make_msrs(root, names=('t1',), split='test')
    rep = check_dataset(root)
    assert rep.name == 'MSRS' and rep.splits == ['test', 'train'] and not rep.ok
    assert (rep.n_pairs, rep.n_ir, rep.n_vi) == (7, 8, 8)
    counts = {k: len(v) for k, v in rep.issues.items()}
    assert counts == dict(only_ir=1, only_vi=1, unreadable=1, size=1, boxes=3, mask=2, missing=1), counts
    assert any('b.png' in p for p in rep.problems) and any('d.txt: line 3: class id 4' in p for p in rep.problems)
    assert rep.n_boxes == 2 + 2 + 1  # a (2), t1 (2), the valid line of d
    text = rep.summary()
    for s in ('MSRS at', '7 pairs', '9 problem(s) (1 note)', 'IR files without a VIS counterpart: 1', 'train/f: no box annotation', 'car 2'):
        assert s in text, s
    assert check_dataset(root/'test').ok and 'OK' in check_dataset(root/'test').summary()
    assert check_dataset(root, 'pairs', ir_dir=base/'ir', vi_dir=base/'vi').issues.keys() == {'only_ir', 'only_vi', 'unreadable', 'size'}
    with pytest.raises(FusionInputError, match='does not exist'): check_dataset(tmp_path/'nope')

def test_inspect_pair_direct(tmp_path):
    png(tmp_path/'ir'/'a.png', ramp(8, 8)); png(tmp_path/'vi'/'a.png', ramp(8, 8))
    lay = Layout(tmp_path/'ir', tmp_path/'vi')
    assert inspect_pair(Pair('a', tmp_path/'ir'/'a.png', tmp_path/'vi'/'a.png'), lay) == []
    assert inspect_pair(Pair('a', tmp_path/'ir'/'a.png', tmp_path/'vi'/'zz.png'), lay)[0][0] == 'unreadable'


def small_llvip(root: Path, boxed=('010001',), names=('010001', '010002', '010003')) -> Path:
    "LLVIP in the layout of ../shared/data: ir/, vi/, VOC boxes in labels/Annotations for some pairs only."
    for n in names: png(root/'ir'/f'{n}.jpg', ramp(32, 40)); png(root/'vi'/f'{n}.jpg', ramp(32, 40, 1))
    (root/'labels'/'Annotations').mkdir(parents=True)
    for n in boxed: (root/'labels'/'Annotations'/f'{n}.xml').write_text(voc([('person', 1, 2, 9, 20)], 40, 32))
    return root

def test_check_pairs_without_labels_are_notes_unless_required(tmp_path):
    root = small_llvip(tmp_path/'LLVIP')
    rep = check_dataset(root)
    assert rep.ok and rep.problems == [] and (rep.n_pairs, rep.n_boxes) == (3, 1)
    assert rep.notes == ['pairs without a label: 010002: no box annotation', 'pairs without a label: 010003: no box annotation']
    text = rep.summary()
    assert text.splitlines()[0] == f"LLVIP at {root}: 3 pairs, OK (2 notes)"
    assert "  note: pairs without a label: 2 of 3 (fine for fusion; require_labels=True makes them problems)" in text
    strict = check_dataset(root, require_labels=True)
    assert not strict.ok and strict.notes == [] and strict.problems == rep.notes
    assert strict.summary().splitlines()[0] == f"LLVIP at {root}: 3 pairs, 2 problem(s)"
    msrs = make_msrs(tmp_path/'MSRS')  # the same for a missing mask
    (msrs/'train'/'Segmentation_labels'/'00002N.png').unlink()
    assert check_dataset(msrs).ok and check_dataset(msrs).notes == ['pairs without a label: train/00002N: no mask']

def test_check_empty_and_imageless_folders_are_not_ok(tmp_path):
    (tmp_path/'MSRS').mkdir()
    rep = check_dataset(tmp_path/'MSRS')
    assert not rep.ok and rep.problems == [f"no pairs found: {tmp_path/'MSRS'} is empty: fetch it with `sfofusion data fetch msrs --to {tmp_path/'MSRS'}`"]
    assert rep.summary().splitlines()[0] == f"MSRS at {tmp_path/'MSRS'}: 0 pairs, 1 problem(s)"
    (tmp_path/'x').mkdir()
    assert check_dataset(tmp_path/'x').problems == [f"no pairs found: {tmp_path/'x'} is empty"]
    b = tmp_path/'bare'
    (b/'ir').mkdir(parents=True); (b/'vi').mkdir()
    assert check_dataset(b).problems == [f"no pairs found: {b/'ir'} has 0 images, {b/'vi'} has 0 images"]
    (b/'ir'/'a.npy').write_bytes(b''); (b/'ir'/'.DS_Store').write_bytes(b'')
    assert check_dataset(b).problems == [f"no pairs found: {b/'ir'} has 0 images (1 other file(s): a.npy), {b/'vi'} has 0 images"]
    png(b/'ir'/'a.png', ramp(8, 8)); png(b/'vi'/'b.png', ramp(8, 8))
    assert f"no pairs found: {b/'ir'} has 1 images (1 other file(s): a.npy), {b/'vi'} has 1 images: no name is in both" in check_dataset(b).problems
    root = make_msrs(tmp_path/'M2')  # one split fine, the other without images
    (root/'test'/'ir').mkdir(parents=True); (root/'test'/'vi').mkdir()
    rep = check_dataset(root)
    assert rep.splits == ['test', 'train'] and rep.n_pairs == 2 and rep.problems == [f"no pairs found: {root/'test'/'ir'} has 0 images, {root/'test'/'vi'} has 0 images"]
    for s in ('train', 'test'): (tmp_path/'L'/'infrared'/s).mkdir(parents=True); (tmp_path/'L'/'visible'/s).mkdir(parents=True)
    assert not check_dataset(tmp_path/'L', 'llvip').ok and len(check_dataset(tmp_path/'L', 'llvip').issues['empty']) == 2

def test_check_argument_errors_raise_and_bad_folders_are_reported(tmp_path):
    (tmp_path/'f.txt').write_text('x')
    with pytest.raises(FusionInputError, match=r"^`root`: .*f\.txt is a file; expected a dataset folder$"): check_dataset(tmp_path/'f.txt')
    with pytest.raises(FusionInputError, match=r"^`root`: .*nope does not exist"): check_dataset(tmp_path/'nope')
    with pytest.raises(FusionInputError, match=r"^`name`: unknown dataset 'kaist'; valid names: msrs, fmb, m3fd, llvip, tno, roadscene, pairs$"):
        check_dataset(tmp_path, 'kaist')
    (tmp_path/'docs').mkdir()
    with pytest.raises(FusionInputError, match=r"^`root`: .* has no known pair layout .*found folders \['docs'\]"): check_dataset(tmp_path)
    # files the check must report, not raise on: two images with one name, an unreadable box-lines file
    d = tmp_path/'dup'
    png(d/'ir'/'a.png', ramp(8, 8)); png(d/'ir'/'a.jpg', ramp(8, 8)); png(d/'vi'/'a.png', ramp(8, 8))
    rep = check_dataset(d)
    assert not rep.ok and rep.problems == [f"unusable folders: `{d/'ir'}`: two images share the stem 'a': a.jpg and a.png"]
    png(d/'ir'/'a.jpg', ramp(8, 8)).unlink()
    (tmp_path/'boxes.txt').write_bytes(b'\xff\xfe\x00bad')
    rep = check_dataset(d, 'pairs', labels=tmp_path/'boxes.txt')
    assert not rep.ok and len(rep.problems) == 1 and 'cannot read the box-lines file' in rep.problems[0]


# ---------------------------------------------------------------- the shared real data

@pytest.mark.slow
def test_shared_msrs_boxes(shared_path):
    ds = get_dataset('msrs', shared_path('data/MSRS/test'), cbcr=True)
    assert len(ds) == 271 and ds.layout.boxes.class_names == ('person', 'bicycle', 'car')
    srcs = {s: MSRS(shared_path('data/MSRS/test'), box_set=s).layout.boxes for s in ('fusion', 'infrared', 'visible')}
    n = {s: sum(len(src.read(p, 640, 480)[1]) for p in ds.names) for s, src in srcs.items()}
    assert n == dict(fusion=1107, infrared=1330, visible=741)  # as counted in SOURCES.md
    it = ds[ds.names.index('00004N')]
    assert it['ir'].shape == (1, 480, 640) and it['cbcr'].shape == (2, 480, 640)
    assert (it['boxes'] >= 0).all() and (it['boxes'] <= torch.tensor([640., 480, 640, 480])).all()

@pytest.mark.slow
def test_shared_llvip_merged_labels_and_checks(shared_path):
    root = shared_path('data/LLVIP')
    with pytest.warns(SkippedDataWarning, match='27 bad pair'):
        ds = LLVIP(root, skip_bad=True)
    assert ds.names == ['010001', '010005', '010011', '010021', '010101']
    assert ds[1]['boxes'].tolist() == [[849, 405, 961, 663], [974, 133, 1076, 363], [1155, 39, 1256, 270]]
    assert sum(len(ds[i]['boxes']) for i in range(5)) == 18
    rep = check_dataset(root)
    assert set(rep.issues) == {'missing'} and len(rep.issues['missing']) == 27
    for sub in ('TNO', 'RoadScene', 'M3FD'):
        r = check_dataset(shared_path(f'data/{sub}'))
        assert r.ok, r.summary()
        assert r.n_pairs == dict(TNO=20, RoadScene=171, M3FD=1)[sub]

@pytest.mark.slow
def test_shared_roadscene_crops_of_odd_sizes(shared_path):
    ds = FusionCrops(RoadScene(shared_path('data/RoadScene'), cbcr=True), size=(256, 512), seed=0)  # wider than most images
    b = collate_fusion([ds[i] for i in range(4)])
    assert b['ir'].shape == (4, 1, 256, 512) and b['cbcr'].shape == (4, 2, 256, 512)

@pytest.mark.slow
def test_shared_folders_all_check_ok_llvip_with_notes(shared_path):
    reps = {s: check_dataset(shared_path(f'data/{s}')) for s in ('MSRS', 'TNO', 'RoadScene', 'LLVIP', 'M3FD')}
    assert {s: (r.ok, r.n_pairs, len(r.notes)) for s, r in reps.items()} == dict(
        MSRS=(True, 271, 0), TNO=(True, 20, 0), RoadScene=(True, 171, 0), LLVIP=(True, 32, 27), M3FD=(True, 1, 0)), \
        '\n'.join(r.summary(3) for r in reps.values())
    assert reps['LLVIP'].summary().splitlines()[0].endswith('32 pairs, OK (27 notes)')
