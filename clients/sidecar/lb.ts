/**
 * Load-balancing policies: given the endpoints a cluster may use right now,
 * pick one for a new connection. The cluster decides the candidates (health,
 * ejection, panic mode); a policy only orders them.
 */
import type { Endpoint } from './endpoint.js';
import { MaglevLoadBalancer } from './lb-maglev.js';
import type { LbPolicy } from './sidecar-config.js';
import type { LoadBalancer, PickContext } from './load-balancer.js';

export type { LoadBalancer, PickContext } from './load-balancer.js';

/**
 * Round robin over the candidates in order: with a stable set, N connections
 * over k endpoints give each floor(N/k) or ceil(N/k).
 */
export class RoundRobinLoadBalancer implements LoadBalancer {
  readonly policy = 'round_robin' as const;
  /** Index of the next pick; only ever increases (taken modulo the candidate count). */
  private next = 0;

  pick(candidates: readonly Endpoint[], ctx: PickContext): Endpoint | undefined {
    const n = candidates.length;
    for (let i = 0; i < n; i++) {
      const ep = candidates[this.next++ % n]!;
      if (!ctx.exclude?.has(ep)) return ep;
    }
    return undefined;
  }
}

/**
 * Least connections: the candidate with the fewest open plus opening
 * connections; ties go round robin. A full scan (clusters are small), rather
 * than Envoy's power-of-two-choices sampling, so the choice is exact.
 */
export class LeastConnectionsLoadBalancer implements LoadBalancer {
  readonly policy = 'least_connections' as const;
  /** Where the tie-breaking scan starts; advances on every pick. */
  private start = 0;

  pick(candidates: readonly Endpoint[], ctx: PickContext): Endpoint | undefined {
    const n = candidates.length;
    let best: Endpoint | undefined;
    let bestLoad = Infinity;
    const start = this.start++;
    for (let i = 0; i < n; i++) {
      const ep = candidates[(start + i) % n]!;
      if (ctx.exclude?.has(ep)) continue;
      const load = ep.stats.active + ep.stats.pending;
      if (load < bestLoad) {
        best = ep;
        bestLoad = load;
      }
    }
    return best;
  }
}

/** A fresh policy instance for a cluster. */
export function createLoadBalancer(policy: LbPolicy, maglevTableSize: number): LoadBalancer {
  switch (policy) {
    case 'round_robin':
      return new RoundRobinLoadBalancer();
    case 'least_connections':
      return new LeastConnectionsLoadBalancer();
    case 'maglev':
      return new MaglevLoadBalancer(maglevTableSize);
  }
}
