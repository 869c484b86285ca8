/**
 * The vsock benchmark row (issue 17): guest proxy -> gateway over native
 * AF_VSOCK against a plain socat relay doing the same hop, in one VM, one run.
 *
 *   node dist/test/rdma/vm/bench-vsock.js          (host: boots one VM, writes the rows
 *                                                   to test/bench/results-rdma.json)
 *   node dist/test/rdma/vm/bench-vsock.js guest    (inside the VM)
 *
 * Paths, each carrying BYTES from a client to a TCP sink on 127.0.0.1 that
 * answers with the SHA-256 of what it received (checked against what was sent):
 *   - direct: client -> sink (the ceiling);
 *   - sockgate: client -> `sockgate proxy -L` -> AF_VSOCK (CID 1) -> gateway `vsock:` listener -> sink;
 *   - socat: client -> socat TCP-LISTEN -> VSOCK-CONNECT:1 -> socat VSOCK-LISTEN -> TCP -> sink.
 * vsock_loopback stands for the guest-to-host transport (both ends in one kernel).
 * Rounds alternate the paths so drift in the host's load hits them alike.
 */
import { spawn, type ChildProcess } from 'node:child_process';
import { createHash, randomBytes } from 'node:crypto';
import { once } from 'node:events';
import { existsSync, readFileSync, writeFileSync } from 'node:fs';
import { connect as netConnect, createServer, type Server } from 'node:net';
import { cpus, loadavg } from 'node:os';
import { join } from 'node:path';
import { fileURLToPath } from 'node:url';

/** Bytes per transfer: long enough that connection setup is noise, short enough for TCG. */
const BYTES = 32 << 20;
/** Write size of the client. */
const CHUNK = 256 << 10;
/** Rounds per path (alternating); the row keeps the median. */
const ROUNDS = 3;
/** vsock ports: the gateway's control and data, and socat's. */
const GATEWAY_PORTS = { control: 19070, data: 19071 };
const SOCAT_PORT = 19170;
/** Bound on one transfer and on each start-up step. */
const STEP_MS = 180_000;
const ROWS_PREFIX = 'SOCKGATE_BENCH_ROWS=';
/** socat's wait after a half-close, in seconds: the digest comes back after the client's EOF, slowly under TCG. */
const SOCAT_HALF_CLOSE_S = '60';

const here = fileURLToPath(new URL('.', import.meta.url));
const REPO = join(here, '..', '..', '..', '..');
const CLI = join(REPO, 'dist', 'server', 'cli', 'index.js');

function within<T>(p: Promise<T>, ms: number, what: string): Promise<T> {
  let timer: NodeJS.Timeout;
  return Promise.race([
    p.finally(() => clearTimeout(timer)),
    new Promise<T>((_, reject) => {
      timer = setTimeout(() => reject(new Error(`${what}: not done within ${ms} ms`)), ms);
    }),
  ]);
}

/** A sink that hashes what it receives and answers with the hex digest once the client ends. */
async function startSink(): Promise<{ server: Server; port: number }> {
  const server = createServer({ allowHalfOpen: true }, (c) => {
    const h = createHash('sha256');
    c.on('data', (b: Buffer) => h.update(b));
    c.on('end', () => c.end(h.digest('hex')));
    c.on('error', () => {});
  });
  server.listen(0, '127.0.0.1');
  await once(server, 'listening');
  return { server, port: (server.address() as { port: number }).port };
}

/** Send BYTES to 127.0.0.1:port; resolves with MB/s once the sink's digest matched. */
async function transfer(port: number, what: string): Promise<number> {
  const piece = randomBytes(CHUNK);
  const sent = createHash('sha256');
  const c = netConnect({ host: '127.0.0.1', port, allowHalfOpen: true });
  await within(once(c, 'connect'), STEP_MS, `${what}: connect`);
  let answer = '';
  c.setEncoding('latin1').on('data', (s: string) => (answer += s));
  const ended = once(c, 'end');
  const t0 = process.hrtime.bigint();
  await within(
    (async () => {
      for (let n = 0; n < BYTES; n += CHUNK) {
        sent.update(piece);
        if (!c.write(piece)) await once(c, 'drain');
      }
      c.end();
      await ended;
    })(),
    STEP_MS,
    `${what}: transfer`,
  );
  const seconds = Number(process.hrtime.bigint() - t0) / 1e9;
  c.destroy();
  if (answer !== sent.digest('hex')) throw new Error(`${what}: the sink's SHA-256 does not match what was sent (${answer.slice(0, 16)}...)`);
  return BYTES / seconds / 1e6;
}

/** Start a child and wait for `ready(stdout)` to return a value. */
async function startChild<T>(cmd: string, args: string[], ready: (out: string) => T | undefined, what: string): Promise<{ child: ChildProcess; value: T }> {
  const child = spawn(cmd, args, { stdio: ['ignore', 'pipe', 'pipe'], env: { ...process.env, SOCKGATE_TOKEN: '' } });
  let out = '';
  let err = '';
  child.stdout!.setEncoding('utf8').on('data', (s: string) => (out += s));
  child.stderr!.setEncoding('utf8').on('data', (s: string) => (err += s));
  const value = await within(
    new Promise<T>((resolve, reject) => {
      const poll = setInterval(() => {
        const v = ready(out);
        if (v !== undefined) {
          clearInterval(poll);
          resolve(v);
        } else if (child.exitCode !== null) {
          clearInterval(poll);
          reject(new Error(`${what} exited ${child.exitCode}: ${err}`));
        }
      }, 50);
    }),
    STEP_MS,
    `${what} start`,
  );
  return { child, value };
}

/** A local TCP port socat may listen on. */
async function freePort(): Promise<number> {
  const s = createServer().listen(0, '127.0.0.1');
  await once(s, 'listening');
  const port = (s.address() as { port: number }).port;
  await new Promise((r) => s.close(r));
  return port;
}

async function waitListening(port: number): Promise<void> {
  const deadline = Date.now() + STEP_MS;
  for (;;) {
    const ok = await new Promise<boolean>((resolve) => {
      const c = netConnect({ host: '127.0.0.1', port });
      c.once('connect', () => {
        c.destroy();
        resolve(true);
      });
      c.once('error', () => resolve(false));
    });
    if (ok) return;
    if (Date.now() > deadline) throw new Error(`nothing listens on 127.0.0.1:${port}`);
    await new Promise((r) => setTimeout(r, 100));
  }
}

function median(xs: number[]): number {
  const s = [...xs].sort((a, b) => a - b);
  return s[Math.floor(s.length / 2)]!;
}

async function guest(): Promise<void> {
  const { loadConfig } = await import('../../../server/config.js');
  const { Gateway } = await import('../../../server/gateway.js');
  const sink = await startSink();
  const gateway = new Gateway(
    loadConfig({
      overrides: {
        listen: { control: '127.0.0.1:0', data: '127.0.0.1:0', metrics: '' },
        telemetry: { log_level: 'silent', traces: 'none' },
        identities: [{ name: 'vm-local', vsock_cids: [1] }],
        vsock: { cid: 1, control_port: GATEWAY_PORTS.control, data_port: GATEWAY_PORTS.data },
      },
    }),
  );
  await gateway.start();
  const children: ChildProcess[] = [];
  try {
    const proxy = await startChild(
      process.execPath,
      [CLI, 'proxy', '--gateway', `vsock:1:${GATEWAY_PORTS.control}`, '--transport', 'tcp', '-L', `127.0.0.1:0=tcp://127.0.0.1:${sink.port}`, '--log-level', 'warn'],
      (out) => {
        const line = out.split('\n').find((l) => l.startsWith('{'));
        return line ? Number((JSON.parse(line) as { local: { listen: string }[] }).local[0]!.listen.split(':').pop()) : undefined;
      },
      'sockgate proxy',
    );
    children.push(proxy.child);
    // -t: after one direction's EOF socat waits this long for the other (the sink's digest) instead of 0.5 s.
    const host = spawn('socat', ['-t', SOCAT_HALF_CLOSE_S, `VSOCK-LISTEN:${SOCAT_PORT},fork,reuseaddr`, `TCP:127.0.0.1:${sink.port}`], { stdio: 'ignore' });
    children.push(host);
    const socatPort = await freePort();
    const guestSide = spawn('socat', ['-t', SOCAT_HALF_CLOSE_S, `TCP-LISTEN:${socatPort},bind=127.0.0.1,fork,reuseaddr`, `VSOCK-CONNECT:1:${SOCAT_PORT}`], { stdio: 'ignore' });
    children.push(guestSide);
    await waitListening(socatPort);
    const paths = { direct: sink.port, sockgate: proxy.value, socat: socatPort };
    const results: Record<keyof typeof paths, number[]> = { direct: [], sockgate: [], socat: [] };
    for (let r = 0; r < ROUNDS; r++) {
      const order = (r % 2 === 0 ? ['sockgate', 'socat', 'direct'] : ['direct', 'socat', 'sockgate']) as (keyof typeof paths)[];
      for (const p of order) results[p].push(await transfer(paths[p], p));
    }
    const row = (name: string, transport: string, xs: number[]) => ({
      name,
      transport,
      size_bytes: CHUNK,
      transfer_bytes: BYTES,
      throughput_MBps: Math.round(median(xs) * 10) / 10,
      rounds_MBps: xs.map((x) => Math.round(x * 10) / 10),
      sha256_checked: true,
      p50_us: null,
      p99_us: null,
    });
    const rows = [
      row('vsock: direct TCP (ceiling)', 'tcp', results.direct),
      row('vsock: socat relay pair (VSOCK-LISTEN <-> TCP)', 'vsock', results.socat),
      { ...row('vsock: guest proxy -> gateway (native AF_VSOCK)', 'vsock', results.sockgate), vs_socat: Math.round((median(results.sockgate) / median(results.socat)) * 100) / 100 },
    ];
    process.stdout.write(`${ROWS_PREFIX}${JSON.stringify(rows)}\n`);
  } finally {
    for (const c of children) c.kill('SIGKILL');
    sink.server.close();
    await gateway.destroy();
  }
}

async function host(): Promise<number> {
  const { oneVm, prepare, runVms } = await import('./vm.js');
  const prepared = await prepare();
  if (prepared.kind === 'skip') {
    process.stdout.write(`SKIP: vsock benchmark: ${prepared.reason}\n`);
    return 0;
  }
  const loadBefore = loadavg().map((v) => Math.round(v * 100) / 100);
  const results = await runVms(prepared, oneVm('node dist/test/rdma/vm/bench-vsock.js guest'), { timeoutMs: 20 * 60_000, kernelArgs: ['init_on_alloc=0'] });
  const line = results[0]?.lines.find((l) => l.startsWith(ROWS_PREFIX));
  if (!line || results[0]!.exitCode !== 0) {
    process.stderr.write(`vsock benchmark failed: exit ${results[0]?.exitCode}\n`);
    return 1;
  }
  const rows = JSON.parse(line.slice(ROWS_PREFIX.length)) as Array<Record<string, unknown>>;
  const load = loadavg().map((v) => Math.round(v * 100) / 100);
  for (const r of rows) Object.assign(r, { host_cpus: cpus().length, host_loadavg_before: loadBefore, host_loadavg_after: load, guest_kernel_args: 'init_on_alloc=0', vm: 'one VM, smp 2, vsock_loopback' });
  const file = join(REPO, 'test', 'bench', 'results-rdma.json');
  const ours = new Set(rows.map((r) => r['name']));
  let kept: unknown[] = [];
  if (existsSync(file)) {
    const old = JSON.parse(readFileSync(file, 'utf8')) as unknown;
    if (Array.isArray(old)) kept = old.filter((r) => !ours.has((r as { name?: string })?.name));
  }
  writeFileSync(file, JSON.stringify([...kept, ...rows], null, 2) + '\n');
  for (const r of rows) process.stdout.write(`  ${String(r['name']).padEnd(50)} ${r['throughput_MBps']} MB/s ${r['vs_socat'] !== undefined ? `(${r['vs_socat']}x socat)` : ''}\n`);
  return 0;
}

(process.argv[2] === 'guest' ? guest().then(() => 0) : host()).then(
  (code) => process.exit(code),
  (err: unknown) => {
    process.stderr.write(`bench-vsock: ${err instanceof Error ? (err.stack ?? err.message) : String(err)}\n`);
    process.exit(1);
  },
);
