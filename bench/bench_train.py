"""Training throughput of SFOFusion: optimisation steps per second.

Times the full training step (forward, fusion loss, backward, gradient clipping, AdamW) on synthetic batches that
are generated up front, so the number measures the step itself, not data loading.

    python bench/bench_train.py                         # CPU, batch 8 x 128x128, 1 process
    python bench/bench_train.py --ddp 2                 # the same with 2 DDP processes (gloo), batch 8 per process
    python bench/bench_train.py --device cuda --batch 16 --crop 256 --precision bf16
    python bench/bench_train.py --json                  # one JSON object instead of the table
"""
import argparse, json, os, subprocess, sys, time

import torch
from torch import nn


def run(args, rank=0, world=1):
    from sfofusion.model import build_model
    from sfofusion.losses import FusionLoss, LossConfig
    from sfofusion.data import synthetic_pair
    dev = torch.device(args.device if world == 1 or not args.device.startswith('cuda') else f'cuda:{rank}')
    torch.manual_seed(0)
    model = build_model().to(dev)
    net = nn.parallel.DistributedDataParallel(model) if world > 1 else model
    loss_fn = FusionLoss(LossConfig()).to(dev)
    opt = torch.optim.AdamW(model.parameters(), lr=1e-3)
    pairs = [synthetic_pair(args.crop, args.crop, seed=1000 * rank + i) for i in range(args.batch)]
    ir = torch.stack([p['ir'] for p in pairs]).to(dev)
    vis = torch.stack([p['vis'] for p in pairs]).to(dev)
    ac = (torch.autocast('cuda', dtype=torch.bfloat16 if args.precision == 'bf16' else torch.float16)
          if dev.type == 'cuda' and args.precision != 'fp32' else torch.autocast(dev.type, enabled=False))

    def step():
        with ac: fused = net(ir, vis)
        loss, _ = loss_fn(fused.float(), ir, vis)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        return loss

    for _ in range(args.warmup): step()
    if dev.type == 'cuda': torch.cuda.synchronize()
    t0 = time.perf_counter()
    for _ in range(args.steps): loss = step()
    if dev.type == 'cuda': torch.cuda.synchronize()
    dt = time.perf_counter() - t0
    return dict(device=str(dev), precision=args.precision, batch_per_process=args.batch, crop=args.crop,
                processes=world, steps=args.steps, seconds=dt, steps_per_s=args.steps / dt,
                samples_per_s=args.steps * args.batch * world / dt, final_loss=float(loss.detach()),
                gpu=torch.cuda.get_device_name(dev) if dev.type == 'cuda' else None, threads=torch.get_num_threads())


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument('--device', default='cpu')
    p.add_argument('--batch', type=int, default=8)
    p.add_argument('--crop', type=int, default=128)
    p.add_argument('--precision', default='fp32', choices=['fp32', 'bf16', 'fp16'])
    p.add_argument('--steps', type=int, default=10)
    p.add_argument('--warmup', type=int, default=3)
    p.add_argument('--ddp', type=int, default=1, help='number of DDP processes (launched with torchrun)')
    p.add_argument('--json', action='store_true')
    p.add_argument('--worker', action='store_true', help=argparse.SUPPRESS)
    args = p.parse_args()
    if args.worker:  # inside torchrun
        import torch.distributed as dist
        rank, world = int(os.environ['RANK']), int(os.environ['WORLD_SIZE'])
        dist.init_process_group('nccl' if args.device.startswith('cuda') else 'gloo')
        res = run(args, rank, world)
        if rank == 0: print('RESULT ' + json.dumps(res))
        dist.destroy_process_group()
        return
    if args.ddp > 1:
        env = dict(os.environ, OMP_NUM_THREADS=os.environ.get('OMP_NUM_THREADS', '1'))
        cmd = [sys.executable, '-m', 'torch.distributed.run', '--standalone', f'--nproc_per_node={args.ddp}',
               __file__, '--worker'] + [a for a in sys.argv[1:] if not a.startswith('--ddp') and a != '--json'
                                        and a != str(args.ddp)]
        out = subprocess.run(cmd, env=env, capture_output=True, text=True)
        lines = [l for l in out.stdout.splitlines() if l.startswith('RESULT ')]
        if out.returncode or not lines: sys.exit(f'torchrun failed:\n{out.stdout}\n{out.stderr}')
        res = json.loads(lines[-1][7:])
    else:
        res = run(args)
    if args.json: print(json.dumps(res)); return
    print('| device | precision | processes | batch/process | crop | steps/s | samples/s | threads |')
    print('|---|---|---|---|---|---|---|---|')
    print(f"| {res['gpu'] or res['device']} | {res['precision']} | {res['processes']} | {res['batch_per_process']} | "
          f"{res['crop']} | {res['steps_per_s']:.2f} | {res['samples_per_s']:.1f} | {res['threads']} |")


if __name__ == '__main__':
    main()
