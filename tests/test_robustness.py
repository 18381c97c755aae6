"""Issue 12: every user mistake is one clear line (exit 2 usage, 1 failed work), and nothing is destroyed.

Each test is one case a user met, run the way the user ran it: the `sfofusion` command (in-process through
`sfofusion.cli.main`, which is what the console script calls; a few through the installed script itself).
"""
import hashlib, json, os, subprocess, sys
from pathlib import Path

import cv2
import numpy as np
import pytest

from sfofusion.cli import main
from sfofusion.model import build_model, SFOFusionConfig

CLI = str(Path(sys.executable).with_name('sfofusion'))
SMALL = ['--set', 'crop=32', '--set', 'batch_size=2', '--set', 'synthetic_pairs=4', '--set', 'progress=false']


@pytest.fixture
def sf(capfd):
    "Run `sfofusion ARGS...` in-process: (exit code, stdout, stderr); stderr must never hold a traceback."
    def run(*args):
        rc = main([str(a) for a in args])
        out, err = capfd.readouterr()
        assert 'Traceback' not in err and 'Traceback' not in out, err
        return rc, out, err
    return run


def one_error(err: str, cmd: str) -> str:
    "The single error line of stderr (progress bars aside)."
    lines = [l for l in err.splitlines() if l.startswith(f'sfofusion {cmd}: ')]
    assert len(lines) == 1, err
    return lines[0]


def digest(folder: Path) -> dict:
    return {p.name: hashlib.sha256(p.read_bytes()).hexdigest() for p in sorted(folder.iterdir()) if p.is_file()}


@pytest.fixture(scope='module')
def model_dir(tmp_path_factory):
    d = tmp_path_factory.mktemp('model')
    build_model(SFOFusionConfig(width=4, ctx_width=8)).save_pretrained(d/'m')
    return d/'m'


@pytest.fixture
def pairs(tmp_path):
    "Three colour pairs in ir/ + vi/ (48x40)."
    rng = np.random.default_rng(0)
    for side in ('ir', 'vi'): (tmp_path/side).mkdir()
    for n in ('a', 'b', 'c'):
        cv2.imwrite(str(tmp_path/'ir'/f'{n}.png'), rng.integers(0, 255, (40, 48), np.uint8))
        cv2.imwrite(str(tmp_path/'vi'/f'{n}.png'), rng.integers(0, 255, (40, 48, 3), np.uint8))
    return tmp_path


# --- fuse -------------------------------------------------------------------------------------------------------

def test_fuse_never_writes_into_a_source_folder(sf, pairs, model_dir):
    before = digest(pairs/'vi')
    rc, out, err = sf('fuse', '--ir', pairs/'ir', '--vi', pairs/'vi', '--out', pairs/'vi', '--overwrite', '--model', model_dir)
    assert rc == 2 and 'error: --out: ' in one_error(err, 'fuse') and 'holds the visible sources' in err
    assert digest(pairs/'vi') == before
    rc, _, err = sf('fuse', '--ir', pairs/'ir', '--vi', pairs/'vi', '--out', pairs/'ir', '--model', model_dir)
    assert rc == 2 and 'holds the infrared sources' in err


def test_fuse_duplicate_names_fail_and_are_not_fused(sf, pairs, model_dir):
    cv2.imwrite(str(pairs/'vi'/'a.jpg'), np.zeros((40, 48, 3), np.uint8))
    rc, out, err = sf('fuse', '--ir', pairs/'ir', '--vi', pairs/'vi', '--out', pairs/'out', '--model', model_dir)
    assert rc == 1
    assert sorted(p.name for p in (pairs/'out').iterdir()) == ['b.png', 'c.png']
    assert out.count('FAILED a:') == 1 and 'rename all but one' in out


def test_fuse_removes_temp_files_of_an_interrupted_run(sf, pairs, model_dir):
    (pairs/'out').mkdir()
    (pairs/'out'/'.a.png.k3j_x9q2.tmp').write_bytes(b'')   # what a killed atomic write leaves
    rc, out, _ = sf('fuse', '--ir', pairs/'ir', '--vi', pairs/'vi', '--out', pairs/'out', '--model', model_dir)
    assert rc == 0 and 'removed 1 temporary file(s)' in out
    assert sorted(p.name for p in (pairs/'out').iterdir()) == ['a.png', 'b.png', 'c.png']


def test_fuse_summary_mentions_only_what_happened(sf, pairs, model_dir):
    args = ('fuse', '--ir', pairs/'ir', '--vi', pairs/'vi', '--out', pairs/'out', '--model', model_dir)
    rc, out, _ = sf(*args)
    assert rc == 0 and out.startswith('fused 3 -> ') and 'skipped' not in out
    rc, out, _ = sf(*args)
    assert rc == 0 and out.startswith('fused 0, skipped 3 (output exists; --overwrite to redo)')


@pytest.mark.parametrize('device, says', [('cuda', "--device: 'cuda' requested but"), ('foo', "--device: expected 'cpu', 'cuda'"),
                                          ('cuda:7', "--device: 'cuda:7' requested but")])
def test_fuse_bad_device(sf, pairs, model_dir, device, says):
    import torch
    if torch.cuda.is_available() and device != 'foo': pytest.skip('checks a machine without (enough) CUDA devices')
    rc, _, err = sf('fuse', '--ir', pairs/'ir', '--vi', pairs/'vi', '--out', pairs/'out', '--model', model_dir, '--device', device)
    assert rc == 2 and says in one_error(err, 'fuse')
    assert not (pairs/'out').exists()


def test_fuse_device_has_help(capsys):
    with pytest.raises(SystemExit): main(['fuse', '--help'])
    assert "--device DEVICE 'cpu' (default), 'cuda'" in ' '.join(capsys.readouterr().out.split())


@pytest.mark.parametrize('damage, says', [
    (lambda d: (d/'model.safetensors').write_bytes(b'not weights'), 'model.safetensors is not a readable safetensors file'),
    (lambda d: (d/'model.safetensors').write_bytes((d/'model.safetensors').read_bytes()[:200]), 'is not a readable safetensors file'),
    (lambda d: (d/'config.json').write_text('{"width": 4,'), 'config.json is not valid JSON'),
    (lambda d: (d/'config.json').write_text('{"widht": 4}'), "unknown field(s) ['widht']"),
    (lambda d: (d/'config.json').write_text(json.dumps({**json.loads((d/'config.json').read_text()), 'width': 8})),
     'do not fit the network config.json describes'),
    (lambda d: (d/'config.json').unlink(), 'no config.json in'),
])
def test_fuse_broken_model_folder(sf, pairs, model_dir, damage, says, tmp_path):
    import shutil
    m = tmp_path/'broken'; shutil.copytree(model_dir, m)
    damage(m)
    rc, _, err = sf('fuse', '--ir', pairs/'ir', '--vi', pairs/'vi', '--out', pairs/'out', '--model', m)
    line = one_error(err, 'fuse')
    assert rc == 2 and line.startswith('sfofusion fuse: error: --model: ') and says in line, line


def test_fuse_model_given_as_the_weights_file(sf, pairs, model_dir):
    rc, out, err = sf('fuse', '--ir', pairs/'ir', '--vi', pairs/'vi', '--out', pairs/'out', '--model', model_dir/'model.safetensors')
    assert rc == 0 and out.startswith('fused 3'), err


def test_fuse_model_given_a_training_checkpoint(sf, pairs, tmp_path):
    rc, _, err = sf('train', *SMALL, '--set', 'steps=2', '--set', 'ckpt_every=1', '--set', 'keep_ckpts=5', '--out-dir', tmp_path/'run')
    assert rc == 0, err
    ck = tmp_path/'run'/'checkpoints'/'step_00000001'
    rc, out, err = sf('fuse', '--ir', pairs/'ir', '--vi', pairs/'vi', '--out', pairs/'out', '--model', ck)
    assert rc == 0 and out.startswith('fused 3'), err          # checkpoints carry config.json: they load as models
    (ck/'config.json').unlink()                                  # as checkpoints written before they did
    rc, _, err = sf('fuse', '--ir', pairs/'ir', '--vi', pairs/'vi', '--out', pairs/'o2', '--model', ck)
    assert rc == 2 and "a training checkpoint's state.json" in one_error(err, 'fuse')


def test_fuse_model_names_the_flag(sf, pairs):
    rc, _, err = sf('fuse', '--ir', pairs/'ir', '--vi', pairs/'vi', '--out', pairs/'out', '--model', 'nope')
    line = one_error(err, 'fuse')
    assert rc == 2 and line.startswith("sfofusion fuse: error: --model: 'nope' is neither") and 'name_or_path' not in line


def test_fuse_corrupt_image_is_one_line_without_native_noise(sf, pairs, model_dir):
    ok, buf = cv2.imencode('.png', np.arange(40 * 48, dtype=np.uint16).reshape(40, 48).astype(np.uint8))
    (pairs/'ir'/'a.png').write_bytes(buf.tobytes()[:120])      # truncated: libpng complains on the C stderr
    rc, out, err = sf('fuse', '--ir', pairs/'ir', '--vi', pairs/'vi', '--out', pairs/'out', '--model', model_dir)
    assert rc == 1 and 'FAILED a: ' in out and 'cannot decode the image' in out
    assert 'libpng' not in err and 'WARN' not in err


def test_fuse_resize_warning_is_one_line(sf, pairs, model_dir):
    cv2.imwrite(str(pairs/'vi'/'a.png'), np.zeros((20, 24, 3), np.uint8))
    rc, _, err = sf('fuse', '--ir', pairs/'ir', '--vi', pairs/'vi', '--out', pairs/'out', '--model', model_dir, '--resize')
    warn = [l[l.index('sfofusion fuse: warning'):] for l in err.splitlines() if 'warning' in l]   # after any progress bar
    assert rc == 0 and warn == ['sfofusion fuse: warning: ir/a.png and vi/a.png: resizing VIS from 24x20 to the IR size 48x40']
    assert 'warnings.warn' not in err and '.py:' not in err


def test_fuse_tiny_pairs(sf, tmp_path, model_dir):
    cv2.imwrite(str(tmp_path/'ir.png'), np.full((1, 1), 200, np.uint8)); cv2.imwrite(str(tmp_path/'vi.png'), np.full((1, 1), 100, np.uint8))
    rc, _, err = sf('fuse', '--ir', tmp_path/'ir.png', '--vi', tmp_path/'vi.png', '--out', tmp_path/'o1', '--gray')
    assert rc == 0, err
    assert cv2.imread(str(tmp_path/'o1'/'ir.png'), cv2.IMREAD_UNCHANGED).tolist() == [[200]]   # the hotter source, not 0
    rng = np.random.default_rng(1)
    ir, vi = rng.integers(0, 74, (5, 7), np.uint8), rng.integers(0, 74, (5, 7), np.uint8)
    cv2.imwrite(str(tmp_path/'ir.png'), ir); cv2.imwrite(str(tmp_path/'vi.png'), vi)
    rc, _, err = sf('fuse', '--ir', tmp_path/'ir.png', '--vi', tmp_path/'vi.png', '--out', tmp_path/'o2', '--gray')
    f = cv2.imread(str(tmp_path/'o2'/'ir.png'), cv2.IMREAD_UNCHANGED).astype(int)
    assert rc == 0 and f.max() <= 73 + 24 and f.min() >= 0       # no corner at ~250 from inputs <= 73
    for h, w in ((1, 1), (2, 3), (7, 5)):                         # flat in, flat out at any size
        cv2.imwrite(str(tmp_path/'ir.png'), np.full((h, w), 90, np.uint8)); cv2.imwrite(str(tmp_path/'vi.png'), np.full((h, w), 40, np.uint8))
        rc, _, _ = sf('fuse', '--ir', tmp_path/'ir.png', '--vi', tmp_path/'vi.png', '--out', tmp_path/f'f{h}{w}', '--gray')
        g = cv2.imread(str(tmp_path/f'f{h}{w}'/'ir.png'), cv2.IMREAD_UNCHANGED)
        assert rc == 0 and g.shape == (h, w) and g.min() == g.max() == 90


def test_fuse_readme_glob_example_pairs(sf, tmp_path, model_dir):
    (tmp_path/'scenes').mkdir()
    for n in ('00012', '00013'):
        cv2.imwrite(str(tmp_path/'scenes'/f'{n}_ir.png'), np.full((40, 48), 120, np.uint8))
        cv2.imwrite(str(tmp_path/'scenes'/f'{n}_vi.png'), np.full((40, 48), 60, np.uint8))
    os.chdir(tmp_path)
    rc, out, err = sf('fuse', '--ir', 'scenes/*_ir.png', '--vi', 'scenes/*_vi.png', '--out', 'runs/fused', '--gray', '--model', model_dir)
    assert rc == 0 and out.startswith('fused 2'), out + err
    assert sorted(p.name for p in (tmp_path/'runs'/'fused').iterdir()) == ['00012.png', '00013.png']


def test_fuse_python_bgr():
    from sfofusion.fuse import fuse
    net = build_model(SFOFusionConfig(width=4, ctx_width=8))
    rng = np.random.default_rng(2)
    ir, rgb = rng.integers(0, 255, (32, 40), np.uint8), rng.integers(0, 255, (32, 40, 3), np.uint8)
    bgr = np.ascontiguousarray(rgb[..., ::-1])
    want = fuse(ir, rgb, model=net)
    assert np.array_equal(fuse(ir, bgr, model=net, bgr=True), want[..., ::-1])
    assert np.abs(fuse(ir, bgr, model=net).astype(int) - want[..., ::-1]).max() > 10   # BGR passed as RGB is visibly wrong


# --- eval -------------------------------------------------------------------------------------------------------

@pytest.fixture
def fused(pairs):
    "`pairs` plus f/: one 'fused' image per pair."
    (pairs/'f').mkdir()
    for n in ('a', 'b', 'c'): cv2.imwrite(str(pairs/'f'/f'{n}.png'), cv2.imread(str(pairs/'vi'/f'{n}.png')))
    return pairs


def test_eval_missing_fused_images_fail(sf, fused):
    (fused/'f'/'c.png').unlink()
    args = ('eval', '--fused', fused/'f', '--ir', fused/'ir', '--vi', fused/'vi', '--no-progress', '--metrics', 'EN,SD')
    rc, out, _ = sf(*args)
    assert rc == 1 and '1 source pair(s) have no fused image: c' in out and '| 2 |' in out
    rc, out, _ = sf(*args, '--allow-missing')
    assert rc == 0 and 'no fused image: c' in out
    rc, out, _ = sf(*args, '--names', 'a', '--names', 'b')
    assert rc == 0 and 'no fused image' not in out


def test_eval_extra_or_corrupt_fused_image_does_not_abort(sf, fused):
    cv2.imwrite(str(fused/'f'/'stray.png'), np.zeros((40, 48), np.uint8))
    (fused/'f'/'b.png').write_bytes(b'not a png')
    rc, out, err = sf('eval', '--fused', fused/'f', '--ir', fused/'ir', '--vi', fused/'vi', '--no-progress', '--metrics', 'EN')
    assert rc == 1 and '| 2 |' in out and 'stray.png' in out and 'b.png' in out and 'libpng' not in err


def test_eval_undefined_metrics_are_reported(sf, fused):
    for n in ('a', 'b', 'c'): cv2.imwrite(str(fused/'f'/f'{n}.png'), np.full((40, 48), 128, np.uint8))
    rc, out, _ = sf('eval', '--fused', fused/'f', '--ir', fused/'ir', '--vi', fused/'vi', '--no-progress', '--metrics', 'EN,CC')
    assert rc == 0 and 'CC undefined (NaN) for 3 of 3 image(s)' in out and '| nan' not in out


def test_eval_out_under_a_file_or_onto_a_source(sf, fused):
    (fused/'afile').write_text('x')
    base = ('eval', '--fused', fused/'f', '--ir', fused/'ir', '--vi', fused/'vi', '--no-progress')
    rc, _, err = sf(*base, '--out', fused/'afile'/'r.csv')
    assert rc == 2 and 'is a file, so' in one_error(err, 'eval')
    rc, _, err = sf(*base, '--out', fused/'ir')
    assert rc == 2 and one_error(err, 'eval').startswith('sfofusion eval: error: --out: ')
    rc, _, err = sf(*base, '--out', fused/'ir'/'a.png')
    assert rc == 2 and '--out: expected a .csv file name' in one_error(err, 'eval')
    with pytest.raises(SystemExit) as e: main([str(a) for a in base] + ['--psnr-peak', 'abc'])   # argparse's own usage error
    assert e.value.code == 2


# --- train ------------------------------------------------------------------------------------------------------

def test_train_second_run_into_a_run_folder_is_refused(sf, tmp_path):
    out = tmp_path/'run'
    rc, _, err = sf('train', *SMALL, '--steps', 3, '--out-dir', out)
    assert rc == 0, err
    log, weights = (out/'log.jsonl').read_bytes(), (out/'final'/'model.safetensors').read_bytes()
    rc, _, err = sf('train', *SMALL, '--steps', 3, '--out-dir', out, '--set', 'seed=1')
    line = one_error(err, 'train')
    assert rc == 2 and 'already holds a run' in line and '--resume' in line and '--overwrite' in line
    assert (out/'log.jsonl').read_bytes() == log and (out/'final'/'model.safetensors').read_bytes() == weights
    rc, _, err = sf('train', *SMALL, '--steps', 5, '--out-dir', out, '--resume')
    assert rc == 2 and 'differs from the run' in err and 'steps: 3 -> 5' in err
    rc, out_txt, _ = sf('train', *SMALL, '--steps', 3, '--out-dir', out, '--resume')
    assert rc == 0 and 'nothing to do' in out_txt and 'nan' not in out_txt and 'final loss 0.' in out_txt
    rc, _, _ = sf('train', *SMALL, '--steps', 3, '--out-dir', out, '--set', 'seed=1', '--overwrite')
    assert rc == 0 and (out/'final'/'model.safetensors').read_bytes() != weights
    assert len([l for l in (out/'log.jsonl').read_text().splitlines() if '"loss"' in l]) == 3


def test_train_resume_drops_log_rows_after_the_checkpoint(tmp_path):
    from sfofusion.engine import read_log
    from sfofusion.train import TrainConfig, train
    cfg = TrainConfig(steps=4, crop=32, batch_size=2, synthetic_pairs=4, ckpt_every=2, progress=False, out_dir=str(tmp_path/'r'))
    train(cfg, stop_after=3)                                       # checkpoint at 2, interrupted at 3 (checkpoint at 3)
    import shutil; shutil.rmtree(tmp_path/'r'/'checkpoints'/'step_00000003')   # as if killed before saving
    train(cfg, resume=True)
    steps = [r['step'] for r in read_log(tmp_path/'r'/'log.jsonl') if 'loss' in r]
    assert steps == [1, 2, 3, 4]


@pytest.mark.parametrize('args, says', [
    (['--steps', '0'], 'config field `steps`: expected an integer >= 1, got 0'),
    (['--set', 'steps=-3'], 'config field `steps`: expected an integer >= 1, got -3'),
    (['--set', 'lr=-1'], 'config field `lr`: expected a number >= 0, got -1.0'),
    (['--set', 'batch_size=0'], 'config field `batch_size`: expected an integer >= 1, got 0'),
    (['--set', 'loss={nope: 1}'], 'config field `loss`: unknown key(s) nope; valid keys: intensity'),
    (['--set', 'model={width: x}'], 'config field `model`'),
    (['--set', 'loss={nope: 1'], "config field `loss`: cannot read '{nope: 1' as a mapping (YAML)"),
    (['--set', 'steps'], "--set: expected KEY=VALUE, got 'steps'"),
    (['--set', 'stpes=3'], "unknown config field 'stpes'"),
    (['--device', 'cuda:9'], "--device: 'cuda:9' requested but"),
    (['--mode', 'meta'], '--mode needs --task'),
    (['--task', 'detection', '--set', 'task_cfg={nope: 1}'], 'config field `task_cfg`: unknown key(s) nope'),
    (['--task', 'detection', '--set', 'balance={lam: x}'], 'config field `balance`'),
])
def test_train_bad_config_is_one_line_and_writes_nothing(sf, tmp_path, args, says):
    import torch
    if 'cuda' in ' '.join(args) and torch.cuda.device_count() > 9: pytest.skip('needs fewer than 10 GPUs')
    rc, _, err = sf('train', *SMALL, *args, '--out-dir', tmp_path/'run')
    assert rc == 2 and says in one_error(err, 'train'), err
    assert not (tmp_path/'run').exists()


@pytest.mark.parametrize('name, text, says', [
    ('bad.yaml', 'steps: 3\nlr: [1\n', 'is not valid YAML at line 3'),
    ('list.yaml', '- steps\n- 3\n', 'must hold a mapping of config fields (key: value), got list'),
    ('bad.json', '{"steps": 3,}', 'is not valid JSON'),
    ('c.toml', 'steps = 3', 'expected a .yaml, .yml or .json file'),
    ('nested.yaml', 'loss:\n  nope: 1\n', 'config field `loss`: unknown key(s) nope'),
])
def test_train_bad_config_file(sf, tmp_path, name, text, says):
    (tmp_path/name).write_text(text)
    rc, _, err = sf('train', '--config', tmp_path/name, '--out-dir', tmp_path/'run')
    line = one_error(err, 'train')
    assert rc == 2 and says in line and (line.startswith('sfofusion train: error: --config: ') or 'config field' in line), line


def test_train_crop_larger_than_the_images(sf, pairs, tmp_path):
    rc, _, err = sf('train', *SMALL, '--set', f'data=[pairs:{pairs}]', '--set', 'crop=64', '--out-dir', tmp_path/'run')
    assert rc == 2 and 'config field `crop`: 64 is larger than 3 of the 3 training images (the smallest is 48x40' in err
    assert not (tmp_path/'run').exists()


@pytest.mark.slow
def test_train_sigterm_saves_a_checkpoint(tmp_path):
    "A scheduler's SIGTERM is handled as Ctrl-C: a checkpoint, exit 130, and --resume continues."
    import signal, time
    args = [CLI, 'train', '--set', 'crop=32', '--set', 'batch_size=2', '--set', 'synthetic_pairs=4', '--set', 'progress=false',
            '--steps', '100000', '--out-dir', str(tmp_path/'run')]
    p = subprocess.Popen(args, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=dict(os.environ, OMP_NUM_THREADS='1'))
    for _ in range(600):                                        # wait for training to log a few steps
        time.sleep(0.1)
        log = tmp_path/'run'/'log.jsonl'
        if log.is_file() and len(log.read_text().splitlines()) >= 3: break
    p.send_signal(signal.SIGTERM)
    out, err = p.communicate(timeout=120)
    assert p.returncode == 143 and 'checkpoint saved' in out and 'terminated (SIGTERM)' in err and 'Traceback' not in err, err
    assert any((tmp_path/'run'/'checkpoints').iterdir())


# --- data -------------------------------------------------------------------------------------------------------

def test_data_fetch_into_a_folder_with_other_files_is_refused(sf, tmp_path):
    (tmp_path/'data').mkdir(); (tmp_path/'data'/'README.md').write_text('# data\n')
    rc, out, err = sf('data', 'fetch', 'msrs', '--to', tmp_path/'data', '--no-progress')
    line = one_error(err, 'data fetch')
    assert rc == 2 and '--to: ' in line and 'is not empty' in line and 'data/MSRS' in line and 'ready' not in out
    assert [p.name for p in (tmp_path/'data').iterdir()] == ['README.md']


def test_data_fetch_defaults_to_a_folder_named_after_the_dataset(sf, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    (tmp_path/'data'/'MSRS'/'ir').mkdir(parents=True); (tmp_path/'data'/'MSRS'/'vi').mkdir()
    for side in ('ir', 'vi'): cv2.imwrite(str(tmp_path/'data'/'MSRS'/side/'00001D.png'), np.zeros((8, 8), np.uint8))
    rc, out, err = sf('data', 'fetch', 'msrs', '--no-progress')     # already there: nothing to download
    assert rc == 0 and 'already present in data/MSRS' in out, err


def test_data_check_empty_folder_fails(sf, tmp_path):
    (tmp_path/'empty').mkdir()
    rc, out, err = sf('data', 'check', tmp_path/'empty', '--name', 'msrs')
    assert rc == 1 and 'no pairs found' in out + err


def test_data_check_fusion_dataset_without_boxes_passes(sf, shared):
    sd = shared
    rc, out, _ = sf('data', 'check', sd/'data'/'LLVIP')
    assert rc == 0 and 'OK' in out.splitlines()[0] and 'note: pairs without a label' in out
    rc, out, _ = sf('data', 'check', sd/'data'/'LLVIP', '--require-labels')
    assert rc == 1


def test_data_check_not_a_folder(sf, tmp_path):
    (tmp_path/'f.txt').write_text('x')
    rc, _, err = sf('data', 'check', tmp_path/'f.txt')
    assert rc == 2 and one_error(err, 'data check').startswith('sfofusion data check: error: ')


# --- the command itself -----------------------------------------------------------------------------------------

def test_debug_shows_the_traceback(tmp_path):
    env = dict(os.environ, OMP_NUM_THREADS='1')
    plain = subprocess.run([CLI, 'train', '--set', 'steps=0'], capture_output=True, text=True, env=env)
    debug = subprocess.run([CLI, '--debug', 'train', '--set', 'steps=0'], capture_output=True, text=True, env=env)
    envd = subprocess.run([CLI, 'train', '--set', 'steps=0'], capture_output=True, text=True, env=dict(env, SFOFUSION_DEBUG='1'))
    assert plain.returncode == 2 and plain.stderr.count('\n') == 1 and 'Traceback' not in plain.stderr
    assert 'Traceback' in debug.stderr and 'Traceback' in envd.stderr


def test_internal_errors_are_one_line_and_say_so(sf, monkeypatch, pairs, model_dir):
    import sfofusion.scale
    def boom(*a, **k): raise ZeroDivisionError('oops')
    monkeypatch.setattr(sfofusion.scale, 'fuse_pairs', boom)   # what the command's engine calls
    rc, _, err = sf('fuse', '--ir', pairs/'ir', '--vi', pairs/'vi', '--out', pairs/'out')
    line = one_error(err, 'fuse')
    assert rc == 1 and 'internal error: ZeroDivisionError: oops' in line and '--debug' in line


# --- found by a second round of trying to break it ----------------------------------------------------------------

def test_demo_never_writes_among_other_files(sf, pairs, tmp_path):
    before = digest(pairs/'ir')
    rc, _, err = sf('fuse', '--demo', pairs/'ir')
    assert rc == 2 and 'holds other files' in one_error(err, 'fuse') and digest(pairs/'ir') == before
    rc, _, err = sf('fuse', '--demo', tmp_path/'d', '--ir', pairs/'ir')
    assert rc == 2 and 'it takes no --ir' in err
    (tmp_path/'afile').write_text('x')
    rc, _, err = sf('fuse', '--demo', tmp_path/'afile')
    assert rc == 2


def test_train_bad_val_data_stops_before_training(sf, tmp_path):
    args = ('train', *SMALL, '--steps', 2, '--set', 'val_data=/no/such/folder', '--out-dir', tmp_path/'run')
    rc, _, err = sf(*args, '--dry-run')
    assert rc == 2 and 'config field `val_data`' in one_error(err, 'train')
    rc, _, err = sf(*args)
    assert rc == 2 and not (tmp_path/'run').exists()


def test_train_resume_may_fix_val_data(sf, tmp_path, pairs):
    out = tmp_path/'run'
    rc, _, err = sf('train', *SMALL, '--steps', 2, '--out-dir', out, '--set', f'val_data={pairs}', '--dry-run')
    assert rc == 2 and 'the validation metrics need at least 41x41' in err              # 48x40 pairs: refused up front
    for side in ('ir', 'vi'):
        for n in ('a', 'b', 'c'): cv2.imwrite(str(pairs/side/f'{n}.png'), np.random.default_rng(0).integers(0, 255, (48, 56), np.uint8))
    rc, _, err = sf('train', *SMALL, '--steps', 2, '--out-dir', out, '--set', f'val_data={pairs}', '--set', 'crop=32')
    assert rc == 0, err
    rc, _, err = sf('train', *SMALL, '--steps', 2, '--out-dir', out, '--set', f'val_data={pairs}', '--set', 'val_max_pairs=1', '--set', 'crop=32', '--resume')
    assert rc == 0, err                                  # validation settings read the weights only: free to change on resume


def test_fuse_12_bit_data_in_16_bit_files_is_not_black(sf, tmp_path):
    rng = np.random.default_rng(3)
    ir8, vi8 = rng.integers(40, 200, (40, 48)).astype(np.uint8), rng.integers(40, 200, (40, 48)).astype(np.uint8)
    cv2.imwrite(str(tmp_path/'ir.png'), ir8.astype(np.uint16) * 16); cv2.imwrite(str(tmp_path/'vi.png'), vi8.astype(np.uint16) * 16)
    rc, _, err = sf('fuse', '--ir', tmp_path/'ir.png', '--vi', tmp_path/'vi.png', '--out', tmp_path/'o', '--gray')
    f = cv2.imread(str(tmp_path/'o'/'ir.png'), cv2.IMREAD_UNCHANGED)
    assert rc == 0 and f.mean() > 60 and 'use 12 bits only' in err


@pytest.mark.parametrize('args', [('fuse', '--ir', '', '--vi', 'x', '--out', 'o'), ('fuse', '--ir', 'x', '--vi', 'x', '--out', ''),
                                  ('fuse', '--ir', 'x', '--vi', 'x', '--out', 'o', '--model', ''), ('train', '--out-dir', ''),
                                  ('eval', '--fused', '', '--ir', 'x', '--vi', 'x')])
def test_empty_arguments_are_refused(sf, args, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    with pytest.raises(SystemExit) as e: main(list(args))
    assert e.value.code == 2 and list(tmp_path.iterdir()) == []


def test_same_source_twice_is_refused(sf, pairs, fused):
    rc, _, err = sf('fuse', '--ir', pairs/'ir', '--vi', pairs/'ir', '--out', pairs/'o')
    assert rc == 2 and 'name the same files' in one_error(err, 'fuse')
    rc, _, err = sf('eval', '--fused', pairs/'ir', '--ir', pairs/'ir', '--vi', pairs/'vi', '--no-progress')
    assert rc == 2 and 'is the --ir folder' in one_error(err, 'eval')


def test_python_flags_and_paths_are_checked(pairs):
    from sfofusion.core import FusionInputError
    from sfofusion.fuse import fuse, fuse_folder
    from sfofusion.evaluate import evaluate_folders
    net = build_model(SFOFusionConfig(width=4, ctx_width=8))
    with pytest.raises(FusionInputError, match="`overwrite`: expected True or False, got 'no'"):
        fuse_folder(pairs/'ir', pairs/'vi', pairs/'o', model=net, overwrite='no', progress=False)
    with pytest.raises(FusionInputError, match='`out`: expected a path'): fuse_folder(pairs/'ir', pairs/'vi', None, model=net)
    with pytest.raises(FusionInputError, match='`ir`: expected a path'): fuse_folder(1, 2, 3, model=net)
    with pytest.raises(FusionInputError, match='`gray`'): fuse(pairs/'ir'/'a.png', pairs/'vi'/'a.png', model=net, gray='no')
    with pytest.raises(FusionInputError, match='`tile`'): fuse(pairs/'ir'/'a.png', pairs/'vi'/'a.png', model=net, tile='64')
    with pytest.raises(FusionInputError, match='`fused_dir`'): evaluate_folders(None, pairs/'ir', pairs/'vi')
    with pytest.raises(FusionInputError, match='`names`'): evaluate_folders(pairs/'vi', pairs/'ir', pairs/'ir', names=[])


def test_train_huge_crop_is_refused_up_front(sf, tmp_path):
    rc, _, err = sf('train', *SMALL, '--set', 'crop=100000', '--out-dir', tmp_path/'a')
    assert rc == 2 and 'config field `crop`: expected an integer <= 4096' in err
    rc, _, err = sf('train', *SMALL, '--set', 'crop=2048', '--out-dir', tmp_path/'b')
    assert rc == 2 and 'synthetic pairs are at most 1024 px' in err
    assert not (tmp_path/'a').exists() and not (tmp_path/'b').exists()


def test_train_leftovers_of_a_run_that_never_stepped_are_not_a_run(sf, tmp_path):
    from sfofusion.train import TrainConfig
    (tmp_path/'run').mkdir()                                                       # a run that died before step 1
    (tmp_path/'run'/'config.json').write_text(json.dumps(TrainConfig(out_dir=str(tmp_path/'run')).to_dict()))
    rc, _, err = sf('train', *SMALL, '--steps', 1, '--out-dir', tmp_path/'run')
    assert rc == 0, err


def test_train_never_deletes_a_folder_it_did_not_write(sf, tmp_path, model_dir):
    import shutil
    shutil.copytree(model_dir, tmp_path/'m')                                       # a saved model: config.json + weights
    before = digest(tmp_path/'m')
    for extra in ((), ('--overwrite',), ('--set', 'data=[msrs:/no/such/folder]')):
        rc, _, err = sf('train', *SMALL, '--steps', 1, '--out-dir', tmp_path/'m', *extra)
        assert rc == 2 and digest(tmp_path/'m') == before, err
    assert 'not a training run' in err or '/no/such/folder' in err
    (tmp_path/'r').mkdir(); (tmp_path/'r'/'config.json').write_text('[]')
    rc, _, err = sf('train', *SMALL, '--steps', 1, '--out-dir', tmp_path/'r', '--resume')
    assert rc == 2 and 'is damaged (not a JSON object)' in one_error(err, 'train')


def test_glob_pairing_with_dot_paths_and_ranges(sf, tmp_path, model_dir, monkeypatch):
    monkeypatch.chdir(tmp_path)
    (tmp_path/'d').mkdir()
    for n in ('31', '41', '71'):
        cv2.imwrite(str(tmp_path/'d'/f'{n}_ir.png'), np.full((40, 48), 120, np.uint8))
        cv2.imwrite(str(tmp_path/'d'/f'{n}_vi.png'), np.full((40, 48), 60, np.uint8))
    rc, out, err = sf('fuse', '--ir', './d/[3-5]*_ir.png', '--vi', './d/[3-5]*_vi.png', '--out', 'o', '--gray', '--model', model_dir)
    assert rc == 0 and sorted(p.name for p in (tmp_path/'o').iterdir()) == ['31.png', '41.png'], out + err


def test_resume_of_a_finished_run_without_its_record_reports_the_real_loss(tmp_path):
    from sfofusion.train import TrainConfig, train
    cfg = TrainConfig(steps=2, crop=32, batch_size=2, synthetic_pairs=4, progress=False, out_dir=str(tmp_path/'r'))
    first = train(cfg)
    (tmp_path/'r'/'result.json').unlink()                                          # a record lost
    again = train(cfg, resume=True)
    assert again['step'] == 2 and again['loss'] == first['loss']
    assert 'NaN' not in (tmp_path/'r'/'result.json').read_text()


def test_final_validation_even_when_val_every_does_not_divide_steps(tmp_path, shared):
    from sfofusion.engine import read_log
    from sfofusion.train import TrainConfig, train
    sd = shared
    cfg = TrainConfig(steps=3, val_every=2, val_max_pairs=1, val_data=str(sd/'data'/'TNO'), crop=32, batch_size=2,
                      synthetic_pairs=4, progress=False, out_dir=str(tmp_path/'r'))
    train(cfg)
    assert [r['step'] for r in read_log(tmp_path/'r'/'log.jsonl') if 'val/VIF' in r] == [2, 3]


def test_reading_images_without_a_temp_folder(tmp_path, monkeypatch):
    import tempfile
    from sfofusion.core import read_image
    cv2.imwrite(str(tmp_path/'a.png'), np.zeros((4, 4), np.uint8))
    def no_temp(*a, **k): raise OSError('no space left on device')
    monkeypatch.setattr(tempfile, 'TemporaryFile', no_temp)
    n = len(os.listdir('/proc/self/fd'))
    for _ in range(5): assert read_image(tmp_path/'a.png').shape == (4, 4)
    assert len(os.listdir('/proc/self/fd')) == n                                   # no descriptor leaked


def test_train_resume_without_checkpoint_says_so(sf, tmp_path):
    from sfofusion.train import TrainConfig
    cfg = TrainConfig(steps=2, crop=32, batch_size=2, synthetic_pairs=4, progress=False, out_dir=str(tmp_path/'run'))
    (tmp_path/'run').mkdir(); (tmp_path/'run'/'config.json').write_text(json.dumps(cfg.to_dict()))
    (tmp_path/'run'/'log.jsonl').write_text('{"step": 1, "loss": 0.5}\n')
    rc, out, err = sf('train', *SMALL, '--steps', 2, '--out-dir', tmp_path/'run', '--resume')
    assert rc == 0 and 'no usable checkpoint' in out, err


def test_train_resume_survives_damaged_run_files(sf, tmp_path):
    out = tmp_path/'run'
    args = ('train', *SMALL, '--steps', 4, '--set', 'ckpt_every=1', '--set', 'keep_ckpts=3', '--out-dir', out)
    from sfofusion.train import TrainConfig, train
    cfg = TrainConfig(steps=4, crop=32, batch_size=2, synthetic_pairs=4, progress=False, ckpt_every=1, keep_ckpts=3, out_dir=str(out))
    train(cfg, stop_after=3)
    newest = out/'checkpoints'/'step_00000003'
    (newest/'model.safetensors').write_bytes((newest/'model.safetensors').read_bytes()[:100])   # killed mid-write
    with open(out/'log.jsonl', 'a') as f: f.write('{"step": 4, "lo')                          # half a line
    rc, o, err = sf(*args, '--resume')
    assert rc == 0 and 'cannot be used' in err and 'resumed from' in o and 'step_00000002' in o, err
    (out/'config.json').write_text('{"steps": ')
    rc, _, err = sf(*args, '--resume')
    assert rc == 2 and 'config.json is damaged' in one_error(err, 'train')


def test_checkpoints_are_readable_by_others(tmp_path):
    from sfofusion.train import TrainConfig, train
    old = os.umask(0o022)
    try: train(TrainConfig(steps=1, crop=32, batch_size=2, synthetic_pairs=4, progress=False, out_dir=str(tmp_path/'r')))
    finally: os.umask(old)
    modes = {p.name: p.stat().st_mode & 0o777 for p in (tmp_path/'r'/'checkpoints').rglob('*') if p.is_file()}
    assert modes and set(modes.values()) == {0o644}, modes


def test_train_api_arguments_are_checked(tmp_path):
    from sfofusion.core import FusionInputError
    from sfofusion.train import TrainConfig, train
    cfg = TrainConfig(steps=2, crop=32, batch_size=2, synthetic_pairs=4, progress=False, out_dir=str(tmp_path/'r'))
    with pytest.raises(FusionInputError, match='`stop_after`'): train(cfg, stop_after='1')
    with pytest.raises(FusionInputError, match='`cfg`: expected a TrainConfig'): train(cfg.to_dict())
    cfg.steps = 'abc'                                                  # changed after it was made
    with pytest.raises(FusionInputError, match='config field `steps`'): train(cfg)
    cfg.steps = 2
    assert train(cfg, stop_after=0)['weights'] is None                  # nothing finished: no weights to point at


def test_eval_names_file_problems(sf, fused, tmp_path):
    base = ('eval', '--fused', fused/'f', '--ir', fused/'ir', '--vi', fused/'vi', '--no-progress', '--metrics', 'EN')
    (tmp_path/'e.txt').write_text('# nothing\n\n')
    rc, _, err = sf(*base, '--names', f"@{tmp_path/'e.txt'}")
    assert rc == 2 and '--names: name list' in one_error(err, 'eval') and 'holds no names' in err
    rc, _, err = sf(*base, '--names', f"@{fused/'ir'/'a.png'}")
    assert rc == 2 and 'is not a text file' in err
    (tmp_path/'bom.txt').write_text('\ufeffa.png\nb\n', encoding='utf-8')
    rc, out, err = sf(*base, '--names', f"@{tmp_path/'bom.txt'}")
    assert rc == 0 and '| 2 |' in out, err


def test_usage_errors_are_one_line(capsys):
    with pytest.raises(SystemExit) as e: main(['fuse', '--tile', 'abc'])
    err = capsys.readouterr().err
    assert e.value.code == 2 and err == "sfofusion fuse: error: argument --tile: invalid int value: 'abc' (see sfofusion fuse --help)\n"


def test_the_loss_scale_is_checkpointed_and_resumed(tmp_path, monkeypatch):
    "fp16 runs skip steps by their loss scale: a resumed run must continue with the scale it had reached."
    import torch, sfofusion.train as T
    from sfofusion.engine import usable_checkpoint
    made = []
    def scaler(cfg, dev):                          # an active scaler on the CPU, as fp16 on CUDA has
        s = torch.amp.GradScaler('cpu', init_scale=1024., enabled=True); made.append(s); return s
    monkeypatch.setattr(T, 'make_scaler', scaler)
    cfg = T.TrainConfig(steps=4, crop=32, batch_size=2, synthetic_pairs=4, progress=False, ckpt_every=2, out_dir=str(tmp_path/'r'))
    T.train(cfg, stop_after=2)
    made[0].update(new_scale=256.)                 # as after overflows
    T.save_step_checkpoint(tmp_path/'r', 2, T.initial_model(cfg), torch.optim.AdamW(T.initial_model(cfg).parameters()),
                           dict(skipped=0, scaler=made[0].state_dict(), config=cfg.to_dict()))
    state = json.loads((usable_checkpoint(tmp_path/'r')/'state.json').read_text())
    assert state['scaler']['scale'] == 256.
    T.train(cfg, resume=True, stop_after=3)
    assert made[1].get_scale() == 256.
