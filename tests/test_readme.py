"""The README's commands run as written.

Every `sfofusion ...` line and every Python block of the README's "Usage" section runs in a folder prepared as a user's
would be after `sfofusion data fetch msrs` (synthetic MSRS-shaped pairs with box labels, the glob example's scenes, a
trained run's `final/`, and the README's own `my.yaml`). Training commands run with `--dry-run` (everything checked,
nothing trained); one that asks for CUDA must fail cleanly on a machine without it. The `torchrun` line runs too,
and the Ray one where Ray is installed. `pip`, `bash`, `papermill` and `mkdir` lines are CI's and the papermill tests'
business.
"""
import os, re, shlex, subprocess, sys
from pathlib import Path

import cv2
import numpy as np
import pytest
import torch

ROOT = Path(__file__).resolve().parents[1]
CLI = str(Path(sys.executable).with_name('sfofusion'))
TORCHRUN = str(Path(sys.executable).with_name('torchrun'))
ENV = dict(os.environ, OMP_NUM_THREADS='1')


def usage_blocks(kind: str, start: str='## Usage', end: str='## Shipped models') -> list[str]:
    "The fenced blocks of `kind` (sh, python, yaml) in the README section from `start` to `end`."
    text = (ROOT/'README.md').read_text()
    usage = text[text.index(start):text.index(end)]
    return re.findall(rf'```{kind}\n(.*?)```', usage, re.S)


def commands() -> list[str]:
    "The `sfofusion` command lines of the Usage section (comments dropped, continuations joined)."
    out = []
    for block in usage_blocks('sh'):
        for line in block.replace('\\\n', ' ').splitlines():
            if line.startswith(('sfofusion ', 'torchrun ')): out.append(line)
    return out


@pytest.fixture(scope='module')
def user_dir(tmp_path_factory):
    "A folder as the README assumes: data/MSRS (train, test with det_labels), scenes/, ir.png + vi.jpg, runs/*, my.yaml."
    from sfofusion.data import synthetic_pair
    from sfofusion.core import save_image
    from sfofusion.model import build_model
    from sfofusion.tasks import build_task, save_task
    d = tmp_path_factory.mktemp('user')
    for split, n in (('train', 16), ('test', 80)):      # train: one global batch of 8 x 2 processes; test: the README's holdout=71
        for side in ('ir', 'vi'): (d/'data'/'MSRS'/split/side).mkdir(parents=True)
        (d/'data'/'MSRS'/split/'det_labels'/'fusion').mkdir(parents=True)
        for i in range(1, n + 1):
            name = f"{i:05d}{'D' if i % 2 else 'N'}"
            p = synthetic_pair(256, 320, seed=i, rgb=True)
            save_image(d/'data'/'MSRS'/split/'ir'/f'{name}.png', p['ir'])
            save_image(d/'data'/'MSRS'/split/'vi'/f'{name}.png', p['vis_rgb'])
            (d/'data'/'MSRS'/split/'det_labels'/'fusion'/f'{name}.txt').write_text('0 0.5 0.5 0.2 0.3\n2 0.25 0.3 0.1 0.1\n')
    (d/'scenes').mkdir()
    for i in (12, 13):
        p = synthetic_pair(96, 128, seed=i, rgb=True)
        save_image(d/'scenes'/f'000{i}_ir.png', p['ir']); save_image(d/'scenes'/f'000{i}_vi.png', p['vis_rgb'])
    p = synthetic_pair(96, 128, seed=20, rgb=True)
    save_image(d/'ir.png', p['ir']); save_image(d/'vi.jpg', p['vis_rgb'])
    (d/'my.yaml').write_text(usage_blocks('yaml')[0])
    (d/'pairs.csv').write_text('ir,vi,out\n' + ''.join(f'data/MSRS/train/{s}/{n}.png,data/MSRS/train/vi/{n}.png,\n'
                                                       for n in ('00001D', '00002N') for s in ('ir',)) +
                               'scenes/00012_ir.png,scenes/00012_vi.png,night/00012.png\n')
    from sfofusion.train import TrainConfig                   # runs/msrs: the run my.yaml describes (for --resume, --model)
    (d/'runs'/'msrs').mkdir(parents=True)
    (d/'runs'/'msrs'/'config.json').write_text(__import__('json').dumps(TrainConfig.load(d/'my.yaml').to_dict()))
    build_model().save_pretrained(d/'runs'/'msrs'/'final')
    return d


def test_the_readme_has_commands():
    cmds = commands()
    assert len(cmds) >= 12 and any('fuse' in c for c in cmds) and any('train' in c for c in cmds)


@pytest.mark.slow
def test_readme_commands_run_as_written(user_dir):
    no_cuda = not torch.cuda.is_available()
    try: import ray  # noqa: F401
    except ImportError: ray = None
    for cmd in commands():
        if '--engine ray' in cmd and ray is None: continue   # the [ray] extra is not installed here
        prog = TORCHRUN if cmd.startswith('torchrun ') else CLI
        args = shlex.split(cmd.split(' #')[0])[1:]      # drop the trailing comment and the program name
        if 'train' in args: args.append('--dry-run')
        if 'init_task=runs/det/task' in cmd and not (user_dir/'runs'/'det'/'task').exists():
            from sfofusion.tasks import build_task, save_task   # what the earlier (dry-run) detection command would leave
            save_task(build_task('detection'), user_dir/'runs'/'det'/'task')
        r = subprocess.run([prog, *args], cwd=user_dir, capture_output=True, text=True, env=ENV, timeout=600)
        if no_cuda and 'cuda' in cmd:
            assert r.returncode == 2 and "--device: 'cuda' requested but" in r.stderr, (cmd, r.stderr)
        else: assert r.returncode == 0, (cmd, r.stdout[-2000:], r.stderr[-2000:])
        assert 'Traceback' not in r.stderr, (cmd, r.stderr)
    assert sorted(p.name for p in (user_dir/'runs'/'scenes').iterdir()) == ['00012.png', '00013.png']
    assert len(list((user_dir/'runs'/'fused').iterdir())) == 80 and (user_dir/'results.csv').is_file()
    assert sorted(p.name for p in (user_dir/'runs'/'fused_tr').iterdir()) == sorted(p.name for p in (user_dir/'runs'/'fused').iterdir())
    assert sorted(str(p.relative_to(user_dir/'runs'/'many')) for p in (user_dir/'runs'/'many').rglob('*.png')) == \
        ['00001D.png', '00002N.png', 'night/00012.png']


@pytest.mark.slow
def test_readme_python_blocks_run(user_dir):
    if not (user_dir/'runs'/'fused').is_dir():   # the Usage section's `fuse` command writes what the Python blocks read
        from sfofusion.fuse import fuse_folder
        fuse_folder(user_dir/'data/MSRS/test/ir', user_dir/'data/MSRS/test/vi', user_dir/'runs'/'fused', progress=False)
    blocks = usage_blocks('python') + usage_blocks('python', '## Python, step by step', '## Reproduction report')
    assert len(blocks) >= 4
    for code in blocks:
        r = subprocess.run([sys.executable, '-c', code], cwd=user_dir, capture_output=True, text=True, env=ENV, timeout=300)
        assert r.returncode == 0, (code, r.stderr[-2000:])
