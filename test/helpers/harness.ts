/**
 * Test harness: real gateways on loopback (in-process or as a child process),
 * real echo/sink servers, and byte-checking helpers. Every server listens on
 * 127.0.0.1 with a kernel-chosen port.
 */
import { createHash, randomBytes } from 'node:crypto';
import { spawn, type ChildProcess } from 'node:child_process';
import { once } from 'node:events';
import { writeFileSync, mkdtempSync } from 'node:fs';
import { createServer, type Server, type Socket } from 'node:net';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { fileURLToPath } from 'node:url';
import type { Duplex, Readable } from 'node:stream';
import { loadConfig, mergeConfig, type Config } from '../../server/config.js';
import { Gateway } from '../../server/gateway.js';
import { Gateway as SdkGateway, type GatewayOptions } from '../../clients/sdk/gateway.js';
import type { PeerGatewayConnector } from '../../server/peers.js';

/** Config overrides that put every port on loopback with a kernel-chosen port and quiet logs. */
export const TEST_OVERRIDES = {
  listen: { control: '127.0.0.1:0', data: '127.0.0.1:0', metrics: '127.0.0.1:0' },
  telemetry: { log_level: 'silent', traces: 'memory' },
  shutdown: { drain_timeout_ms: 2000 },
};

/**
 * An explicit admin identity for tests that need one. Nothing is admin by
 * default (issue 12: the anonymous identity never is), so a test that lists
 * or closes other identities' sockets adds this identity and calls with
 * ADMIN_TOKEN. Adding identities turns anonymous access off unless the test
 * also says `anonymous: { enabled: true }`.
 */
export const ADMIN_TOKEN = 'test-admin-token-0123456789abcdef';
export const ADMIN_IDENTITY = { name: 'test-admin', tokens: [ADMIN_TOKEN], admin: true } as const;

export interface TestGateway {
  gateway: Gateway;
  config: Config;
  target: string;
  /** An SDK connection to it (closed by stop()). */
  sdk: SdkGateway;
  stop(): Promise<void>;
}

/** Start an in-process gateway with `overrides` merged over TEST_OVERRIDES. */
/** The SDK as the gateway's peer connector, the way the CLI (composition root) injects it. */
export const connectPeerGateway: PeerGatewayConnector = (via, credentials, opts) =>
  SdkGateway.connect(via, { ...credentials, ...(opts.smc ? { smc: opts.smc } : {}) }, { deadlineMs: opts.deadlineMs });

export async function startGateway(overrides: unknown = {}, sdkOptions: GatewayOptions = {}): Promise<TestGateway> {
  // Every gateway gets its own shm attach socket: several run side by side in one test process.
  const shmPath = join(mkdtempSync(join(tmpdir(), 'sockgate-shm-')), 'shm.sock');
  const config = loadConfig({ overrides: mergeConfig(mergeConfig(TEST_OVERRIDES, { transports: { shm: { path: shmPath } } }), overrides) });
  const gateway = new Gateway(config, { peerGateways: connectPeerGateway });
  const addrs = await gateway.start();
  const sdk = await SdkGateway.connect(addrs.control, sdkOptions);
  return {
    gateway,
    config,
    target: addrs.control,
    sdk,
    async stop() {
      sdk.close();
      await gateway.destroy();
    },
  };
}

export const CLI_PATH = fileURLToPath(new URL('../../server/cli/index.js', import.meta.url));

export interface ChildGateway {
  child: ChildProcess;
  target: string;
  data: string;
  metrics: string | undefined;
  /** Everything the child wrote to stderr so far. */
  logs(): string;
}

/** Start `sockgate serve` as a real child process; resolves once it logs that it is serving. */
export async function startChildGateway(configYaml = '', extraArgs: string[] = []): Promise<ChildGateway> {
  const dir = mkdtempSync(join(tmpdir(), 'sockgate-test-'));
  const file = join(dir, 'config.yaml');
  writeFileSync(
    file,
    `listen: { control: "127.0.0.1:0", data: "127.0.0.1:0", metrics: "127.0.0.1:0" }\nshutdown: { drain_timeout_ms: 3000 }\n${configYaml}`,
  );
  // Its own shm attach socket, unless the test chose one: gateways run side by side.
  const shmArgs = configYaml.includes('shm:') ? [] : ['--set', `transports.shm.path=${join(dir, 'shm.sock')}`];
  const child = spawn(process.execPath, [CLI_PATH, 'serve', '--config', file, ...shmArgs, ...extraArgs], { stdio: ['ignore', 'pipe', 'pipe'] });
  let logs = '';
  child.stderr!.setEncoding('utf8');
  child.stdout!.setEncoding('utf8');
  const lines = (chunk: string) => (logs += chunk);
  child.stderr!.on('data', lines);
  child.stdout!.on('data', lines);
  const deadline = Date.now() + 30_000;
  while (Date.now() < deadline) {
    const m = /"control":"([^"]+)","data":"([^"]+)"(?:,"metrics":"([^"]+)")?/.exec(logs);
    if (m) return { child, target: m[1]!, data: m[2]!, metrics: m[3], logs: () => logs };
    if (child.exitCode !== null) throw new Error(`gateway exited ${child.exitCode}: ${logs}`);
    await new Promise((r) => setTimeout(r, 50));
  }
  child.kill('SIGKILL');
  throw new Error(`gateway did not start in time: ${logs}`);
}

/** A TCP echo server (half-close aware: echoes, then ends when the client ends). */
export async function echoServer(): Promise<{ server: Server; port: number; uri: string; close(): Promise<void> }> {
  const sockets = new Set<Socket>();
  const server = createServer({ allowHalfOpen: true }, (c) => {
    sockets.add(c);
    c.on('close', () => sockets.delete(c));
    c.on('error', () => {});
    c.pipe(c);
  });
  server.listen(0, '127.0.0.1');
  await once(server, 'listening');
  const port = (server.address() as { port: number }).port;
  return {
    server,
    port,
    uri: `tcp://127.0.0.1:${port}`,
    close: async () => {
      for (const s of sockets) s.destroy();
      await new Promise<void>((r) => server.close(() => r()));
    },
  };
}

/** A TCP server whose connection handler is `onConn`. */
export async function tcpServer(onConn: (c: Socket) => void): Promise<{ server: Server; port: number; uri: string; close(): Promise<void> }> {
  const sockets = new Set<Socket>();
  const server = createServer({ allowHalfOpen: true }, (c) => {
    sockets.add(c);
    c.on('close', () => sockets.delete(c));
    c.on('error', () => {});
    onConn(c);
  });
  server.listen(0, '127.0.0.1');
  await once(server, 'listening');
  const port = (server.address() as { port: number }).port;
  return {
    server,
    port,
    uri: `tcp://127.0.0.1:${port}`,
    close: async () => {
      for (const s of sockets) s.destroy();
      await new Promise<void>((r) => server.close(() => r()));
    },
  };
}

/**
 * Write `total` pseudo-random bytes to `sock` in `chunk`-sized writes (respecting
 * backpressure), then end it. Resolves with the SHA-256 of what was written.
 */
export async function sendRandom(sock: Duplex, total: number, chunk = 64 * 1024, end = true): Promise<string> {
  const hash = createHash('sha256');
  const block = randomBytes(Math.max(chunk, 1 << 20));
  let sent = 0;
  let offset = 0;
  while (sent < total) {
    const n = Math.min(chunk, total - sent);
    if (offset + n > block.length) offset = (offset * 7 + 13) % (block.length - n + 1);
    const piece = block.subarray(offset, offset + n);
    offset += n;
    hash.update(piece);
    sent += n;
    if (!sock.write(piece)) await once(sock, 'drain');
  }
  if (end) sock.end();
  return hash.digest('hex');
}

/** Read `sock` to its end; resolves with the byte count and SHA-256. */
export function hashUntilEnd(sock: Duplex): Promise<{ bytes: number; sha256: string }> {
  return new Promise((resolve, reject) => {
    const hash = createHash('sha256');
    let bytes = 0;
    sock.on('data', (c: Buffer) => {
      bytes += c.length;
      hash.update(c);
    });
    sock.once('end', () => resolve({ bytes, sha256: hash.digest('hex') }));
    sock.once('error', reject);
  });
}

/** Collect everything `sock` sends until it ends. */
export function readAll(sock: Readable): Promise<Buffer> {
  return new Promise((resolve, reject) => {
    const chunks: Buffer[] = [];
    sock.on('data', (c: Buffer) => chunks.push(c));
    sock.once('end', () => resolve(Buffer.concat(chunks)));
    sock.once('error', reject);
  });
}

/** Reject after `ms` with a message, so nothing in a test can hang. */
export function within<T>(p: Promise<T>, ms: number, what: string): Promise<T> {
  let timer: NodeJS.Timeout;
  return Promise.race([
    p.finally(() => clearTimeout(timer)),
    new Promise<T>((_, reject) => {
      timer = setTimeout(() => reject(new Error(`${what}: not done within ${ms} ms`)), ms);
    }),
  ]);
}
