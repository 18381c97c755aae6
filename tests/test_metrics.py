"Sweeping tests of `sfofusion.metrics`: reference values, invariances, conventions, bad inputs, batches, devices, folders."
import csv, json, math, os
from pathlib import Path

import cv2
import numpy as np
import pytest
import torch
import torch.nn.functional as F

from sfofusion.core import FusionInputError, load_gray255, save_image
from sfofusion.evaluate import EvalResult, compare_to_reference, evaluate_folders, reference_dir
from sfofusion.metrics import (METRICS, CONVENTIONS, QABF_GRADIENT, QABF_ORIENTATION, average_gradient, cc, compute_metrics,
                               entropy, mse, mutual_info, mutual_information, pearson, psnr, qabf, scd, separable_filter, sobel,
                               spatial_frequency, ssim, ssim_index, standard_deviation, vif, vif_index)

REF = reference_dir()
SPECS = sorted((REF/'metrics').glob('*.json')) if REF is not None else []
NO_SHARED = "../shared/reference is absent (clone it beside the repo or set SFOFUSION_SHARED): reference values not checked"
TOL_REL, TOL_ABS = 1e-3, 1e-4   # per image and metric: relative, or absolute for values below 0.1


def triplet(h=64, w=72, seed=0, batch=1):
    "Integer-valued random-but-structured fused, ir, vis (batch, 1, h, w) float32 in [0, 255]."
    g = torch.Generator().manual_seed(seed)
    yy, xx = torch.meshgrid(torch.arange(h), torch.arange(w), indexing='ij')
    out = []
    for _ in range(3):
        base = 128 + 90 * torch.sin(xx / (3 + 5 * torch.rand(1, generator=g))) * torch.cos(yy / (4 + 6 * torch.rand(1, generator=g)))
        out.append((base + 20 * torch.randn(batch, 1, h, w, generator=g)).clamp(0, 255).round())
    return out


# ---------------------------------------------------------------- reference values (the evaluator's own output)

def _deviation(v: float, r) -> float:
    "0 if v matches the reference r within tolerance scale, else the scaled error (NaN must match null)."
    if r is None: return 0. if math.isnan(v) else math.inf
    if math.isnan(v): return math.inf
    return abs(v - r) / max(abs(r), TOL_ABS / TOL_REL)

FULL = os.environ.get('SFOFUSION_FULL_REFERENCE') == '1'

def _names(spec: Path, data: dict) -> list[str]:
    "Images to check (to keep this file near a minute): all edge cases and RoadScene pairs, every second TNO pair,"
    " every third image of the MSRS files; all of them with SFOFUSION_FULL_REFERENCE=1."
    names = list(data['per_image'])
    if FULL or spec.stem in ('average_RoadScene', 'edge_cases'): return names
    return names[::2] if spec.stem == 'average_TNO' else names[::3]

@pytest.mark.slow
@pytest.mark.parametrize('spec', SPECS or [None], ids=lambda p: p.stem if p else 'no-shared')
def test_reference_values(spec):
    "Per image and metric (SSIM at data range 2 and 255): within 1e-3 relative / 1e-4 absolute; null <-> NaN; means."
    if spec is None: pytest.skip(NO_SHARED)
    data = json.loads(spec.read_text())
    names, src = _names(spec, data), REF.parent/data['source']
    res = evaluate_folders(REF.parent/data['fused'], src/'ir', src/'vi', progress=False, names=names)
    assert list(res.per_image) == names and res.metrics == METRICS
    bad = [(n, m, v, r) for n in names for m, r in data['per_image'][n].items()
           if _deviation(v := res.per_image[n][m], r) > TOL_REL]
    assert not bad, f"{spec.name}: {len(bad)} values off the reference (image, metric, ours, reference): {bad[:10]}"
    if len(names) == data['count'] and 'mean' in data:   # the evaluator's means (np.mean over the images)
        for m, r in data['mean'].items(): assert _deviation(res.mean[m], r) < TOL_REL, (m, res.mean[m], r)
    if spec.stem == 'edge_cases':                         # some SCD and CC are undefined: left out of their means
        assert res.undefined == dict(SCD=4, CC=2) and res.ok
        for m in ('SCD', 'CC'):
            assert res.mean[m] == pytest.approx(np.nanmean([v[m] for v in res.per_image.values()]), rel=1e-12)

@pytest.mark.slow
def test_compare_to_reference_flags_mismatches(tmp_path):
    "compare_to_reference agrees on the real values and flags a changed value and a NaN where the reference has a number."
    if REF is None: pytest.skip(NO_SHARED)
    names = ['msrs_eq_ir.png', 'tno_noise.png']
    worst = compare_to_reference(REF/'metrics'/'edge_cases.json', names=names)
    assert set(worst) == set(METRICS) and all(w[0] < TOL_REL for w in worst.values())
    spec = json.loads((REF/'metrics'/'edge_cases.json').read_text())
    spec['per_image'] = {n: dict(spec['per_image'][n]) for n in names}
    spec['per_image']['msrs_eq_ir.png']['SCD'] = 1.0                 # the evaluator's NaN replaced by a number
    spec['per_image']['tno_noise.png']['EN'] *= 1.01
    (tmp_path/'reference'/'metrics').mkdir(parents=True)
    for d in ('fused', 'edge_pairs'): (tmp_path/'reference'/d).symlink_to(REF/d)
    (tmp_path/'reference'/'metrics'/'edited.json').write_text(json.dumps(spec))
    worst = compare_to_reference(tmp_path/'reference'/'metrics'/'edited.json')
    assert worst['SCD'][:2] == (math.inf, 'msrs_eq_ir.png')
    assert worst['EN'][1] == 'tno_noise.png' and worst['EN'][0] == pytest.approx(0.01 / 1.01, rel=1e-3)

@pytest.mark.slow
def test_float64_ssim_close_to_reference():
    "The accurate float64 SSIM stays within 2e-4 relative of the evaluator's float32 values."
    if REF is None: pytest.skip(NO_SHARED)
    spec = json.loads((REF/'metrics'/'seafusion_MSRS.json').read_text())
    src, fused = REF.parent/spec['source'], REF.parent/spec['fused']
    for name in list(spec['per_image'])[:4]:
        f, a, b = (load_gray255(p) for p in (fused/name, src/'ir'/name, src/'vi'/name))
        for dr, key in ((2., 'SSIM'), (255., 'SSIM_255')):
            v = ssim(f, a, b, data_range=dr, float64=True).item()
            assert abs(v - spec['per_image'][name][key]) <= 2e-4 * abs(spec['per_image'][name][key]), (name, key, v)


# ---------------------------------------------------------------- invariances and closed forms

def test_constant_image():
    c = torch.full((2, 1, 50, 60), 77.)
    for fn in (entropy, standard_deviation, spatial_frequency, average_gradient):
        assert torch.equal(fn(c).abs(), torch.zeros(2, dtype=torch.float64)), fn.__name__
    _, a, b = triplet(50, 60, batch=2)
    m = compute_metrics(c, a, b)
    assert m['MI'].abs().max() < 1e-12 and m['VIF'].abs().max() < 1e-12   # a flat F shares and keeps nothing
    assert m['CC'].isnan().all() and not m['SCD'].isnan().any()           # r(F, .) undefined; F - VIS is not flat

def test_entropy_closed_form():
    x = torch.arange(256.).repeat(4).view(1, 1, 32, 32)
    assert entropy(x).item() == pytest.approx(8.)
    half = torch.cat([torch.zeros(1, 1, 8, 16), torch.full((1, 1, 8, 16), 255.)], 2)
    assert entropy(half).item() == pytest.approx(1.)

def test_mutual_information_of_itself():
    f, _, _ = triplet()
    h_nats = entropy(f) * math.log(2)
    torch.testing.assert_close(mutual_info(f, f), h_nats)
    torch.testing.assert_close(mutual_information(f, f, f), 2 * h_nats)             # both sources equal F
    torch.testing.assert_close(mutual_information(f, f, f, unit='bits'), 2 * entropy(f))
    _, a, b = triplet(seed=3)
    torch.testing.assert_close(mutual_info(f, a), mutual_info(a, f))                  # symmetric

def test_mutual_info_against_numpy_histogram():
    f, a, _ = triplet(seed=5)
    j, _, _ = np.histogram2d(f.flatten().numpy(), a.flatten().numpy(), bins=256, range=[[-0.5, 255.5]] * 2)
    p = j / j.sum(); pf, pa = p.sum(1, keepdims=True), p.sum(0, keepdims=True)
    nz = p > 0
    expected = float((p[nz] * np.log(p[nz] / (pf @ pa)[nz])).sum())
    assert mutual_info(f, a).item() == pytest.approx(expected, rel=1e-12)

def test_ssim_of_itself_and_symmetry():
    f, a, b = triplet()
    for f64 in (False, True):
        for dr in (2., 255.):
            assert ssim_index(a, a, dr, f64).item() == pytest.approx(1., abs=1e-12)
            assert ssim(a, a, a, dr, float64=f64).item() == pytest.approx(2., abs=1e-12)
    assert ssim_index(a, b).item() == pytest.approx(ssim_index(b, a).item(), rel=1e-6)

def test_ssim_against_scikit_image():
    "Independent check: scikit-image's structural_similarity on float32 (what the evaluator calls)."
    skm = pytest.importorskip('skimage.metrics')
    f, a, _ = triplet(61, 47, seed=7)
    fn, an = f[0, 0].numpy(), a[0, 0].numpy()
    for dr in (2., 255.):
        expected = skm.structural_similarity(fn, an, data_range=dr)
        assert ssim_index(f, a, dr).item() == pytest.approx(expected, rel=1e-12, abs=1e-12)
        assert ssim_index(f, a, dr, float64=True).item() == pytest.approx(expected, rel=1e-3)

def test_vif_of_itself_and_flat_source():
    _, a, b = triplet(80, 90)
    assert vif_index(a, a).item() == pytest.approx(1., abs=1e-6)
    assert vif_index(torch.full_like(a, 3.), a).item() == 1.    # 0/0: the evaluator's convention
    assert 0 < vif_index(a, b).item() < 1
    assert vif(a, a, a).item() == pytest.approx(2., abs=1e-6)

def test_qabf_exact_when_fused_equals_sources():
    (tg, _, _), (ta, ka, da) = QABF_GRADIENT, QABF_ORIENTATION
    x4 = 4 * torch.randint(0, 64, (1, 1, 40, 30), generator=torch.Generator().manual_seed(1)).float()
    assert qabf(x4, x4, x4).item() == pytest.approx(tg * ta / (1 + math.exp(ka * (1 - da))), rel=1e-6)
    f, _, _ = triplet()   # any integer image: G >= 1 where non-zero, so between the two sigmoid values
    hi = tg * ta / (1 + math.exp(ka * (1 - da)))
    assert hi / (1 + math.exp(-15 * 0.5)) - 1e-6 <= qabf(f, f, f).item() <= hi + 1e-6

def test_qabf_gradient_quirk():
    "Where g_A == g_F the evaluator uses G = g_F (here sqrt(2) or 2), not 1."
    x = torch.zeros(1, 1, 9, 9); x[..., 4, 4] = 1.   # Sobel magnitudes 0, sqrt(2) and 2
    q_quirk = qabf(x, x, x).item()
    g, _ = sobel(x.double())
    (tg, kg, dg), (ta, ka, da) = QABF_GRADIENT, QABF_ORIENTATION
    qg = tg / (1 + torch.exp(kg * (g - dg)))                 # G = g_F
    expected = (qg * ta / (1 + math.exp(ka * (1 - da))) * g).sum() / g.sum()
    assert q_quirk == pytest.approx(expected.item(), rel=1e-6)
    textbook = tg / (1 + math.exp(kg * (1 - dg))) * ta / (1 + math.exp(ka * (1 - da)))   # G = 1 where equal
    assert q_quirk > textbook * (1 + 3e-4)                  # the quirk scores exact edges ~5e-4 higher

def test_sobel_matches_reference_kernels():
    f, _, _ = triplet(20, 23)
    p = F.pad(f.double(), (1, 1, 1, 1))
    # the evaluator convolves (flipped kernels) with [[-1,0,1],[-2,0,2],[-1,0,1]] and [[1,2,1],[0,0,0],[-1,-2,-1]]
    kx = torch.tensor([[-1., 0, 1], [-2, 0, 2], [-1, 0, 1]], dtype=torch.float64).flip(0, 1)
    ky = torch.tensor([[1., 2, 1], [0, 0, 0], [-1, -2, -1]], dtype=torch.float64).flip(0, 1)
    sx, sy = F.conv2d(p, kx[None, None]), F.conv2d(p, ky[None, None])
    g, a = sobel(f.double())
    torch.testing.assert_close(g, (sx ** 2 + sy ** 2).sqrt())
    torch.testing.assert_close(a, torch.where(sx == 0, math.pi / 2, torch.atan(sy / sx)))

def test_correlations_and_nan():
    f, a, b = triplet()
    assert pearson(a, a).item() == pytest.approx(1.)
    assert pearson(a, 255 - a).item() == pytest.approx(-1.)
    assert scd(a, a, b).isnan().all() and scd(b, a, b).isnan().all()    # F equals a source: F - A is flat
    assert cc(torch.full_like(f, 4.), a, b).isnan().all()
    assert cc(a, a, a).item() == pytest.approx(1.)

def test_mse_psnr():
    f, a, b = triplet()
    expected = (((f - a) ** 2).mean() + ((f - b) ** 2).mean()).double().item() / 2
    assert mse(f, a, b).item() == pytest.approx(expected, rel=1e-6)
    assert psnr(f, a, b).item() == pytest.approx(10 * math.log10(f.max().item() ** 2 / expected), rel=1e-6)
    assert psnr(f, a, b, peak=255).item() == pytest.approx(10 * math.log10(255 ** 2 / expected), rel=1e-6)
    assert psnr(a, a, a).item() == math.inf

def test_sf_ag_closed_form():
    x = (5. * torch.arange(12.)).expand(1, 1, 7, 12) + (2. * torch.arange(7.))[:, None]   # +5 per column, +2 per row
    assert spatial_frequency(x).item() == pytest.approx(math.sqrt(25 + 4))
    assert average_gradient(x).item() == pytest.approx(math.sqrt((25 + 4) / 2))


# ---------------------------------------------------------------- conventions

def test_conventions():
    f, a, b = triplet(60, 70)
    base = compute_metrics(f, a, b)
    half = compute_metrics(f, a, b, reduce_sources='mean')
    for m in ('MI', 'VIF', 'SSIM', 'SSIM_255'): torch.testing.assert_close(half[m], base[m] / 2)
    for m in ('EN', 'SD', 'SF', 'AG', 'SCD', 'Qabf', 'MSE', 'CC', 'PSNR'): torch.testing.assert_close(half[m], base[m])
    torch.testing.assert_close(compute_metrics(f, a, b, ['MI'], mi_unit='bits')['MI'], base['MI'] / math.log(2))
    torch.testing.assert_close(compute_metrics(f, a, b, ['SSIM'], ssim_data_range=255.)['SSIM'], base['SSIM_255'])
    torch.testing.assert_close(compute_metrics(f, a, b, ['PSNR'], psnr_peak=255)['PSNR'], psnr(f, a, b, peak=255))
    f64 = compute_metrics(f, a, b, ['SSIM', 'SSIM_255'], ssim_float64=True)
    torch.testing.assert_close(f64['SSIM'], base['SSIM'], rtol=1e-3, atol=0)
    assert list(compute_metrics(f, a, b, ['PSNR', 'EN'])) == ['PSNR', 'EN']
    assert CONVENTIONS == dict(reduce_sources='sum', mi_unit='nats', ssim_data_range=2., psnr_peak='max', ssim_float64=False)

@pytest.mark.parametrize('kw, msg', [(dict(reduce_sources='max'), "`reduce_sources`"), (dict(mi_unit='bans'), "`mi_unit`"),
                                     (dict(psnr_peak='min'), "`psnr_peak`"), (dict(ssim_data_range=0), "`ssim_data_range`"),
                                     (dict(metrics=['EN', 'Q_abf']), "unknown ['Q_abf']")])
def test_bad_options(kw, msg):
    f, a, b = triplet()
    with pytest.raises(FusionInputError, match=None) as e: compute_metrics(f, a, b, **kw)
    assert msg in str(e.value)


# ---------------------------------------------------------------- bad inputs

@pytest.mark.parametrize('which', ['fused', 'ir', 'vis'])
@pytest.mark.parametrize('bad, msg', [
    (lambda x: x / 255, "looks like [0, 1] data"),
    (lambda x: x * 2, "expected values in [0.0, 255.0]"),
    (lambda x: x.masked_fill(x > 200, float('nan')), "NaN/inf"),
    (lambda x: x.masked_fill(x > 200, float('inf')), "NaN/inf"),
    (lambda x: x[0], "3 dims"),
    (lambda x: x.expand(-1, 3, -1, -1), "1 channel"),
    (lambda x: x[..., :50], "same batch and spatial size"),
    (lambda x: x.numpy(), "expected a floating tensor"),
])
def test_bad_inputs_name_the_argument(which, bad, msg):
    t = dict(zip(('fused', 'ir', 'vis'), triplet()))
    t[which] = bad(t[which])
    with pytest.raises(FusionInputError) as e: compute_metrics(**t)
    assert msg in str(e.value) and (f"`{which}`" in str(e.value)), str(e.value)

def test_too_small_for_vif():
    f, a, b = triplet(40, 64)
    with pytest.raises(FusionInputError, match="at least 41x41"): compute_metrics(f, a, b)
    assert set(compute_metrics(f, a, b, ['EN', 'SSIM', 'Qabf'])) == {'EN', 'SSIM', 'Qabf'}

def test_dtypes_give_the_same_values():
    f, a, b = triplet()
    ref = compute_metrics(f, a, b)
    for conv in (torch.float64, torch.uint8, torch.int64, torch.float16):
        out = compute_metrics(f.to(conv), a.to(conv), b.to(conv))
        for m in METRICS: torch.testing.assert_close(out[m], ref[m], rtol=1e-12, atol=1e-12, msg=f"{conv} {m}")
    assert all(v.dtype == torch.float64 and v.shape == (1,) for v in ref.values())


# ---------------------------------------------------------------- batches, filters, devices

def test_batch_equals_singles_and_is_independent():
    f, a, b = triplet(50, 45, batch=3, seed=11)
    both = compute_metrics(f, a, b)
    for i in range(3):
        one = compute_metrics(f[i:i + 1], a[i:i + 1], b[i:i + 1])
        for m in METRICS: torch.testing.assert_close(both[m][i:i + 1], one[m], rtol=1e-10, atol=1e-12, msg=m)
    f2 = f.clone(); f2[1:] = 255 - f2[1:]
    changed = compute_metrics(f2, a, b)
    for m in METRICS: torch.testing.assert_close(changed[m][:1], both[m][:1], rtol=1e-10, atol=1e-12, msg=m)

@pytest.mark.parametrize('shape', [(1, 1, 17, 17), (2, 3, 40, 37), (1, 2, 18, 23), (3, 1, 67, 41), (1, 1, 100, 19)])
@pytest.mark.parametrize('size', [3, 5, 9, 17])
@pytest.mark.parametrize('stride', [1, 2])
def test_separable_filter_matches_conv2d(shape, size, stride):
    if size > min(shape[-2:]): pytest.skip('window larger than the image')
    g = torch.Generator().manual_seed(size)
    x = 255 * torch.rand(shape, dtype=torch.float64, generator=g)
    w = torch.rand(size, dtype=torch.float64, generator=g)
    ref = F.conv2d(x.flatten(0, 1)[:, None], torch.outer(w, w)[None, None], stride=stride)
    out = separable_filter(x, w, stride)
    torch.testing.assert_close(out, ref.view(*shape[:2], *ref.shape[-2:]), rtol=0, atol=1e-9)
    assert separable_filter(x.transpose(-1, -2), w, stride).shape == out.transpose(-1, -2).shape

def test_no_autograd_graph_and_inputs_untouched():
    f, a, b = triplet()
    f.requires_grad_(True); keep = [t.clone() for t in (f, a, b)]
    out = compute_metrics(f, a, b)
    assert not any(v.requires_grad for v in out.values())
    assert all(torch.equal(t, k) for t, k in zip((f, a, b), keep))

@pytest.mark.cuda
def test_cuda_matches_cpu():
    f, a, b = triplet(96, 128, batch=2, seed=4)
    cpu = compute_metrics(f, a, b)
    gpu = compute_metrics(f.cuda(), a.cuda(), b.cuda())
    for m in METRICS:
        assert gpu[m].device.type == 'cuda'
        torch.testing.assert_close(gpu[m].cpu(), cpu[m], rtol=1e-5, atol=1e-7, msg=m)


# ---------------------------------------------------------------- folders

def _write_set(root: Path, n=3, fused_ext='.png', src_ext='.png', h=48, w=56):
    for i in range(n):
        f, a, b = triplet(h, w, seed=20 + i)
        save_image(root/'fused'/f'img{i}{fused_ext}', f / 255)
        save_image(root/'ir'/f'img{i}{src_ext}', a / 255); save_image(root/'vi'/f'img{i}{src_ext}', b / 255)

def test_evaluate_folders_pairs_by_stem_and_writes(tmp_path):
    _write_set(tmp_path, src_ext='.jpg')       # fused PNG, sources JPEG: matched by stem
    (tmp_path/'ir'/'extra.jpg').write_bytes((tmp_path/'ir'/'img0.jpg').read_bytes())   # a source pair without fused image
    (tmp_path/'vi'/'extra.jpg').write_bytes((tmp_path/'vi'/'img0.jpg').read_bytes())
    res = evaluate_folders(tmp_path/'fused', tmp_path/'ir', tmp_path/'vi', progress=False)
    assert isinstance(res, EvalResult) and list(res.per_image) == ['img0.png', 'img1.png', 'img2.png']
    assert res.missing == ['extra'] and res.failed == {} and not res.ok
    f, a, b = (load_gray255(p) for p in (tmp_path/'fused'/'img1.png', tmp_path/'ir'/'img1.jpg', tmp_path/'vi'/'img1.jpg'))
    one = compute_metrics(f, a, b)
    assert all(res.per_image['img1.png'][m] == pytest.approx(one[m].item(), rel=1e-12) for m in METRICS)
    assert res.mean['EN'] == pytest.approx(sum(v['EN'] for v in res.per_image.values()) / 3)
    out = res.to_csv(tmp_path/'sub'/'results.csv')
    rows = list(csv.reader(out.open()))
    assert rows[0] == ['image', *METRICS] and [r[0] for r in rows[1:]] == ['img0.png', 'img1.png', 'img2.png', 'mean']
    assert float(rows[2][METRICS.index('VIF') + 1]) == res.per_image['img1.png']['VIF']   # full precision
    assert not list((tmp_path/'sub').glob('.*.tmp'))                                      # atomic: no leftovers
    md = res.to_markdown()
    assert md.startswith('| images | EN |') and '| 3 |' in md and 'SSIM data range 2' in md
    d = res.to_dict()
    assert d['count'] == 3 and d['conventions'] == CONVENTIONS and d['mean'] == res.mean
    assert (d['failed'], d['missing'], d['undefined'], d['ok']) == ({}, ['extra'], {}, False)
    json.dumps(d)

def test_evaluate_folders_options(tmp_path):
    _write_set(tmp_path, n=2)
    res = evaluate_folders(tmp_path/'fused', tmp_path/'ir', tmp_path/'vi', metrics=['SSIM', 'MI'], progress=False,
                           reduce_sources='mean', mi_unit='bits')
    full = evaluate_folders(tmp_path/'fused', tmp_path/'ir', tmp_path/'vi', metrics=['SSIM', 'MI'], progress=False)
    assert res.metrics == ('SSIM', 'MI') and res.conventions['mi_unit'] == 'bits'
    assert res.mean['MI'] == pytest.approx(full.mean['MI'] / 2 / math.log(2))
    one = evaluate_folders(tmp_path/'fused', tmp_path/'ir', tmp_path/'vi', ['EN'], progress=False, names=['img1.png'])
    assert list(one.per_image) == ['img1.png'] and one.metrics == ('EN',)
    assert one.per_image['img1.png']['EN'] == pytest.approx(entropy(load_gray255(tmp_path/'fused'/'img1.png')).item())
    with pytest.raises(FusionInputError, match="`names`: not in"):
        evaluate_folders(tmp_path/'fused', tmp_path/'ir', tmp_path/'vi', progress=False, names=['img9.png'])
    with pytest.raises(FusionInputError, match="unknown convention"):
        evaluate_folders(tmp_path/'fused', tmp_path/'ir', tmp_path/'vi', progress=False, ssim_range=255)

def test_evaluate_folders_whole_call_errors(tmp_path):
    "What makes the whole call meaningless still raises: no folder, no images, unknown metrics."
    _write_set(tmp_path, n=2)
    (tmp_path/'empty').mkdir()
    with pytest.raises(FusionInputError, match="no images"):
        evaluate_folders(tmp_path/'empty', tmp_path/'ir', tmp_path/'vi', progress=False)
    with pytest.raises(FusionInputError, match="does not exist"):
        evaluate_folders(tmp_path/'nope', tmp_path/'ir', tmp_path/'vi', progress=False)
    with pytest.raises(FusionInputError, match="does not exist"):
        evaluate_folders(tmp_path/'fused', tmp_path/'nope', tmp_path/'vi', progress=False)
    with pytest.raises(FusionInputError, match=r"`metrics`: unknown \['ENT'\]"):
        evaluate_folders(tmp_path/'fused', tmp_path/'ir', tmp_path/'vi', ['ENT'], progress=False)


# ---------------------------------------------------------------- folders: what goes wrong is recorded, the rest scored

def _png(path: Path, img: np.ndarray) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    assert cv2.imwrite(str(path), img)
    return path

def _folders(root: Path, stems='abc', size=(48, 48)) -> tuple[Path, Path, Path]:
    "8-bit PNG sources root/ir, root/vi and fused images root/fused (their mean) for each stem; VIF needs 41x41."
    rng = np.random.default_rng(0)
    for s in stems:
        a, b = rng.integers(0, 256, (2, *size), dtype=np.uint8)
        _png(root/'ir'/f'{s}.png', a); _png(root/'vi'/f'{s}.png', b)
        _png(root/'fused'/f'{s}.png', ((a.astype(np.int64) + b) // 2).astype(np.uint8))
    return root/'fused', root/'ir', root/'vi'

def test_missing_fused_image_is_listed(tmp_path):
    fd, ird, vid = _folders(tmp_path, 'abcd')
    (fd/'b.png').unlink(); (fd/'d.png').unlink()
    _png(ird/'z.png', np.zeros((48, 48), np.uint8))              # IR without VIS: not a pair, so not missing
    res = evaluate_folders(fd, ird, vid, progress=False)
    assert list(res.per_image) == ['a.png', 'c.png'] and res.failed == {}
    assert res.missing == ['b', 'd'] and not res.ok and res.to_dict()['missing'] == ['b', 'd']
    assert "- 2 source pair(s) have no fused image: b, d\n" in res.to_markdown()

def test_fused_image_without_source_fails_alone(tmp_path):
    fd, ird, vid = _folders(tmp_path)
    clean = evaluate_folders(fd, ird, vid, progress=False)
    _png(fd/'x.png', np.zeros((48, 48), np.uint8))                # no source at all
    _png(fd/'y.png', np.zeros((48, 48), np.uint8)); _png(ird/'y.png', np.zeros((48, 48), np.uint8))   # no VIS
    res = evaluate_folders(fd, ird, vid, progress=False)
    assert res.failed == {'x.png': f"no infrared source named x.* in {ird} and no visible source named x.* in {vid}",
                          'y.png': f"no visible source named y.* in {vid}"}
    assert res.per_image == clean.per_image and res.missing == [] and not res.ok
    md = res.to_markdown()
    assert f"- 2 fused image(s) could not be evaluated: x.png (no infrared source named x.* in {ird}" in md
    assert res.to_dict()['failed'] == res.failed

def test_corrupt_file_fails_alone(tmp_path):
    fd, ird, vid = _folders(tmp_path)
    (fd/'x.png').write_bytes(b'not a png'); _png(ird/'x.png', np.zeros((48, 48), np.uint8)); _png(vid/'x.png', np.zeros((48, 48), np.uint8))
    (ird/'b.png').write_bytes(b'')                                # a corrupt source: named in the reason
    res = evaluate_folders(fd, ird, vid, progress=False)
    assert list(res.per_image) == ['a.png', 'c.png'] and list(res.failed) == ['b.png', 'x.png'] and res.missing == []
    assert str(fd/'x.png') in res.failed['x.png'] and 'cannot decode' in res.failed['x.png']
    assert str(ird/'b.png') in res.failed['b.png'] and 'cannot decode' in res.failed['b.png']
    assert all('\n' not in r for r in res.failed.values())

def test_size_mismatch_fails_alone(tmp_path):
    fd, ird, vid = _folders(tmp_path, 'abcd')
    _png(vid/'b.png', np.zeros((30, 40), np.uint8))
    for d in (fd, ird, vid): _png(d/'d.png', np.zeros((32, 32), np.uint8))   # same sizes, too small for VIF
    res = evaluate_folders(fd, ird, vid, progress=False)
    assert list(res.per_image) == ['a.png', 'c.png'] and not res.ok
    assert res.failed['b.png'] == f"sizes differ (W x H): {fd/'b.png'} is 48x48, {ird/'b.png'} is 48x48, {vid/'b.png'} is 40x30"
    assert 'expected at least 41x41 pixels' in res.failed['d.png']
    assert set(evaluate_folders(fd, ird, vid, ['EN', 'CC'], progress=False).per_image) == {'a.png', 'c.png', 'd.png'}

def test_nothing_evaluated_raises(tmp_path):
    fd, ird, vid = _folders(tmp_path, 'ab')
    for s in 'ab': (fd/f'{s}.png').write_bytes(b'not a png')
    with pytest.raises(FusionInputError, match=r"none of the 2 fused image\(s\) in .* could be evaluated: a\.png: .*cannot decode"
                                               r".*\(and 1 more failed\)$"):
        evaluate_folders(fd, ird, vid, progress=False)
    small = _folders(tmp_path/'small', 'a', size=(32, 32))
    with pytest.raises(FusionInputError, match=r"none of the 1 fused image\(s\).*a\.png: .*at least 41x41"):
        evaluate_folders(*small, progress=False)

def test_undefined_values_left_out_of_the_mean(tmp_path):
    fd, ird, vid = _folders(tmp_path)
    _png(fd/'b.png', np.full((48, 48), 100, np.uint8))             # a constant F: CC is 0/0 for it
    res = evaluate_folders(fd, ird, vid, progress=False)
    assert math.isnan(res.per_image['b.png']['CC']) and res.undefined == {'CC': 1} and res.ok
    assert res.mean['CC'] == pytest.approx((res.per_image['a.png']['CC'] + res.per_image['c.png']['CC']) / 2, rel=1e-12)
    assert res.mean['EN'] == pytest.approx(sum(v['EN'] for v in res.per_image.values()) / 3, rel=1e-12)
    assert "- CC undefined (NaN) for 1 of 3 image(s): excluded from its mean\n" in res.to_markdown()
    assert res.to_dict()['undefined'] == {'CC': 1}
    rows = {r[0]: r for r in csv.reader(res.to_csv(tmp_path/'r.csv').open())}
    col = ['image', *METRICS].index('CC')
    assert rows['b.png'][col] == 'nan' and float(rows['mean'][col]) == res.mean['CC']

def test_metric_undefined_everywhere(tmp_path):
    fd, ird, vid = _folders(tmp_path, 'ab')
    for s in 'ab': _png(fd/f'{s}.png', np.full((48, 48), 7, np.uint8))
    res = evaluate_folders(fd, ird, vid, ['EN', 'CC'], progress=False)
    assert res.undefined == {'CC': 2} and math.isnan(res.mean['CC']) and res.mean['EN'] == 0
    md = res.to_markdown()
    assert '| 2 | 0.0000 | undefined |' in md and "- CC undefined (NaN) for 2 of 2 image(s): no mean" in md
    assert list(csv.reader(res.to_csv(tmp_path/'r.csv').open()))[-1] == ['mean', '0.0', 'nan']

def test_infinite_psnr_is_kept(tmp_path):
    "F equal to both sources: MSE 0 and PSNR +inf, a value rather than undefined; SCD is 0/0."
    img = np.random.default_rng(1).integers(0, 256, (48, 48), dtype=np.uint8)
    for d in ('fused', 'ir', 'vi'): _png(tmp_path/d/'a.png', img)
    _folders(tmp_path, 'b')
    res = evaluate_folders(tmp_path/'fused', tmp_path/'ir', tmp_path/'vi', progress=False)
    assert res.per_image['a.png']['PSNR'] == math.inf and res.mean['PSNR'] == math.inf
    assert res.undefined == {'SCD': 1} and res.mean['SCD'] == res.per_image['b.png']['SCD']

def test_names_subset_is_not_missing(tmp_path):
    fd, ird, vid = _folders(tmp_path, 'abcd')
    (fd/'d.png').unlink()
    res = evaluate_folders(fd, ird, vid, progress=False, names=['a.png', 'c.png'])
    assert list(res.per_image) == ['a.png', 'c.png'] and res.missing == [] and res.ok
    assert evaluate_folders(fd, ird, vid, progress=False).missing == ['d']
    with pytest.raises(FusionInputError, match="`names`: not in"):
        evaluate_folders(fd, ird, vid, progress=False, names=['d.png'])

def test_compare_to_reference_on_a_small_reference(tmp_path):
    "A reference JSON (NaN as null) beside its folders: no deviation; an image that cannot be scored raises."
    fd, ird, vid = _folders(tmp_path/'src')
    _png(fd/'b.png', np.full((48, 48), 100, np.uint8))             # CC undefined: null in the reference
    res = evaluate_folders(fd, ird, vid, progress=False)
    per_image = {n: {m: None if math.isnan(v) else v for m, v in d.items()} for n, d in res.per_image.items()}
    spec = tmp_path/'reference'/'metrics'/'small.json'
    spec.parent.mkdir(parents=True)
    spec.write_text(json.dumps(dict(source='src', fused='src/fused', per_image=per_image)))
    worst = compare_to_reference(spec)
    assert set(worst) == set(METRICS) and all(w[0] == 0 for w in worst.values())
    (fd/'c.png').write_bytes(b'not a png')
    with pytest.raises(FusionInputError, match=r"small\.json: 1 image\(s\) could not be evaluated: c\.png \(.*cannot decode"):
        compare_to_reference(spec)


# ---------------------------------------------------------------- a second implementation (NumPy/SciPy)

def _numpy_agrees(f, a, b):
    "Every metric of ours within 1e-3 relative (1e-4 absolute below 0.1) of the NumPy/SciPy implementation."
    from numpy_metrics import numpy_metrics
    ours = {k: v.item() for k, v in compute_metrics(f, a, b).items()}
    ref = {k: float(fn()) for k, fn in numpy_metrics(*(t[0, 0].double().numpy() for t in (f, a, b))).items()}
    assert set(ref) == set(METRICS)
    bad = {m: (ours[m], ref[m]) for m in METRICS if _deviation(ours[m], None if math.isnan(ref[m]) else ref[m]) > TOL_REL}
    assert not bad, bad

def test_numpy_implementation_agrees_on_structured_images():
    pytest.importorskip('scipy', reason='the cross-check needs SciPy (pip install -e ".[dev]")')
    _numpy_agrees(*triplet(96, 128, seed=3))

def test_numpy_implementation_agrees_on_a_real_triplet(shared_path):
    pytest.importorskip('scipy', reason='the cross-check needs SciPy (pip install -e ".[dev]")')
    ref = shared_path('reference')
    spec = json.loads((ref/'metrics'/'seafusion_MSRS.json').read_text())
    name = next(iter(spec['per_image']))
    f, a, b = (load_gray255(p)[..., 100:260, 200:420] for p in
               (ref.parent/spec['fused']/name, ref.parent/spec['source']/'ir'/name, ref.parent/spec['source']/'vi'/name))
    _numpy_agrees(f, a, b)
