"""Sweeping tests of sfofusion.model (and sfofusion.flops): shapes, ranges, batch independence, gradients, dtypes,
devices, input errors, save/load, compile."""
import json
import math
from dataclasses import asdict
from pathlib import Path

import pytest
import torch
from torch.autograd import gradcheck

import sfofusion.model as M
from sfofusion.core import FusionInputError
from sfofusion.flops import count_flops
from sfofusion.model import SFOFusion, SFOFusionConfig, build_model, count_parameters, normalize_per_image

CUDA = torch.cuda.is_available()


@pytest.fixture(scope='module')
def model():
    torch.manual_seed(0)
    return build_model().eval()


def _pair(b, h, w, seed=0, dtype=torch.float32):
    g = torch.Generator().manual_seed(seed)
    return torch.rand(b, 1, h, w, generator=g, dtype=dtype), torch.rand(b, 1, h, w, generator=g, dtype=dtype)


@pytest.mark.parametrize('b,h,w', [(1, 97, 131), (2, 480, 640), (3, 1, 1), (2, 5, 7), (1, 64, 33)])
def test_shape_and_range(model, b, h, w):
    ir, vis = _pair(b, h, w)
    with torch.inference_mode(): out = model(ir, vis)
    assert out.shape == (b, 1, h, w) and out.dtype == torch.float32
    assert torch.isfinite(out).all() and out.min() >= 0 and out.max() <= 1
    # untrained: a soft per-pixel maximum of the sources (the 'select' head's starting point)
    assert (out - torch.maximum(ir, vis)).abs().mean() < 0.05


def _randomised(seed=0, scale=0.5):
    "A network whose output head is far from its initialisation (stands in for any trained weights)."
    torch.manual_seed(seed)
    m = build_model().eval()
    with torch.no_grad():
        for p in m.merge.parameters(): p.add_(torch.randn_like(p) * scale)
    return m


@pytest.mark.parametrize('h,w', [(480, 640), (37, 53), (5, 7), (1, 1), (2, 9)])
@pytest.mark.parametrize('a,b', [(128, 128), (0, 0), (255, 255), (200, 60), (30, 90)])
def test_flat_in_flat_out(h, w, a, b):
    m = _randomised()
    ir, vis = torch.full((2, 1, h, w), a / 255), torch.full((2, 1, h, w), b / 255)
    with torch.inference_mode(): y = m(ir, vis) * 255
    assert (y.amax((-2, -1)) - y.amin((-2, -1))).max() < 0.01                   # flat (FFT round-off only): no fixed pixels
    assert min(a, b) - 0.01 <= y.min() and y.max() <= max(a, b) + 0.01          # the inputs' blend
    if a == b: torch.testing.assert_close(y, torch.full_like(y, a), atol=0.01, rtol=0)


def test_untrained_network_approaches_the_hard_max():
    m = build_model(SFOFusionConfig(select_sharpness=1e4)).eval()
    ir, vis = _pair(1, 40, 50)
    with torch.inference_mode(): y = m(ir, vis)
    assert (y - torch.maximum(ir, vis)).abs().mean() < 0.02


def test_forward_aux(model):
    ir, vis = _pair(2, 48, 61)
    with torch.inference_mode(): aux = model.forward_aux(ir, vis)
    for k in ('fused', 'freq', 'comp'): assert aux[k].shape == (2, 1, 48, 61), k
    assert ((aux['comp'] > 0) & (aux['comp'] < 1)).all()
    assert aux['significance'].shape == (2, 2, 48, 61)
    assert aux['gains'].shape == (2, 8) and aux['band_centres'].shape == (8,)
    assert aux['threshold'].shape == (2, 2) and aux['phase_weights'].shape == (2, 3, 48, 31)
    with torch.inference_mode(): torch.testing.assert_close(aux['fused'], model(ir, vis))


def test_batch_independence(model):
    ir, vis = _pair(4, 120, 97, seed=1)
    ir[2] = ir[2] ** 3; vis[0] = 1 - vis[0]            # different kinds of image in one batch
    with torch.inference_mode():
        batch = model.forward_aux(ir, vis)
        for i in range(4):
            alone = model.forward_aux(ir[i:i + 1], vis[i:i + 1])
            for k in ('fused', 'freq', 'comp', 'gains', 'threshold'):
                torch.testing.assert_close(alone[k], batch[k][i:i + 1], atol=1e-5, rtol=0, msg=k)


def test_batch_independence_640x480(model):
    ir, vis = _pair(2, 480, 640, seed=2)
    with torch.inference_mode(): b, a = model(ir, vis), model(ir[1:], vis[1:])
    torch.testing.assert_close(a, b[1:], atol=1e-5, rtol=0)


def test_gradients_reach_every_parameter():
    torch.manual_seed(0)
    m = build_model()
    ir, vis = _pair(2, 40, 52)
    m(ir, vis).square().mean().backward()
    grads = {n: p.grad for n, p in m.named_parameters()}
    assert [n for n, g in grads.items() if g is None] == []
    assert all(torch.isfinite(g).all() for g in grads.values())
    zero = [n for n, g in grads.items() if g.abs().sum() == 0]
    assert len(zero) <= 0.1 * len(grads), zero


def test_gradients_flow_to_the_inputs():
    m = build_model()
    ir, vis = (t.requires_grad_() for t in _pair(1, 32, 24))
    m(ir, vis).mean().backward()
    assert ir.grad.abs().sum() > 0 and vis.grad.abs().sum() > 0


def test_gradcheck_whole_network_float64():
    torch.manual_seed(0)
    m = _randomised().double()
    ir, vis = (t.requires_grad_() for t in _pair(1, 6, 7, dtype=torch.float64))
    assert gradcheck(lambda a, b: m(a, b), (ir, vis), eps=1e-6, atol=1e-5)


def test_determinism():
    outs = []
    for _ in range(2):
        torch.manual_seed(123)
        m = build_model().eval()
        with torch.inference_mode(): outs.append(m(*_pair(2, 40, 44, seed=5)))
    assert torch.equal(outs[0], outs[1])
    torch.manual_seed(124)
    with torch.inference_mode(): assert not torch.equal(outs[0], build_model().eval()(*_pair(2, 40, 44, seed=5)))


def test_input_errors(model):
    ok = torch.rand(1, 1, 8, 8)
    cases = [((torch.rand(1, 3, 8, 8), ok), "`ir`: expected 1 channel"),
             ((ok, torch.rand(1, 2, 8, 8)), "`vis`: expected 1 channel"),
             ((ok, torch.rand(1, 1, 8, 9)), "same batch and spatial size"),
             ((ok, torch.rand(2, 1, 8, 8)), "same batch and spatial size"),
             ((torch.full((1, 1, 8, 8), float('nan')), ok), "`ir`: expected finite"),
             ((ok, torch.full((1, 1, 8, 8), float('inf'))), "`vis`: expected finite"),
             ((ok * 255, ok), "divide by 255"),
             ((ok[0], ok), "`ir`: expected"),
             ((ok, ok.double()), "share device and dtype"),
             ((ok.to(torch.uint8), ok), "integer")]
    for args, msg in cases:
        with pytest.raises(FusionInputError, match=msg.replace('(', r'\(')): model(*args)
        with pytest.raises(FusionInputError): model.forward_aux(*args)


def test_logit_head_minmax_spans_0_1():
    torch.manual_seed(0)
    m = build_model(SFOFusionConfig(output_head='logit', output_norm='minmax')).eval()
    with torch.inference_mode(): out = m(*_pair(2, 33, 41))
    torch.testing.assert_close(out.amin((-2, -1)), torch.zeros(2, 1))
    torch.testing.assert_close(out.amax((-2, -1)), torch.ones(2, 1), atol=1e-3, rtol=0)


def test_output_norm_none_and_normalize():
    torch.manual_seed(0)
    m = build_model(SFOFusionConfig(output_head='logit', output_norm='none')).eval()
    with torch.inference_mode(): y = m(*_pair(1, 30, 30))
    assert y.min() > 0 and y.max() < 1 and y.max() - y.min() < 0.999
    x = torch.randn(3, 1, 9, 9) * torch.tensor([1., 10., 0.]).view(3, 1, 1, 1)
    n = normalize_per_image(x)
    assert (n[:2].amin((-2, -1)) == 0).all() and n[2].abs().max() == 0     # constant image -> 0, no NaN
    torch.testing.assert_close(n[1], normalize_per_image(x[1:2])[0])


def test_channels_last_is_only_a_layout(model):
    m2 = build_model(SFOFusionConfig(channels_last=False)).eval()
    m2.load_state_dict(model.state_dict())
    ir, vis = _pair(2, 50, 71)
    with torch.inference_mode(): torch.testing.assert_close(m2(ir, vis), model(ir, vis), atol=1e-5, rtol=0)


def test_float64(model):
    m = build_model().double().eval()
    m.load_state_dict(model.state_dict())
    ir, vis = _pair(1, 33, 40, dtype=torch.float64)
    with torch.inference_mode(): y = m(ir, vis)
    assert y.dtype == torch.float64
    with torch.inference_mode(): torch.testing.assert_close(y.float(), model(ir.float(), vis.float()), atol=1e-4, rtol=0)


def test_cpu_autocast_bfloat16(model):
    ir, vis = _pair(2, 64, 80)
    with torch.inference_mode(), torch.autocast('cpu', dtype=torch.bfloat16):
        aux = model.forward_aux(ir, vis)
    assert aux['fused'].dtype == torch.float32 and aux['freq'].dtype == torch.float32
    assert torch.isfinite(aux['fused']).all() and aux['fused'].min() >= 0 and aux['fused'].max() <= 1
    with torch.inference_mode(): ref = model(ir, vis)
    assert (aux['fused'] - ref).abs().mean() < 0.05


@pytest.mark.cuda
@pytest.mark.parametrize('dtype', [None, torch.bfloat16, torch.float16])
def test_cuda(model, dtype):
    mc = build_model().cuda().eval()
    mc.load_state_dict(model.state_dict())
    ir, vis = _pair(2, 97, 131)
    with torch.inference_mode(), torch.autocast('cuda', dtype=dtype or torch.float16, enabled=dtype is not None):
        aux = mc.forward_aux(ir.cuda(), vis.cuda())
    assert aux['fused'].device.type == 'cuda' and torch.isfinite(aux['fused']).all()
    for k, v in aux.items():
        if torch.is_tensor(v) and v.is_floating_point(): assert torch.isfinite(v).all(), k
    with torch.inference_mode(): ref = model(ir, vis)
    err = (aux['fused'].float().cpu() - ref).abs()
    assert (err.max() < 5e-3) if dtype is None else (err.mean() < 0.05)   # fp32: cuDNN may use TF32


@pytest.mark.cuda
def test_cuda_backward_under_autocast():
    mc = build_model().cuda()
    ir, vis = (t.cuda() for t in _pair(2, 64, 64))
    with torch.autocast('cuda', dtype=torch.float16): loss = mc(ir, vis).float().mean()
    loss.backward()
    assert all(torch.isfinite(p.grad).all() for p in mc.parameters())


def test_config_validation_and_round_trip():
    cfg = SFOFusionConfig(width=6, n_bands=6)
    assert SFOFusionConfig.from_dict(json.loads(json.dumps(asdict(cfg)))) == cfg
    for bad, msg in [(dict(width=0), 'width'), (dict(split_kernel=2), 'odd'), (dict(output_norm='batch'), 'minmax'),
                     (dict(n_bands=1), 'n_bands'), (dict(output_head='x'), 'output_head'), (dict(select_sharpness=0), 'sharpness'),
                     (dict(output_norm='minmax'), 'select')]:
        with pytest.raises(FusionInputError, match=msg): SFOFusionConfig(**bad)
    with pytest.raises(FusionInputError, match='unknown field'): SFOFusionConfig.from_dict({'nope': 1})


def test_save_and_load(model, tmp_path):
    model.save_pretrained(tmp_path / 'm')
    assert sorted(p.name for p in (tmp_path / 'm').iterdir()) == ['config.json', 'model.safetensors']  # no temp files left
    assert json.loads((tmp_path / 'm' / 'config.json').read_text()) == asdict(model.config)
    assert (tmp_path / 'm' / 'model.safetensors').read_bytes()[8:9] == b'{'     # safetensors header, not a pickle
    again = SFOFusion.from_pretrained(tmp_path / 'm')
    assert not again.training
    ir, vis = _pair(1, 40, 40)
    with torch.inference_mode(): torch.testing.assert_close(again(ir, vis), model(ir, vis), atol=0, rtol=0)
    small = build_model(SFOFusionConfig(width=4, ctx_width=8))
    small.save_pretrained(str(tmp_path / 's'))                  # a str path works too; config travels with it
    assert SFOFusion.from_pretrained(str(tmp_path / 's')).config.width == 4
    with pytest.raises(FusionInputError, match='no model.safetensors and no config.json in'):
        (tmp_path / 'empty').mkdir(); SFOFusion.from_pretrained(tmp_path / 'empty')


def test_shipped_names(model, tmp_path, monkeypatch):
    with pytest.raises(FusionInputError, match='shipped models: '):
        SFOFusion.from_pretrained('surely-not-shipped')
    monkeypatch.setattr(M, 'weights_dir', lambda: tmp_path)
    with pytest.raises(FusionInputError, match='none yet'): SFOFusion.from_pretrained('msrs')
    model.save_pretrained(tmp_path / 'msrs')
    assert M.shipped_models() == ['msrs']
    assert isinstance(SFOFusion.from_pretrained('msrs'), SFOFusion)
    with pytest.raises(FusionInputError, match="shipped models: msrs"): SFOFusion.from_pretrained('tno')


def test_budgets(model):
    assert count_parameters(model) <= 80_000
    assert count_parameters(model, trainable_only=True) == count_parameters(model)
    cost = count_flops(model, 480, 640)
    assert 0 < cost['flops'] <= 25e9 and cost['macs'] == cost['flops'] // 2
    assert cost['by_op']['aten._fft_r2c'] > 0 and cost['by_op']['aten._fft_c2r'] > 0


def test_compile_smoke(model):
    # fullgraph: the unchecked core traces without graph breaks (the eager backend keeps this test fast)
    f = torch.compile(model.fuse, backend='eager', fullgraph=True)
    ir, vis = _pair(1, 40, 52)
    with torch.inference_mode(): torch.testing.assert_close(f(ir, vis)['fused'], model(ir, vis))


@pytest.mark.slow
def test_compile_inductor(model):
    f = torch.compile(model.fuse)
    ir, vis = _pair(1, 40, 52)
    with torch.inference_mode(): torch.testing.assert_close(f(ir, vis)['fused'], model(ir, vis), atol=1e-5, rtol=0)


def test_shipped_models_and_cards():
    "The shipped models load (safetensors only) and each carries a model card whose facts match the weights."
    names = M.shipped_models()
    assert 'msrs' in names, names
    outs = {}
    x = torch.rand(1, 1, 40, 56, generator=torch.Generator().manual_seed(0))
    y = torch.rand(1, 1, 40, 56, generator=torch.Generator().manual_seed(1))
    for n in names:
        folder = M.weights_dir() / n
        card = json.loads((folder / 'card.json').read_text())
        assert card['name'] == n and (folder / 'MODEL_CARD.md').is_file()
        net = SFOFusion.from_pretrained(n).eval()
        assert count_parameters(net) == card['params'] and card['step'] == card['planned_steps']
        assert (Path(__file__).parents[1] / card['record']).is_dir(), card['record']   # the training record is in the repository
        assert not any(d.startswith('/') or '..' in d or 'shared' in d for d in card['data']), card['data']  # datasets and splits, no machine paths
        with torch.no_grad(): outs[n] = net(x, y)


@pytest.mark.parametrize('name', M.shipped_models())
def test_shipped_models_flat_in_flat_out(name):
    "No fixed pixels: flat pairs fuse to flat images, equal ones to their own value (640x480, tiny sizes, and in tiles)."
    net = SFOFusion.from_pretrained(name).eval()
    for h, w in [(480, 640), (7, 5), (1, 1)]:
        for a, b in [(128, 128), (0, 0), (255, 255), (200, 60), (40, 90)]:
            with torch.inference_mode(): y = net(torch.full((1, 1, h, w), a / 255), torch.full((1, 1, h, w), b / 255)) * 255
            assert float(y.max() - y.min()) < 0.5, (name, h, w, a, b)
            assert min(a, b) - 4 <= float(y.mean()) <= max(a, b) + 4, (name, h, w, a, b, float(y.mean()))
            if a == b: assert float((y - a).abs().max()) < 0.5, (name, h, w, a, float(y.mean()))
    from sfofusion.fuse import fuse_tiled                  # large images are fused in tiles: flat there too
    for h, w in [(150, 230), (17, 400)]:
        for a, b in [(128, 128), (200, 60)]:
            y = fuse_tiled(net, torch.full((1, 1, h, w), a / 255), torch.full((1, 1, h, w), b / 255), tile=64, overlap=16) * 255
            assert float(y.max() - y.min()) < 0.5 and min(a, b) - 4 <= float(y.mean()) <= max(a, b) + 4, (name, 'tiled', h, w, a, b)
            if a == b: assert float((y - a).abs().max()) < 0.5, (name, 'tiled', h, w, a)


def test_freq_detail_option():
    "The sweep's `freq_detail` head (v18): three head channels, flat in flat out, every parameter trained, ablation-safe."
    torch.manual_seed(0)
    m = build_model(SFOFusionConfig(freq_detail=True))
    assert m.merge.out.out_channels == 3
    with torch.no_grad():
        for p in m.merge.parameters(): p.add_(torch.randn_like(p) * 0.5)
        y = m(torch.full((1, 1, 37, 53), .6), torch.full((1, 1, 37, 53), .6))
    assert (y - .6).abs().max() < 1e-4
    m(*_pair(1, 32, 40)).square().mean().backward()
    assert m.merge.out.weight.grad[2].abs().sum() > 0            # the detail channel is trained
    no_freq = build_model(SFOFusionConfig(freq_detail=True, use_frequency=False)).eval()
    with torch.inference_mode(): assert torch.isfinite(no_freq(*_pair(1, 20, 24))).all()
