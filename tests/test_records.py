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


# --- the fusion-quality sweep (issue 11): the shipped `msrs` is the validation criterion's choice ------------------
SWEEP = ROOT/'bench'/'results'/'quality_sweep'


@pytest.fixture(scope='module')
def q():
    "bench/quality_sweep.py as a module (it is a script, not part of the package)."
    import importlib.util
    spec = importlib.util.spec_from_file_location('quality_sweep', ROOT/'bench'/'quality_sweep.py')
    mod = importlib.util.module_from_spec(spec); spec.loader.exec_module(mod)
    return mod


def _row(name, msrs, tno, kind='fine-tune'):
    "A sweep row whose 9 metrics are all `msrs` on MSRS val50 and `tno` on TNO (lists give them one by one)."
    val = lambda v: dict(zip(('EN', 'SD', 'SF', 'AG', 'MI', 'SCD', 'VIF', 'Qabf', 'SSIM'), v if isinstance(v, list) else [v]*9))
    return dict(name=name, kind=kind, steps=1000, val={'msrs_val50': val(msrs), 'tno': val(tno)})


def test_criterion_v2_counts_wins_per_set(q, monkeypatch):
    # the last decision's incumbent, and the `≥ incumbent` column counting against it (as between two shipped models)
    monkeypatch.setattr(q, 'INCUMBENT_ROW', q.DECISIONS[-1][0])
    inc = _row(q.INCUMBENT_ROW, [-2.]*5 + [1.]*4, [-2.]*5 + [1.]*4)   # below the max (0) on five metrics
    rows = {'max': _row('max', 0., 0.), inc['name']: inc,
            'all_better': _row('all_better', 2., 2.),
            'ties': _row('ties', 1., 1.),                          # ties count as wins (the bar reads >=): 18, as all_better
            'six_each': _row('six_each', [1.]*6 + [-3.]*3, [1.]*6 + [-3.]*3),    # exactly 6 wins on each set: qualifies
            'five_each': _row('five_each', [1.]*5 + [-3.]*4, [1.]*5 + [-3.]*4),  # 5: does not
            'one_set': _row('one_set', 3., [2.]*5 + [0.]*4),        # 9 + 5 wins: only 5 on TNO, does not qualify
            'below_max': _row('below_max', [-1.]*5 + [1.]*4, [-1.]*5 + [1.]*4),  # 18 wins, but 4 metrics reach the max
            'variant': _row('variant', 9., 9., kind=None),          # not a fine-tune: never chosen
            'variant2': _row('variant2', 1.5, 1.5, kind=None)}      # ranks all_better (2.0) above ties (1.0)
    s = q.summarize(rows, 1000)
    by = {r['name']: r for r in s['rows']}
    assert by['one_set']['wins_vs_incumbent'] == {'msrs_val50': 9, 'tno': 5} and not by['one_set']['qualifies']
    assert by['six_each']['qualifies'] and not by['five_each']['qualifies']
    assert by['below_max']['wins_vs_incumbent'] == {'msrs_val50': 9, 'tno': 9} and not by['below_max']['qualifies']
    assert by['all_better']['qualifies'] and by['ties']['qualifies'] and by['all_better']['mean_rank'] < by['ties']['mean_rank']
    assert s['winner_v2'] == 'all_better'                           # 18 wins each; the better mean rank decides
    for name in ('all_better', 'ties', 'six_each'): rows.pop(name)
    assert q.summarize(rows, 1000)['winner_v2'] == q.INCUMBENT_ROW   # no qualifier: the incumbent stays


def test_shipped_msrs_is_the_sweeps_choice(q):
    """The committed record's decisions follow from its rows, each choice is the next decision's incumbent, and the
    last choice is what bench/configs/msrs_finetune.yaml trains, recipe for recipe."""
    rec = json.loads((SWEEP/'results.json').read_text())
    rows = {f.stem: json.loads(f.read_text()) for f in sorted((SWEEP/'rows').glob('*.json'))}
    again = q.summarize(rows, rec['steps'])
    assert again['decisions'] == rec['decisions'], "results.json is stale: rerun bench/quality_sweep.py to resummarise"
    ds = rec['decisions']
    assert [d['incumbent'] for d in ds] == [inc for inc, _ in q.DECISIONS]
    assert all(a['chosen'] == b['incumbent'] for a, b in zip(ds, ds[1:]))
    assert ds[0]['chosen'] != ds[0]['incumbent']                    # round 10-11's decision replaced the model
    assert rec['winner_v2'] == ds[-1]['chosen'] == q.INCUMBENT_ROW
    from sfofusion.train import TrainConfig
    ship = TrainConfig.load(ROOT/'bench'/'configs'/'msrs_finetune.yaml')
    chosen = rows[rec['winner_v2']]
    spec = q.FINETUNES[chosen['name']]
    assert ship.loss == spec.get('loss', {}) and ship.steps == chosen['steps']
    assert ship.lr == chosen['lr']
    stage1 = TrainConfig.load(ROOT/'bench'/'configs'/'msrs.yaml')
    assert Path(ship.init_weights) == Path(stage1.out_dir)/'final'   # stage 2 starts from the shipped stage 1
    init = Path(chosen['init_weights'])
    if init.parent.name.endswith('-stage1'):   # a capacity entry's own stage 1 (round 14 on): the shipped stage 1 is its recipe
        assert stage1.model == q.FINETUNES[init.parent.name[:-len('-stage1')]]['stage1']
    else: assert init == Path(stage1.out_dir)/'final' and stage1.model == {}


def test_criterion_v3_counts_metrics_reaching_the_max(q, monkeypatch):
    inc = _row(q.INCUMBENT_ROW, [1.]*6 + [-1.]*3, [1.]*6 + [-1.]*3)     # 6 + 6 metrics reach the max (0)
    cal = lambda name, b, m, t, base=q.INCUMBENT_ROW: {**_row(name, m, t, kind='calibration'), 'residual_scale': b, 'base': base}
    rows = {'max': _row('max', 0., 0.), inc['name']: inc,
            'same': cal('same', 0.95, [1.]*6 + [-1.]*3, [1.]*6 + [-1.]*3),   # the same counts: does not qualify
            'trade': cal('trade', 0.99, [1.]*9, [1.]*5 + [-1.]*4),           # 9 + 5: gives one up on TNO, does not
            'b': cal('b', 0.8, [1.]*7 + [-1.]*2, [1.]*6 + [-1.]*3),          # 7 + 6: qualifies
            'c': cal('c', 0.7, [1.]*8 + [-1.], [1.]*6 + [-1.]*3),            # 8 + 6: qualifies, but a smaller scale
            'old': cal('old', 0.9, [1.]*9, [1.]*9, base='an_earlier_model'),  # a calibration of other weights: never
            'ft': _row('ft', 5., 5.),                                          # a fine-tune is never a calibration
            'variant': _row('variant', 0.5, 0.5, kind=None)}
    assert q.choose_v3(rows) == 'b'                                        # the largest qualifying scale
    c = q.summarize(rows, 1000)['calibration']
    assert (c['chosen'], c['residual_scale'], c['wins_vs_max_per_set']['c']) == ('b', 0.8, {'msrs_val50': 8, 'tno': 6})
    for name in ('b', 'c'): rows.pop(name)
    c = q.summarize(rows, 1000)['calibration']
    assert c['chosen'] is None and c['residual_scale'] == 1.0              # no qualifier: the scale stays 1


def test_shipped_msrs_carries_the_calibration(q):
    "The shipped config's residual scale is CRITERION_V3's choice, and its card's validation scores are that row's."
    rec = json.loads((SWEEP/'results.json').read_text())
    w = ROOT/'sfofusion'/'weights'/'msrs'
    assert json.loads((w/'config.json').read_text()).get('residual_scale', 1.0) == rec['calibration']['residual_scale']
    row = next(r for r in rec['rows'] if r['name'] == (rec['calibration']['chosen'] or q.INCUMBENT_ROW))
    if rec['calibration']['chosen']:   # the chosen scale is of these very weights
        from sfofusion.data import sha256_file
        assert sha256_file(w/'model.safetensors') == row['weights_sha256'] and row['base'] == q.INCUMBENT_ROW
    card = json.loads((w/'card.json').read_text())['eval']
    for s in q.VAL_SETS:
        assert card[s] == pytest.approx(row['val'][s], abs=6e-5), s     # the card rounds to 4 decimals


def test_ship_weights_refuses_a_bad_residual_scale(tmp_path):
    "A bad --residual-scale is one line naming the flag, before anything is written."
    import subprocess, sys
    (tmp_path/'config.json').write_text('{}')
    for bad in ('-0.5', 'nan'):
        r = subprocess.run([sys.executable, str(ROOT/'bench'/'ship_weights.py'), str(tmp_path), '--name', 'x', '--residual-scale', bad],
                           capture_output=True, text=True, cwd=ROOT)
        assert r.returncode == 2 and r.stderr.strip().splitlines()[-1].endswith(f"--residual-scale: expected a finite number >= 0, got {float(bad)}")
    assert not (ROOT/'sfofusion'/'weights'/'x').exists()


def test_sweep_summarize_command(tmp_path):
    "`python bench/quality_sweep.py --summarize`, as its docstring runs it, rewrites the committed record unchanged."
    import shutil, subprocess, sys
    shutil.copytree(SWEEP/'rows', tmp_path/'rows'); shutil.copy(SWEEP/'results.json', tmp_path)
    subprocess.run([sys.executable, str(ROOT/'bench'/'quality_sweep.py'), '--summarize', '--results', str(tmp_path)],
                   check=True, capture_output=True, cwd=ROOT)
    assert json.loads((tmp_path/'results.json').read_text()) == json.loads((SWEEP/'results.json').read_text())
    assert (tmp_path/'table.md').read_text() == (SWEEP/'table.md').read_text()


def test_readme_carries_the_paired_table():
    "The README's 'How firm each count is' table is comparison_table of the benchmark record's test pairs."
    from sfofusion.benchmark import comparison_table
    paired = json.loads((ROOT/'figures'/'benchmark_results.json').read_text())['datasets']['msrs60']['paired']
    table = comparison_table({m: paired[m] for m in ('ReFusion', 'SeAFusion', 'SFDFusion', 'max', 'average')})
    assert table in (ROOT/'README.md').read_text(), "README's paired table differs from figures/benchmark_results.json: paste the new one"


BENCH = ROOT/'bench'/'results'/'benchmark'


@pytest.mark.parametrize('key', ['msrs60', 'msrs_val50', 'tno', 'llvip'])
def test_benchmark_record_recomputed_from_per_image_scores(key):
    "The record's means, paired intervals and count outlook are what the committed per-image scores give."
    from sfofusion.benchmark import count_outlook, mean_scores, paired_comparison, read_per_image_csv
    from sfofusion.train import VAL_METRICS as bar     # the nine metrics of the project's bar
    rec = json.loads((ROOT/'figures'/'benchmark_results.json').read_text())['datasets'][key]
    rows = {f.stem: read_per_image_csv(f) for f in sorted((BENCH/'per_image'/key).glob('*.csv'))}
    ours = 'SFOFusion (ours)'
    rows[ours] = rows.pop('SFOFusion')                  # files are named by the method's first word (method_dir)
    assert all(len(r) == rec['pairs'] for r in rows.values())
    assert {m: mean_scores(r) for m, r in rows.items()} == {m: rec['means'][m] for m in rows}
    assert paired_comparison(rows, ours, list(rec['paired']), bar) == rec['paired']
    for name, o in rec['outlook'].items():
        first = next(iter(o.values()))
        again = count_outlook(rows, ours, list(o), {m: r['bar'] for m, r in o.items()}, bar, block=first['block'], draws=first['draws'], seed=first['seed'])
        # exact: the same draws need the same torch random stream (torch is pinned in pyproject.toml)
        assert again == o, (key, name)


def test_readme_carries_the_outlook_table():
    "The README's outlook tables are outlook_table of the benchmark record's test pairs (both block sizes)."
    from sfofusion.benchmark import outlook_table
    outlook = json.loads((ROOT/'figures'/'benchmark_results.json').read_text())['datasets']['msrs60']['outlook']
    readme = (ROOT/'README.md').read_text()
    for b in ('block 1', 'block 4'):
        assert outlook_table(outlook[b]) in readme, f"README's outlook table ({b}) differs from figures/benchmark_results.json: paste the new one"


def test_readme_carries_the_llvip_table():
    "The README's LLVIP rows are the benchmark record's means, at the printed precision."
    means = json.loads((ROOT/'figures'/'benchmark_results.json').read_text())['datasets']['llvip']['means']
    readme = (ROOT/'README.md').read_text()
    num = lambda v: f"{v:.2f}" if v >= 10 else f"{v:.3f}"
    for m, v in means.items():
        row = f"| {m} | " + ' | '.join(num(v[k]) for k in ('EN', 'SD', 'SF', 'AG', 'MI', 'SCD', 'VIF', 'Qabf', 'SSIM')) + ' |'
        assert row in readme, f"README's LLVIP row differs from figures/benchmark_results.json: {row}"


def test_ablations_of_a_fine_tune(q, monkeypatch):
    "--ablate on a fine-tune retrains both stages: its stage 1 with one part switched off, then its stage 2 recipe."
    ab = q.ablations('cap_w12_c48_mi02')   # starts from cap_w12_c48's own stage 1 (width 12, context 48)
    assert sorted(ab) == ['cap_w12_c48_mi02-no_compensation', 'cap_w12_c48_mi02-no_frequency']
    assert ab['cap_w12_c48_mi02-no_frequency']['stage1'] == dict(width=12, ctx_width=48, use_frequency=False)
    assert ab['cap_w12_c48_mi02-no_compensation']['loss'] == q.FINETUNES['cap_w12_c48_mi02']['loss']
    assert all(v['kind'] == 'ablation' for v in ab.values())       # never a candidate of CRITERION_V2
    assert q.ablations('ft_mssim2_2000')['ft_mssim2_2000-no_frequency'] == dict(   # from the default stage 1, its length kept
        loss=q.FINETUNES['ft_mssim2_2000']['loss'], stage1=dict(use_frequency=False), kind='ablation', steps=2000)
    assert set(q.ablations('v15_gain_ssim_sharp')['v15_gain_ssim_sharp-no_frequency']) == {'model', 'loss'}   # one stage
    with pytest.raises(SystemExit, match='not from a stage 1 the sweep trains'):   # a third stage: no stage 1 to retrain
        q.ablations('st3_edge2_mi01_mssim2_scd025_gain14')
    # rounds 19-20: a stage 2's crop and a stage 1's own loss are part of the recipe an ablation retrains
    assert q.ablations('cap_w12_c48_f16_mi03_crop176')['cap_w12_c48_f16_mi03_crop176-no_frequency']['crop'] == 176
    m1 = q.ablations('cap_w12_c48_mi025_m1')['cap_w12_c48_mi025_m1-no_compensation']
    assert m1['stage1_loss'] == q.FINETUNES['cap_w12_c48_mi025_m1']['stage1_loss'] and m1['stage1']['use_compensation'] is False
    monkeypatch.setitem(q.FINETUNES, 'from_m1', dict(loss={}, init='runs/sweep/cap_w12_c48_mi025_m1-stage1/final'))
    assert q.ablations('from_m1')['from_m1-no_frequency']['stage1_loss'] == m1['stage1_loss']   # from another entry's stage 1


def test_stage1_loss_reaches_the_stage1_run(q, tmp_path, monkeypatch):
    "A FINETUNES entry's `stage1_loss` (round 20) replaces bench/configs/msrs.yaml's loss in its stage 1, and only there."
    import sfofusion.train as T
    seen = []
    monkeypatch.setattr(T, 'train', lambda cfg, resume: seen.append(cfg))
    spec = q.FINETUNES['cap_w12_c48_mi025_m1']
    assert q.train_stage1('a', spec['stage1'], tmp_path, spec['stage1_loss']) == tmp_path/'a-stage1'/'final'
    q.train_stage1('b', spec['stage1'], tmp_path)
    shipped = T.TrainConfig.load(ROOT/'bench'/'configs'/'msrs.yaml')
    assert seen[0].loss == spec['stage1_loss'] != shipped.loss and seen[1].loss == shipped.loss
    assert seen[0].model == seen[1].model == spec['stage1'] and seen[0].steps == seen[1].steps == shipped.steps
    assert seen[0].out_dir == str(tmp_path/'a-stage1')


def test_shipped_model_is_ablated(q):
    "The record holds the shipped model's own ablation: its recipe without each part, scored and counted, never chosen."
    rec = json.loads((SWEEP/'results.json').read_text())
    want = q.ablations(rec['incumbent'])
    got = {r['name']: r for r in rec['rows'] if r['name'] in want}
    assert sorted(got) == sorted(want), "no ablation of the shipped model: python bench/quality_sweep.py --ablate " + rec['incumbent']
    for name, r in got.items():
        assert r['role'] == 'ablation' and 'qualifies' not in r and r['overrides'] == json.loads(json.dumps(want[name]))
        assert r['init_weights'] == f'runs/sweep/{name}-stage1/final' and set(r['wins_vs_incumbent']) == {'msrs_val50', 'tno'}


def test_seed_checks_retrain_their_recipe(q):
    "A seed check is its entry's recipe with another seed, never a candidate; each recorded one was run as declared."
    checks = q.seed_checks('cap_w14_c48_f16_mi045_mssim23', seeds=(1, 2))
    src = q.FINETUNES['cap_w14_c48_f16_mi045_mssim23']
    for s, (name, spec) in zip((1, 2), checks.items()):
        assert name == f'cap_w14_c48_f16_mi045_mssim23_seed{s}' and spec['seed'] == s and spec['kind'] == 'seed check'
        assert 'round' not in spec and {k: v for k, v in spec.items() if k not in ('seed', 'kind')} == \
               {k: v for k, v in src.items() if k != 'round'}
    rec = json.loads((SWEEP/'results.json').read_text())
    rows = [r for r in rec['rows'] if r.get('kind') == 'seed check']
    assert len(rows) >= 4 and all('qualifies' not in r for r in rows)
    for r in rows:   # the record's seed checks are the FINETUNES entries of those names, as they stand
        assert r['overrides'] == json.loads(json.dumps(q.FINETUNES[r['name']])), r['name']
