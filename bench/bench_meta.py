"""Training cost of task-oriented SFOFusion: seconds per step of each `train_meta` mode, relative to fusion-only.

Runs `sfofusion.meta.train_meta` for a few steps per mode on the same data and settings (no validation, no
checkpoints) and reports the mean time of the timed steps (the first `--warmup` steps are excluded):

    fusion   fusion network + hand-made loss (the detector head still trains on the fused images, as in every mode)
    direct   + λ · task loss through the fusion network
    meta     + the inner virtual step and the second-order outer update of the loss generator
    meta-fo  the same with the first-order (finite-difference) meta-gradient

    OMP_NUM_THREADS=1 python bench/bench_meta.py                        # synthetic pairs with boxes, 128² crops, batch 8
    OMP_NUM_THREADS=1 python bench/bench_meta.py --data msrs:../shared/data/MSRS/test --scale 0.5
    python bench/bench_meta.py --device cuda --json
"""
import argparse, json, tempfile

import torch

from sfofusion.meta import MetaConfig, train_meta


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument('--data', default='synthetic')
    p.add_argument('--scale', type=float, default=1.0)
    p.add_argument('--steps', type=int, default=25, help='steps per mode, including --warmup')
    p.add_argument('--warmup', type=int, default=5)
    p.add_argument('--batch', type=int, default=8)
    p.add_argument('--crop', type=int, default=128)
    p.add_argument('--modes', default='fusion,direct,meta,meta-fo')
    p.add_argument('--device', default='cpu')
    p.add_argument('--json', action='store_true')
    a = p.parse_args()
    res = {}
    for mode in a.modes.split(','):
        with tempfile.TemporaryDirectory() as tmp:
            cfg = MetaConfig(data=[a.data], scale=a.scale, steps=a.steps, batch_size=a.batch, crop=a.crop, mode=mode.split('-')[0],
                             first_order=mode.endswith('-fo'), device=a.device, warmup_steps=1, progress=False, log_every=1,
                             synthetic_pairs=max(64, 2 * a.batch), out_dir=tmp)
            if a.data != 'synthetic': cfg = cfg.override(task_cfg={'num_classes': 3})
            train_meta(cfg)
            rows = [json.loads(l) for l in open(f'{tmp}/log.jsonl') if '"s_per_step"' in l]
        # s_per_step is a running mean: recover the time of the steps after the warm-up
        t = {r['step']: r['s_per_step'] * r['step'] for r in rows}
        res[mode] = (t[a.steps] - t[a.warmup]) / (a.steps - a.warmup)
    out = dict(device=a.device, threads=torch.get_num_threads(), data=a.data, scale=a.scale, batch=a.batch, crop=a.crop,
               s_per_step=res, vs_fusion={m: v / res['fusion'] for m, v in res.items()} if 'fusion' in res else {})
    if a.json: print(json.dumps(out)); return
    print(f"device {a.device}, {out['threads']} threads, data {a.data} (scale {a.scale}), batch {a.batch} x {a.crop}²")
    print('| mode | s / step | vs fusion-only |\n|---|---|---|')
    for m, v in res.items(): print(f"| {m} | {v:.3f} | {out['vs_fusion'].get(m, float('nan')):.2f}x |")


if __name__ == '__main__':
    main()
