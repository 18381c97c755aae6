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
