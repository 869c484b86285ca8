/**
 * Sidecar test helpers: real backends on 127.0.0.1 that can be killed and
 * restarted on the same port, a black-hole endpoint whose SYNs go unanswered,
 * a sidecar started from a YAML file beside an in-process gateway, and client
 * loops that check every byte with SHA-256. Every wait is bounded.
 */
import { spawn, type ChildProcess } from 'node:child_process';
import { createHash, randomBytes } from 'node:crypto';
import { once } from 'node:events';
import { mkdtempSync, rmSync, writeFileSync } from 'node:fs';
import { connect as netConnect, createServer, type Server, type Socket } from 'node:net';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { PassThrough } from 'node:stream';
import { stringify } from 'yaml';
import { Sidecar, type SidecarOptions } from '../../../clients/sidecar/sidecar.js';
import { createTelemetry } from '../../../server/telemetry.js';
import { within } from '../../helpers/harness.js';

/** Every client connection starts with this, so a backend can tell traffic from health checks. */
export const TRAFFIC_PREFIX = 'C:';
/** What health checks send (and, echoed, expect). */
export const HC_SEND = 'HC-PING\n';

/** A TCP echo backend that counts traffic connections and can be killed and restarted on its port. */
export class Backend {
  /** Traffic connections ever accepted (first bytes start with TRAFFIC_PREFIX). */
  traffic = 0;
  /** Health-check connections (anything else). */
  other = 0;
  /** Client ids seen in traffic connections (the text after the prefix up to the first newline). */
  readonly ids: string[] = [];
  private server: Server | undefined;
  private readonly sockets = new Set<Socket>();
  /** Traffic sockets open now. */
  readonly open = new Set<Socket>();
  port = 0;

  constructor(
    readonly name: string,
    readonly host = '127.0.0.1',
  ) {}

  get uri(): string {
    return `tcp://${this.host}:${this.port}`;
  }

  async start(): Promise<this> {
    const server = createServer({ allowHalfOpen: true }, (c) => this.onConn(c));
    server.listen(this.port, this.host);
    await within(once(server, 'listening'), 5_000, `${this.name} listen`);
    this.port = (server.address() as { port: number }).port;
    this.server = server;
    return this;
  }

  private onConn(c: Socket): void {
    this.sockets.add(c);
    c.on('error', () => {});
    c.on('close', () => {
      this.sockets.delete(c);
      this.open.delete(c);
    });
    let first = true;
    c.on('data', (d: Buffer) => {
      if (first) {
        first = false;
        if (d.subarray(0, TRAFFIC_PREFIX.length).toString() === TRAFFIC_PREFIX) {
          this.traffic++;
          this.open.add(c);
          const nl = d.indexOf(10);
          this.ids.push(d.subarray(TRAFFIC_PREFIX.length, nl < 0 ? Math.min(d.length, 64) : nl).toString());
        } else {
          this.other++;
        }
      }
    });
    c.pipe(c);
  }

  /** Close the listening socket and reset every connection (a crash, as far as peers can tell). */
  async kill(): Promise<void> {
    const s = this.server;
    this.server = undefined;
    for (const c of this.sockets) c.resetAndDestroy();
    if (s) await new Promise<void>((r) => s.close(() => r()));
  }

  /** Close one of the open traffic connections gracefully. */
  endOne(): void {
    const c = this.open.values().next().value as Socket | undefined;
    if (c) {
      this.open.delete(c);
      c.end();
    }
  }
}

export async function startBackends(n: number): Promise<Backend[]> {
  return Promise.all(Array.from({ length: n }, (_, i) => new Backend(`backend-${i}`).start()));
}

/**
 * An endpoint that never answers a SYN: a child process listening with
 * backlog 1 whose event loop is blocked (so it never accepts), and whose
 * accept queue we fill first. Connects to it hang until their timeout.
 */
/** How long a filler connect may take before the black hole's queue counts as full. */
const BLACK_HOLE_CONNECT_WAIT_MS = 1_500;

export async function blackHole(): Promise<{ port: number; uri: string; close(): Promise<void> }> {
  const code = `const s=require('net').createServer();s.listen({port:0,host:'127.0.0.1',backlog:1},()=>{process.stdout.write(s.address().port+'\\n');Atomics.wait(new Int32Array(new SharedArrayBuffer(4)),0,0)})`;
  const child: ChildProcess = spawn(process.execPath, ['-e', code], { stdio: ['ignore', 'pipe', 'inherit'] });
  const port = await within(
    new Promise<number>((resolve) => child.stdout!.once('data', (d: Buffer) => resolve(Number(String(d).trim())))),
    10_000,
    'black hole start',
  );
  const fillers: Socket[] = [];
  // Fill the accept queue (backlog 1 holds two); stop at the first connect that hangs. A loaded
  // machine can take well over 200 ms for a connect that succeeds: stopping early left room in the
  // queue, and the "black hole" then answered (seen in CI with other work running).
  for (let i = 0; i < 4; i++) {
    const s = netConnect(port, '127.0.0.1');
    s.on('error', () => {});
    fillers.push(s);
    const connected = await Promise.race([once(s, 'connect').then(() => true), new Promise<boolean>((r) => setTimeout(() => r(false), BLACK_HOLE_CONNECT_WAIT_MS))]);
    if (!connected) break;
  }
  return {
    port,
    uri: `tcp://127.0.0.1:${port}`,
    async close() {
      for (const s of fillers) s.destroy();
      child.kill('SIGKILL');
      if (child.exitCode === null && child.signalCode === null) await within(once(child, 'exit'), 5_000, 'black hole exit').catch(() => {});
    },
  };
}

export interface TestSidecar {
  sidecar: Sidecar;
  file: string;
  /** Log lines written so far. */
  logs(): string;
  /** Port of a listener by name. */
  port(listener: string): number;
  /** Rewrite the config file (YAML from the object). */
  write(config: object): void;
  stop(): Promise<void>;
}

/** Start a sidecar from `config` (written to a temp file as YAML), logging into memory. */
export async function startSidecar(config: object, options: Partial<SidecarOptions> = {}): Promise<TestSidecar> {
  const dir = mkdtempSync(join(tmpdir(), 'sockgate-sidecar-'));
  const file = join(dir, 'sidecar.yaml');
  writeFileSync(file, stringify(config));
  let logs = '';
  const dest = new PassThrough();
  dest.setEncoding('utf8');
  dest.on('data', (s: string) => {
    logs = (logs + s).slice(-1 << 20);
  });
  const sidecar = new Sidecar({ configPath: file, watch: false, logDestination: dest, createTelemetry, ...options });
  await sidecar.start();
  return {
    sidecar,
    file,
    logs: () => logs,
    port: (name) => {
      const l = sidecar.listener(name);
      if (!l) throw new Error(`no listener ${name}`);
      return l.port;
    },
    write: (c) => writeFileSync(file, stringify(c)),
    async stop() {
      await sidecar.destroy();
      rmSync(dir, { recursive: true, force: true });
    },
  };
}

/** Base config: one listener `main` on 127.0.0.1:0 over cluster `main`; `cluster` fields merged in. */
export function baseConfig(target: string, cluster: Record<string, unknown>, listener: Record<string, unknown> = {}): Record<string, unknown> {
  return {
    gateway: { target, transports: ['tcp'] },
    telemetry: { metrics: '127.0.0.1:0', log_level: 'info' },
    shutdown: { drain_timeout_ms: 2_000 },
    listeners: [{ name: 'main', address: '127.0.0.1:0', cluster: 'main', ...listener }],
    clusters: [{ name: 'main', ...cluster }],
  };
}

export async function dial(port: number, localAddress?: string): Promise<Socket> {
  const s = netConnect({ port, host: '127.0.0.1', allowHalfOpen: true, ...(localAddress ? { localAddress } : {}) });
  s.on('error', () => {});
  await within(once(s, 'connect'), 5_000, `connect to 127.0.0.1:${port}`);
  return s;
}

/**
 * One complete exchange through the sidecar: send `TRAFFIC_PREFIX + id + "\n"`
 * and `bytes` random bytes, half-close, read the echo to its end, and compare
 * SHA-256 of both directions. Resolves with whether it matched.
 */
export async function roundTrip(port: number, id: string, bytes = 4096, localAddress?: string): Promise<boolean> {
  const s = await dial(port, localAddress);
  const payload = Buffer.concat([Buffer.from(`${TRAFFIC_PREFIX}${id}\n`), randomBytes(bytes)]);
  const want = createHash('sha256').update(payload).digest('hex');
  const got = createHash('sha256');
  const done = new Promise<void>((resolve, reject) => {
    s.on('data', (d: Buffer) => got.update(d));
    s.once('end', () => resolve());
    s.once('close', () => resolve());
    s.once('error', reject);
  });
  s.end(payload);
  await within(done, 10_000, `round trip ${id}`);
  s.destroy();
  return got.digest('hex') === want;
}

/** A long-lived connection through the sidecar, opened and confirmed by an echoed hello. */
export async function openLong(port: number, id: string): Promise<Socket> {
  const s = await dial(port);
  const hello = `${TRAFFIC_PREFIX}${id}\n`;
  let got = '';
  const echoed = new Promise<void>((resolve, reject) => {
    const onData = (d: Buffer) => {
      got += d.toString('latin1');
      if (got.length >= hello.length) {
        s.off('data', onData);
        if (got === hello) resolve();
        else reject(new Error(`bad hello echo: ${JSON.stringify(got)}`));
      }
    };
    s.on('data', onData);
    s.once('close', () => reject(new Error(`connection ${id} closed before its hello came back`)));
  });
  s.write(hello);
  await within(echoed, 10_000, `hello of ${id}`);
  return s;
}

/**
 * Stream random chunks over an open echo connection until `stop()` returns
 * true (checked between chunks; at most `maxChunks`), then half-close and
 * compare SHA-256 of everything sent with everything echoed.
 */
export async function streamUntil(s: Socket, stop: () => boolean, opts: { chunk?: number; maxChunks?: number; pauseMs?: number; maxMs?: number } = {}): Promise<{ ok: boolean; bytes: number }> {
  const chunkSize = opts.chunk ?? 16 * 1024;
  const maxChunks = opts.maxChunks ?? 2_000;
  const deadline = Date.now() + (opts.maxMs ?? 30_000);
  const sent = createHash('sha256');
  const recv = createHash('sha256');
  let recvBytes = 0;
  const ended = new Promise<void>((resolve, reject) => {
    s.on('data', (d: Buffer) => {
      recvBytes += d.length;
      recv.update(d);
    });
    s.once('end', () => resolve());
    s.once('error', reject);
    s.once('close', () => resolve());
  });
  let bytes = 0;
  for (let i = 0; i < maxChunks && !stop() && Date.now() < deadline; i++) {
    if (s.destroyed) break;
    const chunk = randomBytes(chunkSize);
    sent.update(chunk);
    bytes += chunk.length;
    if (!s.write(chunk)) await within(once(s, 'drain'), 10_000, 'drain');
    if (opts.pauseMs) await new Promise((r) => setTimeout(r, opts.pauseMs));
  }
  s.end();
  await within(ended, 15_000, 'echo of the stream');
  return { ok: !s.errored && recvBytes === bytes && sent.digest('hex') === recv.digest('hex'), bytes };
}

/** Poll `cond` every 20 ms until true, at most `ms`. */
export async function waitUntil(cond: () => boolean, ms: number, what: string): Promise<void> {
  const deadline = Date.now() + ms;
  while (!cond()) {
    if (Date.now() > deadline) throw new Error(`${what}: not true within ${ms} ms`);
    await new Promise((r) => setTimeout(r, 20));
  }
}

/** Resolves when the peer closes `sock` (FIN or reset); with whether it received any byte. */
export function closed(sock: Socket, ms: number): Promise<{ gotBytes: boolean; ms: number }> {
  const t0 = Date.now();
  let got = false;
  sock.on('data', () => (got = true));
  return within(
    new Promise((resolve) => {
      if (sock.destroyed || sock.readableEnded) resolve({ gotBytes: got, ms: 0 });
      const done = () => resolve({ gotBytes: got, ms: Date.now() - t0 });
      sock.once('end', done);
      sock.once('close', done);
    }),
    ms,
    'socket close',
  );
}

/** Fetch the sidecar's Prometheus text. */
export async function scrape(url: string): Promise<string> {
  const res = await fetch(url);
  return res.text();
}

/** Value of one Prometheus series whose labels include all of `labels`. */
export function metricValue(text: string, name: string, labels: Record<string, string>): number | undefined {
  for (const line of text.split('\n')) {
    if (!line.startsWith(`${name}{`) && !line.startsWith(`${name} `)) continue;
    if (Object.entries(labels).every(([k, v]) => line.includes(`${k}="${v}"`))) return Number(line.slice(line.lastIndexOf(' ') + 1));
  }
  return undefined;
}
