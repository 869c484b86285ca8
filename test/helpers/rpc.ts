/**
 * Low-level control-plane helpers for tests: a raw gRPC client that sends
 * exactly the bytes it is given (for fuzzing), typed unary calls with their
 * trailers, raw TCP data-plane connections, gRPC health and reflection
 * clients, a seeded PRNG and a Prometheus text parser. Everything is bounded
 * by a deadline so no test can hang on a call.
 */
import { once } from 'node:events';
import { connect as netConnect, type Socket } from 'node:net';
import {
  Client,
  credentials,
  makeGenericClientConstructor,
  Metadata,
  status,
  type CallOptions,
  type ServiceError,
  type StatusObject,
} from '@grpc/grpc-js';
import { service as healthService } from 'grpc-health-check';
import { AdminServiceService, SocketGatewayServiceService } from '../../proto/gen/sockgate/v1/sockgate.js';
import { ERROR_CODE_METADATA_KEY, ERROR_RULE_METADATA_KEY } from '../../proto/errors.js';
import { REPLY_BYTES, AttachStatus } from '../../proto/wire.js';

// ---------------------------------------------------------------------------
// Seeded PRNG

/** A small, fast, seedable PRNG (sfc32) with the helpers fuzzers want. */
export class Rng {
  private a: number;
  private b: number;
  private c: number;
  private d: number;

  constructor(readonly seed: number) {
    this.a = 0x9e3779b9;
    this.b = 0x243f6a88;
    this.c = 0xb7e15162;
    this.d = seed >>> 0;
    for (let i = 0; i < 16; i++) this.u32();
  }

  /** Uniform 32-bit unsigned integer. */
  u32(): number {
    this.a >>>= 0;
    this.b >>>= 0;
    this.c >>>= 0;
    this.d >>>= 0;
    let t = (this.a + this.b) | 0;
    this.a = this.b ^ (this.b >>> 9);
    this.b = (this.c + (this.c << 3)) | 0;
    this.c = (this.c << 21) | (this.c >>> 11);
    this.d = (this.d + 1) | 0;
    t = (t + this.d) | 0;
    this.c = (this.c + t) | 0;
    return t >>> 0;
  }

  /** Uniform float in [0, 1). */
  float(): number {
    return this.u32() / 4294967296;
  }

  /** Integer in [lo, hi] inclusive. */
  int(lo: number, hi: number): number {
    return lo + Math.floor(this.float() * (hi - lo + 1));
  }

  bool(p = 0.5): boolean {
    return this.float() < p;
  }

  pick<T>(items: readonly T[]): T {
    return items[this.int(0, items.length - 1)]!;
  }

  bytes(n: number): Buffer {
    const b = Buffer.allocUnsafe(n);
    for (let i = 0; i < n; i += 4) {
      const v = this.u32();
      for (let j = 0; j < 4 && i + j < n; j++) b[i + j] = (v >>> (j * 8)) & 0xff;
    }
    return b;
  }

  /** A string of `n` code points drawn from ASCII, Latin-1, BMP, astral planes and lone surrogates. */
  text(n: number): string {
    let s = '';
    for (let i = 0; i < n; i++) {
      const r = this.int(0, 9);
      if (r < 5) s += String.fromCharCode(this.int(0x20, 0x7e));
      else if (r < 6) s += String.fromCharCode(this.int(0, 0x1f));
      else if (r < 7) s += String.fromCharCode(this.int(0x80, 0x7ff));
      else if (r < 8) s += String.fromCharCode(this.int(0x800, 0xd7ff));
      else if (r < 9) s += String.fromCodePoint(this.int(0x10000, 0x10ffff));
      else s += String.fromCharCode(this.int(0xd800, 0xdfff)); // lone surrogate
    }
    return s;
  }
}

/** A seed from SOCKGATE_FUZZ_SEED, or a fresh random one. */
export function fuzzSeed(): number {
  const env = process.env['SOCKGATE_FUZZ_SEED'];
  if (env !== undefined && /^[0-9]+$/.test(env)) return Number(env) >>> 0;
  return (Math.random() * 2 ** 32) >>> 0;
}

// ---------------------------------------------------------------------------
// Raw gRPC

export type MethodKind = 'unary' | 'server' | 'bidi';

export interface MethodSpec {
  /** Service-local name, e.g. "Connect". */
  name: string;
  /** Full path, e.g. /sockgate.v1.SocketGatewayService/Connect. */
  path: string;
  kind: MethodKind;
  /** Serialize a well-formed request object. */
  serialize(msg: unknown): Buffer;
}

type AnyDef = Record<string, { path: string; requestStream: boolean; responseStream: boolean; requestSerialize: (v: never) => Buffer }>;

function specsOf(service: AnyDef): MethodSpec[] {
  return Object.values(service).map((d) => ({
    name: d.path.slice(d.path.lastIndexOf('/') + 1),
    path: d.path,
    kind: d.requestStream ? 'bidi' : d.responseStream ? 'server' : 'unary',
    serialize: (msg: unknown) => d.requestSerialize(msg as never),
  }));
}

/** Every RPC of SocketGatewayService and AdminService. */
export const ALL_METHODS: readonly MethodSpec[] = [
  ...specsOf(SocketGatewayServiceService as unknown as AnyDef),
  ...specsOf(AdminServiceService as unknown as AnyDef),
];

export function method(name: string): MethodSpec {
  const m = ALL_METHODS.find((s) => s.name === name);
  if (!m) throw new Error(`no method ${name}`);
  return m;
}

const identity = (b: Buffer): Buffer => b;

/** A gRPC client with no service: every call names its path and carries raw bytes. */
export function rawClient(target: string): Client {
  return new Client(target, credentials.createInsecure(), {
    'grpc.max_receive_message_length': 8 << 20,
    'grpc.max_send_message_length': 8 << 20,
    'grpc.initial_reconnect_backoff_ms': 100,
    'grpc.max_reconnect_backoff_ms': 1000,
  });
}

export interface CallOutcome {
  code: status;
  details: string;
  /** Trailing metadata (empty if the call failed before any). */
  trailers: Metadata;
  /** sockgate-error-code trailer, if present. */
  errorCode: string | undefined;
  /** sockgate-rule trailer, if present. */
  rule: string | undefined;
  /** Response messages, raw. */
  messages: Buffer[];
}

export interface RawCallOptions {
  metadata?: Metadata;
  /** Call deadline (default 10 s). */
  deadlineMs?: number;
  /** Streaming calls: cancel from the client after this long (default: never). */
  cancelAfterMs?: number;
  /** Bidi: half-close after writing (default true). */
  end?: boolean;
  /** Bidi: pause between writes. */
  writeGapMs?: number;
}

function outcome(st: StatusObject, messages: Buffer[]): CallOutcome {
  const trailers = st.metadata ?? new Metadata();
  const ec = trailers.get(ERROR_CODE_METADATA_KEY)[0];
  const rule = trailers.get(ERROR_RULE_METADATA_KEY)[0];
  return {
    code: st.code,
    details: st.details,
    trailers,
    errorCode: typeof ec === 'string' ? ec : undefined,
    rule: typeof rule === 'string' ? rule : undefined,
    messages,
  };
}

/**
 * Make one call of any kind with raw request bytes (`payloads`: one for unary
 * and server-streaming calls, any number for bidi). Resolves with the final
 * status; never rejects.
 */
export function callRaw(client: Client, spec: Pick<MethodSpec, 'path' | 'kind'>, payloads: Buffer[], opts: RawCallOptions = {}): Promise<CallOutcome> {
  const md = opts.metadata ?? new Metadata();
  const callOpts: Partial<CallOptions> = { deadline: Date.now() + (opts.deadlineMs ?? 10_000) };
  const messages: Buffer[] = [];
  return new Promise((resolve) => {
    let done = false;
    let cancelTimer: NodeJS.Timeout | undefined;
    const finish = (st: StatusObject) => {
      if (done) return;
      done = true;
      if (cancelTimer) clearTimeout(cancelTimer);
      resolve(outcome(st, messages));
    };
    if (spec.kind === 'unary') {
      const call = client.makeUnaryRequest(spec.path, identity, identity, payloads[0] ?? Buffer.alloc(0), md, callOpts, (err, res) => {
        if (!err && res) messages.push(res);
      });
      call.on('status', finish);
      return;
    }
    if (spec.kind === 'server') {
      const call = client.makeServerStreamRequest(spec.path, identity, identity, payloads[0] ?? Buffer.alloc(0), md, callOpts);
      call.on('data', (m: Buffer) => messages.push(m));
      call.on('error', () => {});
      call.on('status', finish);
      if (opts.cancelAfterMs !== undefined) cancelTimer = setTimeout(() => call.cancel(), opts.cancelAfterMs);
      return;
    }
    const call = client.makeBidiStreamRequest(spec.path, identity, identity, md, callOpts);
    call.on('data', (m: Buffer) => messages.push(m));
    call.on('error', () => {});
    call.on('status', finish);
    if (opts.cancelAfterMs !== undefined) cancelTimer = setTimeout(() => call.cancel(), opts.cancelAfterMs);
    void (async () => {
      for (const p of payloads) {
        if (done) return;
        call.write(p);
        if (opts.writeGapMs) await new Promise((r) => setTimeout(r, opts.writeGapMs));
      }
      if (opts.end !== false && !done) call.end();
    })();
  });
}

type UnaryFn<Req, Res> = (req: Req, md: Metadata, opts: Partial<CallOptions>, cb: (err: ServiceError | null, res: Res) => void) => unknown;

/** A typed unary call on a generated client; rejects with the ServiceError. */
export function rpc<Req, Res>(client: Client, fn: UnaryFn<Req, Res>, req: Req, md: Metadata = new Metadata(), deadlineMs = 10_000): Promise<Res> {
  return new Promise((resolve, reject) => {
    fn.call(client, req, md, { deadline: Date.now() + deadlineMs }, (err, res) => (err ? reject(err) : resolve(res)));
  });
}

/** The ServiceError a promise rejects with; throws if it resolves. */
export async function rpcError(p: Promise<unknown>): Promise<ServiceError & { errorCode: string | undefined; rule: string | undefined }> {
  try {
    await p;
  } catch (err) {
    const e = err as ServiceError;
    const ec = e.metadata?.get(ERROR_CODE_METADATA_KEY)[0];
    const rule = e.metadata?.get(ERROR_RULE_METADATA_KEY)[0];
    return Object.assign(e, { errorCode: typeof ec === 'string' ? ec : undefined, rule: typeof rule === 'string' ? rule : undefined });
  }
  throw new Error('expected the call to fail, but it succeeded');
}

/** Metadata carrying `authorization: Bearer <token>`. */
export function bearer(token: string): Metadata {
  const md = new Metadata();
  md.set('authorization', `Bearer ${token}`);
  return md;
}

// ---------------------------------------------------------------------------
// Raw tcp data plane

export interface DataConn {
  sock: Socket;
  /** Every byte received so far. */
  received(): Buffer;
  /** Resolves once at least `n` bytes arrived (rejects after `ms`). */
  waitBytes(n: number, ms: number): Promise<Buffer>;
  /** Resolves when the connection is fully closed, with whether the gateway reset it. */
  closed: Promise<{ ended: boolean; error: string | undefined }>;
  /** The attach reply status, once REPLY_BYTES arrived. */
  replyStatus(): AttachStatus | undefined;
}

/** Open a TCP connection to a data port (`host:port`), optionally writing `first` at once. */
export async function dataConnect(addr: string | { host: string; port: number }, first?: Buffer): Promise<DataConn> {
  const { host, port } = typeof addr === 'string' ? { host: addr.slice(0, addr.lastIndexOf(':')), port: Number(addr.slice(addr.lastIndexOf(':') + 1)) } : addr;
  const sock = netConnect({ host, port, allowHalfOpen: false });
  let buf = Buffer.alloc(0);
  let ended = false;
  let error: string | undefined;
  const waiters = new Set<() => void>();
  sock.on('data', (c: Buffer) => {
    buf = Buffer.concat([buf, c]);
    for (const w of waiters) w();
  });
  sock.on('end', () => (ended = true));
  sock.on('error', (e: NodeJS.ErrnoException) => (error = e.code ?? e.message));
  const closed = new Promise<{ ended: boolean; error: string | undefined }>((resolve) => sock.once('close', () => resolve({ ended, error })));
  await once(sock, 'connect');
  if (first) sock.write(first);
  return {
    sock,
    received: () => buf,
    waitBytes: (n, ms) =>
      new Promise((resolve, reject) => {
        const check = () => {
          if (buf.length >= n) {
            cleanup();
            resolve(buf);
          }
        };
        const timer = setTimeout(() => {
          cleanup();
          reject(new Error(`only ${buf.length} of ${n} bytes within ${ms} ms`));
        }, ms);
        const onClose = () => {
          if (buf.length < n) {
            cleanup();
            reject(new Error(`connection closed after ${buf.length} of ${n} bytes`));
          }
        };
        const cleanup = () => {
          clearTimeout(timer);
          waiters.delete(check);
          sock.removeListener('close', onClose);
        };
        waiters.add(check);
        sock.on('close', onClose);
        check();
      }),
    closed,
    replyStatus: () => {
      if (buf.length < REPLY_BYTES || buf.subarray(0, 4).toString('latin1') !== 'SGA1') return undefined;
      return buf.readUInt8(4) as AttachStatus;
    },
  };
}

// ---------------------------------------------------------------------------
// Health and reflection

const HealthClient = makeGenericClientConstructor(healthService as never, 'Health');

/** grpc.health.v1.Health/Check: resolves with the serving status string, rejects with the ServiceError. */
export function healthCheck(target: string, service = '', deadlineMs = 3_000): Promise<string> {
  const client = new HealthClient(target, credentials.createInsecure());
  return new Promise<string>((resolve, reject) => {
    (client as unknown as { check: UnaryFn<{ service: string }, { status: string }> }).check(
      { service },
      new Metadata(),
      { deadline: Date.now() + deadlineMs },
      (err, res) => (err ? reject(err) : resolve(res.status)),
    );
  }).finally(() => client.close());
}

/** Minimal protobuf field reader: yields (field number, wire type, value). */
export function* protoFields(buf: Buffer): Generator<{ field: number; wire: number; value: Buffer | bigint }> {
  let pos = 0;
  const varint = (): bigint => {
    let result = 0n;
    let shift = 0n;
    for (;;) {
      if (pos >= buf.length) throw new Error('truncated varint');
      const b = buf[pos++]!;
      result |= BigInt(b & 0x7f) << shift;
      if (!(b & 0x80)) return result;
      shift += 7n;
    }
  };
  while (pos < buf.length) {
    const key = Number(varint());
    const field = key >>> 3;
    const wire = key & 7;
    if (wire === 0) yield { field, wire, value: varint() };
    else if (wire === 2) {
      const len = Number(varint());
      if (pos + len > buf.length) throw new Error('truncated length-delimited field');
      yield { field, wire, value: buf.subarray(pos, pos + len) };
      pos += len;
    } else if (wire === 1) {
      yield { field, wire, value: buf.subarray(pos, pos + 8) };
      pos += 8;
    } else if (wire === 5) {
      yield { field, wire, value: buf.subarray(pos, pos + 4) };
      pos += 4;
    } else throw new Error(`unsupported wire type ${wire}`);
  }
}

/** Encode one length-delimited field (field number < 16, length < 128 not assumed). */
export function lenField(field: number, value: Buffer | string): Buffer {
  const v = typeof value === 'string' ? Buffer.from(value, 'utf8') : value;
  const len: number[] = [];
  let n = v.length;
  do {
    let b = n & 0x7f;
    n >>>= 7;
    if (n) b |= 0x80;
    len.push(b);
  } while (n);
  return Buffer.concat([Buffer.from([(field << 3) | 2, ...len]), v]);
}

export const REFLECTION_V1 = { path: '/grpc.reflection.v1.ServerReflection/ServerReflectionInfo', kind: 'bidi' } as const;
export const REFLECTION_V1ALPHA = { path: '/grpc.reflection.v1alpha.ServerReflection/ServerReflectionInfo', kind: 'bidi' } as const;

/** Ask the reflection service to list services; resolves with the names. */
export async function reflectionListServices(target: string, spec: { path: string; kind: 'bidi' } = REFLECTION_V1): Promise<string[]> {
  const client = rawClient(target);
  try {
    // ServerReflectionRequest { string list_services = 7; }
    const out = await callRaw(client, spec, [lenField(7, '*')], { deadlineMs: 5_000 });
    if (out.code !== status.OK) throw new Error(`reflection failed: ${status[out.code]} ${out.details}`);
    const names: string[] = [];
    for (const msg of out.messages) {
      for (const f of protoFields(msg)) {
        if (f.field !== 6 || !(f.value instanceof Buffer)) continue; // list_services_response
        for (const svc of protoFields(f.value)) {
          if (svc.field !== 1 || !(svc.value instanceof Buffer)) continue; // repeated ServiceResponse service = 1
          for (const n of protoFields(svc.value)) if (n.field === 1 && n.value instanceof Buffer) names.push(n.value.toString('utf8'));
        }
      }
    }
    return names;
  } finally {
    client.close();
  }
}

/** Ask the reflection service for the file defining `symbol`; resolves with the serialized FileDescriptorProtos. */
export async function reflectionFileContaining(target: string, symbol: string, spec: { path: string; kind: 'bidi' } = REFLECTION_V1): Promise<Buffer[]> {
  const client = rawClient(target);
  try {
    // ServerReflectionRequest { string file_containing_symbol = 4; }
    const out = await callRaw(client, spec, [lenField(4, symbol)], { deadlineMs: 5_000 });
    if (out.code !== status.OK) throw new Error(`reflection failed: ${status[out.code]} ${out.details}`);
    const files: Buffer[] = [];
    for (const msg of out.messages) {
      for (const f of protoFields(msg)) {
        if (f.field !== 4 || !(f.value instanceof Buffer)) continue; // file_descriptor_response
        for (const d of protoFields(f.value)) if (d.field === 1 && d.value instanceof Buffer) files.push(Buffer.from(d.value));
      }
    }
    return files;
  } finally {
    client.close();
  }
}

// ---------------------------------------------------------------------------
// Prometheus

/**
 * Sum of every sample of `name` in a Prometheus text exposition whose labels
 * include all of `labels`.
 */
export function metricSum(text: string, name: string, labels: Record<string, string> = {}): number {
  let sum = 0;
  for (const line of text.split('\n')) {
    if (line.startsWith('#')) continue;
    const m = /^([a-zA-Z_:][a-zA-Z0-9_:]*)(\{(.*)\})?\s+(\S+)/.exec(line);
    if (!m || m[1] !== name) continue;
    const have = new Map<string, string>();
    for (const lm of (m[3] ?? '').matchAll(/([a-zA-Z_][a-zA-Z0-9_]*)="((?:[^"\\]|\\.)*)"/g)) have.set(lm[1]!, lm[2]!);
    if (Object.entries(labels).every(([k, v]) => have.get(k) === v)) sum += Number(m[4]);
  }
  return sum;
}

/** Fetch a Prometheus endpoint's text (bounded). */
export async function scrape(url: string): Promise<string> {
  const res = await fetch(url, { signal: AbortSignal.timeout(5_000) });
  if (!res.ok) throw new Error(`GET ${url}: ${res.status}`);
  return res.text();
}

/** Poll `cond` every 20 ms until it holds or `ms` passed; returns whether it held. */
export async function eventually(cond: () => boolean | Promise<boolean>, ms: number): Promise<boolean> {
  const deadline = Date.now() + ms;
  for (;;) {
    if (await cond()) return true;
    if (Date.now() >= deadline) return false;
    await new Promise((r) => setTimeout(r, 20));
  }
}

/** A loopback TCP port that nothing listens on (bound, then closed). */
export async function closedPort(): Promise<number> {
  const { createServer } = await import('node:net');
  const srv = createServer();
  srv.listen(0, '127.0.0.1');
  await once(srv, 'listening');
  const port = (srv.address() as { port: number }).port;
  await new Promise<void>((r) => srv.close(() => r()));
  return port;
}
