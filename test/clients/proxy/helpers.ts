/**
 * Helpers for the proxy tests: an in-process proxy, a real HTTP server with a
 * random body, external tools (curl, nc) run as child processes, and a raw
 * SOCKS5 client for hand-built requests.
 */
import { spawn, spawnSync } from 'node:child_process';
import { createHash, randomBytes } from 'node:crypto';
import { once } from 'node:events';
import { createServer as createHttpServer, type Server as HttpServer } from 'node:http';
import { connect as netConnect, type Socket } from 'node:net';
import { createLogger } from '../../../native/log.js';
import { resolveProxySettings, type ProxyFlags } from '../../../clients/proxy/config.js';
import { GuestProxy } from '../../../clients/proxy/proxy.js';

/** The Debian package that provides each external tool the tests run. */
const PACKAGES: Record<string, string> = { curl: 'curl', nc: 'netcat-openbsd' };

/** Throw (failing the test) if `tool` is not installed, naming the package to install. */
export function requireTool(tool: string): void {
  const r = spawnSync('sh', ['-c', `command -v ${tool}`], { encoding: 'utf8' });
  if (r.status !== 0) {
    throw new Error(`${tool} is not installed: these tests drive the real ${tool}; install it with "apt-get install -y ${PACKAGES[tool] ?? tool}" (and add it to .ci/run)`);
  }
}

export function sha256(b: Buffer): string {
  return createHash('sha256').update(b).digest('hex');
}

/** Start a proxy in this process with silent logs, against gateway `target`. */
export function startProxy(target: string, flags: Partial<ProxyFlags>): Promise<GuestProxy> {
  const settings = resolveProxySettings({ gateway: target, logLevel: 'silent', ...flags });
  settings.drainTimeoutMs = 1_000;
  return GuestProxy.start(settings, { logger: createLogger('silent') });
}

/** A node:http server on `host` answering every GET with `body`. */
export async function httpServer(body: Buffer, host = '127.0.0.1'): Promise<{ server: HttpServer; port: number; close(): Promise<void> }> {
  const server = createHttpServer((req, res) => {
    req.resume();
    res.writeHead(200, { 'content-type': 'application/octet-stream', 'content-length': body.length });
    res.end(body);
  });
  server.listen(0, host);
  await once(server, 'listening');
  return {
    server,
    port: (server.address() as { port: number }).port,
    close: async () => {
      server.closeAllConnections();
      await new Promise<void>((r) => server.close(() => r()));
    },
  };
}

/** A random body and its digest. */
export function randomBody(bytes: number): { body: Buffer; sha256: string } {
  const body = randomBytes(bytes);
  return { body, sha256: sha256(body) };
}

export interface RunResult {
  code: number | null;
  stdout: Buffer;
  stderr: string;
}

/** Run `cmd args`, feeding `input` to stdin; bounded by `timeoutMs` (then killed). */
export function run(cmd: string, args: string[], opts: { input?: Buffer; timeoutMs?: number } = {}): Promise<RunResult> {
  return new Promise((resolve, reject) => {
    const child = spawn(cmd, args, { stdio: ['pipe', 'pipe', 'pipe'] });
    const out: Buffer[] = [];
    let err = '';
    child.stdout.on('data', (c: Buffer) => out.push(c));
    child.stderr.setEncoding('utf8').on('data', (c: string) => (err += c));
    child.stdin.on('error', () => {});
    const timer = setTimeout(() => child.kill('SIGKILL'), opts.timeoutMs ?? 30_000);
    child.on('error', (e) => {
      clearTimeout(timer);
      reject(e);
    });
    child.on('close', (code) => {
      clearTimeout(timer);
      resolve({ code, stdout: Buffer.concat(out), stderr: err });
    });
    child.stdin.end(opts.input ?? Buffer.alloc(0));
  });
}

/** Buffered exact reads from a socket. */
export class ByteReader {
  private buf: Buffer = Buffer.alloc(0);
  private wake: (() => void) | undefined;
  private ended = false;

  constructor(readonly sock: Socket) {
    sock.on('data', (c: Buffer) => {
      this.buf = Buffer.concat([this.buf, c]);
      this.wake?.();
    });
    const end = () => {
      this.ended = true;
      this.wake?.();
    };
    sock.on('end', end);
    sock.on('close', end);
    sock.on('error', () => {});
  }

  /** Exactly `n` bytes; rejects if the socket ends first. */
  async read(n: number): Promise<Buffer> {
    while (this.buf.length < n) {
      if (this.ended) throw new Error(`socket ended after ${this.buf.length} of ${n} bytes`);
      await new Promise<void>((r) => (this.wake = r));
    }
    const out = this.buf.subarray(0, n);
    this.buf = this.buf.subarray(n);
    return out;
  }

  /** Resolves true once the peer has closed (no more bytes). */
  async closed(): Promise<boolean> {
    while (!this.ended) await new Promise<void>((r) => (this.wake = r));
    return true;
  }
}

/** A SOCKS5 reply as the raw client read it. */
export interface RawReply {
  rep: number;
  atyp: number;
  addr: Buffer;
  port: number;
}

/** Open a SOCKS5 control connection: greeting (and RFC 1929 auth if given), returns the reader. */
export async function socksOpen(port: number, auth?: { user: string; pass: string }): Promise<ByteReader> {
  const sock = netConnect({ host: '127.0.0.1', port, allowHalfOpen: true });
  await once(sock, 'connect');
  const r = new ByteReader(sock);
  sock.write(Buffer.from([5, 1, auth ? 2 : 0]));
  const choice = await r.read(2);
  if (choice[1] !== (auth ? 2 : 0)) throw new Error(`server chose method ${choice[1]}`);
  if (auth) {
    const u = Buffer.from(auth.user);
    const p = Buffer.from(auth.pass);
    sock.write(Buffer.concat([Buffer.from([1, u.length]), u, Buffer.from([p.length]), p]));
    const st = await r.read(2);
    if (st[1] !== 0) throw new Error(`authentication failed (status ${st[1]})`);
  }
  return r;
}

/** Send a request (VER CMD RSV + address bytes) and read the reply. */
export async function socksRequest(r: ByteReader, cmd: number, address: Buffer): Promise<RawReply> {
  r.sock.write(Buffer.concat([Buffer.from([5, cmd, 0]), address]));
  const head = await r.read(4);
  const atyp = head[3]!;
  const len = atyp === 1 ? 4 : atyp === 4 ? 16 : (await r.read(1))[0]!;
  const addr = await r.read(len);
  const port = (await r.read(2)).readUInt16BE(0);
  return { rep: head[1]!, atyp, addr, port };
}

/** ATYP 1 address bytes of a dotted IPv4 address and port. */
export function ipv4Address(ip: string, port: number): Buffer {
  const b = Buffer.alloc(7);
  b[0] = 1;
  ip.split('.').forEach((o, i) => (b[1 + i] = Number(o)));
  b.writeUInt16BE(port, 5);
  return b;
}

/** ATYP 3 address bytes of a domain name and port. */
export function domainAddress(name: string, port: number): Buffer {
  const n = Buffer.from(name);
  const p = Buffer.alloc(2);
  p.writeUInt16BE(port);
  return Buffer.concat([Buffer.from([3, n.length]), n, p]);
}
