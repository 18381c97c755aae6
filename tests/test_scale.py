"Fusing at scale: manifests, torchrun shards and Ray Data give the same bytes as one process; bad pairs fail alone."
import hashlib, os, subprocess, sys
from pathlib import Path

import pytest

from sfofusion.core import save_image
from sfofusion.data.synthetic import synthetic_pair

BIN = Path(sys.executable).parent
CLI, TORCHRUN = str(BIN/'sfofusion'), str(BIN/'torchrun')
ENV = dict(os.environ, OMP_NUM_THREADS='1', PYTHONWARNINGS='ignore')


def run(*args, cwd=None):
    r = subprocess.run([str(a) for a in args], capture_output=True, text=True, env=ENV, cwd=cwd, timeout=600)
    return r.returncode, r.stdout, r.stderr


def digests(folder: Path) -> dict:
    return {str(p.relative_to(folder)): hashlib.sha1(p.read_bytes()).hexdigest() for p in sorted(folder.rglob('*.png'))}


@pytest.fixture(scope='module')
def collection(tmp_path_factory):
    "Pairs spread over two folders with repeated stems, sizes that differ, and a manifest of them (plus a missing pair)."
    root = tmp_path_factory.mktemp('collection')
    rows = ['ir,vi,out']
    for d, (h, w) in (('day1', (48, 64)), ('day2', (40, 72))):
        for i in range(3):
            p = synthetic_pair(h, w, seed=10 * len(d) + i + h, rgb=True)
            save_image(root/d/'ir'/f'{i:05d}.png', p['ir']); save_image(root/d/'vi'/f'{i:05d}.png', p['vis_rgb'])
            rows.append(f'{d}/ir/{i:05d}.png,{d}/vi/{i:05d}.png,')
    p = synthetic_pair(32, 32, seed=99, rgb=True)
    save_image(root/'extra'/'a_ir.png', p['ir']); save_image(root/'extra'/'a_vi.png', p['vis_rgb'])
    rows.append('extra/a_ir.png,extra/a_vi.png,night/two.png')          # an explicit name, in a sub-folder
    rows.append('day2/ir/00002.png,day2/vi/00002.png,')                 # a repeated row: reported, fused once
    rows.append('day3/ir/00000.png,day3/vi/00000.png,')                 # missing files: this pair fails alone
    (root/'pairs.csv').write_text('\n'.join(rows) + '\n')
    return root


EXPECTED = {'day1_ir_00000.png', 'day1_ir_00001.png', 'day1_ir_00002.png', 'day2_ir_00000.png', 'day2_ir_00001.png',
            'day2_ir_00002.png', 'night/two.png'}


def test_manifest_names_outputs_and_fails_bad_pairs_alone(collection, tmp_path):
    rc, out, err = run(CLI, 'fuse', '--manifest', collection/'pairs.csv', '--out', tmp_path/'one', '--gray')
    assert rc == 1 and 'fused 7, failed 2' in out, out + err
    assert 'FAILED row 9: repeats row 7 (day2/ir/00002.png, day2/vi/00002.png)' in out
    assert 'FAILED day3_ir_00000: ' in out and 'day3/ir/00000.png: file not found' in out
    assert set(digests(tmp_path/'one')) == EXPECTED
    assert err.strip().endswith('2 pair(s) failed (listed above); the others were fused')
    rc, out, _ = run(CLI, 'fuse', '--manifest', collection/'pairs.csv', '--out', tmp_path/'one', '--gray')   # a rerun resumes
    assert rc == 1 and out.startswith('fused 0, skipped 7')


def test_manifest_usage_errors(collection, tmp_path):
    (tmp_path/'bad.csv').write_text('infrared,visible\na.png,b.png\n')
    rc, _, err = run(CLI, 'fuse', '--manifest', tmp_path/'bad.csv', '--out', tmp_path/'o')
    assert rc == 2 and err.count('\n') == 1 and 'has columns infrared, visible; expected a header ir,vi and optionally out' in err
    rc, _, err = run(CLI, 'fuse', '--manifest', collection/'pairs.csv', '--out', collection/'day1'/'ir')
    assert rc == 2 and 'holds the infrared sources' in err
    assert not any(p.name.startswith('day') for p in (collection/'day1'/'ir').iterdir())


def test_parquet_manifest(collection, tmp_path):
    pa = pytest.importorskip('pyarrow', reason='Parquet manifests need pyarrow (the [ray] extra)')
    import pyarrow.parquet as pq
    pq.write_table(pa.table({'ir': [str(collection/'day1/ir/00000.png')], 'vi': [str(collection/'day1/vi/00000.png')]}),
                   tmp_path/'p.parquet')
    rc, out, err = run(CLI, 'fuse', '--manifest', tmp_path/'p.parquet', '--out', tmp_path/'o')
    assert rc == 0 and (tmp_path/'o'/'00000.png').is_file(), out + err


@pytest.mark.slow
def test_one_process_torchrun_and_ray_write_the_same_bytes(collection, tmp_path):
    "The README's commands: one process, torchrun with 2 ranks (with --vi, as written), Ray with 2 workers."
    pytest.importorskip('ray', reason='the Ray engine needs the [ray] extra: pip install -e ".[ray]"')
    man = ['--manifest', collection/'pairs.csv']
    rc, one, _ = run(CLI, 'fuse', *man, '--out', tmp_path/'one')
    rc2, tr, err = run(TORCHRUN, '--standalone', '--nproc_per_node', '2', '-m', 'sfofusion.cli', '--', 'fuse', *man, '--out', tmp_path/'tr')
    assert rc == rc2 == 1, err[-3000:]
    assert tr.count('fused 7') == 1 and tr.count('FAILED') == 2                 # rank 0 alone prints the merged summary
    rc3, ray_out, err = run(CLI, 'fuse', *man, '--out', tmp_path/'ray', '--engine', 'ray', '--workers', '2')
    assert rc3 == 1 and 'fused 7' in ray_out, err[-3000:]
    ref = digests(tmp_path/'one')
    assert set(ref) == EXPECTED and digests(tmp_path/'tr') == ref and digests(tmp_path/'ray') == ref
    d1 = collection/'day1'
    rc, out, err = run(TORCHRUN, '--standalone', '--nproc_per_node', '2', '-m', 'sfofusion.cli', '--',
                       'fuse', '--ir', d1/'ir', '--vi', d1/'vi', '--out', tmp_path/'folders')
    assert rc == 0 and out.count('fused 3') == 1, err[-3000:]


@pytest.mark.slow
def test_torchrun_resumes_a_killed_job(collection, tmp_path):
    "Outputs of the first run stay, a killed write's temporary file is removed once, the rest is fused."
    out = tmp_path/'tr'
    rc, _, _ = run(CLI, 'fuse', '--ir', collection/'day1'/'ir', '--vi', collection/'day1'/'vi', '--out', out)
    (out/'00001.png').unlink()
    (out/'.00001.png.a1b2c3d4.tmp').write_bytes(b'half')
    keep = (out/'00000.png').stat().st_mtime_ns
    rc, txt, err = run(TORCHRUN, '--standalone', '--nproc_per_node', '2', '-m', 'sfofusion.cli', '--',
                       'fuse', '--ir', collection/'day1'/'ir', '--vi', collection/'day1'/'vi', '--out', out)
    assert rc == 0, err[-3000:]
    assert 'fused 1, skipped 2' in txt and 'removed 1 temporary file' in txt
    assert (out/'00000.png').stat().st_mtime_ns == keep and not list(out.glob('.*.tmp'))


@pytest.mark.slow
def test_a_users_own_ray_dataset(collection, tmp_path):
    ray = pytest.importorskip('ray', reason='the Ray engine needs the [ray] extra: pip install -e ".[ray]"')
    from sfofusion.ray_fuse import fuse_dataset
    from sfofusion.fuse import fuse_pairs
    rows = [dict(name=f'scene/{i}', ir=str(collection/'day2/ir'/f'{i:05d}.png'), vi=str(collection/'day2/vi'/f'{i:05d}.png'))
            for i in range(3)]
    ray.init(include_dashboard=False, log_to_driver=False, logging_level='ERROR')
    try: rep = fuse_dataset(ray.data.from_items(rows), tmp_path/'ray', workers=2, gray=True)
    finally: ray.shutdown()
    assert rep.ok and rep.fused == ['scene/0', 'scene/1', 'scene/2']
    import torch
    torch.set_num_threads(1)
    fuse_pairs([(r['name'], Path(r['ir']), Path(r['vi'])) for r in rows], tmp_path/'one', gray=True, progress=False)
    assert digests(tmp_path/'ray') == digests(tmp_path/'one')
