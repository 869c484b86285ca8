/**
 * The bench output's table of resource rows (families `capacity` and
 * `soak`): what the gateway holds per socket, and its drift over a soak.
 * These rows carry no throughput; the main table leaves them out.
 */
import type { BenchRow } from './lib.js';

export function isResourceRow(r: BenchRow): boolean {
  return r['family'] === 'capacity' || r['family'] === 'soak';
}

export function formatResourceTable(rows: readonly BenchRow[]): string | undefined {
  const cap = rows.filter((r) => r['family'] === 'capacity');
  const soak = rows.filter((r) => r['family'] === 'soak');
  if (!cap.length && !soak.length) return undefined;
  const out: string[] = [];
  if (cap.length) {
    out.push('capacity (sockets held open through one gateway; other ends in separate processes):');
    out.push('  transport  held     gateway fds  fds/socket  RSS held MiB  RSS/idle socket KiB  fds back to baseline');
    for (const r of cap) {
      out.push(
        `  ${String(r.transport).padEnd(9)}  ${String(r['sockets_held']).padEnd(7)}  ${String(r['gateway_fds_held']).padEnd(11)}  ${String(r['gateway_fds_per_socket']).padEnd(10)}  ${String(r['gateway_rss_held_MiB']).padEnd(12)}  ${String(r['gateway_rss_per_idle_socket_KiB']).padEnd(19)}  ${r['fds_back_to_baseline'] ? 'yes' : `NO (${r['gateway_fds_after_close']} vs ${r['gateway_fds_idle']})`}`,
      );
    }
  }
  for (const r of soak) {
    out.push(
      `soak (${r['soak_s']} s of mixed connect/transfer/close after a ${r['warmup_s']} s warm-up, ${r['transfers']} transfers SHA-256 checked, ${r['hash_mismatches']} mismatches): ` +
        `gateway RSS ${r['rss_baseline_MiB']} -> ${r['rss_after_MiB']} MiB (drift ${r['rss_drift_pct']}%), fds ${r['fds_baseline']} -> ${r['fds_after']}`,
    );
  }
  return out.join('\n');
}
