#!/usr/bin/env bash
# The GPU figures of benchmarks/RESULTS.md, in one run on the first CUDA device.
#
#   bash benchmarks/run_gpu.sh KODAK_FOLDER OUT_FOLDER
#
# 1. eval-var-rate.py on Kodak with rd_model_small's shipped weights in strict fp32, bf16 autocast and TF32,
#    and their differences (the numeric effect on the bound);
# 2. bench_train.py: rd_model_base, batch 16 at 256x256 with Adam, every path up to bf16 + compile, and MFU;
# 3. eval-var-rate.py on Kodak (24 images x 16 lambdas) with rd_model_base (untrained: the time) in strict
#    fp32, TF32, bf16 and bf16 + compile;
# 4. a 100-iteration train-var-rate.py run of rd_model_base (bf16 + compile) on Kodak, end to end.
# Each step has a time limit (against a hang); one that fails or runs out is reported and the next one runs.
# The JSON files go to OUT_FOLDER, the plots and the training run to a temporary folder.
set -uo pipefail
kodak=$1; out=$2
work=$(mktemp -d)
export PYTHONUNBUFFERED=1
nvidia-smi --query-gpu=name,driver_version,memory.total,clocks.max.sm,power.limit --format=csv

step() {  # step SECONDS NAME COMMAND...: run with a time limit, report its wall time and exit status
    local limit=$1 name=$2; shift 2
    local t0=$SECONDS
    timeout -k 5 "$limit" bash -c '"$@"' _ "$@"
    echo "== $name: exit $? after $((SECONDS - t0)) s"
}

kodak_eval() {  # kodak_eval NAME ARGS...: eval-var-rate.py on Kodak at 16 lambdas -> OUT_FOLDER/NAME.json
    local name=$1; shift
    python eval-var-rate.py --dataset_name "$kodak" --no-progress --output "$work/$name.json" "$@" | tail -n 6 \
        && cp "$work/$name.json" "$out/"
}
export -f kodak_eval
export kodak out work

step 120 small-fp32 kodak_eval small-fp32
step 120 small-bf16 kodak_eval small-bf16 --amp bf16
step 120 small-tf32 kodak_eval small-tf32 --tf32
step 60 compare python benchmarks/compare_results.py "$out/small-fp32.json" "$out/small-bf16.json" \
    "$out/small-tf32.json"
step 900 bench-train python benchmarks/bench_train.py --models rd_model_base --batch_size 16 --adam --amp bf16 \
    --compile --repeats 5 --trainset "$kodak" --workers 8 --json "$out/train_gpu.json"
step 300 base-fp32 kodak_eval base-fp32 --model rd_model_base --random-init
step 300 base-tf32 kodak_eval base-tf32 --model rd_model_base --random-init --tf32
step 300 base-bf16 kodak_eval base-bf16 --model rd_model_base --random-init --amp bf16
step 900 base-bf16-compile kodak_eval base-bf16-compile --model rd_model_base --random-init --amp bf16 --compile
step 900 train python train-var-rate.py --model rd_model_base --trainset "$kodak" --valset "$kodak" \
    --val_images 4 --iterations 100 --batch_size 16 --amp bf16 --compile --eval_interval 100 --workers 8 \
    --runs_root "$work/runs" --name gpu-check
