"Meta-learning: loss generator, meta-gradients (second and first order), balance rule, trainer modes, resume, DDP."
import json, os, subprocess, sys
from pathlib import Path

import pytest
import torch
from torch import nn
from torch.func import functional_call
from safetensors.torch import load_file

from sfofusion.core import FusionInputError
from sfofusion.data import synthetic_pair
from sfofusion.losses import FusionLoss, LossConfig, sobel_magnitude
from sfofusion.model import build_model
from sfofusion.meta import (LossGenerator, LossGenConfig, inner_step, meta_gradient,
                            generated_fusion_loss, BalanceConfig, BalanceState, balance_step, fusion_quality,
                            MetaConfig, train_meta)
from sfofusion.data import holdout_split

SMALL_DET = dict(widths=(8, 16, 16, 16), head_width=8)
TINY = dict(steps=4, crop=48, batch_size=2, synthetic_pairs=10, holdout=2, steps_per_epoch=2, warmup_steps=1,
            task_cfg=SMALL_DET, progress=False)


def pair(h=48, w=64, seed=0, dtype=torch.float32):
    p = synthetic_pair(h, w, seed=seed)
    return p['ir'][None].to(dtype), p['vis'][None].to(dtype)


def test_generator_starts_at_the_soft_max_rule_and_checks_input():
    ir, vis = pair()
    w_int, w_grad = LossGenerator()(ir, vis)
    hard = (ir > vis).float()
    # far from ties the soft rule is the max rule
    far = (ir - vis).abs() > 0.2
    assert ((w_int[far] > 0.5) == (hard[far] > 0.5)).all()
    assert w_grad.shape == ir.shape and ((w_grad >= 0) & (w_grad <= 1)).all()
    with pytest.raises(FusionInputError, match='`vis`'):
        LossGenerator()(ir, vis[..., :10])


def test_weighted_loss_with_hard_weights_is_the_hand_made_loss():
    ir, vis = pair(seed=1)
    f = torch.rand_like(ir)
    hard = (ir > vis).float(), (sobel_magnitude(ir) > sobel_magnitude(vis)).float()
    assert torch.allclose(FusionLoss()(f, ir, vis, *hard)[0], FusionLoss()(f, ir, vis)[0], atol=1e-6)


def test_inner_step_lowers_the_generated_loss_on_the_real_network():
    torch.manual_seed(0)
    net, gen, lf = build_model(), LossGenerator(), FusionLoss()
    ir, vis = pair(seed=2)
    theta = dict(net.named_parameters())
    before = generated_fusion_loss(net, theta, gen, lf, ir, vis)
    after = generated_fusion_loss(net, inner_step(net, theta, gen, lf, ir, vis, alpha=0.05, create_graph=False), gen, lf, ir, vis)
    assert after < before


class Toy(nn.Module):
    def __init__(self):
        super().__init__(); self.a = nn.Parameter(torch.tensor(0.3)); self.b = nn.Parameter(torch.tensor(-0.2))
    def forward(self, ir, vis): return torch.sigmoid(self.a) * ir + (1 - torch.sigmoid(self.a)) * vis + 0.1 * self.b


def toy_problem():
    torch.manual_seed(0)
    ir, vis = torch.rand(1, 1, 10, 10, dtype=torch.float64), torch.rand(1, 1, 10, 10, dtype=torch.float64)
    mask = (torch.rand(1, 1, 10, 10) > 0.5).double()
    gen = LossGenerator(LossGenConfig(width=2)).double()
    with torch.no_grad():
        for p in gen.parameters(): p.normal_(0, 0.3)
    return Toy().double(), gen, FusionLoss(LossConfig(ssim=0.)), (lambda f: ((f - mask) ** 2).mean()), ir, vis


@pytest.mark.parametrize('steps', [1, 2])
def test_second_order_meta_gradient_matches_finite_differences(steps):
    toy, gen, lf, task, ir, vis = toy_problem()
    grads, _ = meta_gradient(toy, gen, lf, task, ir, vis, alpha=0.5, steps=steps)
    def outer():
        th = inner_step(toy, dict(toy.named_parameters()), gen, lf, ir, vis, 0.5, steps)
        return task(functional_call(toy, th, (ir, vis))).item()
    names = [n for n, _ in gen.named_parameters()]
    checked = 0
    for name in ('head.bias', 'head.weight'):
        p, g = dict(gen.named_parameters())[name], grads[names.index(name)]
        for idx in [(0,), (1,)] if p.ndim == 1 else [(0, 0, 0, 0), (1, 3, 0, 0)]:
            with torch.no_grad(): p[idx] += 1e-6
            up = outer()
            with torch.no_grad(): p[idx] -= 2e-6
            dn = outer()
            with torch.no_grad(): p[idx] += 1e-6
            fd = (up - dn) / 2e-6
            assert abs(g[idx].item() - fd) <= 1e-8 + 1e-4 * abs(fd)
            checked += abs(fd) > 1e-8
    assert checked >= 2  # the comparison is not vacuous


def test_first_and_second_order_agree_in_sign():
    toy, gen, lf, task, ir, vis = toy_problem()
    g2, _ = meta_gradient(toy, gen, lf, task, ir, vis, alpha=0.5)
    g1, _ = meta_gradient(toy, gen, lf, task, ir, vis, alpha=0.5, first_order=True)
    a = torch.cat([g.flatten() for g in g2 if g is not None]); b = torch.cat([g.flatten() for g in g1 if g is not None])
    big = a.abs() > 1e-3 * a.abs().max()
    assert (torch.sign(a[big]) == torch.sign(b[big])).float().mean() > 0.95
    assert torch.nn.functional.cosine_similarity(a, b, dim=0) > 0.9


def test_meta_gradient_reaches_the_generator_on_the_real_network():
    torch.manual_seed(0)
    net, gen, lf = build_model(), LossGenerator(), FusionLoss()
    ir, vis = pair(32, 40, seed=3)
    target = (ir > 0.5).float()
    grads, _ = meta_gradient(net, gen, lf, lambda f: ((f - target) ** 2).mean(), ir, vis, alpha=0.1)
    assert any(g is not None and g.abs().sum() > 0 for g in grads)
    assert all(torch.isfinite(g).all() for g in grads if g is not None)


def test_balance_rule_moves_lambda_the_right_way():
    c = BalanceConfig(lam=1.0, tolerance=0.05, up=2.0, down=0.5, lam_max=3.0, lam_min=0.2)
    s = BalanceState(lam=1.0)
    s = balance_step(s, 1.0, 0.3, c); assert s.lam == 1.0          # improving, quality fine
    s = balance_step(s, 0.99, 0.301, c); assert s.lam == 2.0       # stalled -> up
    s = balance_step(s, 0.99, 0.30, c); assert s.lam == 3.0        # capped at lam_max
    s = balance_step(s, 0.90, 0.50, c); assert s.lam == 1.5        # fusion quality too low -> down, even if the task improves
    for _ in range(5): s = balance_step(s, 0.5, 0.6, c)
    assert s.lam == 0.2                                           # floored at lam_min
    assert fusion_quality({'VIF': 1, 'Qabf': .5, 'SSIM': 1}, {'VIF': 1, 'Qabf': .5, 'SSIM': 1}) == 1.0
    with pytest.raises(FusionInputError, match='missing'):
        fusion_quality({'VIF': 1}, {'VIF': 1})


def test_holdout_split_is_fixed_and_disjoint():
    tr, va = holdout_split(50, 10)
    assert len(va) == 10 and not set(tr) & set(va) and holdout_split(50, 10) == (tr, va)
    with pytest.raises(FusionInputError): holdout_split(5, 5)


@pytest.mark.parametrize('mode', ['fusion', 'direct', 'meta'])
def test_trainer_modes_run_end_to_end(tmp_path, mode):
    res = train_meta(MetaConfig(**TINY, mode=mode, out_dir=str(tmp_path/mode)))
    assert res['step'] == 4 and res['val'] and 0 <= res['val']['task'] <= 1
    assert (tmp_path/mode/'final'/'model.safetensors').is_file() and (tmp_path/mode/'task'/'task.safetensors').is_file()
    gen_file = tmp_path/mode/'loss_generator.safetensors'
    assert gen_file.is_file() == (mode == 'meta')
    if mode == 'meta':  # the generator really learned: its zero-initialised last layer moved
        w = load_file(str(gen_file))
        assert w['head.weight'].abs().sum() > 0


def test_segmentation_task(tmp_path):
    res = train_meta(MetaConfig(**{**TINY, 'task_cfg': dict(widths=(8, 8, 16, 16), decoder_width=8)}, task='segmentation',
                                out_dir=str(tmp_path/'seg')))
    assert res['step'] == 4 and 0 <= res['val']['task'] <= 1


@pytest.mark.slow
def test_ddp_meta_two_processes(tmp_path):
    cli = str(Path(sys.executable).with_name('sfofusion'))
    out = tmp_path/'ddp'
    cmd = [sys.executable, '-m', 'torch.distributed.run', '--standalone', '--nproc_per_node=2', cli, 'train',
           '--task', 'detection', '--steps', '2', '--out-dir', str(out), '--device', 'cpu', '--set', 'crop=32',
           '--set', 'batch_size=2', '--set', 'synthetic_pairs=10', '--set', 'holdout=2', '--set', 'progress=false',
           '--set', 'task_cfg={widths: [8, 16, 16, 16], head_width: 8}']
    r = subprocess.run(cmd, capture_output=True, text=True, env=dict(os.environ, OMP_NUM_THREADS='1'), timeout=300)
    assert r.returncode == 0, r.stdout + r.stderr
    res = json.loads((out/'result.json').read_text())
    assert res['step'] == 2 and res['replica_max_diff'] == 0.0


@pytest.mark.cuda
@pytest.mark.parametrize('first_order', [False, True])
def test_cuda_meta_training(tmp_path, first_order):
    res = train_meta(MetaConfig(**TINY, device='cuda', precision='bf16', first_order=first_order, out_dir=str(tmp_path/'m')))
    assert res['step'] == 4 and res['skipped'] == 0 and res['val']


def test_task_data_honours_exclude(shared_path):
    "An experiment's evaluation pairs, named in `exclude`, are neither trained on nor used for the run's validation."
    from sfofusion.meta import build_task_data
    from sfofusion.train import read_names
    root = shared_path('data/MSRS/test')
    splits = Path(__file__).resolve().parents[1]/'data'/'splits'
    held = read_names([f'@{splits}/msrs_test60.txt', f'@{splits}/msrs_val50.txt'])
    crops, val = build_task_data(MetaConfig(data=[f'msrs:{root}'], exclude=[f'@{splits}/msrs_test60.txt', f'@{splits}/msrs_val50.txt'],
                                            holdout=10, crop=64, scale=0.5))
    names = [p.name for p in crops.dataset.dataset.dataset.pairs]
    assert len(names) == 161 and not set(names) & held
    assert len(crops) == 151 and len(val) == 10
