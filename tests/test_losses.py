"Tests of sfofusion.losses: zero cases, known values, finite gradients, gradcheck, batch independence, errors."
import kornia
import pytest
import torch
from torch.autograd import gradcheck

from sfofusion.core import FusionInputError
from sfofusion.data import synthetic_pair
from sfofusion.losses import (MAGNITUDE_EPS, FusionLoss, LossConfig, difference_correlation_loss, edge_preservation_loss,
                              frequency_loss, fusion_loss, gradient_loss, intensity_loss, log_magnitude_spectrum,
                              metric_ssim_loss, mutual_information_loss, sobel_magnitude, ssim_loss)

TERMS = dict(intensity=intensity_loss, gradient=gradient_loss, ssim=ssim_loss, frequency=frequency_loss)
ALL_ON = LossConfig(intensity=1., gradient=10., ssim=1., frequency=0.5)


def pair(b=2, h=24, w=28, seed=0, dtype=torch.float32):
    g = torch.Generator().manual_seed(seed)
    return (torch.rand(b, 1, h, w, generator=g, dtype=dtype), torch.rand(b, 1, h, w, generator=g, dtype=dtype),
            torch.rand(b, 1, h, w, generator=g, dtype=dtype))


# ---------------------------------------------------------------- zero when expected, known values

def test_zero_at_the_target():
    f, ir, vis = pair()
    assert intensity_loss(torch.maximum(ir, vis), ir, vis) == 0
    w = (torch.rand(2, 1, 24, 28) > 0.5).float()         # hard weights: each pixel pulled to one source, reached exactly
    assert intensity_loss(w * ir + (1 - w) * vis, ir, vis, w=w) == 0
    half = torch.full_like(w, 0.5)                        # weighted distances, not a distance to the mix:
    torch.testing.assert_close(intensity_loss((ir + vis) / 2, ir, vis, w=half), 0.5 * (ir - vis).abs().mean())
    for name, fn in TERMS.items():  # identical sources: the source itself is perfect for every term
        assert fn(ir, ir, ir).abs() < 1e-5, name

def test_gradient_zero_for_disjoint_details():
    # IR: warm blob on the left; VIS: texture on the right; zero elsewhere, supports > 2 px apart (3x3 Sobel)
    ir, vis = torch.zeros(3, 1, 32, 40), torch.zeros(3, 1, 32, 40)
    ir[:, :, 5:20, 3:12] = torch.linspace(0.5, 1, 3)[:, None, None, None]
    vis[:, :, 4:28, 22::3] = 0.4
    vis[:, :, 10:12, 20:38] = 0.7
    fused = ir + vis
    assert gradient_loss(fused, ir, vis) == 0 and intensity_loss(fused, ir, vis) == 0
    w = torch.rand(3, 1, 32, 40)  # the weighted gradient target differs where a source has texture
    assert gradient_loss(fused, ir, vis, w=w) > 0
    wmask = ((sobel_magnitude(ir) > 0) | (sobel_magnitude(vis) == 0)).float()  # IR share 1 at IR edges, 0 at VIS edges
    assert gradient_loss(fused, ir, vis, w=wmask) == 0

def test_known_values():
    ir = torch.tensor([[[[0.2, 0.8], [0.1, 0.5]]]])
    vis = torch.tensor([[[[0.6, 0.3], [0.1, 0.9]]]])
    assert intensity_loss(torch.zeros_like(ir), ir, vis).item() == pytest.approx(0.6)
    assert intensity_loss(torch.ones_like(ir), ir, vis).item() == pytest.approx(((1 - .6) + (1 - .8) + (1 - .1) + (1 - .9)) / 4)
    step = torch.zeros(1, 1, 6, 10); step[..., 5:] = 1
    assert sobel_magnitude(step)[0, 0].sum(1).tolist() == [1.] * 6  # per-pixel change: a unit step sums to 1 per row
    ramp = torch.arange(10.).expand(1, 1, 6, 10) / 20
    assert torch.allclose(sobel_magnitude(ramp)[..., 1:-1], torch.full((1, 1, 6, 8), 0.05))  # slope 0.05 per pixel
    z = torch.zeros_like(step)
    assert gradient_loss(z, step, z).item() == pytest.approx(0.1)
    assert gradient_loss(step, step, z).item() == 0

def test_ssim_and_frequency_properties():
    f, ir, vis = pair(h=32, w=32)
    assert ssim_loss(ir, ir, vis, ir_weight=1.).abs() < 1e-5 and ssim_loss(vis, ir, vis, ir_weight=0.).abs() < 1e-5
    torch.testing.assert_close(ssim_loss(f, ir, vis), ssim_loss(f, vis, ir))
    s = ssim_loss(f, ir, vis, reduction='none')
    ref = 0.5 * (1 - kornia.metrics.ssim(f, ir, 11).flatten(1).mean(1)) + 0.5 * (1 - kornia.metrics.ssim(f, vis, 11).flatten(1).mean(1))
    torch.testing.assert_close(s, ref)
    blur = kornia.filters.gaussian_blur2d(torch.maximum(ir, vis), (7, 7), (2., 2.))
    assert ssim_loss(blur, ir, vis) > ssim_loss(torch.maximum(ir, vis), ir, vis)  # blur loses structure
    assert (frequency_loss(f, ir, vis, reduction='none') >= 0).all()
    x = torch.rand(1, 1, 8, 8, dtype=torch.float64)
    amp = torch.fft.rfft2(x, norm='ortho').abs()
    torch.testing.assert_close(log_magnitude_spectrum(x), torch.log1p(torch.sqrt(amp**2 + MAGNITUDE_EPS)))
    assert frequency_loss(blur, ir, vis) > frequency_loss(torch.maximum(ir, vis), ir, vis)


# ---------------------------------------------------------------- gradients

@pytest.mark.parametrize('dtype', [torch.float32, torch.float64])
@pytest.mark.parametrize('value', [0., 0.5, 1.])
def test_finite_gradients_on_constant_images(dtype, value):
    f = torch.full((2, 1, 16, 16), value, dtype=dtype, requires_grad=True)
    ir = torch.full((2, 1, 16, 16), value, dtype=dtype)
    vis = torch.zeros(2, 1, 16, 16, dtype=dtype)
    w = torch.full((2, 1, 16, 16), 0.5, dtype=dtype, requires_grad=True)
    for src in ((ir, vis), (vis, vis), (ir, ir)):
        for name, fn in TERMS.items():
            f.grad = None
            fn(f, *src).backward()
            assert torch.isfinite(f.grad).all(), (name, value)
        total, parts = FusionLoss(ALL_ON)(f, *src, w_int=w, w_grad=w)
        assert torch.isfinite(total) and all(torch.isfinite(v).all() for v in parts.values())
        f.grad = w.grad = None
        total.backward()
        assert torch.isfinite(f.grad).all() and torch.isfinite(w.grad).all()

def test_gradcheck_float64():
    f, ir, vis = pair(b=2, h=8, w=9, seed=1, dtype=torch.float64)
    f.requires_grad_(True)
    w1 = torch.rand(2, 1, 8, 9, dtype=torch.float64).requires_grad_(True)
    w2 = torch.rand(2, 1, 8, 9, dtype=torch.float64).requires_grad_(True)
    assert gradcheck(lambda f, w: intensity_loss(f, ir, vis, w=w, reduction='none'), (f, w1))
    assert gradcheck(lambda f, w: gradient_loss(f, ir, vis, w=w, reduction='none'), (f, w1))
    assert gradcheck(lambda f: ssim_loss(f, ir, vis, ir_weight=0.3, window_size=7, reduction='none'), (f,))
    assert gradcheck(lambda f: frequency_loss(f, ir, vis, reduction='none'), (f,))
    cfg = LossConfig(intensity=1., gradient=10., ssim=1., frequency=0.5, ssim_window=7)
    one = lambda x: x[:1].detach().requires_grad_(True)
    assert gradcheck(lambda f, a, b: fusion_loss(f, ir[:1], vis[:1], cfg, a, b)[0], (one(f), one(w1), one(w2)))

def test_optimising_a_fused_image_decreases_the_loss():
    d = synthetic_pair(48, 48, seed=4)
    ir, vis = d['ir'][None], d['vis'][None]
    for loss in (FusionLoss(), FusionLoss(gradient_gain=1.)):   # the defaults, and targets as strong as the sources
        f = ((ir + vis) / 2).clone().requires_grad_(True)
        opt = torch.optim.Adam([f], lr=0.01)
        start = loss(f, ir, vis)[0].item()
        for _ in range(60):
            opt.zero_grad(); loss(f, ir, vis)[0].backward(); opt.step()
        end, parts = loss(f, ir, vis)
        assert end.item() < 0.8 * start
    assert parts['intensity'] < intensity_loss((ir + vis) / 2, ir, vis)  # moved towards the brighter source


# ---------------------------------------------------------------- batching and reduction

@pytest.mark.parametrize('name', list(TERMS) + ['total'])
def test_batch_independence(name):
    f, ir, vis = pair(b=4, seed=3)
    w = torch.rand(4, 1, 24, 28)
    calls = dict(total=lambda a, b, c, ww, r: fusion_loss(a, b, c, ALL_ON, ww, ww, r)[0],
                 intensity=lambda a, b, c, ww, r: intensity_loss(a, b, c, w=ww, reduction=r),
                 gradient=lambda a, b, c, ww, r: gradient_loss(a, b, c, w=ww, reduction=r),
                 ssim=lambda a, b, c, ww, r: ssim_loss(a, b, c, reduction=r),
                 frequency=lambda a, b, c, ww, r: frequency_loss(a, b, c, reduction=r))
    fn = calls[name]
    per = fn(f, ir, vis, w, 'none')
    assert per.shape == (4,)
    single = torch.stack([fn(f[i:i + 1], ir[i:i + 1], vis[i:i + 1], w[i:i + 1], 'mean') for i in range(4)])
    torch.testing.assert_close(per, single)
    # changing another image of the batch does not change this one's loss
    f2 = f.clone(); f2[1:] = torch.rand(3, 1, 24, 28)
    torch.testing.assert_close(fn(f2, ir, vis, w, 'none')[0], per[0])
    torch.testing.assert_close(fn(f, ir, vis, w, 'mean'), per.mean())
    torch.testing.assert_close(fn(f, ir, vis, w, 'sum'), per.sum())

def test_multichannel_and_odd_sizes():
    f, ir, vis = (torch.rand(1, 3, 13, 17) for _ in range(3))
    total, parts = FusionLoss(ALL_ON)(f, ir, vis, w_int=torch.rand(1, 1, 13, 17))
    assert total.ndim == 0 and set(parts) == {'intensity', 'gradient', 'ssim', 'frequency'}


# ---------------------------------------------------------------- module, config, errors

def test_fusion_loss_module_and_config():
    c = LossConfig()
    assert (c.intensity, c.gradient, c.ssim, c.frequency, c.gradient_mode, c.gradient_gain) == (1., 20., 0.2, 0., 'signed', 1.2)
    f, ir, vis = pair()
    total, parts = FusionLoss()(f, ir, vis)
    assert set(parts) == {'intensity', 'gradient', 'ssim'} and all(not v.requires_grad for v in parts.values())
    torch.testing.assert_close(total, parts['intensity'] + 20 * parts['gradient'] + 0.2 * parts['ssim'])
    m = FusionLoss(c, gradient=2., ssim=0.)
    assert m.config.gradient == 2. and c.gradient == 20.  # overrides copy the config
    t2, p2 = m(f, ir, vis)
    assert set(p2) == {'intensity', 'gradient'}
    torch.testing.assert_close(t2, p2['intensity'] + 2 * p2['gradient'])
    assert 'gradient=2.0' in repr(m) and list(m.parameters()) == [] and list(m.buffers()) == []
    per, _ = m(f, ir, vis, reduction='none')
    assert per.shape == (2,)
    with pytest.raises(FusionInputError, match='all weights are 0'): LossConfig(intensity=0., gradient=0., ssim=0.)
    with pytest.raises(FusionInputError, match='LossConfig.ssim'): LossConfig(ssim=float('nan'))
    with pytest.raises(TypeError): FusionLoss(nonsense=1.)

def test_errors_name_the_argument():
    f, ir, vis = pair()
    with pytest.raises(FusionInputError, match='`ir`: expected values in'): intensity_loss(f, ir * 255, vis)
    with pytest.raises(FusionInputError, match='`vis`: expected a floating tensor'): gradient_loss(f, ir, vis[0])
    with pytest.raises(FusionInputError, match='`fused`: expected finite'): ssim_loss(f * float('nan'), ir, vis)
    with pytest.raises(FusionInputError, match='same shape'): frequency_loss(f, ir, vis[..., :20])
    with pytest.raises(FusionInputError, match=r'`w_int`: expected shape \(2, 1, 24, 28\)'): fusion_loss(f, ir, vis, w_int=torch.rand(1, 1, 24, 28))
    with pytest.raises(FusionInputError, match='`w_grad`: expected values in'): fusion_loss(f, ir, vis, w_grad=torch.full((2, 1, 24, 28), 1.5))
    with pytest.raises(FusionInputError, match='`w`: expected 1 channel'): intensity_loss(f, ir, vis, w=torch.rand(2, 2, 24, 28))
    with pytest.raises(FusionInputError, match='`reduction`'): intensity_loss(f, ir, vis, reduction='max')
    with pytest.raises(FusionInputError, match='`ir_weight`'): ssim_loss(f, ir, vis, ir_weight=2.)
    with pytest.raises(FusionInputError, match='`window_size`'): ssim_loss(f, ir, vis, window_size=4)
    with pytest.raises(FusionInputError, match='too small for an SSIM window'): ssim_loss(*(x[..., :5, :5] for x in (f, ir, vis)))
    f5 = f[..., :5, :5]
    assert torch.isfinite(fusion_loss(f5, ir[..., :5, :5], vis[..., :5, :5], LossConfig(ssim=0.))[0])  # small images without SSIM

@pytest.mark.cuda
def test_cuda_matches_cpu():
    f, ir, vis = pair()
    w = torch.rand(2, 1, 24, 28)
    cpu = fusion_loss(f, ir, vis, ALL_ON, w, w, 'none')[0]
    gpu = fusion_loss(f.cuda(), ir.cuda(), vis.cuda(), ALL_ON, w.cuda(), w.cuda(), 'none')[0]
    torch.testing.assert_close(gpu.cpu(), cpu, atol=1e-5, rtol=1e-4)


# ---------------------------------------------------------------- gradient targets: sign-aware, magnitude, gain

def test_signed_target_keeps_edge_direction():
    step = torch.zeros(2, 1, 12, 16); step[..., 8:] = 0.6
    z = torch.zeros_like(step)
    flipped = 0.6 - step                                         # the same edge, facing the other way
    assert gradient_loss(flipped, step, z, mode='magnitude') < 1e-7
    assert gradient_loss(flipped, step, z, mode='signed') == pytest.approx(2 * gradient_loss(z, step, z, mode='signed').item())
    ir, vis = step, torch.rand(2, 1, 12, 16) * 0.1              # IR owns the edge, VIS is faint texture
    assert gradient_loss(ir, ir, vis, mode='signed') < gradient_loss(vis, ir, vis, mode='signed')


@pytest.mark.parametrize('mode', ['signed', 'magnitude'])
def test_gain_scales_the_target(mode):
    f, ir, vis = pair(h=20, w=22)
    assert gradient_loss(1.3 * ir, ir, ir, mode=mode, gain=1.3) < 1e-6   # a 30% sharper copy is the target
    assert gradient_loss(ir, ir, ir, mode=mode, gain=1.3) > 0
    cfg = LossConfig(gradient_mode=mode, gradient_gain=1.3)
    assert fusion_loss(f, ir, vis, cfg)[1]['gradient'] == pytest.approx(gradient_loss(f, ir, vis, mode=mode, gain=1.3).item())


def test_gradient_target_gradcheck_and_config_errors():
    f, ir, vis = pair(b=1, h=7, w=8, seed=3, dtype=torch.float64)
    f.requires_grad_(True)
    w = torch.rand(1, 1, 7, 8, dtype=torch.float64).requires_grad_(True)
    for mode in ('signed', 'magnitude'):
        assert gradcheck(lambda f, w: gradient_loss(f, ir, vis, w=w, mode=mode, gain=1.2, reduction='none'), (f, w))
    with pytest.raises(FusionInputError, match='gradient_mode'): LossConfig(gradient_mode='l2')
    with pytest.raises(FusionInputError, match='gradient_gain'): LossConfig(gradient_gain=0)
    with pytest.raises(FusionInputError, match='`mode`'): gradient_loss(f, ir, vis, mode='abs')


# ---------------------------------------------------------------- the metric-aligned terms (off by default)

ALIGNED = dict(edge_preservation=edge_preservation_loss, mutual_information=mutual_information_loss,
               metric_ssim=metric_ssim_loss, difference_correlation=difference_correlation_loss)
ALIGNED_ON = LossConfig(intensity=1., gradient=10., ssim=1., edge_preservation=2., mutual_information=0.1, metric_ssim=2.,
                        difference_correlation=2., ssim_window=7)

@pytest.mark.parametrize('name', list(ALIGNED))
def test_aligned_terms_per_image_and_finite_on_flat_crops(name):
    fn = ALIGNED[name]
    f, ir, vis = pair(b=3, seed=5)
    per = fn(f, ir, vis, reduction='none')
    assert per.shape == (3,)
    torch.testing.assert_close(per, torch.cat([fn(f[i:i + 1], ir[i:i + 1], vis[i:i + 1], reduction='none') for i in range(3)]))
    f2 = f.clone(); f2[1:] = torch.rand(2, 1, 24, 28)
    torch.testing.assert_close(fn(f2, ir, vis, reduction='none')[0], per[0])
    torch.testing.assert_close(fn(f, ir, vis), per.mean())
    for value in (0., 0.5, 1.):              # a flat training crop: a flat source, or everything flat
        x = torch.full((1, 1, 16, 16), value, requires_grad=True)
        flat = torch.full((1, 1, 16, 16), value)
        for src in ((flat, vis[:1, :, :16, :16]), (flat, flat)):
            x.grad = None
            loss = fn(x, *src)
            loss.backward()
            assert torch.isfinite(loss) and torch.isfinite(x.grad).all(), (name, value)
    if name == 'difference_correlation':   # near a flat difference the derivative would grow as 1 / spread: bounded
        c = torch.full((1, 1, 16, 16), 0.3)
        for f0 in (c, c + 1e-4 * torch.rand(1, 1, 16, 16), c + 0.01 * torch.rand(1, 1, 16, 16)):
            x = f0.clone().requires_grad_(True)
            fn(x, c, vis[:1, :, :16, :16]).backward()
            assert x.grad.abs().max() < 100, float(x.grad.abs().max())

def test_aligned_terms_in_the_fusion_loss():
    f, ir, vis = pair(b=2, h=12, w=13, seed=6)
    total, parts = fusion_loss(f, ir, vis, ALIGNED_ON)
    assert set(ALIGNED) <= set(parts)
    weights = {k: getattr(ALIGNED_ON, k) for k in parts}
    torch.testing.assert_close(total, sum(weights[k] * v for k, v in parts.items()))
    for k, fn in ALIGNED.items(): torch.testing.assert_close(parts[k], fn(f, ir, vis))
    f64, a, b = (x[:1].double() for x in (f, ir, vis))
    assert gradcheck(lambda x: fusion_loss(x, a, b, ALIGNED_ON)[0], ((0.1 + 0.8 * f64).requires_grad_(True),), atol=1e-4)
    total3, parts3 = fusion_loss(*(x.repeat(1, 3, 1, 1) for x in (f, ir, vis)), ALIGNED_ON)   # repeated channels: the same
    torch.testing.assert_close(total3, total)
    for k in parts: torch.testing.assert_close(parts3[k], parts[k])
    extra = [pair(b=2, h=12, w=13, seed=s) for s in (7, 8)]                       # two more channels per image
    f3, ir3, vis3 = (torch.cat(chans, 1) for chans in zip((f, ir, vis), *extra))
    torch.testing.assert_close(metric_ssim_loss(f3, ir3, vis3, reduction='none'),   # distinct channels: their mean
                               torch.stack([metric_ssim_loss(f3[:, c:c + 1], ir3[:, c:c + 1], vis3[:, c:c + 1], reduction='none') for c in range(3)]).mean(0))
    with pytest.raises(FusionInputError, match="evaluator's SSIM window"): metric_ssim_loss(*(x[..., :6, :6] for x in (f, ir, vis)))
    with pytest.raises(FusionInputError, match='LossConfig.difference_correlation'): LossConfig(difference_correlation=-1.)
