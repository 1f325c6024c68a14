#!/usr/bin/env bash
# The GPU figures of benchmarks/RESULTS.md, in one run on the first CUDA device (about 9 minutes on an H100).
#
#   bash benchmarks/run_gpu.sh KODAK_FOLDER OUT_FOLDER
#
# 1. eval-var-rate.py on Kodak with rd_model_small's shipped weights, strict fp32 and bf16 autocast, and
#    their difference (the numeric effect of bf16 on the bound);
# 2. bench_train.py: rd_model_base, batch 16 at 256x256 with Adam, every path up to bf16 + compile, and MFU;
# 3. eval-var-rate.py on Kodak (24 images x 16 lambdas) with rd_model_base (untrained: the time), bf16
#    eager and bf16 + compile.
# Each step has a time limit; one that fails or runs out is reported and the next one runs. The JSON files go
# to OUT_FOLDER (the evaluation plots to a temporary folder).
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

step 60 small-fp32 kodak_eval small-fp32
step 60 small-bf16 kodak_eval small-bf16 --amp bf16
step 10 compare python benchmarks/compare_results.py "$out/small-fp32.json" "$out/small-bf16.json"
step 200 bench-train python benchmarks/bench_train.py --models rd_model_base --batch_size 16 --adam --amp bf16 \
    --compile --repeats 5 --trainset "$kodak" --workers 8 --json "$out/train_gpu.json"
step 60 base-bf16 kodak_eval base-bf16 --model rd_model_base --random-init --amp bf16
step 110 base-bf16-compile kodak_eval base-bf16-compile --model rd_model_base --random-init --amp bf16 --compile
