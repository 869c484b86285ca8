/**
 * The `capacity` family: sockets held open through one gateway, per
 * transport (10,000 over shm, 1,000 over tcp and grpc; a fifth of that with
 * --quick), with the other ends in separate processes. Reports sockets held,
 * the gateway's descriptors and RSS per idle held socket, and whether its
 * descriptors returned to the baseline once all were closed.
 */
import { shmSupport } from '../../clients/sdk/attach-shm.js';
import type { TransportName } from '../../clients/sdk/socket.js';
import { CAPACITY_FD_LIMIT, CAPACITY_GATEWAY_YAML, runCapacity } from './capacity-run.js';
import type { BenchFamily, BenchRow } from './lib.js';

/** Sockets held per transport in a full run (shm: the 10,000; tcp/grpc cost more per socket). */
const COUNTS: Record<string, number> = { shm: 10_000, tcp: 1_000, grpc: 1_000 };
/** --quick divides the counts by this. */
const QUICK_DIVISOR = 10;

export const capacityFamily: BenchFamily = {
  name: 'capacity',
  description: 'sockets held open through one gateway per transport (shm 10,000; tcp, grpc 1,000): gateway fds and RSS per idle socket, fds back to baseline after closing',
  async run(ctx) {
    const rows: BenchRow[] = [];
    const transports: TransportName[] = shmSupport.available ? ['shm', 'tcp', 'grpc'] : ['tcp', 'grpc'];
    if (!shmSupport.available) ctx.log(`capacity: shm skipped: ${shmSupport.reason}`);
    for (const transport of transports) {
      const count = Math.ceil(COUNTS[transport]! / (ctx.quick ? QUICK_DIVISOR : 1));
      const g = await ctx.startGateway({ label: `capacity-${transport}`, extraYaml: CAPACITY_GATEWAY_YAML, fdLimit: CAPACITY_FD_LIMIT });
      try {
        const r = await runCapacity({ target: g.target, pid: g.pid, transport, count, log: ctx.log });
        ctx.log(`capacity ${transport}: held ${r.held}, gateway ${r.gatewayFdsHeld} fds (${r.fdsPerSocket.toFixed(2)}/socket), RSS ${(r.rssPerSocketBytes / 1024).toFixed(1)} KiB/socket, fds after close ${r.gatewayFdsAfter} (baseline ${r.gatewayFdsBase})`);
        rows.push({
          family: 'capacity',
          name: 'capacity',
          transport,
          size_bytes: 0,
          throughput_MBps: null,
          p50_us: null,
          p99_us: null,
          sockets_requested: count,
          sockets_held: r.held,
          open_errors: r.errors,
          open_ms: r.openMs,
          gateway_fds_idle: r.gatewayFdsBase,
          gateway_fds_held: r.gatewayFdsHeld,
          gateway_fds_per_socket: Math.round(r.fdsPerSocket * 100) / 100,
          gateway_rss_idle_MiB: Math.round((r.gatewayRssBase / 2 ** 20) * 10) / 10,
          gateway_rss_held_MiB: Math.round((r.gatewayRssHeld / 2 ** 20) * 10) / 10,
          gateway_rss_per_idle_socket_KiB: Math.round((r.rssPerSocketBytes / 1024) * 10) / 10,
          gateway_fds_after_close: r.gatewayFdsAfter,
          fds_back_to_baseline: r.gatewayFdsAfter === r.gatewayFdsBase,
          fds_settle_ms: r.fdsSettleMs,
        });
      } finally {
        await g.stop();
      }
    }
    return rows;
  },
};
