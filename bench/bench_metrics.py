"""Time the fusion metrics on one 640x480 triplet: each metric and all of them, ours (PyTorch) and, when SciPy is
installed, a straightforward NumPy/SciPy implementation of the same formulas (the evaluator's way: 2-D direct
convolutions, `uniform_filter`, `np.gradient`), which also cross-checks the values.

    OMP_NUM_THREADS=1 python bench/bench_metrics.py            # markdown table
    python bench/bench_metrics.py --json                       # one JSON object
"""
from __future__ import annotations
import argparse, json, math, os, platform, statistics, sys, time
from pathlib import Path

import numpy as np
import torch

from sfofusion.core import load_gray255
sys.path.insert(0, str(Path(__file__).resolve().parents[1] / 'tests'))
from numpy_metrics import numpy_metrics  # the NumPy/SciPy cross-check lives with the tests
from sfofusion.evaluate import reference_dir
from sfofusion.metrics import METRICS, compute_metrics


def load_triplet(h: int=480, w: int=640):
    "The first reference MSRS triplet (average fusion) if ../shared is present, else a synthetic integer one."
    ref = reference_dir()
    if ref is not None:
        spec = json.loads((ref/'metrics'/'average_MSRS.json').read_text())
        name = next(iter(spec['per_image']))
        src = ref.parent/spec['source']
        return f"MSRS {name}", [load_gray255(p) for p in (ref.parent/spec['fused']/name, src/'ir'/name, src/'vi'/name)]
    g = torch.Generator().manual_seed(0)
    yy, xx = torch.meshgrid(torch.arange(h), torch.arange(w), indexing='ij')
    ir = 60 + 150 * torch.exp(-((yy - h / 2) ** 2 + (xx - w / 3) ** 2) / (2 * (h / 6) ** 2)) + 8 * torch.randn(h, w, generator=g)
    vis = 120 + 70 * torch.sin(xx / 9.) * torch.cos(yy / 13.) + 12 * torch.randn(h, w, generator=g)
    ir, vis = ir.clamp(0, 255).round()[None, None], vis.clamp(0, 255).round()[None, None]
    return "synthetic", [((ir + vis) / 2).round(), ir, vis]


def timeit(fn, repeat: int, warmup: int) -> tuple[float, float]:
    "Median wall time and median process CPU time (s) of `repeat` calls after `warmup` calls."
    for _ in range(warmup): fn()
    wall, cpu = [], []
    for _ in range(repeat):
        t, c = time.perf_counter(), time.process_time(); fn()
        wall.append(time.perf_counter() - t); cpu.append(time.process_time() - c)
    return statistics.median(wall), statistics.median(cpu)


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split('\n')[0])
    p.add_argument('--json', action='store_true', help='print one JSON object instead of a markdown table')
    p.add_argument('--repeat', type=int, default=7, help='timed calls per measurement (median reported)')
    p.add_argument('--warmup', type=int, default=2, help='untimed calls before timing')
    p.add_argument('--device', default='cpu', help="'cpu' or 'cuda'")
    p.add_argument('--no-numpy', action='store_true', help='skip the NumPy/SciPy comparison')
    p.add_argument('--malloc-top-pad-mib', type=int, default=0,
                   help="glibc only: keep this much freed memory in the heap (mallopt M_TOP_PAD) instead of returning it "
                        "to the system, which avoids re-faulting ~130 MB of pages per call; 0 leaves malloc alone")
    args = p.parse_args(argv)
    if args.malloc_top_pad_mib:
        import ctypes
        M_TOP_PAD = -2
        if not ctypes.CDLL('libc.so.6').mallopt(M_TOP_PAD, args.malloc_top_pad_mib << 20): raise SystemExit('mallopt failed')
    source, (f, a, b) = load_triplet()
    f, a, b = (t.to(args.device) for t in (f, a, b))
    sync = torch.cuda.synchronize if args.device.startswith('cuda') else (lambda: None)
    def ours(ms): compute_metrics(f, a, b, ms); sync()
    rows = {}
    for m in METRICS:
        wall, cpu = timeit(lambda: ours([m]), args.repeat, args.warmup)
        rows[m] = dict(ours_ms=1e3 * wall, ours_cpu_ms=1e3 * cpu)
    total, total_cpu = (1e3 * t for t in timeit(lambda: ours(None), args.repeat, args.warmup))
    values = {k: v.item() for k, v in compute_metrics(f, a, b).items()}
    np_total, max_dev = None, None
    try:
        import scipy  # noqa: F401
        have_scipy = not args.no_numpy
    except ImportError:
        have_scipy = False
    if have_scipy:
        fn, an, bn = (t[0, 0].cpu().numpy() for t in (f, a, b))
        fns = numpy_metrics(fn, an, bn)
        np_total = 0.
        max_dev = 0.
        for m, fun in fns.items():
            t = 1e3 * timeit(fun, max(3, args.repeat // 2), 1)[0]
            rows[m]['numpy_ms'] = t; np_total += t
            v, o = float(fun()), values[m]
            dev = 0. if (math.isnan(v) and math.isnan(o)) else abs(v - o) / max(abs(v), 0.1)
            rows[m]['numpy_rel_dev'] = dev; max_dev = max(max_dev, dev)
    out = dict(source=source, size=list(f.shape[-2:]), device=args.device, torch=torch.__version__,
               malloc_top_pad_mib=args.malloc_top_pad_mib,
               threads=torch.get_num_threads(), omp_num_threads=os.environ.get('OMP_NUM_THREADS'),
               cpu=platform.processor() or platform.machine(), repeat=args.repeat, per_metric=rows,
               total_ms=total, total_cpu_ms=total_cpu, load_avg=os.getloadavg()[0], numpy_total_ms=np_total, numpy_max_rel_dev=max_dev, values=values)
    if args.json:
        print(json.dumps(out)); return out
    print(f"Metrics on one {f.shape[-1]}x{f.shape[-2]} triplet ({source}), {args.device}, torch {torch.__version__}, "
          f"{torch.get_num_threads()} thread(s), load average {os.getloadavg()[0]:.1f}, "
          f"malloc top pad {args.malloc_top_pad_mib} MiB; "
          f"median of {args.repeat} after {args.warmup} warm-up calls.\n")
    head = "| metric | ours, wall (ms) | ours, CPU (ms) |" + (" NumPy/SciPy, wall (ms) | rel. difference |" if have_scipy else "")
    print(head + "\n|---|---:|---:|" + ("---:|---:|" if have_scipy else ""))
    for m, r in rows.items():
        extra = f" {r['numpy_ms']:.1f} | {r['numpy_rel_dev']:.1e} |" if have_scipy else ""
        print(f"| {m} | {r['ours_ms']:.1f} | {r['ours_cpu_ms']:.1f} |{extra}")
    print(f"| **all (compute_metrics)** | **{total:.1f}** | **{total_cpu:.1f}** |" + (f" {np_total:.1f} (sum) | {max_dev:.1e} |" if have_scipy else ""))
    print("\nPer-metric times include the input checks (~5 ms); `all` shares work between metrics (SSIM and SSIM_255, "
          "MSE and PSNR). CPU time is the process's (all threads); on a busy machine it is the steadier number.")
    return out


if __name__ == '__main__':
    main()
