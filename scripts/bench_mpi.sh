#!/usr/bin/env bash
# Data parallel on one CPU, same run: 1 process with every PoCL thread against `mpirun -np 2`
# with one PoCL thread per rank, the same global batch, alternating ROUNDS times (the machine is
# shared and noisy); prints each pair's images/s and ratio. Extra arguments go to `bench train`
# (e.g. --method lora --batch 32). Needs a release build and Open MPI.
set -euo pipefail
cd "$(dirname "$0")/.."
rounds=${ROUNDS:-3}
binary=.build/release/sloragpu
export OMPI_ALLOW_RUN_AS_ROOT=1 OMPI_ALLOW_RUN_AS_ROOT_CONFIRM=1 OMPI_MCA_btl=self,vader \
       OMPI_MCA_btl_vader_single_copy_mechanism=none OMPI_MCA_rmaps_base_oversubscribe=1 \
       OMPI_MCA_oob_tcp_if_include=lo PMIX_MCA_psec=^munge
threads=$(nproc)
for round in $(seq "$rounds"); do
    one=$("$binary" bench train --json "$@" | python3 -c 'import json,sys; print("%.2f" % json.load(sys.stdin)["images_per_second"])')
    report=$(POCL_MAX_PTHREAD_COUNT=$((threads / 2)) POCL_CPU_MAX_CU_COUNT=$((threads / 2)) \
             mpirun -np 2 --timeout 900 "$binary" bench train "$@")
    two=$(echo "$report" | sed -n 's/.* \([0-9.]*\) images\/s globally/\1/p')
    reduce=$(echo "$report" | grep 'all-reduce')
    echo "round $round: 1 process x $threads threads $one img/s; 2 ranks x $((threads / 2)) $two img/s; ratio $(python3 -c "print(f'{$two / $one:.3f}')")"
    echo "    $reduce"
done
