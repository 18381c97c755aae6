"Classic fusion baselines: shapes for odd sizes, identity, range, batch independence, the shared average reference."
import numpy as np
import pytest
import torch

from sfofusion.baselines import (BASELINES, BaselineFusion, fuse_baseline, laplacian_pyramid, reconstruct_laplacian,
                                 wavelet_decompose, wavelet_reconstruct)
from sfofusion.core import FusionInputError, load_gray255

NAMES = sorted(BASELINES)


def _pair(b=2, h=37, w=53, seed=0, dtype=torch.float32):
    g = torch.Generator().manual_seed(seed)
    return torch.rand(b, 1, h, w, generator=g, dtype=dtype), torch.rand(b, 1, h, w, generator=g, dtype=dtype)


@pytest.mark.parametrize('name', NAMES)
@pytest.mark.parametrize('size', [(1, 1), (3, 5), (7, 4), (37, 53), (64, 48), (129, 97)])
def test_shape_and_range(name, size):
    ir, vis = _pair(2, *size)
    f = fuse_baseline(name, ir, vis)
    assert f.shape == ir.shape and f.dtype == ir.dtype
    assert torch.isfinite(f).all() and f.min() >= 0 and f.max() <= 1


@pytest.mark.parametrize('name', NAMES)
@pytest.mark.parametrize('size', [(1, 1), (5, 3), (37, 53), (96, 128)])
def test_identity(name, size):
    x, _ = _pair(2, *size, dtype=torch.float64)
    torch.testing.assert_close(fuse_baseline(name, x, x), x, atol=1e-12, rtol=0)


@pytest.mark.parametrize('name', NAMES)
def test_batch_independence(name):
    ir, vis = _pair(3, 45, 61, seed=1)
    whole = fuse_baseline(name, ir, vis)
    for i in range(3):
        torch.testing.assert_close(fuse_baseline(name, ir[i:i + 1], vis[i:i + 1]), whole[i:i + 1], atol=1e-6, rtol=0)
    ir2 = ir.clone(); ir2[1:] = 1 - ir2[1:]      # changing the other images leaves image 0 unchanged
    torch.testing.assert_close(fuse_baseline(name, ir2, vis)[:1], whole[:1], atol=1e-6, rtol=0)


@pytest.mark.parametrize('levels', [1, 3, 6])
@pytest.mark.parametrize('size', [(31, 33), (40, 64)])
def test_transforms_invert_exactly(levels, size):
    x = torch.rand(2, 3, *size, dtype=torch.float64)
    torch.testing.assert_close(reconstruct_laplacian(laplacian_pyramid(x, levels)), x, atol=1e-12, rtol=0)
    torch.testing.assert_close(wavelet_reconstruct(*wavelet_decompose(x, levels)), x, atol=1e-12, rtol=0)


def test_rules_on_constant_sources():
    "Max-abs on details and average on the base: constant sources fuse to their mean under the multiscale rules."
    ir, vis = torch.full((1, 1, 20, 30), 0.8), torch.full((1, 1, 20, 30), 0.2)
    for name in ('average', 'laplacian', 'dwt'): torch.testing.assert_close(fuse_baseline(name, ir, vis), torch.full_like(ir, 0.5))
    torch.testing.assert_close(fuse_baseline('max', ir, vis), ir)


def test_detail_is_kept():
    "A thin line present only in VIS keeps (nearly) its full height 0.4 in max and multiscale fusions, half of it in the average."
    ir = torch.full((1, 1, 64, 64), 0.5)
    vis = ir.clone(); vis[..., 31] = 0.9
    for name, want in (('max', 0.4), ('laplacian', 0.4), ('dwt', 0.4), ('average', 0.2)):
        f = fuse_baseline(name, ir, vis)
        assert abs(float(f[..., 10, 31] - f[..., 10, 40]) - want) < 0.03, name


def test_module_and_errors():
    ir, vis = _pair(1, 16, 16)
    torch.testing.assert_close(BaselineFusion('dwt', levels=2)(ir, vis), fuse_baseline('dwt', ir, vis, levels=2))
    assert sum(p.numel() for p in BaselineFusion('laplacian').parameters()) == 0
    with pytest.raises(FusionInputError, match='average, max, laplacian, dwt'): fuse_baseline('wavelet', ir, vis)
    with pytest.raises(FusionInputError, match='unknown baseline'): BaselineFusion('nope')
    with pytest.raises(FusionInputError, match='vis'): fuse_baseline('max', ir, vis[..., :8])
    with pytest.raises(FusionInputError, match='ir'): fuse_baseline('average', ir.expand(1, 3, 16, 16), vis)
    with pytest.raises(FusionInputError, match='levels'): fuse_baseline('laplacian', ir, vis, levels=0)


def test_reproduces_shared_average_reference(shared):
    """`fused/average/MSRS` is round-half-to-even((IR + round(VIS_grey)) / 2) on 0-255, VIS_grey OpenCV's BGR2GRAY
    (the evaluator's `load_gray255`). Fed those 8-bit greys, the average baseline gives the same images exactly."""
    src, ref = shared/'data/MSRS/test', shared/'reference/fused/average/MSRS'
    names = sorted(p.name for p in ref.glob('*.png'))[:3]
    if not names: pytest.skip(f'no reference images in {ref}')
    for n in names:
        ir, vis = load_gray255(src/'ir'/n).double() / 255, load_gray255(src/'vi'/n).double() / 255
        f255 = torch.round(fuse_baseline('average', ir, vis) * 510) / 2   # exact halves (removes float error)
        fused = torch.round(f255)                                           # half to even, like the reference's np.round
        want = load_gray255(ref/n).double()
        assert torch.equal(fused, want), f'{n}: {int((fused != want).sum())} pixels differ'
