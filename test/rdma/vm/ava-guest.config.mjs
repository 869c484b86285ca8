// ava's configuration inside the lab's VMs (suite.ts passes it with --config).
// The guest sees the checkout read-only, so ava must not make
// node_modules/.cache/ava there: without a cache it uses a fresh directory in
// the guest's own (writable) /tmp. The cache only orders previously failing
// files first, which a throwaway VM never has. An explicit --config replaces
// package.json's "ava" key, so that key is taken over as is (workerThreads
// false above all: each test file in a process of its own, which releases the
// RDMA device when it exits; `rdma link delete` waits for that).
import { readFileSync } from 'node:fs';

const pkg = JSON.parse(readFileSync(new URL('../../../package.json', import.meta.url), 'utf8'));

export default { ...pkg.ava, cache: false };
