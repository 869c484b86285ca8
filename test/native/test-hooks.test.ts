/**
 * Test hooks live only in the test build of the addon (binding.gyp
 * sockgate_native_test, SOCKGATE_TEST_HOOKS): the product addon has no
 * Region.unsafePoke64 and refuses the rdma `hostile` modes loudly, and
 * SOCKGATE_NATIVE_BUILD=test makes native/index.ts load the test build.
 */
import test from 'ava';
import { execFileSync } from 'node:child_process';
import { existsSync } from 'node:fs';
import { createRequire } from 'node:module';
import { dirname, resolve } from 'node:path';
import { fileURLToPath } from 'node:url';
import type { NativeBinding } from '../../native/index.js';

const ROOT = resolve(dirname(fileURLToPath(import.meta.url)), '../../..');
const PRODUCT = resolve(ROOT, 'native/build/Release/sockgate_native.node');
const TEST_BUILD = resolve(ROOT, 'native/build/Release/sockgate_native_test.node');

test('npm run build:native builds both the product addon and the test build', (t) => {
  t.true(existsSync(PRODUCT), PRODUCT);
  t.true(existsSync(TEST_BUILD), TEST_BUILD);
});

test('the product addon has no test hooks: no unsafePoke64, rdma hostile modes refused', (t) => {
  const b = createRequire(import.meta.url)(PRODUCT) as NativeBinding;
  t.false(b.testHooks);
  const r = new b.Region({ slots: 1, maxRingSize: 4096 });
  try {
    t.is((r as unknown as Record<string, unknown>)['unsafePoke64'], undefined);
    t.is(typeof r.unsafePeek64, 'function', 'reading our own mapping is no hook');
  } finally {
    r.close();
  }
  if (!b.rdma.built) return t.log('rdma not built here (no rdma-core headers): only the Region hook checked');
  const pump = new b.Pump(() => {});
  try {
    t.throws(() => b.rdma.connect!(pump, { addr: '127.0.0.1', port: 9, token: new Uint8Array(16), hostile: 1 }), {
      instanceOf: TypeError,
      message: /hostile is a test hook/,
    });
    t.throws(() => void b.rdma.loopback!({ addr: '127.0.0.1', data: new Uint8Array(1), pump, hostile: 2 }), {
      instanceOf: TypeError,
      message: /hostile is a test hook/,
    });
  } finally {
    pump.close();
  }
});

test('SOCKGATE_NATIVE_BUILD=test: native/index.ts loads the test build, which has the hooks', (t) => {
  const index = resolve(ROOT, 'dist/native/index.js');
  const probe = `import(${JSON.stringify(index)}).then((m) => { const r = m.ShmRegion.create({ slots: 1, maxRingSize: 4096 }); ` +
    `console.log(JSON.stringify({ hooks: m.binding.testHooks, poke: typeof r.raw.unsafePoke64 })); r.close(); })`;
  const run = (env: NodeJS.ProcessEnv) => JSON.parse(execFileSync(process.execPath, ['-e', probe], { env, encoding: 'utf8', timeout: 30_000 }).trim());
  const { SOCKGATE_NATIVE_BUILD: _, ...plain } = process.env;
  t.deepEqual(run({ ...plain, SOCKGATE_NATIVE_BUILD: 'test' }), { hooks: true, poke: 'function' });
  t.deepEqual(run(plain), { hooks: false, poke: 'undefined' });
});
