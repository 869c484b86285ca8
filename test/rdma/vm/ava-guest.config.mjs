// ava's configuration inside the lab's VMs (suite.ts passes it with --config;
// package.json's "ava" key still applies). The guest sees the checkout
// read-only, so ava must not make node_modules/.cache/ava there: without a
// cache it uses a fresh directory in the guest's own (writable) /tmp. The
// cache only orders previously failing files first, which a throwaway VM
// never has.
export default { cache: false };
