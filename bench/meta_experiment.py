"""Run the meta-learning experiment: a thin wrapper over its one entry point, the papermill notebook
nbs/21_meta_experiment.ipynb (so a GPU box or a shell script gets exactly the notebook's defaults and derived settings).

    python bench/meta_experiment.py runs/meta_exp.ipynb -p data msrs:../shared/data/MSRS/test -p seeds "[0, 1, 2]" \
        -p small_heads false -p device cuda -p out_dir runs/meta_exp

Each `-p NAME VALUE` sets one parameter of the notebook's `parameters` cell. VALUE is read as papermill's `-p` reads
it (an int, a float such as 5e-4, true/false, none), or else as YAML (lists, dicts), or else kept as text. An
unknown NAME is refused with the list of valid ones. The executed notebook is written to OUTPUT.
"""
import argparse, sys
from pathlib import Path

import papermill as pm
import yaml

NOTEBOOK = Path(__file__).resolve().parents[1] / 'nbs' / '21_meta_experiment.ipynb'


def value(text: str):
    "A parameter value: int, float (5e-4 too, which YAML 1.1 would leave a string), bool, None, a YAML list/dict, or the text."
    for conv in (int, float):
        try: return conv(text)
        except ValueError: pass
    low = text.strip().lower()
    if low in ('true', 'false'): return low == 'true'
    if low in ('none', 'null'): return None
    try: return yaml.safe_load(text)
    except yaml.YAMLError: return text


def parse(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument('output', type=Path, help='the executed notebook (.ipynb)')
    p.add_argument('-p', nargs=2, action='append', default=[], metavar=('NAME', 'VALUE'), help='a notebook parameter')
    a = p.parse_args(argv)
    valid = pm.inspect_notebook(str(NOTEBOOK))
    params = {}
    for name, text in a.p:
        if name not in valid: p.error(f"-p {name}: not a parameter of {NOTEBOOK.name}; valid: {', '.join(valid)}")
        params[name] = value(text)
    if a.output.suffix != '.ipynb': p.error(f"OUTPUT: expected a .ipynb path, got {a.output}")
    return a.output, params


def main(argv=None):
    out, params = parse(argv)
    out.parent.mkdir(parents=True, exist_ok=True)
    try: pm.execute_notebook(str(NOTEBOOK), str(out), parameters=params, cwd=str(Path.cwd()), log_output=True)
    except pm.PapermillExecutionError as e:   # e.g. a config the experiment refuses: one line, the notebook keeps the rest
        print(f"meta_experiment: error: {e.ename}: {e.evalue} (the executed notebook: {out})", file=sys.stderr)
        return 1


if __name__ == '__main__':
    sys.exit(main())
