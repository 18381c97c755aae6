"""Sweeping tests of sfofusion.spectrum: the rFFT grid, round trips, bands, phase wrapping, gradients (float64)."""
import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch.autograd import gradcheck

from sfofusion.spectrum import (F_MAX, AmplitudeFusion, FrequencyGain, PhaseAlign, PhaseFusion, SpectrumSplit,
                                align_phase, band_centres, band_energy, band_gain_map, band_weights, dynamic_filter,
                                from_spectrum, log_amplitude, lowpass_mask, merge_spectrum, phase_difference,
                                phasor_angle, radial_frequency, spectral_pad, split_amplitude, split_spectrum,
                                to_spectrum, token_attention, wrap_phase)

SIZES = [(1, 1), (1, 6), (5, 1), (4, 6), (5, 7), (97, 131), (96, 130), (33, 64)]
D = torch.float64


@pytest.mark.parametrize('h,w', SIZES)
def test_radial_frequency_matches_numpy(h, w):
    fy, fx = np.fft.fftfreq(h)[:, None], np.fft.rfftfreq(w)[None, :]
    ref = np.sqrt(fy ** 2 + fx ** 2)
    r = radial_frequency(h, w, dtype=D)
    assert r.shape == (h, w // 2 + 1)
    np.testing.assert_allclose(r.numpy(), ref, atol=1e-12)
    assert r[0, 0] == 0 and r.max() <= F_MAX + 1e-12


def test_radial_frequency_is_not_centred():
    # the authors' partial code measured from the array centre; the DC bin is the top-left corner
    r = radial_frequency(64, 64)
    assert r.argmin() == 0
    assert r[63, 0] == r[1, 0]            # row -1/H is as low as row +1/H


@pytest.mark.parametrize('h,w', SIZES)
@pytest.mark.parametrize('dtype', [torch.float32, torch.float64])
def test_spectrum_round_trip(h, w, dtype):
    x = torch.rand(3, 2, h, w, dtype=dtype)
    amp, phase = to_spectrum(x)
    assert amp.dtype == dtype and amp.shape == (3, 2, h, w // 2 + 1)
    assert (amp >= 0).all() and (phase >= -math.pi).all() and (phase < math.pi).all()
    torch.testing.assert_close(from_spectrum(amp, phase, (h, w)), x, atol=1e-5, rtol=0)


@pytest.mark.parametrize('h,w', SIZES)
def test_split_merge_round_trip(h, w):
    x = torch.rand(2, 1, h, w)
    low, high, phase = split_spectrum(x, threshold=0.07, softness=0.02)
    assert (low >= 0).all() and (high >= 0).all()
    torch.testing.assert_close(merge_spectrum(low, high, phase, (h, w)), x, atol=1e-5, rtol=0)


@pytest.mark.parametrize('h,w', [(5, 7), (97, 131), (64, 48)])
def test_learned_split_round_trip_and_batch_independence(h, w):
    torch.manual_seed(0)
    split = SpectrumSplit()
    with torch.no_grad():  # make the learned parts matter: random generator output, other threshold
        for p in split.generator.parameters(): p.normal_(0, 0.5)
        split.threshold_logit.fill_(-1.)
    x = torch.rand(4, 2, h, w)
    amp, phase = to_spectrum(x)
    ell = log_amplitude(amp)
    wts, rad = band_weights(h, w, 8, 1 / 128), radial_frequency(h, w)
    low, high, mask, tau = split(amp, ell, band_energy(ell, wts), rad)
    torch.testing.assert_close(merge_spectrum(low, high, phase, (h, w)), x, atol=1e-5, rtol=0)
    assert tau.shape == (4, 2, 1, 1) and len(torch.unique(tau)) > 1      # per image, per channel
    for i in range(4):
        lo_i, _, m_i, tau_i = split(amp[i:i + 1], ell[i:i + 1], band_energy(ell[i:i + 1], wts), rad)
        torch.testing.assert_close(lo_i, low[i:i + 1], atol=1e-6, rtol=1e-5)
        torch.testing.assert_close(tau_i, tau[i:i + 1])


def test_dynamic_filter_matches_per_sample_loop():
    x, k = torch.randn(3, 2, 9, 6, dtype=D), torch.randn(3, 2, 3, 3, dtype=D)
    got = dynamic_filter(x, k)
    ref = torch.stack([torch.cat([F.conv2d(spectral_pad(x[b:b + 1, c:c + 1], 1), k[b:b + 1, c:c + 1]) for c in range(2)], 1)[0]
                       for b in range(3)])
    torch.testing.assert_close(got, ref)


def test_spectral_pad_wraps_rows_and_repeats_columns():
    x = torch.arange(12.).view(1, 1, 3, 4)
    p = spectral_pad(x, 1)
    assert p.shape == (1, 1, 5, 6)
    torch.testing.assert_close(p[0, 0, 0, 1:-1], x[0, 0, -1])    # wrap-around rows
    torch.testing.assert_close(p[0, 0, 1:-1, 0], x[0, 0, :, 0])  # repeated first column


def test_wrap_phase():
    p = torch.linspace(-20, 20, 4001, dtype=D)
    w = wrap_phase(p)
    assert (w >= -math.pi).all() and (w < math.pi).all()
    torch.testing.assert_close(torch.cos(w), torch.cos(p)); torch.testing.assert_close(torch.sin(w), torch.sin(p))
    assert wrap_phase(torch.tensor(math.pi)).item() == pytest.approx(-math.pi)
    q = torch.tensor([0.3, 2.0, -3.0], dtype=D, requires_grad=True)
    wrap_phase(q + 7).sum().backward()
    torch.testing.assert_close(q.grad, torch.ones(3, dtype=D))    # gradient 1: wrapping never blocks learning


def test_phase_difference_and_alignment_take_the_short_way():
    a, b = torch.tensor([3.0], dtype=D), torch.tensor([-3.0], dtype=D)
    torch.testing.assert_close(phase_difference(a, b), torch.tensor([2 * math.pi - 6], dtype=D))
    for g in torch.linspace(0, 1, 11, dtype=D):
        al = align_phase(a, b, g)
        assert -math.pi <= al.item() < math.pi
        # distance along the circle to b shrinks linearly with the gate
        torch.testing.assert_close(phase_difference(al, b).abs(), (1 - g) * (2 * math.pi - 6) * torch.ones(1, dtype=D))


def test_band_weights():
    for h, w in [(480, 640), (97, 131), (1, 1)]:
        wts = band_weights(h, w, 8, 1 / 128)
        assert wts.shape == (h, w // 2 + 1, 8) and (wts >= 0).all()
        torch.testing.assert_close(wts.sum(-1), torch.ones(h, w // 2 + 1))
        assert wts[0, 0, 0] == 1          # DC in the first band
    c = band_centres(8, 1 / 128)
    torch.testing.assert_close(c[1:] / c[:-1], torch.full((7,), (F_MAX * 128) ** (1 / 7)))   # log-spaced
    wts = band_weights(480, 640, 8, 1 / 128)
    r = radial_frequency(480, 640)
    for k in range(1, 7):  # each inner band peaks where the radius equals its centre
        assert (r[wts[..., k] > 0.99] - c[k]).abs().max() < 0.01 * c[k]
    assert (r[wts[..., 0] > 0.99] <= c[0] * 1.01).all()   # the first band holds everything below its centre
    e = band_energy(torch.rand(2, 3, 480, 321), wts)
    assert e.shape == (2, 3, 8)
    g = torch.rand(2, 8) + 0.5
    gm = band_gain_map(g, wts)
    assert gm.shape == (2, 1, 480, 321)
    torch.testing.assert_close(gm[:, 0, 0, 0], g[:, 0])
    with pytest.raises(ValueError, match='n_bands'): band_centres(1, 0.01)
    with pytest.raises(ValueError, match='f_low'): band_centres(4, 1.0)


def test_lowpass_mask_and_split_amplitude():
    r = radial_frequency(64, 64)
    m = lowpass_mask(r, 0.1, 0.01)
    assert m[0, 0] > 0.99 and m[32, 32] < 0.01
    assert ((m - 0.5).abs()[(r - 0.1).abs() < 1e-3] < 1e-2).all()       # half at the threshold
    amp = torch.rand(2, 1, 64, 33)
    lo, hi = split_amplitude(amp, m)
    torch.testing.assert_close(lo + hi, amp)


def test_half_inputs_are_transformed_in_float32():
    x = torch.rand(1, 1, 12, 10).to(torch.bfloat16)
    amp, phase = to_spectrum(x)
    assert amp.dtype == torch.float32 and torch.isfinite(amp).all()
    assert from_spectrum(amp.half(), phase.half(), (12, 10)).dtype == torch.float32


def test_constant_image_has_finite_gradients():
    x = torch.full((1, 1, 6, 7), 0.4, dtype=D, requires_grad=True)   # all non-DC bins are exactly zero
    amp, phase = to_spectrum(x)
    (amp.sum() + phase.sum() + log_amplitude(amp).sum()).backward()
    assert torch.isfinite(x.grad).all()


def test_phasor_angle_fallback_and_token_attention():
    u = torch.zeros(1, 2, 2, 2, dtype=D, requires_grad=True)
    a = phasor_angle(u, torch.full((1, 1, 2, 2), 0.5, dtype=D))
    a.sum().backward()
    torch.testing.assert_close(a, torch.full((1, 1, 2, 2), 0.5, dtype=D))
    assert torch.isfinite(u.grad).all()
    q, tok = torch.randn(2, 3, 4, 5), torch.randn(2, 3, 3, 4, 5)
    out, w = token_attention(q, tok, tok[:, :, :2], torch.zeros(3))
    torch.testing.assert_close(w.sum(1), torch.ones(2, 4, 5))
    ref_w = torch.softmax(torch.einsum('bdhw,btdhw->bthw', q, tok), 1)
    torch.testing.assert_close(w, ref_w)
    torch.testing.assert_close(out, torch.einsum('bthw,btehw->behw', ref_w, tok[:, :, :2]))


# ---- float64 gradcheck of every spectral block, on tiny inputs ----

def _rand(*shape):
    return torch.rand(*shape, dtype=D, requires_grad=True)


def _double(m, seed=0):
    torch.manual_seed(seed)
    m = m.double()
    with torch.no_grad():  # away from the initial values, so that every path carries gradient
        for p in m.parameters(): p.add_(0.1 * torch.randn_like(p))
    return m


def test_gradcheck_spectrum_round_trip():
    x = _rand(1, 1, 4, 5)
    assert gradcheck(lambda x: from_spectrum(*to_spectrum(x), (4, 5)), (x,), eps=1e-6, atol=1e-6)
    assert gradcheck(lambda x: split_spectrum(x, 0.2, 0.05)[:2], (x,), eps=1e-6, atol=1e-6)


def test_gradcheck_spectrum_split_module():
    sp = _double(SpectrumSplit(n_bands=4, f_low=0.05))
    rad, wts = radial_frequency(5, 6, dtype=D), band_weights(5, 6, 4, 0.05, dtype=D)

    def f(x):
        amp, _ = to_spectrum(x)
        ell = log_amplitude(amp)
        low, high, mask, tau = sp(amp, ell, band_energy(ell, wts), rad)
        return low, mask, tau
    assert gradcheck(f, (_rand(2, 1, 5, 6),), eps=1e-6, atol=1e-5)


def test_gradcheck_frequency_gain():
    g = _double(FrequencyGain(n_bands=4, hidden=5))
    wts = band_weights(4, 6, 4, 0.05, dtype=D)
    assert gradcheck(lambda e, a: a * band_gain_map(g(e), wts), (_rand(2, 2, 4), _rand(2, 1, 4, 4)), eps=1e-6, atol=1e-6)


def test_gradcheck_phase_blocks():
    pa, pf = _double(PhaseAlign(hidden=3)), _double(PhaseFusion())
    pi, pv = (torch.rand(1, 1, 4, 3, dtype=D) * 5 - 2.5).requires_grad_(), (torch.rand(1, 1, 4, 3, dtype=D) * 5 - 2.5).requires_grad_()
    li, lv = _rand(1, 1, 4, 3), _rand(1, 1, 4, 3)
    assert gradcheck(lambda a, b, c, d: pa(a, b, c, d), (pi, pv, li, lv), eps=1e-6, atol=1e-6)
    assert gradcheck(lambda a, b, c, d: pf(pa(a, b, c, d)[0], a, b, c, d), (pi, pv, li, lv), eps=1e-6, atol=1e-6)


def test_gradcheck_amplitude_fusion():
    af = _double(AmplitudeFusion(hidden=3))
    args = [_rand(1, 1, 4, 3) for _ in range(8)]
    assert gradcheck(lambda *a: af(*a)[:2], args, eps=1e-6, atol=1e-6)


def test_gradcheck_dynamic_filter():
    assert gradcheck(dynamic_filter, (_rand(2, 2, 4, 3), _rand(2, 2, 3, 3)), eps=1e-6, atol=1e-6)
