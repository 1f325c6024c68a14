#!/usr/bin/env bash
# The GPU table of benchmarks/RESULTS.md in one unattended run on the first CUDA device (about 6 minutes on
# an H100 or H200), every figure written as JSON into OUT_FOLDER:
#
#   bash benchmarks/run_gpu.sh KODAK_FOLDER OUT_FOLDER
#
# 1. profile.json: torch.profiler of rd_model_base's training step (batch 16, 256x256, bf16, Adam) and of its
#    evaluation forward (one Kodak-sized image): time by op, kernel launches per step, GPU idle share;
# 2. train.json: rd_model_base's training step, batch 16 at 256x256 with Adam: the authors' layout (the
#    reference model, fp32 NCHW eager) beside lvae.accel.prepare in fp32 and bf16 autocast, images/s and MFU;
# 3. base-fp32.json, base-bf16.json, base-compare.json: eval-var-rate.py on Kodak (24 images x 16 lambdas) with
#    rd_model_base (untrained weights: the same work as the published ones) in strict fp32 and in bf16, their
#    times and the BD-rate between the two curves;
# 4. small-fp32.json, small-bf16.json, small-compare.json: the same with rd_model_small's shipped weights (a
#    trained model: the numeric effect of bf16 on a real bound).
# Each step has a time limit (against a hang); one that fails or runs out is reported and the next one runs.
set -uo pipefail
kodak=$1; out=$2
mkdir -p "$out"
export PYTHONUNBUFFERED=1
nvidia-smi --query-gpu=name,driver_version,memory.total,clocks.max.sm,power.limit --format=csv | tee "$out/gpu.csv"

step() {  # step SECONDS NAME COMMAND...: run with a time limit, report its wall time and exit status
    local limit=$1 name=$2; shift 2
    local t0=$SECONDS
    timeout -k 5 "$limit" "$@" > "$out/$name.log" 2>&1
    echo "== $name: exit $? after $((SECONDS - t0)) s (log: $out/$name.log)"
    tail -n 12 "$out/$name.log"
}

kodak_eval() {  # kodak_eval NAME ARGS...: eval-var-rate.py on Kodak at 16 lambdas -> OUT_FOLDER/NAME.json
    local name=$1; shift
    step 240 "$name" python eval-var-rate.py --dataset_name "$kodak" --no-progress --output "$out/$name.json" "$@"
}

step 120 profile python benchmarks/profile_step.py --models rd_model_base --batch_size 16 --amp bf16 \
    --json "$out/profile.json"
step 150 train python benchmarks/bench_train.py --models rd_model_base --batch_size 16 --adam --amp bf16 \
    --repeats 5 --trainset "$kodak" --workers 8 --json "$out/train.json"
kodak_eval base-fp32 --model rd_model_base --random-init
kodak_eval base-bf16 --model rd_model_base --random-init --amp bf16
step 60 base-compare python benchmarks/compare_results.py "$out/base-fp32.json" "$out/base-bf16.json" \
    --json "$out/base-compare.json"
kodak_eval small-fp32
kodak_eval small-bf16 --amp bf16
step 60 small-compare python benchmarks/compare_results.py "$out/small-fp32.json" "$out/small-bf16.json" \
    --json "$out/small-compare.json"
