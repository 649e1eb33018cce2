#!/usr/bin/env bash
# The GPU checks of real_data as one prepared run, for a machine with a CUDA GPU.
#
#   bash benchmarks/gpu_check.sh OUTDIR [BUDGET_SECONDS]
#
# Runs from the repository root with the machine's python3 (PYTHON overrides; the repo need not be
# installed, PYTHONPATH=. is set). Steps, most important first; a step that would end past the budget
# is skipped with a notice, and every step's output is kept in OUTDIR/NN-name.log:
#   1. tests/test_real_data_cuda.py (graph-replayed attacks equal eager ones bit for bit);
#   2. the epoch benchmark at its defaults (n = 50000, batch 128, bf16 + channels_last, CUDA graphs) and
#      the official-style baseline on 5000 images, same card, same process; then eager attacks (20000);
#   3. the CUDA paths end to end on a CIFAR-10-format folder written here: real_data.train (at, 2 epochs,
#      PreActResNet-18), resume, real_data.cas (JSON + heatmaps), real_data.saliency;
#   4. the benchmark at batch 512 (how far small batches keep the card from its floor), then with
#      torch.compile (its compilations happen in the untimed warm-up, which ends in a batch as short as
#      the epoch's last: the timed epoch is the steady state; TORCH_LOGS=recompiles lists them), then
#      with mode reduce-overhead (inductor's fused kernels replayed from CUDA graph trees);
#   5. real_data.cas --autoattack on the trained run, when torchattacks is importable (e.g. installed with
#      `pip install --no-deps --target .gpu_deps torchattacks` here and carried: PYTHONPATH gets .gpu_deps).
set -u
out=${1:?usage: gpu_check.sh OUTDIR [BUDGET_SECONDS]}
budget=${2:-480}
py=${PYTHON:-python3}
dev=${DEVICE:-cuda}     # DEVICE=cpu SKIP_BENCH=1 ARCH=small-cnn rehearses steps 2-5 without a GPU
arch=${ARCH:-preact-resnet18}
mkdir -p "$out"
export PYTHONPATH=.:.gpu_deps${PYTHONPATH:+:$PYTHONPATH} PYTHONUNBUFFERED=1

step() {  # step NAME TIMEOUT COMMAND...
    local name=$1 limit=$2
    shift 2
    if (( SECONDS + limit > budget )); then
        echo "== $name: skipped (${SECONDS}s used, needs up to ${limit}s of ${budget}s)"
        return
    fi
    echo "== $name (limit ${limit}s, at ${SECONDS}s)"
    local t0=$SECONDS
    timeout "$limit" "$@" >"$out/$name.log" 2>&1
    local rc=$?
    tail -n 25 "$out/$name.log"
    echo "== $name: rc=$rc in $((SECONDS - t0))s"
}

nvidia-smi --query-gpu=name,memory.total,driver_version,clocks.max.sm --format=csv
$py -c "import sys, torch; print('python', sys.version.split()[0], 'torch', torch.__version__, 'cuda', torch.version.cuda)"

[[ -n "${SKIP_BENCH:-}" ]] || step 01-pytest-cuda 100 $py -m pytest -q tests/test_real_data_cuda.py
[[ -n "${SKIP_BENCH:-}" ]] || step 02-bench-default 120 $py benchmarks/real_data_epoch.py --device cuda --baseline-n 5000
[[ -n "${SKIP_BENCH:-}" ]] || step 03-bench-eager 60 $py benchmarks/real_data_epoch.py --device cuda --n 20000 \
    --no-cuda-graphs --skip-baseline

tmp=$(mktemp -d)
$py -c "from real_data.fixtures import write_cifar10; write_cifar10('$tmp/cifar', per_class=60)"
ds=cifar10:$tmp/cifar
step 04-train 60 $py -m real_data.train --dataset "$ds" --arch "$arch" --epochs 3 --stop-after 2 --eval-n 200 \
    --save-every 1 --device "$dev" --quiet --out "$tmp/run"
step 05-resume 45 $py -m real_data.train --dataset "$ds" --arch "$arch" --epochs 3 --eval-n 200 --save-every 1 \
    --device "$dev" --quiet --out "$tmp/run" --resume
cp "$tmp/run/log.csv" "$out/train_log.csv" 2>/dev/null
step 06-cas 45 $py -m real_data.cas --checkpoint "$tmp/run/best.pt" "$tmp/run/last.pt" --dataset "$ds" --n 300 \
    --device "$dev" --quiet --json --out "$out/cas"
step 07-saliency 40 $py -m real_data.saliency --checkpoint "$tmp/run/best.pt" "$tmp/run/last.pt" --dataset "$ds" \
    --indices 0 1 2 3 --device "$dev" --out "$out/saliency.png"

[[ -n "${SKIP_BENCH:-}" ]] || step 08-bench-batch512 60 $py benchmarks/real_data_epoch.py --device cuda --n 20000 \
    --batch-size 512 --skip-baseline
[[ -n "${SKIP_BENCH:-}" ]] || TORCH_LOGS=recompiles step 09-bench-compile 150 $py benchmarks/real_data_epoch.py \
    --device cuda --n 20000 --compile --skip-baseline
[[ -n "${SKIP_BENCH:-}" ]] || TORCH_LOGS=recompiles step 09b-bench-compile-reduce-overhead 200 $py \
    benchmarks/real_data_epoch.py --device cuda --n 20000 --compile-mode reduce-overhead --skip-baseline
if $py -c "import torchattacks" 2>/dev/null; then
    step 10-cas-autoattack 90 $py -m real_data.cas --checkpoint "$tmp/run/last.pt" --dataset "$ds" --n 200 \
        --device "$dev" --quiet --json --autoattack --autoattack-backend torchattacks
else
    echo "== 10-cas-autoattack: skipped (torchattacks not importable)"
fi
echo "== done in ${SECONDS}s"
