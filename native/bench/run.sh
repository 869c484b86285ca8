#!/bin/sh
# Build and run the ring microbenchmark; prints JSON.
set -eu
here=$(cd "$(dirname "$0")" && pwd)
out="$here/../build/bench"
mkdir -p "$out"
g++ -std=c++17 -Wall -Wextra -Werror -O2 -pthread -o "$out/ring_bench" "$here/ring_bench.cc" "$here/../src/region.cc"
exec "$out/ring_bench"
