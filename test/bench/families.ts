/**
 * The benchmark families `npm run bench` runs, in this order, all in one run.
 *
 * To add one: write `test/bench/<family>.ts` exporting a `BenchFamily`
 * (see lib.ts: a name, a description, `run(ctx)` returning rows, optional
 * `skip()` and `goals`), import it here and append it to FAMILIES.
 */
import type { BenchFamily } from './lib.js';
import { gatewayPlanes } from './gateway-planes.js';
import { sidecarFamily } from './sidecar.js';
import { proxyFamily } from './proxy.js';
import { ringFamily, shmFamily } from './shm.js';
import { relaysFamily } from './relays.js';
import { capacityFamily } from './capacity.js';
import { soakFamily } from './soak.js';
import { connectFamily } from './connect.js';

export const FAMILIES: readonly BenchFamily[] = [gatewayPlanes, sidecarFamily, proxyFamily, shmFamily, ringFamily, relaysFamily, connectFamily, capacityFamily, soakFamily];
