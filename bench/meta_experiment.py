"""The meta-learning experiment from the command line (for a GPU box; the notebook 21_meta_experiment does the same).

    python bench/meta_experiment.py --data msrs:../shared/data/MSRS/test --scale 0.5 --device cuda --out runs/meta_exp
    python bench/meta_experiment.py --json ...   # also print the summary as JSON

Prints the summary table (mean ± sd over seeds) and writes rows.jsonl and summary.json into --out.
"""
import argparse, json

from sfofusion.experiment import ExperimentConfig, run_experiment, summary_markdown


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument('--data', default='synthetic')
    p.add_argument('--scale', type=float, default=0.5)
    p.add_argument('--holdout', type=int, default=71)
    p.add_argument('--seeds', default='0,1')
    p.add_argument('--fusion-steps', type=int, default=400)
    p.add_argument('--fusion-batch', type=int, default=16)
    p.add_argument('--crop', type=int, default=128)
    p.add_argument('--steps-per-epoch', type=int, default=100)
    p.add_argument('--det-steps', type=int, default=800)
    p.add_argument('--det-batch', type=int, default=16)
    p.add_argument('--det-crop', type=int, default=0, help='detector trains on random crops of this size (0: whole images)')
    p.add_argument('--fusion-lr', type=float, default=2e-3)
    p.add_argument('--init-weights', default='', help='start the SFOFusion variants from this fusion-only model')
    p.add_argument('--warm-task', action='store_true', help='and their task head from a detector trained on its fused images')
    p.add_argument('--device', default='cpu')
    p.add_argument('--precision', default='fp32')
    p.add_argument('--out', default='runs/meta_experiment')
    p.add_argument('--json', action='store_true')
    a = p.parse_args()
    cfg = ExperimentConfig(data=a.data, scale=a.scale, holdout=a.holdout, seeds=[int(s) for s in a.seeds.split(',')],
                           device=a.device, out_dir=a.out, warm_task=a.warm_task,
                           fusion=dict(steps=a.fusion_steps, batch_size=a.fusion_batch, crop=a.crop, precision=a.precision,
                                       lr=a.fusion_lr, steps_per_epoch=a.steps_per_epoch, warmup_steps=min(50, a.fusion_steps // 10),
                                       **({'init_weights': a.init_weights} if a.init_weights else {})),
                           recipe=dict(steps=a.det_steps, batch_size=a.det_batch, warmup_steps=min(100, a.det_steps // 10),
                                       crop=a.det_crop or None))
    res = run_experiment(cfg)
    print(summary_markdown(res['summary']))
    if a.json: print(json.dumps(res['summary']))


if __name__ == '__main__':
    main()
