/**
 * The live-failover row of the two-VM benchmark (issue 14): the time from a
 * fault of the rdma connection to the first byte on the new path, during a
 * 256 MiB download, run by bench-peer.ts after the gateway's own rows.
 *
 * - server (VM a): startFailoverServers(): a gateway with live failover
 *   (transports.rdma.resume_ms) and a source that sends FAILOVER_BYTES of the
 *   lab's deterministic stream (test/rdma/two/lab.ts) and ends.
 * - client (VM b): `node bench-failover.js client <addr>`, a process of its own
 *   with the addon's test build (SOCKGATE_NATIVE_BUILD=test, set by
 *   bench-peer.ts), because the fault is the injected QP fatal of
 *   test/rdma/failover.test.ts: the SDK's `rdma.hostile` 4 makes its RDMA
 *   writes use a key the gateway never issued, and the application writes one
 *   byte once TRIGGER_AT bytes came down, so the fault's time is known here.
 *   RUNS downloads, each SHA-256 checked; prints SOCKGATE_FAILOVER_RUNS=<json>.
 *
 * Per run: `fault_to_moved_ms` (fault to the SDK's `moved`: the resume
 * handshake on the data port done and the splice relay started, whose first
 * write is the gateway's re-sent tail, i.e. the first byte on the new path
 * leaves the gateway then) and `fault_to_first_data_ms` (fault to the first
 * bytes the application read after the move; an upper bound, since bytes the
 * rdma slot had already written to the socket pair may be read in between).
 */
import { createHash } from 'node:crypto';
import { once } from 'node:events';
import { mkdtempSync } from 'node:fs';
import { createServer, type Server, type Socket } from 'node:net';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { median, roundTo, type BenchRow as Row } from '../../bench/lib.js';
import { sourceBlock, sourceChunk } from '../two/lab.js';

/** The benchmark size (CI's two-VM tests move 32 MiB). */
export const FAILOVER_BYTES = Number(process.env['SOCKGATE_BENCH_FAILOVER_BYTES'] || 256 << 20);
/** Downloads measured (the row reports the median and each). */
export const RUNS = Number(process.env['SOCKGATE_BENCH_FAILOVER_RUNS'] || 3);
/** Bytes received before the faulting write: a quarter in, with the stream at full speed. */
const TRIGGER_AT = Math.floor(FAILOVER_BYTES / 4);
/** The failover gateway: control, data = +1 (the resume's target, so on the lab's address). */
export const PORT_FO_GW = 7080;
export const PORT_FO_SOURCE = 5213;
/** transports.rdma.resume_ms of the failover gateway (the bound a suspended socket waits). */
const RESUME_MS = 10_000;
/** One download may take this long under TCG (256 MiB at a few MB/s at worst). */
const RUN_TIMEOUT_MS = 240_000;

const log = (msg: string): void => void process.stdout.write(`bench-failover: ${msg}\n`);

/** Where a faulted socket goes: a new rdma connection (MOVE), or the tcp data port when none can be made. */
export type FailoverTarget = 'rdma' | 'tcp';
export const TARGETS: readonly FailoverTarget[] = ['rdma', 'tcp'];

export interface FailoverRun {
  target: FailoverTarget;
  bytes: number;
  sha_ok: boolean;
  seconds: number;
  MBps: number;
  transport_after: string;
  cause: string;
  fault_to_moved_ms: number;
  fault_to_first_data_ms: number | null;
  errors: string[];
}

/** VM a: the source and the failover gateway. */
export async function startFailoverServers(addr: string): Promise<{ close(): Promise<void> }> {
  const block = sourceBlock();
  const sockets = new Set<Socket>();
  const source: Server = createServer({ allowHalfOpen: true }, (c) => {
    sockets.add(c);
    c.on('close', () => sockets.delete(c));
    c.on('error', () => {});
    c.resume(); // the trigger byte arrives here (after the resume): read and dropped
    let sent = 0;
    const pump = (): void => {
      while (sent < FAILOVER_BYTES) {
        const piece = sourceChunk(block, sent);
        sent += piece.length;
        if (!c.write(piece)) return void c.once('drain', pump);
      }
      c.end();
    };
    pump();
  });
  source.listen(PORT_FO_SOURCE, addr);
  await once(source, 'listening');
  const { loadConfig } = await import('../../../server/config.js');
  const { Gateway } = await import('../../../server/gateway.js');
  const gw = new Gateway(
    loadConfig({
      overrides: {
        listen: { control: `${addr}:${PORT_FO_GW}`, data: `${addr}:${PORT_FO_GW + 1}`, metrics: '' },
        transports: { enabled: ['rdma', 'tcp'], shm: { path: join(mkdtempSync(join(tmpdir(), 'sockgate-fo-')), 'shm.sock') }, rdma: { address: addr, resume_ms: RESUME_MS } },
        rules: [{ name: 'bench-source', action: 'allow', protocols: ['tcp'], directions: ['connect'], destinations: [`${addr}/32`], ports: [String(PORT_FO_SOURCE)] }],
        telemetry: { log_level: 'warn', traces: 'none' },
        shutdown: { drain_timeout_ms: 2000 },
      },
    }),
  );
  await gw.start();
  log(`failover gateway at ${addr}:${PORT_FO_GW} (resume_ms ${RESUME_MS}), source of ${FAILOVER_BYTES} B at ${addr}:${PORT_FO_SOURCE}`);
  return {
    async close() {
      for (const s of sockets) s.destroy();
      source.close();
      await Promise.race([gw.destroy(), new Promise((r) => setTimeout(r, 10_000))]);
    },
  };
}

/**
 * VM b, in its own process: RUNS downloads per target, interleaved, each with the injected QP fatal at TRIGGER_AT.
 * Target tcp: the move connection announces an old protocol version (the test build's hostile 2), so the gateway
 * refuses it and the socket resumes on the tcp data port, as when no rdma connection can be made.
 */
async function client(addr: string): Promise<FailoverRun[]> {
  const block = sourceBlock();
  const want = createHash('sha256');
  for (let n = 0; n < FAILOVER_BYTES; n += sourceChunk(block, n).length) want.update(sourceChunk(block, n));
  const wantSha = want.digest('hex');
  const { Gateway } = await import('../../../clients/sdk/index.js');
  const runs: FailoverRun[] = [];
  for (let i = 0; i < RUNS * TARGETS.length; i++) {
    const target = TARGETS[i % TARGETS.length]!;
    // A fresh SDK Gateway each run: hostile 4 faults its first rdma connection, and a run must start on rdma.
    const gw = await Gateway.connect(`${addr}:${PORT_FO_GW}`, { transports: ['rdma'], rdma: { hostile: 4, ...(target === 'tcp' ? { moveHostile: 2 as const } : {}) } });
    try {
      const sock = await gw.connect(`tcp://${addr}:${PORT_FO_SOURCE}`);
      if (sock.transport !== 'rdma') throw new Error(`the download rides ${sock.transport}, not rdma`);
      const errors: string[] = [];
      sock.on('error', (err: Error & { code?: string }) => errors.push(`${err.code ?? ''} ${err.message}`));
      const h = createHash('sha256');
      let received = 0;
      let faultAt = 0;
      let firstAfterMove: number | null = null;
      const t0 = Date.now();
      await new Promise<void>((resolve, reject) => {
        const timer = setTimeout(() => reject(new Error(`run ${i}: no end within ${RUN_TIMEOUT_MS} ms (${received} B)`)), RUN_TIMEOUT_MS);
        sock.on('data', (d: Buffer) => {
          if (firstAfterMove === null && sock.moves.length > 0) firstAfterMove = Date.now();
          h.update(d);
          received += d.length;
          if (!faultAt && received >= TRIGGER_AT) {
            faultAt = Date.now();
            sock.write('!');
          }
        });
        const done = (): void => (clearTimeout(timer), resolve());
        sock.once('end', done);
        sock.once('close', done);
      });
      const seconds = (Date.now() - t0) / 1000;
      const move = sock.moves[0];
      const run: FailoverRun = {
        target,
        bytes: received,
        sha_ok: received === FAILOVER_BYTES && h.digest('hex') === wantSha,
        seconds: roundTo(seconds, 2),
        MBps: roundTo(received / 1e6 / seconds),
        transport_after: sock.transport,
        cause: move?.cause ?? '',
        fault_to_moved_ms: move && faultAt ? move.atMs - faultAt : -1,
        fault_to_first_data_ms: firstAfterMove !== null && faultAt ? firstAfterMove - faultAt : null,
        errors,
      };
      log(`run ${i + 1}: ${JSON.stringify(run)}`);
      runs.push(run);
      sock.destroy();
    } finally {
      gw.close();
    }
  }
  return runs;
}

/** The rows, one per target: medians over its runs, the no-fault stream row as the baseline (ratio of throughput). */
export function failoverRows(all: FailoverRun[], noFaultMBps: number | undefined): Row[] {
  return TARGETS.map((t) => failoverRow(all.filter((r) => r.target === t), t, noFaultMBps));
}

function failoverRow(runs: FailoverRun[], target: FailoverTarget, noFaultMBps: number | undefined): Row {
  const ok = runs.length > 0 && runs.every((r) => r.sha_ok && r.errors.length === 0 && r.transport_after === target && r.fault_to_moved_ms >= 0);
  const moved = runs.map((r) => r.fault_to_moved_ms);
  const first = runs.map((r) => r.fault_to_first_data_ms).filter((v): v is number => v !== null);
  const mbps = median(runs.map((r) => r.MBps));
  return {
    name: target === 'rdma' ? 'sockgate rdma live failover (injected QP fatal) to a new rdma connection' : 'sockgate rdma live failover (injected QP fatal) to the tcp data port',
    transport: `rdma->${target}`,
    size_bytes: 65536,
    throughput_MBps: roundTo(mbps),
    p50_us: null,
    p99_us: null,
    fault_to_first_byte_ms: ok ? median(moved) : null,
    fault_to_first_byte_ms_runs: moved,
    fault_to_first_data_read_ms: first.length ? median(first) : null,
    fault_to_first_data_read_ms_runs: first,
    ...(noFaultMBps ? { vs_no_fault_stream: roundTo(mbps / noFaultMBps, 3) } : {}),
    transfer_bytes: FAILOVER_BYTES,
    runs: runs.length,
    all_sha256_ok: runs.every((r) => r.sha_ok),
    ok,
    note: `SDK (transports: [rdma], rdma.hostile 4: the test build's wrong-key RDMA writes) on b downloads ${FAILOVER_BYTES >> 20} MiB from a TCP source on a through a gateway with transports.rdma.resume_ms ${RESUME_MS}; after ${TRIGGER_AT >> 20} MiB the application writes one byte, whose RDMA write faults the QP on both ends; the socket resumes ${target === 'rdma' ? 'on a new rdma connection (MOVE, RESUME BIND/BOUND)' : 'on the tcp data port (the new rdma connection refused: test build hostile 2)'}. fault_to_first_byte_ms: that write to the SDK's move (resume handshake done, the new path started with the re-sent tail); fault_to_first_data_read_ms: to the first bytes the application read after the move (upper bound). Median of ${runs.length}; throughput over the whole transfer, fault included, vs the no-fault 'sockgate rdma channel stream' row`,
    per_run: runs,
  };
}

if (process.argv[1]?.endsWith('bench-failover.js') && process.argv[2] === 'client') {
  const addr = process.argv[3] || process.env['SOCKGATE_VM_PEER_ADDR'] || '10.99.0.1';
  client(addr).then(
    (runs) => {
      process.stdout.write(`SOCKGATE_FAILOVER_RUNS=${JSON.stringify(runs)}\n`);
      process.exit(0);
    },
    (err: unknown) => {
      process.stderr.write(`bench-failover client: ${err instanceof Error ? err.stack ?? err.message : String(err)}\n`);
      process.exit(1);
    },
  );
}
