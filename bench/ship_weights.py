"""Package a training run's weights into the library as a shipped model, with a model card.

    python bench/ship_weights.py runs/msrs --name msrs [--checkpoint latest] \
        --eval msrs_val50=../shared/data/MSRS/test@data/splits/msrs_val50.txt --eval tno=../shared/data/TNO
    python bench/ship_weights.py runs/meta_exp/seed0/meta --name msrs_det --eval tno=../shared/data/TNO   # task-oriented run
    python bench/ship_weights.py runs/msrs_w12 --name msrs --record-only    # only the training record of a stage 1
    python bench/ship_weights.py runs/msrs_ft_w12 --name msrs --residual-scale 0.9 --eval ...   # calibrated (sweep round 25)

Copies the run's `final/` weights (or its latest checkpoint's) to `sfofusion/weights/<name>/` (model.safetensors,
config.json), measures the evaluator's metrics on --eval pairs (LABEL=FOLDER, optionally @NAMES_FILE to take only the listed pairs;
full resolution, community conventions), and writes
MODEL_CARD.md and card.json there from the run's own config and log. The training record (config, log, loss curve,
result; for task-oriented runs also the balance figure) is copied to bench/results/<run name>/ (--record to rename).
Runs of `train_meta` (config with a `mode`) are described as task-oriented: task, mode, initial weights, final λ.
--residual-scale ships the weights with their residual scaled at the output (SFOFusionConfig.residual_scale), the
calibration that bench/quality_sweep.py chooses on the validation pairs (CRITERION_V3); the card says so.
"""
import argparse, dataclasses, datetime, json, math, shutil
from pathlib import Path

from sfofusion.core import atomic_write_bytes
from sfofusion.losses import LossConfig
from sfofusion.model import SFOFusion, SFOFusionConfig, count_parameters, weights_dir, with_residual_scale
from sfofusion.flops import count_flops
from sfofusion.engine import latest_checkpoint, read_log, plot_log
from sfofusion.train import validate


def describe_data(cfg: dict) -> list[str]:
    "The training data by dataset, split and pair count, with the name lists that were kept out (no machine paths)."
    from sfofusion.data import get_dataset
    from sfofusion.train import read_names
    excluded = read_names(cfg.get('exclude', []))
    lists = ', '.join(str(e).lstrip('@') for e in cfg.get('exclude', []))
    out = []
    for spec in cfg['data']:
        if ':' not in spec: out.append(spec); continue
        name, root = spec.split(':', 1)
        ds = get_dataset(name, root, boxes=False, masks=False)
        kept = [p for p in ds.pairs if p.name not in excluded]
        split = f" {Path(root).name} split" if Path(root).name.lower() in ('train', 'test', 'val') else ''
        out.append(f"{type(ds).__name__}{split}: {len(kept)} of {len(ds)} pairs" +
                   (f" (without {lists})" if len(kept) < len(ds) else ''))
    return out


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument('run', type=Path)
    p.add_argument('--name', required=True)
    p.add_argument('--checkpoint', default='final', help="'final' or 'latest'")
    p.add_argument('--eval', action='append', default=[], help='LABEL=FOLDER[@NAMES_FILE] to evaluate on (repeatable)')
    p.add_argument('--eval-pairs', type=int, default=0, help='at most this many pairs of each (0: all)')
    p.add_argument('--record', help='folder name of the training record under bench/results (default: the run folder name)')
    p.add_argument('--record-only', action='store_true',
                   help='only copy the training record to bench/results (e.g. the stage 1 a shipped fine-tune started from)')
    p.add_argument('--residual-scale', type=float, default=None,
                   help="ship with the residual scaled at the output by this factor (a calibration chosen on validation pairs; default: the run's own)")
    a = p.parse_args()
    if not (a.run/'config.json').is_file(): p.error(f"run: expected a training run folder with config.json, got {a.run}")
    if a.residual_scale is not None and not (math.isfinite(a.residual_scale) and a.residual_scale >= 0):
        p.error(f"--residual-scale: expected a finite number >= 0, got {a.residual_scale}")
    if a.record_only: print(write_record(a.run, a.record or a.run.name)); return
    cfg = json.loads((a.run/'config.json').read_text())
    if a.checkpoint == 'final':
        src, step = a.run/'final', json.loads((a.run/'result.json').read_text())['step']
        model = SFOFusion.from_pretrained(src)
    else:
        ck = latest_checkpoint(a.run)
        step = json.loads((ck/'state.json').read_text())['step']
        model = SFOFusion(SFOFusionConfig(**cfg.get('model', {})))
        from safetensors.torch import load_file
        model.load_state_dict(load_file(str(ck/'model.safetensors')))
    trained_scale = model.config.residual_scale
    if a.residual_scale is not None:   # the calibration: the same weights, the residual scaled at the output
        model = with_residual_scale(model, a.residual_scale)
    dest = weights_dir()/a.name
    model.save_pretrained(dest)
    metrics = {}
    for spec in a.eval:
        label, _, where = spec.rpartition('=')
        folder, _, names = where.partition('@')
        metrics[label or Path(folder).name] = validate(model, folder, a.eval_pairs or None, names=f'@{names}' if names else None)
    fl = count_flops(model, 480, 640)
    default = SFOFusionConfig()   # the architecture where it departs from the library's defaults (e.g. a wider network)
    arch = {f.name: getattr(model.config, f.name) for f in dataclasses.fields(SFOFusionConfig)   # a calibration has its own line
            if getattr(model.config, f.name) != getattr(default, f.name) and not (f.name == 'residual_scale' and a.residual_scale is not None)}
    log = {r['step']: r for r in read_log(a.run/'log.jsonl') if 'loss' in r}  # a resumed run re-logs steps: keep the last
    log = [log[k] for k in sorted(log)]
    res = json.loads((a.run/'result.json').read_text()) if (a.run/'result.json').is_file() else {}
    mode = cfg.get('mode', 'fusion-only') if 'task' in cfg else 'fusion-only'
    rec_name = a.record or a.run.name
    card = dict(name=a.name, date=datetime.date.today().isoformat(), step=step, planned_steps=cfg['steps'],
                data=describe_data(cfg), crop=cfg['crop'], batch_size=cfg['batch_size'], lr=cfg['lr'],
                loss=dataclasses.asdict(LossConfig(**cfg['loss'])),   # resolved: what the run used, not just its overrides
                seed=cfg['seed'], device=cfg['device'], precision=cfg['precision'], params=count_parameters(model),
                flops_640x480=fl['flops'], architecture=arch, final_train_loss=log[-1]['loss'] if log else None,
                eval={k: {m: round(v, 4) for m, v in d.items()} for k, d in metrics.items()},
                eval_pairs=a.eval_pairs, record=f'bench/results/{rec_name}/', mode=mode, init_weights=cfg.get('init_weights') or None,
                residual_scale=model.config.residual_scale)
    if mode != 'fusion-only':
        card.update(task=cfg['task'], init_weights=cfg.get('init_weights') or None, init_task=cfg.get('init_task') or None,
                    scale=cfg.get('scale'), holdout=cfg.get('holdout'), final_lambda=res.get('lam'),
                    balance=cfg.get('balance'), alpha=cfg.get('alpha'))
    atomic_write_bytes(dest/'card.json', json.dumps(card, indent=1).encode())
    lines = [f"# SFOFusion model `{a.name}`", "",
             (f"Fusion-only SFOFusion network ({card['params']:,} parameters, {card['flops_640x480'] / 1e9:.2f} GFLOPs at 640×480"
              + (f"; {', '.join(f'{k}={v}' for k, v in arch.items())} beyond the SFOFusionConfig defaults" if arch else '') + "),"
              if mode == 'fusion-only' else
              f"Task-oriented SFOFusion network (mode `{mode}`, task {cfg['task']}; {card['params']:,} parameters, "
              f"{card['flops_640x480'] / 1e9:.2f} GFLOPs at 640×480), started from `{cfg.get('init_weights') or 'random weights'}` and"),
             (f"trained {step} of {cfg['steps']} planned steps" + (f" from `{cfg['init_weights']}` (a fine-tune)" if cfg.get('init_weights') else '')
              + f" on {'; '.join(card['data'])} with the hand-made fusion loss ({', '.join(f'{k}={v}' for k, v in card['loss'].items())})"
              if mode == 'fusion-only' else
              f"trained {step} of {cfg['steps']} planned steps on {'; '.join(card['data'])} (images scaled by {cfg.get('scale')}, "
              f"{cfg.get('holdout')} pairs held out) with the {'learned (loss generator)' if mode == 'meta' else 'hand-made'} "
              f"fusion loss plus λ × the detector's loss (final λ {res.get('lam', float('nan')):.3g})"),
             f"(crops {cfg['crop']}², batch {cfg['batch_size']}, AdamW lr {cfg['lr']}, warm-up + cosine, seed {cfg['seed']}, "
             f"device {cfg['device']}, {cfg['precision']}). Packaged {card['date']}.", ""]
    if model.config.residual_scale != trained_scale:
        lines += [f"Calibrated when packaged: the trained weights unchanged, the residual scaled by {model.config.residual_scale:g} at "
                  f"the output (`residual_scale`; trained at {trained_scale:g}), the scale chosen on the validation pairs "
                  "(`bench/quality_sweep.py`, CRITERION_V3). The evaluations below are of the calibrated model.", ""]
    if metrics:
        lines += ["Evaluated with `sfofusion.metrics` (community conventions; fused image rounded to 8 bits; "
                  f"{'first ' + str(a.eval_pairs) + ' pairs' if a.eval_pairs else 'all pairs'} of each set, full resolution):", "",
                  "| data | " + " | ".join(next(iter(metrics.values())).keys()) + " |",
                  "|---|" + "---|" * len(next(iter(metrics.values())))]
        lines += [f"| {k} | " + " | ".join(f"{v:.3f}" for v in d.values()) + " |" for k, d in metrics.items()]
    lines += ["", f"Training record: `{card['record']}` (config, JSONL log, loss curve, result).",
              "The data are published research datasets (see `../shared/data/SOURCES.md`); the weights inherit their terms."]
    atomic_write_bytes(dest/'MODEL_CARD.md', ('\n'.join(lines) + '\n').encode())
    write_record(a.run, rec_name, plot=mode == 'fusion-only')
    print((dest/'MODEL_CARD.md').read_text())


def write_record(run: Path, rec_name: str, plot: bool = True) -> Path:
    "Copy a run's training record (config, result, log, loss curve) to bench/results/<rec_name>/."
    rec = Path('bench/results')/rec_name
    rec.mkdir(parents=True, exist_ok=True)
    for f in ('config.json', 'result.json', 'balance.png'):
        if (run/f).exists(): shutil.copy(run/f, rec/f)
    # the log without the rows an interrupted run wrote past its last checkpoint (resuming logs those steps again)
    rows = {}
    for r in read_log(run/'log.jsonl'): rows[(r['step'], tuple(sorted(r)))] = r
    atomic_write_bytes(rec/'log.jsonl', ''.join(json.dumps(r) + '\n' for _, r in sorted(rows.items(), key=lambda kv: kv[0][0])).encode())
    if plot: plot_log(rec/'log.jsonl', rec/'loss.png')
    return rec


if __name__ == '__main__':
    main()
