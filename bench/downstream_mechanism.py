"""Can the task signal move the fused image where the targets are? Train the three-loop (meta) variant on real MSRS
detection labels and measure where its loss generator moved the IR share of the fusion target: inside the labelled
boxes vs outside, on held-out pairs, against the generator's starting rule (the soft max). One process per seed:

    OMP_NUM_THREADS=1 python bench/downstream_mechanism.py --seeds 0 1 2 --steps 300

Training pairs: MSRS minus data/splits/msrs_test60.txt and msrs_val50.txt (161 pairs, 20 of them the run's own
validation for the epoch loop); measured on the 110 held-out pairs. Starts from the shipped `msrs` model, as the
downstream experiment does. Resumes each seed's run in runs/mechanism/seed<S>. Writes
bench/results/downstream_mechanism.json and figures/downstream_weights.png.
"""
import argparse, json, os
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
SPLITS = ROOT/'data'/'splits'


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument('--data', type=Path, default=ROOT.parent/'shared'/'data'/'MSRS'/'test')
    p.add_argument('--seeds', type=int, nargs='+', default=[0, 1, 2])
    p.add_argument('--steps', type=int, default=300)
    p.add_argument('--scale', type=float, default=0.5)
    p.add_argument('--out', type=Path, default=ROOT/'runs'/'mechanism')
    a = p.parse_args()
    from sfofusion.data import Rescaled, get_dataset
    from sfofusion.experiment import weights_on_objects
    from sfofusion.explore import load_generator
    from sfofusion.meta import MetaConfig, train_meta
    from sfofusion.train import read_names
    held = [f'@{SPLITS}/msrs_test60.txt', f'@{SPLITS}/msrs_val50.txt']
    stats = {}
    for seed in a.seeds:
        run = a.out/f'seed{seed}'
        cfg = MetaConfig(data=[f'msrs:{a.data}'], exclude=held, scale=a.scale, holdout=20, mode='meta', task='detection',
                         init_weights='msrs', steps=a.steps, batch_size=8, crop=128, lr=5e-4, warmup_steps=20,
                         steps_per_epoch=max(1, a.steps // 3), seed=seed, out_dir=str(run), progress=False, device='cpu')
        if not (run/'result.json').is_file(): train_meta(cfg, resume=True)
        gen = load_generator(run)
        base = get_dataset('msrs', a.data, boxes=True, masks=False)
        keep = read_names(held)
        ds = Rescaled(base, a.scale)
        items = [ds[i] for i, q in enumerate(base.pairs) if q.name in keep]
        stats[seed] = weights_on_objects(gen, items)
        print(seed, {k: round(v, 4) for k, v in stats[seed].items()}, flush=True)
    rec = dict(steps=a.steps, scale=a.scale, eval_pairs=len(items), seeds=a.seeds, per_seed=stats,
               mean={k: sum(s[k] for s in stats.values()) / len(stats) for k in next(iter(stats.values()))})
    out = ROOT/'bench'/'results'/'downstream_mechanism.json'
    out.write_text(json.dumps(rec, indent=1) + '\n')
    figure(load_generator(a.out/f'seed{a.seeds[0]}'), items, ROOT/'figures'/'downstream_weights.png')
    print(json.dumps(rec['mean'], indent=1))


@torch.no_grad()
def figure(gen, items, path: Path, k: int=3):
    "IR, VIS and the learned change of the IR share (learned - prior) with the labelled boxes, for the k pairs with most boxes."
    from matplotlib.figure import Figure
    from matplotlib.patches import Rectangle
    from sfofusion.meta import LossGenerator
    prior = LossGenerator(gen.config).eval()
    pick = sorted(items, key=lambda it: -len(it['boxes']))[:k]
    fig = Figure(figsize=(10, 2.4 * k)); axs = fig.subplots(k, 3, squeeze=False)
    for r, it in enumerate(pick):
        ir, vis = it['ir'][None], it['vis'][None]
        dw = (gen(ir, vis)[0] - prior(ir, vis)[0])[0, 0]
        for c, (img, title, kw) in enumerate(((ir[0, 0], 'IR', dict(cmap='gray')), (vis[0, 0], 'VIS', dict(cmap='gray')),
                                             (dw, 'learned − prior IR share', dict(cmap='coolwarm', vmin=-0.3, vmax=0.3)))):
            im = axs[r, c].imshow(img.numpy(), **kw); axs[r, c].set_xticks([]); axs[r, c].set_yticks([])
            if r == 0: axs[r, c].set_title(title, fontsize=9)
            for x1, y1, x2, y2 in it['boxes'].tolist():
                axs[r, c].add_patch(Rectangle((x1, y1), x2 - x1, y2 - y1, fill=False, ec='lime', lw=0.8))
        fig.colorbar(im, ax=axs[r, 2], fraction=0.04)
    fig.tight_layout(); fig.savefig(path, dpi=80)


if __name__ == '__main__':
    main()
