/**
 * Import first (before anything that loads native/index.ts): this process
 * loads the test build of the addon (binding.gyp sockgate_native_test, built
 * by npm run build:native), which alone has the test hooks of hostile-peer
 * tests (Region.unsafePoke64, rdma `hostile` modes). ES modules evaluate
 * their imports in order, so the variable is set before the loader runs.
 */
process.env['SOCKGATE_NATIVE_BUILD'] = 'test';
export {};
