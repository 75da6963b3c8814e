#!/usr/bin/env bash
# Starts the command twice on this machine, as two "nodes" with NODE=0 and NODE=1, the way
# `srun --nodes 2 --ntasks-per-node 1` starts it once per node; exits non-zero if either fails.
# Tests use it as a pipeline's launch prefix to run accelerate's multi-machine rendezvous for real.
NODE=0 "$@" & first=$!
NODE=1 "$@" & second=$!
wait "$first"; a=$?
wait "$second"; b=$?
exit $(( a != 0 ? a : b ))
