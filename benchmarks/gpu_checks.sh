#!/usr/bin/env bash
# The GPU checks, in one run: the Q-Former benchmark in bf16 and the captioning benchmark at
# full size: InstructBLIP-Flan-T5-XL in bf16, BLIP-2 with OPT-2.7B in fp16 (as LAVIS runs it),
# and BLIP-2 Flan-T5-XL in bf16 and in fp16 (T5's feed-forward outputs in fp32, as on a T4).
# Results go to $OUT (or ./gpu-results).
set -uo pipefail
cd "$(dirname "$0")/.."
out=${OUT:-gpu-results}; mkdir -p "$out"
export PYTHONPATH=$PWD PYTHONUNBUFFERED=1
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv | tee "$out/gpu.txt"
python3 -c "import torch, transformers; print('torch', torch.__version__, 'transformers', transformers.__version__)" | tee -a "$out/gpu.txt"
python3 benchmarks/bench_qformer.py --device cuda --dtype bfloat16 --repeats 30 --json "$out/bench_qformer_bf16.json" 2>&1 | tee "$out/bench_qformer_bf16.txt"
python3 benchmarks/bench_captioning.py --device cuda --instruct --dtype bfloat16 --batch 16 --repeats 12 --json "$out/bench_captioning_instructblip_bf16.json" 2>&1 | tail -40 | tee "$out/bench_captioning_instructblip_bf16.txt"
python3 benchmarks/bench_captioning.py --device cuda --lm opt --dtype float16 --batch 16 --repeats 12 --json "$out/bench_captioning_opt_fp16.json" 2>&1 | tail -40 | tee "$out/bench_captioning_opt_fp16.txt"
python3 benchmarks/bench_captioning.py --device cuda --dtype bfloat16 --batch 16 --repeats 12 --json "$out/bench_captioning_bf16.json" 2>&1 | tail -40 | tee "$out/bench_captioning_bf16.txt"
python3 benchmarks/bench_captioning.py --device cuda --dtype float16 --batch 8 --repeats 6 --json "$out/bench_captioning_fp16.json" 2>&1 | tail -40 | tee "$out/bench_captioning_fp16.txt"
