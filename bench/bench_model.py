"""Inference cost of the SFOFusion network: parameters, FLOPs/MACs, time per pair, memory.

Times one 640x480 pair under torch.inference_mode (median of --repeats runs after --warmup runs) and, in the same
run and interleaved with it (so both see the same machine load), a fixed reference workload: five 3x3 16->16
conv2d (no bias) in sequence on a 1x16x480x640 tensor. The ratio model/reference is what to compare across
machines. Also: batch 8 at 256x256, the layout variant (NCHW instead of the default channels-last features),
optionally torch.compile, and the peak memory of one 1920x1080 pair (measured in a fresh subprocess as the growth
of the process's peak resident set size, ru_maxrss, over the forward pass: torch's CPU allocations are invisible to
tracemalloc).

On a CPU shared with other busy processes, OpenMP's default wait policy makes every parallel operator wait for a
descheduled worker thread (several ms each); a network of a few hundred small operators then slows down far more
than the five large convolutions of the reference. Unless OMP_WAIT_POLICY is set, the model/reference timing is
therefore repeated in a subprocess with OMP_WAIT_POLICY=PASSIVE (reported as passive_*), so that a reading taken
on a busy machine shows how much of it is that effect.

FLOPs follow sfofusion.flops: convolutions and matrix products at 2 FLOPs per MAC, a complex FFT of N points at
5 N log2 N real FLOPs (real-input/real-output FFTs half that); element-wise operations are not counted.

    python bench/bench_model.py                 # CPU, default threads, markdown table
    python bench/bench_model.py --json          # one JSON object
    python bench/bench_model.py --threads 1     # pin the thread count
    python bench/bench_model.py --compile       # also time torch.compile (inductor; compiling takes minutes)
    python bench/bench_model.py --device cuda   # GPU timings (synchronised), fp32 and bf16 autocast
    python bench/bench_model.py --model default # the SFOFusionConfig defaults instead of the shipped `msrs` network
    OMP_WAIT_POLICY=PASSIVE python bench/bench_model.py   # the setting to use on a shared CPU
"""
import argparse, json, os, statistics, subprocess, sys, time

import torch
import torch.nn.functional as F


def _sync(dev):
    if dev.type == 'cuda': torch.cuda.synchronize(dev)


def timed(fns: dict, dev, warmup: int, repeats: int) -> dict:
    "Median seconds of each callable, the callables interleaved run by run (same load for all)."
    times = {k: [] for k in fns}
    with torch.inference_mode():
        for _ in range(warmup):
            for f in fns.values(): f()
        _sync(dev)
        for _ in range(repeats):
            for k, f in fns.items():
                t = time.perf_counter(); f(); _sync(dev); times[k].append(time.perf_counter() - t)
    return {k: dict(median=statistics.median(v), min=min(v)) for k, v in times.items()}


def reference_workload(dev):
    "Five 3x3 16->16 convolutions (no bias) in sequence on 1x16x480x640: a fixed yardstick of the machine."
    g = torch.Generator().manual_seed(0)
    x = torch.randn(1, 16, 480, 640, generator=g).to(dev)
    ws = [(torch.randn(16, 16, 3, 3, generator=g) / 12).to(dev) for _ in range(5)]

    def run():
        y = x
        for w in ws: y = F.conv2d(y, w, padding=1)
        return y
    return run


def model_config(name: str):
    "The architecture to measure: 'default' (SFOFusionConfig()), or the config of a shipped model name or model folder."
    from sfofusion.model import SFOFusion, SFOFusionConfig
    return SFOFusionConfig() if name == 'default' else SFOFusion.from_pretrained(name, arg='--model').config


def peak_memory_mib(h: int, w: int, threads: int | None, model: str = 'msrs') -> float:
    "Growth of peak RSS (MiB) over one forward pass of an h x w pair, measured in a fresh process."
    code = f"""
import resource, sys, torch
{'torch.set_num_threads(%d)' % threads if threads else ''}
sys.path.insert(0, {str(os.path.dirname(os.path.abspath(__file__)))!r})
from bench_model import model_config
from sfofusion.model import build_model
torch.manual_seed(0)
m = build_model(model_config({model!r})).eval()
ir, vis = torch.rand(1, 1, {h}, {w}), torch.rand(1, 1, {h}, {w})
with torch.inference_mode(): m(ir[..., :64, :64], vis[..., :64, :64])   # load kernels and libraries first
before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
with torch.inference_mode(): m(ir, vis)
print((resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - before) / 1024)
"""
    out = subprocess.run([sys.executable, '-c', code], capture_output=True, text=True, check=True)
    return float(out.stdout.strip().splitlines()[-1])


def timing_only(args) -> dict:
    "Median seconds of the model on one 640x480 pair and of the reference workload, interleaved."
    from sfofusion.model import build_model
    if args.threads: torch.set_num_threads(args.threads)
    dev = torch.device(args.device)
    torch.manual_seed(0)
    model = build_model(model_config(args.model)).to(dev).eval()
    g = torch.Generator().manual_seed(1)
    ir, vis = (torch.rand(1, 1, 480, 640, generator=g).to(dev) for _ in range(2))
    t = timed(dict(model=lambda: model(ir, vis), reference=reference_workload(dev)), dev, args.warmup, args.repeats)
    return dict(cpu_s=t['model']['median'], ref_s=t['reference']['median'], ratio=t['model']['median'] / t['reference']['median'])


def run(args) -> dict:
    import dataclasses
    from sfofusion.model import build_model, count_parameters
    from sfofusion.flops import count_flops
    if args.threads: torch.set_num_threads(args.threads)
    dev = torch.device(args.device)
    torch.manual_seed(0)
    cfg = model_config(args.model)
    model = build_model(cfg).to(dev).eval()
    nchw = build_model(dataclasses.replace(cfg, channels_last=False)).to(dev).eval()
    nchw.load_state_dict(model.state_dict())
    g = torch.Generator().manual_seed(1)
    ir, vis = (torch.rand(1, 1, 480, 640, generator=g).to(dev) for _ in range(2))
    ir8, vis8 = (torch.rand(8, 1, 256, 256, generator=g).to(dev) for _ in range(2))
    cost = count_flops(model, 480, 640)
    res = dict(model=args.model, params=count_parameters(model), flops=cost['flops'], macs=cost['macs'], device=str(dev),
               threads=torch.get_num_threads(), torch=torch.__version__)

    fns = dict(model=lambda: model(ir, vis), reference=reference_workload(dev), nchw=lambda: nchw(ir, vis),
               batch8_256=lambda: model(ir8, vis8))
    if dev.type == 'cuda':
        def bf16():
            with torch.autocast('cuda', dtype=torch.bfloat16): return model(ir, vis)
        fns['bf16'] = bf16
    t = timed(fns, dev, args.warmup, args.repeats)
    res.update(cpu_s=t['model']['median'], ref_s=t['reference']['median'],
               ratio=t['model']['median'] / t['reference']['median'],
               cpu_min_s=t['model']['min'], ref_min_s=t['reference']['min'],
               nchw_s=t['nchw']['median'], batch8_256_s=t['batch8_256']['median'],
               batch8_256_per_pair_s=t['batch8_256']['median'] / 8)
    if 'bf16' in t: res['bf16_s'] = t['bf16']['median']
    if dev.type == 'cuda': res['gpu'] = torch.cuda.get_device_name(dev)
    if args.compile:
        t0 = time.perf_counter()
        fused = torch.compile(model.fuse)
        with torch.inference_mode(): fused(ir, vis)
        res['compile_first_call_s'] = time.perf_counter() - t0
        tc = timed(dict(compiled=lambda: fused(ir, vis), model=lambda: model(ir, vis), reference=fns['reference']),
                   dev, 2, args.repeats)
        res.update(compiled_s=tc['compiled']['median'], compiled_eager_s=tc['model']['median'],
                   compiled_ref_s=tc['reference']['median'])
    res['omp_wait_policy'] = os.environ.get('OMP_WAIT_POLICY', 'default')
    if dev.type == 'cpu' and 'OMP_WAIT_POLICY' not in os.environ and not args.no_passive:
        cmd = [sys.executable, __file__, '--timing-only', '--model', args.model, '--warmup', str(args.warmup), '--repeats', str(args.repeats)]
        if args.threads: cmd += ['--threads', str(args.threads)]
        out = subprocess.run(cmd, env=dict(os.environ, OMP_WAIT_POLICY='PASSIVE'), capture_output=True, text=True, check=True)
        res.update({f'passive_{k}': v for k, v in json.loads(out.stdout.strip().splitlines()[-1]).items()})
    if dev.type == 'cpu' and not args.no_memory:
        res['peak_mem_1080p_mib'] = peak_memory_mib(1080, 1920, args.threads, args.model)
        res['peak_mem_method'] = 'ru_maxrss growth over one forward pass in a fresh subprocess'
    elif dev.type == 'cuda':
        a, b = (torch.rand(1, 1, 1080, 1920, device=dev) for _ in range(2))
        torch.cuda.reset_peak_memory_stats(dev)
        base = torch.cuda.memory_allocated(dev)
        with torch.inference_mode(): model(a, b)
        res['peak_mem_1080p_mib'] = (torch.cuda.max_memory_allocated(dev) - base) / 2 ** 20
        res['peak_mem_method'] = 'torch.cuda.max_memory_allocated growth over one forward pass'
    return res


def table(r: dict) -> str:
    rows = [('network', f"`{r['model']}`" + (' (the SFOFusionConfig defaults)' if r['model'] == 'default' else '')),
            ('parameters', f"{r['params']:,}"),
            ('FLOPs at 640x480', f"{r['flops'] / 1e9:.2f} G"),
            ('MACs at 640x480', f"{r['macs'] / 1e9:.2f} G"),
            (f"time per 640x480 pair ({r['device']}, {r['threads']} threads)", f"{r['cpu_s'] * 1e3:.1f} ms (min {r['cpu_min_s'] * 1e3:.1f})"),
            ('reference workload (5x conv3x3 16->16 @ 640x480)', f"{r['ref_s'] * 1e3:.1f} ms (min {r['ref_min_s'] * 1e3:.1f})"),
            ('ratio model / reference', f"{r['ratio']:.2f}"),
            ('same, NCHW features (channels_last=False)', f"{r['nchw_s'] * 1e3:.1f} ms"),
            ('batch 8 x 256x256', f"{r['batch8_256_s'] * 1e3:.1f} ms ({r['batch8_256_per_pair_s'] * 1e3:.1f} ms/pair)")]
    if 'bf16_s' in r: rows.append(('640x480 pair, bf16 autocast', f"{r['bf16_s'] * 1e3:.2f} ms"))
    if 'compiled_s' in r:
        rows.append(('torch.compile (inductor): first call', f"{r['compile_first_call_s']:.0f} s"))
        rows.append(('torch.compile: time per pair (eager, reference in the same run)',
                     f"{r['compiled_s'] * 1e3:.1f} ms ({r['compiled_eager_s'] * 1e3:.1f}, {r['compiled_ref_s'] * 1e3:.1f})"))
    if 'passive_ratio' in r:
        rows.append(('same pair / reference with OMP_WAIT_POLICY=PASSIVE (subprocess)',
                     f"{r['passive_cpu_s'] * 1e3:.1f} ms / {r['passive_ref_s'] * 1e3:.1f} ms = {r['passive_ratio']:.2f}"))
    if 'peak_mem_1080p_mib' in r: rows.append(('peak memory, one 1920x1080 pair', f"{r['peak_mem_1080p_mib']:.0f} MiB ({r['peak_mem_method']})"))
    return '\n'.join(['| measure | value |', '|---|---|'] + [f'| {a} | {b} |' for a, b in rows])


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument('--device', default='cpu')
    p.add_argument('--model', default='msrs', help="the architecture to time: a shipped model name or model folder (its "
                   "config; default: the shipped msrs network), or 'default' for the SFOFusionConfig defaults")
    p.add_argument('--threads', type=int, default=None, help='torch threads (default: torch default)')
    p.add_argument('--warmup', type=int, default=3)
    p.add_argument('--repeats', type=int, default=9)
    p.add_argument('--compile', action='store_true', help='also time torch.compile (slow to compile)')
    p.add_argument('--no-memory', action='store_true', help='skip the 1080p peak-memory subprocess')
    p.add_argument('--no-passive', action='store_true', help='skip the OMP_WAIT_POLICY=PASSIVE repeat of the timing')
    p.add_argument('--json', action='store_true')
    p.add_argument('--timing-only', action='store_true', help=argparse.SUPPRESS)
    args = p.parse_args()
    if args.repeats < 5: p.error('--repeats must be at least 5')
    from sfofusion.core import FusionInputError
    try: model_config(args.model)
    except FusionInputError as e: p.error(str(e))
    if args.timing_only: return print(json.dumps(timing_only(args)))
    r = run(args)
    print(json.dumps(r) if args.json else table(r))


if __name__ == '__main__':
    main()
