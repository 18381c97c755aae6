"""What the shipped model's residual buys and costs: rescale it at inference and score the validation pairs.

The 'select' head fuses as clip(vis + s (ir - vis) + r): a per-pixel IR share s and a zero-mean residual r. Scaling r
by β traces the trade between the detail the residual adds (SD, SF, AG) and what it takes from the sources' grey
levels and edges (MI, Qabf): β = 0 with a hard share is the per-pixel max. For comparison, the max sharpened by an
unsharp mask (a residual that only amplifies, with no network) at two radii and strengths.

    OMP_NUM_THREADS=1 python bench/residual_scale.py [--model msrs]

Scores: the evaluator's 9 metrics on the 50 MSRS validation pairs and the 20 TNO pairs (never the test pairs), as
bench/quality_sweep.py scores its variants. Writes bench/results/quality_sweep/residual_scale.json and prints a table.
"""
import argparse, json
from pathlib import Path

import kornia
import torch

from quality_sweep import METRICS, score
from sfofusion.core import atomic_write_bytes
from sfofusion.model import SFOFusion, compose_select

ROOT = Path(__file__).resolve().parents[1]


class ScaledResidual(torch.nn.Module):
    "The network with its residual scaled by `beta` (and, with `hard`, its IR share rounded to 0 or 1)."
    def __init__(self, net, beta: float, hard: bool=False):
        super().__init__(); self.net, self.beta, self.hard = net, beta, hard

    @torch.no_grad()
    def forward(self, ir, vis):
        a = self.net.forward_aux(ir, vis)
        s = (a['select'] > 0.5).to(ir.dtype) if self.hard else a['select']
        return compose_select(ir, vis, s, self.beta * a['residual'])[0]   # the network's own output step


class UnsharpMax(torch.nn.Module):
    "max(ir, vis) + k (max - Gaussian blur of the max, std `sigma`), clipped."
    def __init__(self, sigma: float, k: float):
        super().__init__(); self.sigma, self.k = sigma, k

    @torch.no_grad()
    def forward(self, ir, vis):
        m, n = torch.maximum(ir, vis), int(2 * round(3 * self.sigma) + 1)
        return torch.clamp(m + self.k * (m - kornia.filters.gaussian_blur2d(m, (n, n), (self.sigma, self.sigma), border_type='reflect')), 0, 1)


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument('--model', default='msrs', help='a shipped name or a folder with model.safetensors + config.json')
    p.add_argument('--out', type=Path, default=ROOT/'bench'/'results'/'quality_sweep'/'residual_scale.json')
    a = p.parse_args()
    torch.set_num_threads(1)
    net = SFOFusion.from_pretrained(a.model).eval()
    fusers = {f'beta {b:g}': ScaledResidual(net, b) for b in (1., 0.75, 0.5, 0.)}
    fusers.update({'beta 1, hard share': ScaledResidual(net, 1., True), 'beta 0, hard share (= max)': ScaledResidual(net, 0., True)})
    fusers.update({f'unsharp max, sigma {s:g}, k {k:g}': UnsharpMax(s, k) for s in (1., 2.) for k in (0.5, 1.)})
    rows = {}
    for name, f in fusers.items():
        rows[name] = score(f)
        print(name, flush=True)
    atomic_write_bytes(a.out, json.dumps(dict(model=str(a.model), rows=rows), indent=1).encode())
    print('| fused by | set | ' + ' | '.join(METRICS) + ' |\n|' + '---|' * (len(METRICS) + 2))
    for name, r in rows.items():
        for s, v in r.items(): print(f"| {name} | {s} | " + ' | '.join(f"{v[m]:.3f}" for m in METRICS) + ' |')


if __name__ == '__main__':
    main()
