/**
 * The `soak` family: a shorter run of test/faults/soak.test.ts's load (mixed
 * connect / transfer / close over every plane against one gateway) that
 * reports the gateway's RSS and descriptor drift from the post-warm-up
 * baseline. The CI test runs the full 30 s + 3 min and asserts the bounds.
 */
import { runSoak, rssWithinBound } from './soak-run.js';
import type { BenchFamily } from './lib.js';

/** Warm-up and soak lengths of a full bench run (the CI test: 30 s and 180 s). */
const WARMUP_MS = 20_000;
const SOAK_MS = 60_000;
/** --quick divides both by this. */
const QUICK_DIVISOR = 4;
const QUIET_MS = 4_000;

export const soakFamily: BenchFamily = {
  name: 'soak',
  description: 'mixed connect/transfer/close load against one gateway: RSS and fd drift from the post-warm-up baseline (SHA-256 checked transfers)',
  async run(ctx) {
    const d = ctx.quick ? QUICK_DIVISOR : 1;
    const g = await ctx.startGateway({ label: 'soak' });
    const r = await runSoak({ target: g.target, pid: g.pid, warmupMs: WARMUP_MS / d, soakMs: SOAK_MS / d, quietMs: QUIET_MS, log: ctx.log });
    const mib = (b: number) => Math.round((b / 2 ** 20) * 10) / 10;
    return [
      {
        family: 'soak',
        name: 'soak',
        transport: 'mixed',
        size_bytes: 0,
        throughput_MBps: null,
        p50_us: null,
        p99_us: null,
        warmup_s: r.warmupMs / 1000,
        soak_s: r.soakMs / 1000,
        transfers: r.transfers,
        aborted_transfers: r.aborted,
        hash_mismatches: r.hashMismatches,
        failures: r.failures,
        rss_baseline_MiB: mib(r.rssBaseline),
        rss_after_MiB: mib(r.rssAfter),
        rss_peak_MiB: mib(r.rssPeak),
        rss_drift_pct: Math.round(((r.rssAfter - r.rssBaseline) / r.rssBaseline) * 1000) / 10,
        rss_within_5pct_plus_8MiB: rssWithinBound(r),
        fds_baseline: r.fdsBaseline,
        fds_after: r.fdsAfter,
      },
    ];
  },
};
