"""Fusing at scale: pairs per second and memory per worker for one process, torchrun with 2 ranks and Ray with 2
workers, on the same manifest (the 271 MSRS test pairs from ../shared by default, colour output).

    OMP_NUM_THREADS=1 python bench/bench_fuse_scale.py                 # markdown table, JSON in bench/results/fuse_scale.json
    python bench/bench_fuse_scale.py --pairs 40 --engines local,torchrun

Each engine fuses into a fresh folder (so nothing is skipped); wall time includes start-up (Python, model, Ray),
which is why the steady rate (pairs after the first 10% / their time, from the output files' times) is shown too.
Memory: the peak resident set of each worker process, sampled every 50 ms (psutil). The outputs of all engines are
compared byte for byte.
"""
import argparse, hashlib, json, os, platform, shutil, subprocess, sys, tempfile, threading, time
from pathlib import Path

import psutil

ROOT = Path(__file__).resolve().parents[1]
BIN = Path(sys.executable).parent


def manifest(root: Path, n: int, to: Path) -> Path:
    names = sorted(p.name for p in (root/'ir').iterdir())[:n or None]
    to.write_text('ir,vi\n' + ''.join(f"{root/'ir'/x},{root/'vi'/x}\n" for x in names))
    return to


def is_worker(p: psutil.Process, root: psutil.Process, engine: str) -> bool:
    "The processes that fuse: the command itself (local), torchrun's children (its ranks), Ray's map actors."
    try: cmd = ' '.join(p.cmdline())
    except psutil.Error: return False
    if engine == 'ray': return 'FuseBatches' in cmd or 'MapWorker' in cmd or p.name().startswith('ray::Map')
    if engine == 'torchrun': return p.ppid() == root.pid and 'python' in cmd
    return p.pid == root.pid


def watch(proc: subprocess.Popen, engine: str, peaks: dict, stop: threading.Event):
    "Peak RSS (bytes) of each worker process under `proc`, sampled until `stop`."
    root = psutil.Process(proc.pid)
    while not stop.is_set():
        try: procs = [root] + root.children(recursive=True)
        except psutil.Error: procs = []
        for p in procs:
            try:
                if is_worker(p, root, engine): peaks[p.pid] = max(peaks.get(p.pid, 0), p.memory_info().rss)
            except psutil.Error: pass
        time.sleep(0.05)


def run_engine(engine: str, man: Path, out: Path, workers: int) -> dict:
    base = ['fuse', '--manifest', str(man), '--out', str(out)]
    cmd = {'local': [str(BIN/'sfofusion'), *base],
           'torchrun': [str(BIN/'torchrun'), '--standalone', '--nproc_per_node', str(workers), '-m', 'sfofusion.cli', '--', *base],
           'ray': [str(BIN/'sfofusion'), *base, '--engine', 'ray', '--workers', str(workers)]}[engine]
    env = dict(os.environ, OMP_NUM_THREADS='1')
    peaks, stop = {}, threading.Event()
    t0 = time.time()
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env)
    th = threading.Thread(target=watch, args=(proc, engine if engine != 'local' else 'local', peaks, stop)); th.start()
    stdout, stderr = proc.communicate(); stop.set(); th.join()
    wall = time.time() - t0
    if proc.returncode != 0: raise SystemExit(f"{engine} failed ({proc.returncode}):\n{stderr[-3000:]}")
    times = sorted(p.stat().st_mtime for p in out.rglob('*.png'))
    k = len(times) // 10
    steady = (len(times) - k) / (times[-1] - times[k]) if len(times) > k + 1 and times[-1] > times[k] else float('nan')
    return dict(engine=engine, workers=1 if engine == 'local' else workers, pairs=len(times), wall_s=wall,
                pairs_per_s=len(times) / wall, steady_pairs_per_s=steady, first_output_s=times[0] - t0 if times else None,
                worker_peak_rss_mib=max(peaks.values(), default=0) / 2**20, workers_seen=len(peaks),
                summary=stdout.strip().splitlines()[0] if stdout.strip() else '')


def digests(folder: Path) -> dict:
    return {str(p.relative_to(folder)): hashlib.sha1(p.read_bytes()).hexdigest() for p in sorted(folder.rglob('*.png'))}


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument('--data', type=Path, default=ROOT.parent/'shared'/'data'/'MSRS'/'test', help='a folder with ir/ and vi/')
    p.add_argument('--pairs', type=int, default=0, help='the first N pairs (0: all)')
    p.add_argument('--engines', default='local,torchrun,ray')
    p.add_argument('--workers', type=int, default=2)
    p.add_argument('--json', type=Path, default=ROOT/'bench'/'results'/'fuse_scale.json')
    a = p.parse_args()
    if not (a.data/'ir').is_dir(): raise SystemExit(f"--data: {a.data} has no ir/ folder")
    tmp = Path(tempfile.mkdtemp(prefix='fuse_scale_'))
    try:
        man = manifest(a.data, a.pairs, tmp/'pairs.csv')
        rows = [run_engine(e, man, tmp/e, a.workers) for e in a.engines.split(',')]
        d = {r['engine']: digests(tmp/r['engine']) for r in rows}
        same = all(v == next(iter(d.values())) for v in d.values())
    finally: shutil.rmtree(tmp, ignore_errors=True)
    import torch
    info = dict(cpu=platform.processor() or platform.machine(), cores=os.cpu_count(), torch=torch.__version__,
                data=str(a.data.relative_to(ROOT.parent)) if a.data.is_relative_to(ROOT.parent) else str(a.data),
                identical_bytes=same, load_avg=os.getloadavg()[0], rows=rows)
    a.json.parent.mkdir(parents=True, exist_ok=True); a.json.write_text(json.dumps(info, indent=1) + '\n')
    print(f"{rows[0]['pairs']} pairs of {info['data']}, {info['cores']} cores, torch {info['torch']}, 1 torch thread per worker; "
          f"identical bytes across engines: {same}\n")
    print('| engine | workers | wall s | pairs/s (wall) | pairs/s (steady) | first output s | peak RSS per worker (MiB) |')
    print('|---|---:|---:|---:|---:|---:|---:|')
    for r in rows:
        print(f"| {r['engine']} | {r['workers']} | {r['wall_s']:.1f} | {r['pairs_per_s']:.2f} | {r['steady_pairs_per_s']:.2f} | "
              f"{r['first_output_s']:.1f} | {r['worker_peak_rss_mib']:.0f} |")


if __name__ == '__main__':
    main()
