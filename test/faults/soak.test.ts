/**
 * Soak (issue 12): 3 minutes of mixed connect / transfer / close load over
 * every plane against one `sockgate serve` process, after a 30 s warm-up of
 * the same load. Baseline = the gateway's RSS and descriptors after the
 * warm-up and a quiet period; after the soak and the same quiet period its
 * descriptors equal the baseline exactly and its RSS is within 5% + 8 MiB.
 * Every finished transfer is SHA-256 checked. About 3.6 minutes in all.
 */
import test from 'ava';
import { runSoak, rssWithinBound } from '../bench/soak-run.js';
import { startChildGateway } from '../bench/lib.js';

/** The figures. */
const WARMUP_MS = 30_000;
const SOAK_MS = 180_000;
/** Quiet time before each measurement: sockets closing, the gateway's records of them expiring. */
const QUIET_MS = 4_000;

test('soak: 3 min of mixed load; gateway fds back to the baseline exactly, RSS within 5% + 8 MiB, every transfer intact', async (t) => {
  t.timeout(WARMUP_MS + SOAK_MS + 2 * QUIET_MS + 60_000);
  const g = await startChildGateway({ label: 'soak' });
  t.teardown(() => g.stop());
  const r = await runSoak({ target: g.target, pid: g.pid, warmupMs: WARMUP_MS, soakMs: SOAK_MS, quietMs: QUIET_MS, log: (s) => t.log(s) });
  const mib = (b: number) => (b / 2 ** 20).toFixed(1);
  t.log(
    `${r.transfers} transfers (${r.aborted} more aborted mid-way), RSS ${mib(r.rssBaseline)} -> ${mib(r.rssAfter)} MiB ` +
      `(${(((r.rssAfter - r.rssBaseline) / r.rssBaseline) * 100).toFixed(1)}%, peak ${mib(r.rssPeak)}), fds ${r.fdsBaseline} -> ${r.fdsAfter}`,
  );
  t.deepEqual(r.failures, {}, 'no iteration failed');
  t.true(r.transfers > 0);
  t.is(r.hashMismatches, 0, 'every transfer intact (SHA-256)');
  t.is(r.fdsAfter, r.fdsBaseline, "the gateway's descriptors equal the baseline");
  t.true(rssWithinBound(r), `gateway RSS ${mib(r.rssAfter)} MiB within 5% + 8 MiB of the baseline ${mib(r.rssBaseline)} MiB`);
  t.is(g.logs().includes('"level":50') || g.logs().includes('"level":60'), false, 'the gateway logged no errors');
});
