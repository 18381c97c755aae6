"""The committed experiment records are whole, and the README says what they say.

`figures/downstream.json` is the answer to "does task-oriented meta-learning help detection?" (issue 15): these
tests hold it to the shape the issue fixed (five inputs, one seed order, at least five seeds, at least 60 evaluation
pairs that no training saw) and check that the README's section is `downstream_markdown` of it, so the two cannot
drift apart when the experiment is rerun.
"""
import json
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
RECORD = ROOT/'figures'/'downstream.json'


@pytest.fixture(scope='module')
def record():
    if not RECORD.is_file(): pytest.fail(f"{RECORD.relative_to(ROOT)} is missing: run the experiment (README, 'Does task-oriented training help detection?')")
    return json.loads(RECORD.read_text())


def test_downstream_record_shape(record):
    assert record['metric'] == 'mAP@0.5'
    assert set(record['inputs']) == {'ir', 'vis', 'fusion', 'direct', 'meta'}
    n = len(record['seeds'])
    assert n >= 5 and len(set(record['seeds'])) == n
    for key in ('inputs', 'map_50_95', 'detector_seconds'):
        assert all(len(v) == n for v in record[key].values()), key
    assert all(0 <= x <= 1 for v in record['inputs'].values() for x in v)
    for d in record['paired_differences'].values():
        assert d['n'] == n and d['lo'] <= d['mean'] <= d['hi']


def test_downstream_pairs_held_out(record):
    "At least 60 evaluation pairs, none of them a training pair, and exactly the named held-out lists."
    train, ev = set(record['train_pairs']), set(record['eval_pairs'])
    assert len(ev) == len(record['eval_pairs']) >= 60
    assert not train & ev
    from sfofusion.train import read_names          # the split lists read as the experiment's `eval_names` reads them
    assert {Path(p).stem for p in ev} == read_names([f'@{ROOT}/data/splits/msrs_test60.txt', f'@{ROOT}/data/splits/msrs_val50.txt'])


def test_downstream_differences_recomputed(record):
    "The stored intervals are the paired t-intervals of the stored per-seed values."
    from sfofusion.experiment import paired_interval
    for key, d in record['paired_differences'].items():
        a, b = key.split('-')
        again = paired_interval(record['inputs'][a], record['inputs'][b])
        assert (again['mean'], again['lo'], again['hi']) == pytest.approx((d['mean'], d['lo'], d['hi']))


def test_readme_carries_the_record(record):
    from sfofusion.experiment import downstream_markdown
    assert downstream_markdown(record) in (ROOT/'README.md').read_text(), \
        "README's downstream section differs from downstream_markdown(figures/downstream.json): paste the new one"
