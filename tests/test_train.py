"Trainer: exact resume, worker-count independence, NaN guard, configs, CLI, and 2-process DDP."
import json, os, subprocess, sys
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from sfofusion.core import FusionInputError
from sfofusion.engine import read_log
from sfofusion.train import TrainConfig, train
import sfofusion.train as T

CLI = str(Path(sys.executable).with_name('sfofusion'))  # the console script of this environment
TINY = dict(steps=4, crop=40, batch_size=2, synthetic_pairs=6, warmup_steps=1, progress=False)


def weights(folder):
    return load_file(str(Path(folder)/'final'/'model.safetensors'))


def same(a, b):
    return a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


def test_results_do_not_depend_on_worker_count(tmp_path):
    cfg = TrainConfig(**TINY)
    train(cfg.override(out_dir=str(tmp_path/'w0')))
    train(cfg.override(out_dir=str(tmp_path/'w2'), num_workers=2))
    assert same(weights(tmp_path/'w0'), weights(tmp_path/'w2'))


def test_nan_guard_skips_the_step(tmp_path, monkeypatch):
    calls = {'n': 0}
    real = T.FusionLoss.forward

    def flaky(self, fused, ir, vis, *a, **k):
        calls['n'] += 1
        total, parts = real(self, fused, ir, vis, *a, **k)
        return (total * float('nan') if calls['n'] == 2 else total), parts

    monkeypatch.setattr(T.FusionLoss, 'forward', flaky)
    res = train(TrainConfig(**TINY, out_dir=str(tmp_path/'nan')))
    assert res['skipped'] == 1 and res['step'] == 4
    rows = [r for r in read_log(tmp_path/'nan'/'log.jsonl') if 'loss' in r]
    assert [r['skipped'] for r in rows] == [0, 1, 1, 1]
    assert all(torch.isfinite(v).all() for v in weights(tmp_path/'nan').values())


def test_config_files_and_overrides(tmp_path):
    (tmp_path/'c.yaml').write_text('steps: 7\nlr: 0.01\nloss: {gradient: 5}\ndata: [synthetic]\n')
    cfg = TrainConfig.load(tmp_path/'c.yaml')
    assert (cfg.steps, cfg.lr, cfg.loss) == (7, 0.01, {'gradient': 5})
    (tmp_path/'c.json').write_text(json.dumps({'steps': 3, 'batch_size': 4}))
    assert TrainConfig.load(tmp_path/'c.json').batch_size == 4
    with pytest.raises(FusionInputError, match='unknown config field'):
        TrainConfig().override(batchsize=3)
    with pytest.raises(FusionInputError, match="config field `steps`: cannot read 'x' as an integer"):
        TrainConfig().override(steps='x')


@pytest.mark.skipif(torch.cuda.is_available(), reason='checks the error raised where CUDA is absent')
def test_cuda_requested_without_cuda(tmp_path):
    with pytest.raises(FusionInputError, match="'cuda' requested but"):
        train(TrainConfig(**TINY, device='cuda', out_dir=str(tmp_path/'x')))


def test_validation_on_real_pairs(tmp_path, shared_path):
    res = train(TrainConfig(**TINY, val_data=str(shared_path('data/TNO')), val_max_pairs=2, out_dir=str(tmp_path/'v')))
    assert {'VIF', 'Qabf', 'SSIM'} <= set(res['val'])
    assert all(v == v for v in res['val'].values())  # no NaN
    assert (tmp_path/'v'/'loss.png').stat().st_size > 1000


@pytest.mark.slow
def test_cli_train(tmp_path):
    out = tmp_path/'cli'
    r = subprocess.run([CLI, 'train', '--steps', '2', '--out-dir', str(out),
                        '--set', 'crop=32', '--set', 'batch_size=2', '--set', 'synthetic_pairs=4', '--set', 'progress=false'],
                       capture_output=True, text=True, env=dict(os.environ, OMP_NUM_THREADS='1'))
    assert r.returncode == 0, r.stderr
    assert 'done: 2 steps' in r.stdout
    assert (out/'final'/'model.safetensors').is_file() and (out/'final'/'config.json').is_file()
    bad = subprocess.run([CLI, 'train', '--set', 'nope=1'], capture_output=True, text=True)
    assert bad.returncode == 2 and "unknown config field 'nope'" in bad.stderr


@pytest.mark.slow
def test_ddp_two_cpu_processes_agree(tmp_path):
    out = tmp_path/'ddp'
    cmd = [sys.executable, '-m', 'torch.distributed.run', '--standalone', '--nproc_per_node=2', CLI,
           'train', '--steps', '3', '--out-dir', str(out), '--device', 'cpu',
           '--set', 'crop=32', '--set', 'batch_size=2', '--set', 'synthetic_pairs=8', '--set', 'progress=false']
    r = subprocess.run(cmd, capture_output=True, text=True, env=dict(os.environ, OMP_NUM_THREADS='1'), timeout=300)
    assert r.returncode == 0, r.stdout + r.stderr
    res = json.loads((out/'result.json').read_text())
    assert res['step'] == 3
    assert res['replica_max_diff'] == 0.0


@pytest.mark.cuda
@pytest.mark.parametrize('precision', ['fp32', 'bf16', 'fp16'])
def test_cuda_training_with_amp(tmp_path, precision):
    res = train(TrainConfig(**TINY, device='cuda', precision=precision, out_dir=str(tmp_path/precision)))
    assert res['step'] == 4 and res['skipped'] == 0
    assert all(torch.isfinite(v).all() for v in weights(tmp_path/precision).values())


def test_bad_data_raises_or_is_skipped_with_a_warning(tmp_path):
    import cv2, numpy as np, warnings
    from sfofusion.data import SkippedDataWarning
    root = tmp_path/'pairs'
    for side in ('ir', 'vi'): (root/side).mkdir(parents=True)
    for i in range(6):
        for side in ('ir', 'vi'): cv2.imwrite(str(root/side/f'{i:03d}.png'), np.full((64, 64), 40 * i, np.uint8))
    (root/'ir'/'007.png').write_bytes(b'not a png')            # corrupt, and without a VIS counterpart
    cfg = TrainConfig(**{**TINY, 'data': [f'pairs:{root}'], 'out_dir': str(tmp_path/'o')})
    with pytest.raises(FusionInputError, match='007'):
        train(cfg)
    with pytest.warns(SkippedDataWarning, match='007'):
        res = train(cfg.override(skip_bad=True))
    assert res['step'] == 4


def test_shipped_configs_keep_test_and_validation_pairs_out(monkeypatch, shared_path):
    "bench/configs/*.yaml, read as the README runs them (from the repository root), train on none of the held-out pairs."
    from sfofusion.train import TrainConfig, build_train_dataset, read_names
    root = Path(__file__).resolve().parents[1]
    monkeypatch.chdir(root)
    held_out = read_names(['@data/splits/msrs_test60.txt', '@data/splits/msrs_val50.txt'])
    assert len(held_out) == 110
    for name in ('msrs.yaml', 'msrs_finetune.yaml'):
        cfg = TrainConfig.load(root / 'bench' / 'configs' / name)
        ds = build_train_dataset(cfg).dataset              # FusionCrops over the concatenated datasets
        names = [p.name for d in ds.datasets for p in d.pairs]
        assert len(names) == 161 + 171 and not held_out & set(names), name
