/**
 * The load-balancing seam: what a policy is given and what it answers. Its own
 * file so that lb.ts (the factory) and each policy import it without a cycle.
 */
import type { Endpoint } from './endpoint.js';
import type { LbPolicy } from './sidecar-config.js';

export interface PickContext {
  /** What consistent hashing hashes: the client's address (without port). */
  hashKey: string;
  /** Endpoints already tried for this connection; a retry goes elsewhere. */
  exclude?: ReadonlySet<Endpoint>;
}

export interface LoadBalancer {
  readonly policy: LbPolicy;
  /** An endpoint from `candidates` not in `ctx.exclude`, or undefined if there is none. */
  pick(candidates: readonly Endpoint[], ctx: PickContext): Endpoint | undefined;
}
