"The training run notebook executes under papermill with injected parameters."
import json, sys
from pathlib import Path

import pytest

papermill = pytest.importorskip('papermill', reason='papermill is a dev dependency: pip install -e ".[dev]"')
ROOT = Path(__file__).resolve().parents[1]


def test_train_notebook_runs_with_injected_parameters(tmp_path):
    out_nb, out_dir = tmp_path/'run.ipynb', tmp_path/'run'
    papermill.execute_notebook(str(ROOT/'nbs'/'20_train.ipynb'), str(out_nb), cwd=str(tmp_path), progress_bar=False,
                               parameters=dict(steps=3, batch_size=2, crop=32, out_dir=str(out_dir)))
    nb = json.loads(out_nb.read_text())
    assert any('injected-parameters' in c['metadata'].get('tags', []) for c in nb['cells'])
    res = json.loads((out_dir/'result.json').read_text())
    assert res['step'] == 3
    assert (out_dir/'final'/'model.safetensors').is_file()


def _readme_benchmark_command() -> tuple[dict, dict]:
    "The README's 22_benchmark command: its -y YAML and its -p parameters, as papermill would read them."
    import re, shlex, yaml
    text = (ROOT/'README.md').read_text()
    cmd = re.search(r'^OMP_NUM_THREADS=1 papermill nbs/22_benchmark\.ipynb .*?(?<!\\)\n', text, re.M | re.S)
    assert cmd, "README: the 22_benchmark papermill command is missing"
    words = shlex.split(cmd.group(0).replace('\\\n', ' '))
    y = yaml.safe_load(words[words.index('-y') + 1])
    p = {words[i + 1]: yaml.safe_load(words[i + 2]) for i, w in enumerate(words) if w == '-p'}
    return y, p


def test_readme_benchmark_command_names_notebook_parameters():
    "Every parameter the README's benchmark command passes is one the notebook has, and every dataset a known key."
    from sfofusion.benchmark import SET_ROOTS
    y, p = _readme_benchmark_command()
    names = set(papermill.inspect_notebook(str(ROOT/'nbs'/'22_benchmark.ipynb')))
    assert set(y) | set(p) <= names, f"README passes parameters the notebook lacks: {sorted(set(y) | set(p) - names)}"
    assert set(y['datasets']) <= set(SET_ROOTS), y['datasets']


@pytest.mark.slow
def test_benchmark_notebook_runs_the_readme_command(tmp_path, shared_path):
    "The README's benchmark command as written, shrunk to one pair per dataset, one timing run and a temporary output."
    shared_path('data/MSRS/test'); shared_path('data/LLVIP')
    y, p = _readme_benchmark_command()
    out_nb, out_dir = tmp_path/'bench.ipynb', tmp_path/'bench'
    params = {**p, **y, 'max_pairs': 1, 'timing_runs': 1, 'out_dir': str(out_dir), 'results_json': '', 'save_figures': False}
    papermill.execute_notebook(str(ROOT/'nbs'/'22_benchmark.ipynb'), str(out_nb), cwd=str(ROOT/'nbs'), progress_bar=False,
                               parameters=params)
    res = json.loads((out_dir/'results.json').read_text())
    assert {k: v['pairs'] for k, v in res['datasets'].items()} == {k: 1 for k in y['datasets']}
    assert all(o['block 1']['max']['bar'] == 5 for o in (v['outlook'] for v in res['datasets'].values()))
    val = {l.split('#')[0].strip() for l in (ROOT/'data'/'splits'/'msrs_val50.txt').read_text().splitlines()} - {''}
    if 'msrs_val50' in y['datasets']:
        assert {p.stem for p in (out_dir/'fused'/'max'/'MSRS').iterdir()} & val   # the validation pair, beside the test pair


def test_train_notebook_bad_parameter_is_one_clear_error(tmp_path):
    "A wrong injected value stops the run at the config, with the field named, and writes nothing."
    with pytest.raises(papermill.PapermillExecutionError) as e:
        papermill.execute_notebook(str(ROOT/'nbs'/'20_train.ipynb'), str(tmp_path/'run.ipynb'), cwd=str(tmp_path),
                                   progress_bar=False, parameters=dict(steps=0, out_dir=str(tmp_path/'run')))
    assert e.value.ename == 'FusionInputError' and 'config field `steps`: expected an integer >= 1, got 0' in e.value.evalue
    assert not (tmp_path/'run').exists()


@pytest.mark.slow
def test_train_notebook_rerun_never_destroys_a_run(tmp_path):
    "Rerunning the notebook into a finished run's folder is refused unless overwrite or resume is injected."
    params = dict(steps=2, batch_size=2, crop=32, out_dir=str(tmp_path/'run'))
    papermill.execute_notebook(str(ROOT/'nbs'/'20_train.ipynb'), str(tmp_path/'a.ipynb'), cwd=str(tmp_path), progress_bar=False, parameters=params)
    weights = (tmp_path/'run'/'final'/'model.safetensors').read_bytes()
    with pytest.raises(papermill.PapermillExecutionError) as e:
        papermill.execute_notebook(str(ROOT/'nbs'/'20_train.ipynb'), str(tmp_path/'b.ipynb'), cwd=str(tmp_path), progress_bar=False,
                                   parameters=dict(params, seed=1))
    assert 'already holds a run' in e.value.evalue
    assert (tmp_path/'run'/'final'/'model.safetensors').read_bytes() == weights


@pytest.mark.slow
def test_meta_experiment_wrapper_runs_the_notebook(tmp_path):
    "bench/meta_experiment.py is the notebook run by papermill: its parameters, its defaults, an unknown name refused."
    import subprocess, sys
    script = ROOT/'bench'/'meta_experiment.py'
    r = subprocess.run([sys.executable, script, tmp_path/'x.ipynb', '-p', 'seedz', '[0]'], capture_output=True, text=True)
    assert r.returncode == 2 and '-p seedz: not a parameter of 21_meta_experiment.ipynb; valid: data, scale' in r.stderr
    assert not (tmp_path/'x.ipynb').exists()
    r = subprocess.run([sys.executable, script, tmp_path/'bad.ipynb', '-p', 'fusion_lr', 'abc', '-p', 'out_dir', str(tmp_path/'bad')],
                       capture_output=True, text=True, cwd=tmp_path)
    assert r.returncode == 1 and "meta_experiment: error: FusionInputError: config field `lr`: expected a finite number, got 'abc'" in r.stderr
    assert 'Traceback' not in r.stderr
    r = subprocess.run([sys.executable, script, tmp_path/'run.ipynb', '-p', 'out_dir', str(tmp_path/'exp'), '-p', 'seeds', '[1]'],
                       capture_output=True, text=True, cwd=tmp_path)
    assert r.returncode == 0, r.stderr[-2000:]
    nb = json.loads((tmp_path/'run.ipynb').read_text())
    assert any('injected-parameters' in c['metadata'].get('tags', []) for c in nb['cells'])
    assert (tmp_path/'exp'/'rows.jsonl').is_file() and (tmp_path/'exp'/'seed1').is_dir()
