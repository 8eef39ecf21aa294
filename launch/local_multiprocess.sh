#!/usr/bin/env bash
# Runs N JAX processes on this machine, each with D fake CPU devices, as a multi-host rehearsal:
#   launch/local_multiprocess.sh 2 2 --config=configs/demo.py --workdir=/tmp/mp_demo
# Every process runs the same command; process 0 coordinates on localhost. Other XLA_FLAGS in
# the environment are kept. `kill -TERM` of any one process stops all of them after one step
# they agree on, with a checkpoint of it (as a preempted pod would).
set -euo pipefail
num_processes=${1:?number of processes}; devices=${2:?devices per process}; shift 2
port=${COORDINATOR_PORT:-12355}
pids=()
for ((i = 0; i < num_processes; i++)); do
  XLA_FLAGS="${XLA_FLAGS:-} --xla_force_host_platform_device_count=${devices}" JAX_PLATFORMS=cpu \
    python -m bootvae_jax.main --distributed --coordinator="localhost:${port}" \
    --num_processes="${num_processes}" --process_id="${i}" "$@" &
  pids+=($!)
done
status=0
for pid in "${pids[@]}"; do wait "$pid" || status=$?; done
exit $status
