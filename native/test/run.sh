#!/bin/sh
# Build and run the native unit tests. Usage: run.sh [asan]
# Plain g++ only; no test framework. Exits non-zero on any failure.
set -eu
here=$(cd "$(dirname "$0")" && pwd)
out="$here/../build/test"
mkdir -p "$out"
flags="-std=c++17 -Wall -Wextra -Werror -O2 -g -pthread"
scale=1
if [ "${1:-}" = "asan" ]; then
  flags="$flags -O1 -fno-omit-frame-pointer -fsanitize=address,undefined -fno-sanitize-recover=all"
  scale=2
  export ASAN_OPTIONS="detect_leaks=1:abort_on_error=1"
  export UBSAN_OPTIONS="print_stacktrace=1"
fi
pump="$here/../src/pump.cc $here/../src/pump_loop.cc $here/../src/pump_cmds.cc $here/../src/pump_link.cc $here/../src/pump_attach.cc"
g++ $flags -o "$out/ring_test" "$here/ring_test.cc" "$here/../src/region.cc"
SOCKGATE_TEST_SCALE=$scale timeout 600 "$out/ring_test"
g++ $flags -o "$out/splice_test" "$here/splice_test.cc" $pump "$here/../src/splice.cc" "$here/../src/region.cc" "$here/../src/attach.cc"
SOCKGATE_TEST_SCALE=$scale timeout 600 "$out/splice_test"
g++ $flags -o "$out/ring_link_test" "$here/ring_link_test.cc" $pump "$here/../src/splice.cc" "$here/../src/region.cc" "$here/../src/attach.cc"
SOCKGATE_TEST_SCALE=$scale timeout 600 "$out/ring_link_test"
g++ $flags -o "$out/pump_adapt_test" "$here/pump_adapt_test.cc" $pump "$here/../src/splice.cc" "$here/../src/region.cc" "$here/../src/attach.cc"
SOCKGATE_TEST_SCALE=$scale timeout 600 "$out/pump_adapt_test"
g++ $flags -o "$out/ring_fuzz" "$here/ring_fuzz.cc"
SOCKGATE_TEST_SCALE=$scale timeout 300 "$out/ring_fuzz"
