#!/usr/bin/env bash
# GPU/TPU numbers in one run (< 8 min on one accelerator): every output line names the device.
#
#   bash bench/accelerator.sh            # on a machine with a GPU or TPU (jax[cuda] / jax[tpu])
#   bash bench/accelerator.sh --smoke    # tiny sizes, any backend (checks the script on a CPU)
#
# 1. train steps/s, CIFAR-10 DDPM++ cont. (configs/vp/cifar10_ddpmpp_continuous), batch 128,
#    one step per call vs n_jitted_steps = 5 scanned in one call (bench/train_step.py --config);
# 2. peak memory and step time of the same network, remat off/on x float32/bfloat16
#    (bench/models.py: XLA's buffer assignment, forward + backward at batch 128);
# 3. bits/dim: diffrax diffeqsolve on the device vs the host-stepped solver vs the official
#    scipy design (bench/likelihood.py --with-diffeqsolve);
# 4. samplers: PC with 1000 steps and the probability-flow ODE (bench/sampling.py);
# 5. the device-relevant tests (models, train step, sampling, likelihood, sharding).
# Each part has its own time limit, so one slow part cannot take the whole budget; a part that
# runs out says so and the script goes on.
set -u -o pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-.venv/bin/python}
[ -x "$PY" ] || PY=python
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}"

SMOKE=0
[ "${1:-}" = "--smoke" ] && SMOKE=1

DEVICE=$("$PY" -c 'import jax; d = jax.devices()[0]
print(f"{d.platform}:{d.device_kind} x{jax.device_count()}")')
if [ "$SMOKE" = 0 ] && [[ "$DEVICE" == cpu:* ]]; then
  echo "[bench/accelerator] no GPU or TPU visible to JAX ($DEVICE);" \
    "use --smoke to check the script on CPU."
  exit 1
fi

part() {  # part <seconds> <title> <command...>: run with a time limit, every line tagged
  local limit=$1 title=$2; shift 2
  echo "[$DEVICE] == $title"
  local start=$SECONDS
  timeout "$limit" "$@" 2>&1 | grep -v -E "^(WARNING|I0000|W0000)|UserWarning" \
    | sed "s|^|[$DEVICE] |"
  local rc=${PIPESTATUS[0]}
  if [ "$rc" = 124 ]; then echo "[$DEVICE] !! $title: stopped at its ${limit}s limit"; fi
  if [ "$rc" != 0 ] && [ "$rc" != 124 ]; then echo "[$DEVICE] !! $title: exit status $rc"; fi
  echo "[$DEVICE] ($title: $((SECONDS - start)) s)"
}

if [ "$SMOKE" = 1 ]; then
  part 240 "train step, digits DDPM++ batch 4, 1 vs 2 steps per call" \
    "$PY" bench/train_step.py --config configs.vp.digits_ddpmpp_continuous --batch 4 \
    --n_jitted_steps 2 --repeats 1
  part 240 "memory, remat / bf16 (nf 16, 1 block, batch 2)" \
    "$PY" bench/models.py --archs ddpmpp --variants fp32,remat,bf16,remat+bf16 --batch 2 \
    --nf 16 --num_res_blocks 1 --repeats 1 --warmup 1
  part 240 "bits/dim, diffeqsolve vs host-stepped vs official (batch 2)" \
    "$PY" bench/likelihood.py --batch 2 --repeats 1 --with-diffeqsolve
  part 240 "samplers, PC 50 steps and ODE (batch 2)" \
    "$PY" bench/sampling.py --batch 2 --num-scales 50 --repeats 1
  part 300 "tests (train step)" "$PY" -m pytest -q -p no:xdist tests/test_train_step.py
else
  # The XLA:CPU kernel choices of score_jax/xla_cpu.py mean nothing here.
  export SCORE_JAX_XLA_DEFAULTS=0
  # Budgets from one H200 (bench/results/accelerator_h200.md): one DDPM++ train-step compilation
  # with XLA:GPU's autotuning takes ~80 s. Memory comes from XLA's buffer assignment and the tests
  # check values, so those two parts compile without autotuning (their step times are not tuned).
  part 190 "train step, CIFAR-10 DDPM++ cont. batch 128, 1 vs 5 steps per call" \
    "$PY" bench/train_step.py --config configs.vp.cifar10_ddpmpp_continuous --batch 128 \
    --n_jitted_steps 5 --repeats 2
  XLA_FLAGS="--xla_gpu_autotune_level=0 ${XLA_FLAGS:-}" \
  part 130 "memory and step time (untuned), remat / bf16, DDPM++ batch 128" \
    "$PY" bench/models.py --archs ddpmpp --variants fp32,remat,bf16,remat+bf16 --batch 128 \
    --repeats 3 --warmup 1
  part 35 "bits/dim, diffeqsolve on device vs host-stepped vs official (batch 8)" \
    "$PY" bench/likelihood.py --batch 8 --repeats 3 --with-diffeqsolve
  part 35 "samplers, PC 1000 steps and ODE (batch 8)" \
    "$PY" bench/sampling.py --batch 8 --num-scales 1000 --repeats 2
  # The sharding tests force 8 CPU devices and need the data pipeline; they stay on the CPU.
  XLA_FLAGS="--xla_gpu_autotune_level=0 ${XLA_FLAGS:-}" SCORE_JAX_TEST_XLA_OPT=1 \
  part 90 "device-relevant tests" "$PY" -m pytest -q -p no:xdist tests/test_train_step.py \
    tests/test_sampling.py tests/test_likelihood.py tests/test_ncsnpp.py
fi
