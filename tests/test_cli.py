"The `sfofusion` command: every subcommand's help, fuse (demo, folder, failures), eval against the reference."
import json, os, subprocess, sys
from pathlib import Path

import cv2
import numpy as np
import pytest

from sfofusion.model import shipped_models

CLI = str(Path(sys.executable).with_name('sfofusion'))
ENV = dict(os.environ, OMP_NUM_THREADS='1')


def run(*args):
    return subprocess.run([CLI, *map(str, args)], capture_output=True, text=True, env=ENV, timeout=300)


@pytest.mark.parametrize('cmd', [[], ['fuse'], ['eval'], ['data'], ['data', 'fetch'], ['data', 'check'], ['train']])
def test_help(cmd):
    r = run(*cmd, '--help')
    assert r.returncode == 0 and r.stdout.startswith('usage: sfofusion')


@pytest.mark.skipif('msrs' not in shipped_models(), reason='needs the shipped msrs weights')
def test_fuse_demo(tmp_path):
    r = run('fuse', '--demo', tmp_path/'demo')
    assert r.returncode == 0, r.stderr
    assert (tmp_path/'demo'/'demo.png').stat().st_size > 10_000


def test_fuse_folder_reports_failures_and_continues(tmp_path):
    from sfofusion.model import build_model
    build_model().save_pretrained(tmp_path/'model')
    for side in ('ir', 'vi'): (tmp_path/side).mkdir()
    for i in range(2):
        cv2.imwrite(str(tmp_path/'ir'/f'{i}.png'), np.full((40, 48), 60 * i, np.uint8))
        cv2.imwrite(str(tmp_path/'vi'/f'{i}.png'), np.dstack([np.full((40, 48), v, np.uint8) for v in (30, 90, 200)]))
    cv2.imwrite(str(tmp_path/'ir'/'lonely.png'), np.zeros((40, 48), np.uint8))      # no VIS counterpart
    args = ['fuse', '--ir', tmp_path/'ir', '--vi', tmp_path/'vi', '--out', tmp_path/'out', '--model', tmp_path/'model']
    r = run(*args)
    assert r.returncode == 1 and 'lonely' in r.stdout + r.stderr
    assert sorted(p.name for p in (tmp_path/'out').iterdir()) == ['0.png', '1.png']
    assert cv2.imread(str(tmp_path/'out'/'0.png'), cv2.IMREAD_UNCHANGED).shape == (40, 48, 3)   # colour restored
    (tmp_path/'ir'/'lonely.png').unlink()
    r = run(*args)                                          # outputs exist: skipped, nothing failed
    assert r.returncode == 0, r.stdout + r.stderr
    assert run('fuse', '--ir', tmp_path/'ir').returncode != 0   # --vi / --out missing: a usage error


def test_eval_reproduces_the_reference_means(tmp_path, shared):
    sd = shared
    ref = json.loads((sd/'reference'/'metrics'/'average_TNO.json').read_text())
    r = run('eval', '--fused', sd/'reference'/'fused'/'average'/'TNO', '--ir', sd/'data'/'TNO'/'ir',
            '--vi', sd/'data'/'TNO'/'vi', '--out', tmp_path/'r.csv', '--no-progress', '--metrics', 'EN,MI,VIF,Qabf,SSIM')
    assert r.returncode == 0, r.stderr
    header = [l for l in r.stdout.splitlines() if l.startswith('| images')][0].strip('|').split('|')
    row = [l for l in r.stdout.splitlines() if l.startswith('| 20 ')][0].strip('|').split('|')
    got = dict(zip([h.strip() for h in header], [float(v) for v in row]))
    for k in ('EN', 'MI', 'VIF', 'Qabf', 'SSIM'):
        assert abs(got[k] - ref['mean'][k]) < 1e-4 * max(1, abs(ref['mean'][k])) + 5e-5, k
    assert (tmp_path/'r.csv').is_file()
