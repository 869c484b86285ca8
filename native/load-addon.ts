/** Loads the sockgate native addon (the product build, or the tests' build with SOCKGATE_NATIVE_BUILD=test). */
import { createRequire } from 'node:module';
import { existsSync } from 'node:fs';
import { dirname, resolve } from 'node:path';
import { fileURLToPath } from 'node:url';
import { NativeError } from '../proto/errors.js';
import type { NativeBinding } from './binding-types.js';

function load(): NativeBinding {
  const here = dirname(fileURLToPath(import.meta.url));
  // SOCKGATE_NATIVE_BUILD=test: the tests' build with the test hooks; never a fallback either way.
  const file = process.env['SOCKGATE_NATIVE_BUILD'] === 'test' ? 'sockgate_native_test.node' : 'sockgate_native.node';
  // dist/native/index.js -> ../../native/build; native/index.ts (tsx) -> ./build
  const candidates = [resolve(here, `../../native/build/Release/${file}`), resolve(here, `build/Release/${file}`)];
  const path = candidates.find((p) => existsSync(p));
  if (!path) throw new NativeError(`sockgate native addon not built (looked in ${candidates.join(', ')}); run npm run build:native`);
  return createRequire(import.meta.url)(path) as NativeBinding;
}

/** The raw addon. Prefer the wrappers below; the raw surface is for tests and the loader. */
export const binding: NativeBinding = load();
export const constants = binding.constants;
export const rdma = binding.rdma;
/** AF_VSOCK primitives; the bridge to Node sockets is clients/sdk/vsock.ts. */
export const vsock = binding.vsock;
export const DIR_C2G = 0 as const;
export const DIR_G2C = 1 as const;
