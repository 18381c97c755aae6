#!/usr/bin/env bash
# The one prepared GPU script of a session (device tool): CUDA tests, throughput, and the downstream experiment
# (issue 15: five seeds, full resolution, 110 named held-out pairs). Expects wheels of the packages missing on the GPU
# image in .whl/ and the MSRS test split (640x480, with det_labels/) in .gpudata/MSRS/test (the ../shared folder does not travel). Results go to $OUT.
set -u
export PYTHONUNBUFFERED=1
python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl || exit 1
export PYTHONPATH=/tmp/site:$PWD
nvidia-smi --query-gpu=name,memory.total --format=csv,noheader
python3 -c "import torch, kornia, pycocotools; print('torch', torch.__version__, 'kornia', kornia.__version__)"
echo "=== CUDA tests"
timeout 240 python3 -m pytest -q -p no:cacheprovider tests/test_model.py tests/test_losses.py tests/test_metrics.py \
    tests/test_tasks.py tests/test_train.py tests/test_meta.py -k cuda 2>&1 | tail -4
echo "=== training throughput"
for prec in bf16 fp32; do
  python3 bench/bench_train.py --device cuda --batch 16 --crop 256 --precision $prec --steps 30 --json | tee -a $OUT/train_throughput.jsonl
done
echo "=== meta-learning experiment"
timeout ${EXP_TIMEOUT:-480} python3 bench/meta_experiment.py /tmp/exp.ipynb -p data msrs:.gpudata/MSRS/test -p scale 1 \
    -p device cuda -p small_heads false -p variants "[ir, vis, fusion, direct, meta]" -p seeds "[0, 1, 2, 3, 4]" \
    -p holdout 20 -p eval_names "['@data/splits/msrs_test60.txt', '@data/splits/msrs_val50.txt']" \
    -p init_weights sfofusion/weights/msrs -p warm_task true -p fusion_steps ${FUSION_STEPS:-300} -p fusion_lr 5e-4 \
    -p det_steps ${DET_STEPS:-3000} -p det_batch 16 -p det_crop 320 -p out_dir /tmp/exp -p downstream_json $OUT/downstream.json
cp /tmp/exp/rows.jsonl /tmp/exp/summary.json $OUT/ 2>/dev/null
for m in fusion meta; do cp /tmp/exp/seed0/$m/log.jsonl $OUT/log_$m.jsonl 2>/dev/null; done
ls -la $OUT
