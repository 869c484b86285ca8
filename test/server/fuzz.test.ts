/**
 * Fuzzing the gateway's untrusted inputs, and checking that it keeps serving:
 *
 *  (a) raw random (and mutated) bytes as the serialized request of every RPC
 *      of SocketGatewayService and AdminService, through a raw gRPC client;
 *  (b) well-formed requests with random field values: strings (empty, huge,
 *      unicode, lone surrogates), enums in and out of range, real and made-up
 *      ids, URIs, offers, options, data-stream frames with real and random tokens;
 *  (c) random bytes at the tcp data port's preamble handler.
 *
 * Seeded (printed; rerun with SOCKGATE_FUZZ_SEED=<seed>), bounded in count and
 * time. After each storm: a normal echo still works (SHA-256), every socket
 * can be closed and the table empties, and no call ended with an unexpected
 * status. Bytes that are not a protobuf message are INVALID_ARGUMENT
 * (ERR_SOCKGATE_INVALID_ARGUMENT, server/decode-guard.ts), so UNKNOWN, any
 * INTERNAL, or a status without a sockgate error code (a dropped connection, a
 * call that hung to its deadline) are findings.
 */
import test, { type ExecutionContext } from 'ava';
import { createHash, randomBytes } from 'node:crypto';
import { createSocket, type Socket as DgramSocket } from 'node:dgram';
import { once } from 'node:events';
import { Metadata, status, type Client } from '@grpc/grpc-js';
import {
  BindResponse,
  ConnectResponse,
  ListenResponse,
  ListSocketsResponse,
  NegotiateResponse,
  type DataRequest,
  type SocketOption,
} from '../../proto/gen/sockgate/v1/sockgate.js';
import { RdmaOffer, ShmOffer, TransportKind, type NegotiationResult, type TransportOffer } from '../../proto/gen/sockgate/v1/transport.js';
import { Gateway as SdkGateway } from '../../clients/sdk/gateway.js';
import { AttachStatus, encodePreamble, REPLY_BYTES } from '../../proto/wire.js';
import { ADMIN_IDENTITY, ADMIN_TOKEN, echoServer, hashUntilEnd, sendRandom, startChildGateway, startGateway, within } from '../helpers/harness.js';
import {
  ALL_METHODS,
  bearer,
  callRaw,
  closedPort,
  dataConnect,
  eventually,
  fuzzSeed,
  method,
  metricSum,
  rawClient,
  Rng,
  scrape,
  type CallOutcome,
  type MethodSpec,
} from '../helpers/rpc.js';

/** Bounds of one storm. */
const STORM_REQUESTS = 3_000;
const STORM_MS = 15_000;
const CONTROL_WORKERS = 24;
const DATA_WORKERS = 4;
/** A unary call not answered within this long hung (requests are small, see randString). */
const CALL_DEADLINE_MS = 10_000;
/** Streaming calls are cancelled by the client after at most this long. */
const STREAM_CANCEL_MS = 400;

const FUZZ_TOKEN = 'fuzz-identity-token-0123456789';

// Anonymous callers are fuzzed too (on explicitly, never admin); the sweep that lists and closes every socket is an explicit admin.
const IDENTITY_CONFIG = {
  identities: [{ name: 'fuzzer', tokens: [FUZZ_TOKEN] }, ADMIN_IDENTITY],
  anonymous: { enabled: true },
  transports: { attach_token_ttl_ms: 2_000 },
};

const CHILD_CONFIG_YAML = `transports: { enabled: [shm, rdma, tcp, grpc], attach_token_ttl_ms: 2000 }
identities: [{ name: fuzzer, tokens: ["${FUZZ_TOKEN}"] }, { name: ${ADMIN_IDENTITY.name}, tokens: ["${ADMIN_TOKEN}"], admin: true }]
anonymous: { enabled: true }
`;

// ---------------------------------------------------------------------------
// The world the fuzzer aims at

interface Pools {
  /** Ids the gateway handed out (sockets and listeners), live or not. */
  ids: string[];
  /** Attach tokens the gateway handed out, with their transport and data address. */
  tokens: { token: Buffer; kind: TransportKind; host?: string; port?: number }[];
}

interface World {
  echoPort: number;
  udpPort: number;
  closedPort: number;
  dataHost: string;
  dataPort: number;
  pools: Pools;
}

async function udpEcho(): Promise<{ sock: DgramSocket; port: number }> {
  const sock = createSocket('udp4');
  sock.on('message', (msg, rinfo) => sock.send(msg, rinfo.port, rinfo.address, () => {}));
  sock.on('error', () => {});
  sock.bind(0, '127.0.0.1');
  await once(sock, 'listening');
  return { sock, port: sock.address().port };
}

// ---------------------------------------------------------------------------
// Generators

const INT32_EDGES = [0, 1, 2, 3, 4, 5, 7, 10, 11, 42, -1, -2, 0x7fffffff, -0x80000000];
const UINT32_EDGES = [0, 1, 2, 1023, 1024, 65535, 65536, 64 << 20, (64 << 20) + 1, 0x7fffffff, 0x80000000, 0xffffffff];

function randEnum(rng: Rng, max: number): number {
  if (rng.bool(0.6)) return rng.int(0, max);
  if (rng.bool(0.5)) return rng.pick(INT32_EDGES);
  return rng.u32() | 0;
}

function randU32(rng: Rng): number {
  return rng.bool(0.6) ? rng.pick(UINT32_EDGES) : rng.u32();
}

/**
 * A random string. Huge ones are rare and capped so that one request stays far
 * below the 4 MiB message limit: the storm must be slowed only by the gateway,
 * never by shipping megabytes through a loaded loopback.
 */
function randString(rng: Rng, huge = 0.1): string {
  if (rng.bool(huge)) return 'x'.repeat(rng.int(10_000, 100_000));
  switch (rng.int(0, 6)) {
    case 0:
      return '';
    case 1:
      return rng.text(rng.int(1, 16));
    case 2:
      return rng.text(rng.int(100, 1_000));
    case 3:
      return rng.text(rng.int(1_000, 4_000));
    case 4:
      return '\u0000'.repeat(rng.int(1, 64));
    case 5:
      return rng.pick(['anonymous', 'fuzzer', '*', 'admin', 'root', '../../etc/passwd', '%s%n', '${jndi:x}']);
    default:
      return String.fromCharCode(...Array.from({ length: rng.int(1, 40) }, () => rng.int(0x20, 0x7e)));
  }
}

function randId(rng: Rng, w: World): string {
  const r = rng.int(0, 9);
  if (r < 5 && w.pools.ids.length) return rng.pick(w.pools.ids);
  if (r < 7) return `${rng.pick(['t', 'u', 'l', 'x', ''])}${rng.int(0, 3000).toString(36)}`;
  return randString(rng);
}

function randUri(rng: Rng, w: World): string {
  const r = rng.int(0, 9);
  if (r < 5) {
    const scheme = rng.pick(['tcp', 'udp', 'tcp', 'udp', 'tcp6', 'udp6', 'TCP', 'Udp']);
    const host = scheme.endsWith('6') ? rng.pick(['[::1]', '[::ffff:127.0.0.1]', '[::]']) : rng.pick(['127.0.0.1', '127.0.0.1', 'localhost', '127.0.0.1.', '0.0.0.0', '127.1.2.3', '10.0.0.1']);
    const port = rng.pick([w.echoPort, w.udpPort, w.closedPort, w.dataPort, 0, 0, 1, 65535]);
    return `${scheme}://${host}:${port}${rng.bool(0.05) ? '/' : ''}`;
  }
  if (r < 7) {
    return rng.pick([
      `tcp://127.0.0.1`,
      `tcp://127.0.0.1:`,
      `tcp://127.0.0.1:65536`,
      `tcp://127.0.0.1:${rng.u32()}`,
      `tcp://127.0.0.1:-1`,
      `tcp://127.0.0.1:0x50`,
      `http://127.0.0.1:80`,
      `tcp://user:pw@127.0.0.1:${w.echoPort}`,
      `tcp://127.0.0.1:${w.echoPort}/path?q#f`,
      `tcp://[::1:${w.echoPort}`,
      `tcp://::1:${w.echoPort}`,
      `tcp6://127.0.0.1:${w.echoPort}`,
      `tcp://${rng.text(rng.int(1, 20))}:${w.echoPort}`,
      `tcp://${'a'.repeat(rng.int(60, 70))}.invalid:80`,
      `udp://fuzz-${rng.int(0, 1e6)}.invalid:53`,
      `tcp://${'a.'.repeat(rng.int(100, 600))}invalid:80`,
      `tcp://2130706433:${w.echoPort}`,
      `tcp://0x7f.1:${w.echoPort}`,
      `tcp://999.1.1.1:80`,
      `tcp://[fe80::1%25eth0]:80`,
      `udp://255.255.255.255:9`,
      `udp://224.0.0.1:9`,
      'tcp://',
      '://',
      `tcp://127.0.0.1:${w.echoPort}\u0000`,
    ]);
  }
  if (r < 9) return rng.text(rng.int(0, 80));
  return rng.bool() ? '' : rng.text(rng.int(1_000, 5_000));
}

function randOffer(rng: Rng): TransportOffer {
  const kind = randEnum(rng, 5) as TransportKind;
  const version = rng.bool(0.7) ? rng.pick([0, 1, 1, 2]) : randU32(rng);
  const p = rng.int(0, 4);
  return {
    kind,
    version,
    params:
      p === 0
        ? { $case: 'shm', shm: ShmOffer.fromPartial({ ringBytes: randU32(rng), hostId: randString(rng, 0.005) }) }
        : p === 1
          ? { $case: 'rdma', rdma: RdmaOffer.fromPartial({ address: randString(rng, 0.005), ringBytes: randU32(rng) }) }
          : p === 2
            ? { $case: 'tcp', tcp: { openNonce: rng.bytes(rng.pick([0, 1, 16, 32, 32, 33, 64])) } }
            : undefined,
  };
}

function randOffers(rng: Rng): TransportOffer[] {
  const n = rng.bool(0.3) ? 0 : rng.bool(0.9) ? rng.int(1, 4) : rng.int(15, 24);
  return Array.from({ length: n }, () => randOffer(rng));
}

function randOption(rng: Rng): SocketOption {
  switch (rng.int(0, 4)) {
    case 0:
      return { option: { $case: 'noDelay', noDelay: rng.bool() } };
    case 1:
      return { option: { $case: 'keepAliveMs', keepAliveMs: randU32(rng) } };
    case 2:
      return { option: { $case: 'sendBufferBytes', sendBufferBytes: randU32(rng) } };
    case 3:
      return { option: { $case: 'recvBufferBytes', recvBufferBytes: randU32(rng) } };
    default:
      return { option: undefined };
  }
}

function randPayload(rng: Rng): Buffer {
  const r = rng.int(0, 9);
  if (r < 6) return rng.bytes(rng.int(0, 512));
  if (r < 8) return rng.bytes(rng.int(60_000, 66_000));
  return rng.bytes(rng.int(66_000, 200_000));
}

function randFrame(rng: Rng, w: World): DataRequest {
  switch (rng.int(0, 5)) {
    case 0:
    case 1: {
      const real = w.pools.tokens.length && rng.bool(0.6) ? rng.pick(w.pools.tokens).token : rng.bytes(rng.pick([0, 1, 31, 32, 33, 64, 1000]));
      return { frame: { $case: 'attachToken', attachToken: real } };
    }
    case 2:
      return { frame: { $case: 'data', data: randPayload(rng) } };
    case 3:
      return { frame: { $case: 'eof', eof: rng.bool() } };
    case 4:
      return { frame: { $case: 'datagram', datagram: { uri: rng.bool() ? '' : randUri(rng, w), payload: randPayload(rng) } } };
    default:
      return { frame: undefined };
  }
}

/** A well-formed request for `m` with random field values. */
function randRequest(rng: Rng, m: MethodSpec, w: World): unknown {
  switch (m.name) {
    case 'Connect':
      return { uri: randUri(rng, w), offers: randOffers(rng), timeoutMs: rng.bool(0.8) ? rng.pick([0, 0, 1, 50, 1000]) : randU32(rng), options: Array.from({ length: rng.int(0, 3) }, () => randOption(rng)) };
    case 'Negotiate':
      return { socketId: randId(rng, w), offers: randOffers(rng), failedTransport: randEnum(rng, 5), failedReason: randEnum(rng, 11), failedDetail: randString(rng) };
    case 'Listen':
      return { uri: rng.bool(0.6) ? `tcp://127.0.0.1:${rng.pick([0, 0, 0, 1, 65535, w.echoPort, w.dataPort])}` : randUri(rng, w), backlog: randU32(rng) };
    case 'Accept':
      return { listenerId: randId(rng, w), offers: randOffers(rng) };
    case 'Bind':
      return { uri: rng.bool(0.6) ? `udp://127.0.0.1:${rng.pick([0, 0, 0, 1, 65535, w.udpPort])}` : randUri(rng, w), offers: randOffers(rng) };
    case 'SendTo':
      return { socketId: randId(rng, w), datagram: rng.bool(0.1) ? undefined : { uri: rng.bool(0.3) ? '' : randUri(rng, w), payload: randPayload(rng) } };
    case 'RecvFrom':
      return { socketId: randId(rng, w) };
    case 'Shutdown':
      return { socketId: randId(rng, w), how: randEnum(rng, 4) };
    case 'CloseSocket':
      return { socketId: randId(rng, w) };
    case 'SetOption':
      return { socketId: randId(rng, w), option: rng.bool(0.1) ? undefined : randOption(rng) };
    case 'GetInfo':
      return { socketId: randId(rng, w) };
    case 'ConfirmEnds':
      return { socketIds: Array.from({ length: rng.bool(0.9) ? rng.int(0, 8) : rng.int(1000, 1100) }, () => randId(rng, w)) };
    case 'ListSockets':
      return { identity: rng.bool(0.5) ? '' : randString(rng), pageSize: rng.pick([0, 1, 10, 0xffffffff]), pageToken: rng.bool(0.8) ? '' : randString(rng) };
    default:
      throw new Error(`no generator for ${m.name}`);
  }
}

/** Flip, cut, splice and duplicate bytes of a valid message. */
function mutate(rng: Rng, b: Buffer): Buffer {
  let out = Buffer.from(b);
  for (let i = rng.int(1, 4); i > 0; i--) {
    switch (rng.int(0, 4)) {
      case 0:
        if (out.length) out[rng.int(0, out.length - 1)]! ^= 1 << rng.int(0, 7);
        break;
      case 1:
        out = out.subarray(0, rng.int(0, out.length));
        break;
      case 2: {
        const at = rng.int(0, out.length);
        out = Buffer.concat([out.subarray(0, at), rng.bytes(rng.int(1, 16)), out.subarray(at)]);
        break;
      }
      case 3: {
        const at = rng.int(0, out.length);
        out = Buffer.concat([out.subarray(0, at), out.subarray(0, rng.int(0, out.length)), out.subarray(at)]);
        break;
      }
      default:
        if (out.length) out[rng.int(0, out.length - 1)] = rng.pick([0x00, 0xff, 0x80, 0x7f, 0x0a, 0x12]);
    }
  }
  return out;
}

function randomMetadata(rng: Rng): Metadata {
  switch (rng.int(0, 9)) {
    case 0:
      return bearer(FUZZ_TOKEN);
    case 1:
      return bearer(rng.bool() ? 'wrong-token-0123456789abcdef' : 'x'.repeat(rng.int(1, 6000)));
    case 2: {
      const md = new Metadata();
      md.set('authorization', rng.pick(['Bearer', 'Bearer ', 'bearer  a  b', 'Basic Zm9vOmJhcg==', '', 'Bearer  ', `Bearer ${'A'.repeat(4097)}`]));
      return md;
    }
    default:
      return new Metadata();
  }
}

// ---------------------------------------------------------------------------
// Verdicts

interface Finding {
  what: string;
  method: string;
  code: string;
  errorCode: string | undefined;
  details: string;
}

function verdict(m: Pick<MethodSpec, 'name' | 'kind'>, o: CallOutcome, cancelledByUs: boolean): string | undefined {
  if (o.code === status.OK) return undefined;
  if (o.code === status.UNKNOWN) return 'UNKNOWN: an exception escaped a handler';
  if (o.code === status.INTERNAL) return `INTERNAL from the gateway (${o.errorCode ?? 'no sockgate code'}: ${o.details.slice(0, 80)})`;
  if (o.code === status.CANCELLED && cancelledByUs && m.kind !== 'unary') return undefined;
  // grpc-js enforcing the gateway's own message bound (grpc.max_receive_message_length) before any
  // handler runs: a clear refusal, not a dropped call (mutations that duplicate a long request reach it).
  if (o.code === status.RESOURCE_EXHAUSTED && /^Received message larger than max \(\d+ vs \d+\)$/.test(o.details)) return undefined;
  if (o.errorCode === undefined) return `${status[o.code]} without a sockgate error code (a dropped connection or a call that hung?)`;
  return undefined;
}

function record(findings: Finding[], m: Pick<MethodSpec, 'name'>, o: CallOutcome, what: string): void {
  findings.push({ what, method: m.name, code: status[o.code] ?? String(o.code), errorCode: o.errorCode, details: o.details.slice(0, 300) });
}

// ---------------------------------------------------------------------------
// Harvesting ids and tokens from answers

function harvest(w: World, m: MethodSpec, o: CallOutcome): void {
  if (o.code !== status.OK || !o.messages[0]) return;
  try {
    let negotiation: NegotiationResult | undefined;
    if (m.name === 'Connect') {
      const r = ConnectResponse.decode(o.messages[0]);
      w.pools.ids.push(r.socketId);
      negotiation = r.negotiation;
    } else if (m.name === 'Bind') {
      const r = BindResponse.decode(o.messages[0]);
      w.pools.ids.push(r.socketId);
      negotiation = r.negotiation;
    } else if (m.name === 'Listen') {
      w.pools.ids.push(ListenResponse.decode(o.messages[0]).listenerId);
    } else if (m.name === 'Negotiate') {
      negotiation = NegotiateResponse.decode(o.messages[0]).negotiation;
    }
    const a = negotiation?.accepted;
    if (a && a.attachToken.length) {
      w.pools.tokens.push({
        token: Buffer.from(a.attachToken),
        kind: a.kind,
        ...(a.params?.$case === 'tcp' ? { host: a.params.tcp.host, port: a.params.tcp.port } : {}),
      });
    }
  } catch {
    // A response we cannot decode is itself reported by the caller's checks elsewhere.
  }
  if (w.pools.ids.length > 500) w.pools.ids.splice(0, 100);
  if (w.pools.tokens.length > 200) w.pools.tokens.splice(0, 50);
}

// ---------------------------------------------------------------------------
// One control-plane operation: (a) raw bytes, mutated bytes, or (b) random fields

const FUZZED = ALL_METHODS;

async function controlOp(rng: Rng, clients: Client[], w: World, findings: Finding[], tally: Map<string, number>): Promise<void> {
  const m = rng.pick(FUZZED);
  const mode = rng.int(0, 19);
  let payloads: Buffer[];
  let kind: string;
  if (m.kind === 'bidi') {
    const n = rng.int(0, 6);
    payloads = Array.from({ length: n }, () => {
      const frame = m.serialize(randFrame(rng, w));
      return mode < 4 ? rng.bytes(rng.int(0, 300)) : mode < 7 ? mutate(rng, frame) : frame;
    });
    kind = mode < 4 ? 'raw' : mode < 7 ? 'mutated' : 'fields';
  } else if (mode < 4) {
    payloads = [rng.bytes(rng.bool(0.9) ? rng.int(0, 300) : rng.int(1_000, 100_000))];
    kind = 'raw';
  } else if (mode < 7) {
    payloads = [mutate(rng, m.serialize(randRequest(rng, m, w)))];
    kind = 'mutated';
  } else {
    payloads = [m.serialize(randRequest(rng, m, w))];
    kind = 'fields';
  }
  const streaming = m.kind !== 'unary';
  const cancelAfter = streaming ? rng.int(50, STREAM_CANCEL_MS) : undefined;
  const md = randomMetadata(rng);
  const o = await callRaw(rng.pick(clients), m, payloads, {
    metadata: md,
    deadlineMs: CALL_DEADLINE_MS,
    ...(cancelAfter !== undefined ? { cancelAfterMs: cancelAfter } : {}),
    end: rng.bool(0.7),
    ...(m.kind === 'bidi' && rng.bool(0.3) ? { writeGapMs: rng.int(1, 20) } : {}),
  });
  const key = `${m.name} ${status[o.code]}`;
  tally.set(key, (tally.get(key) ?? 0) + 1);
  const bad = verdict(m, o, streaming);
  if (bad) {
    const auth = md.get('authorization')[0];
    const shownAuth = typeof auth === 'string' ? `${auth.slice(0, 24)}${auth.length > 24 ? `...(${auth.length})` : ''}` : 'none';
    record(findings, m, o, `${bad} [${kind}; authorization ${shownAuth}; request ${payloads.map((p) => `${p.length}B:${p.subarray(0, 48).toString('hex')}`).join(',')}]`);
  }
  harvest(w, m, o);
}

// ---------------------------------------------------------------------------
// (c) One data-port operation

const KNOWN_REPLIES = new Set([
  AttachStatus.OK,
  AttachStatus.BAD_PREAMBLE,
  AttachStatus.VERSION_MISMATCH,
  AttachStatus.WRONG_TOKEN,
  AttachStatus.REPLAYED,
  AttachStatus.EXPIRED,
  AttachStatus.WRONG_TRANSPORT,
]);

async function dataOp(rng: Rng, w: World, findings: Finding[], tally: Map<string, number>): Promise<void> {
  const variant = rng.int(0, 7);
  let bytes: Buffer;
  let realTcpToken = false;
  switch (variant) {
    case 0:
      bytes = rng.bytes(rng.int(1, 200));
      break;
    case 1:
      bytes = Buffer.concat([Buffer.from('SGA1'), rng.bytes(rng.int(0, 100))]);
      break;
    case 2: {
      const b = encodePreamble(rng.bytes(rng.int(0, 80)));
      b.writeUInt8(rng.pick([0, 1, 1, 2, 255]), 4);
      b.writeUInt8(rng.int(0, 255), 5);
      if (rng.bool(0.3)) b.writeUInt16BE(rng.int(0, 0xffff), 8);
      bytes = b;
      break;
    }
    case 3:
      bytes = encodePreamble(rng.bytes(32));
      break;
    case 4: {
      const tok = w.pools.tokens.length ? rng.pick(w.pools.tokens) : undefined;
      realTcpToken = tok?.kind === TransportKind.TRANSPORT_KIND_TCP;
      bytes = Buffer.concat([encodePreamble(tok?.token ?? rng.bytes(32)), rng.bytes(rng.int(0, 5_000))]);
      break;
    }
    case 5:
      bytes = Buffer.alloc(0);
      break;
    case 6:
      bytes = rng.bytes(64 * 1024);
      break;
    default:
      bytes = encodePreamble(rng.bytes(32)).subarray(0, rng.int(1, 41));
  }
  let conn;
  try {
    conn = await dataConnect({ host: w.dataHost, port: w.dataPort });
  } catch (err) {
    findings.push({ what: `data port refused a connection: ${(err as Error).message}`, method: 'data-port', code: '-', errorCode: undefined, details: '' });
    return;
  }
  // Dribble some of it in pieces.
  if (rng.bool(0.3) && bytes.length > 1) {
    const cut = rng.int(1, bytes.length - 1);
    conn.sock.write(bytes.subarray(0, cut));
    await new Promise((r) => setTimeout(r, rng.int(1, 10)));
    conn.sock.write(bytes.subarray(cut));
  } else if (bytes.length) {
    conn.sock.write(bytes);
  }
  const how = rng.int(0, 2);
  if (how === 0) conn.sock.end();
  else if (how === 1) conn.sock.destroy();
  else {
    await new Promise((r) => setTimeout(r, rng.int(1, 50)));
    conn.sock.end();
  }
  const closed = await within(conn.closed, 8_000, 'data connection close').catch(() => undefined);
  const st = conn.replyStatus();
  tally.set(`data-port ${st === undefined ? 'no-reply' : AttachStatus[st]}`, (tally.get(`data-port ${st === undefined ? 'no-reply' : AttachStatus[st]}`) ?? 0) + 1);
  if (!closed) {
    conn.sock.destroy();
    findings.push({ what: 'data connection not closed by the gateway within 8 s of our end', method: 'data-port', code: '-', errorCode: undefined, details: `variant ${variant}` });
    return;
  }
  if (conn.received().length >= REPLY_BYTES && st === undefined) {
    findings.push({ what: 'malformed reply on the data port', method: 'data-port', code: '-', errorCode: undefined, details: conn.received().subarray(0, 16).toString('hex') });
  } else if (st !== undefined && !KNOWN_REPLIES.has(st)) {
    findings.push({ what: `reply status ${AttachStatus[st] ?? st}`, method: 'data-port', code: '-', errorCode: undefined, details: `variant ${variant}` });
  } else if (st === AttachStatus.OK && !realTcpToken) {
    findings.push({ what: 'OK for a preamble without a live tcp token', method: 'data-port', code: '-', errorCode: undefined, details: `variant ${variant}` });
  }
}

// ---------------------------------------------------------------------------
// A storm

interface StormReport {
  requests: number;
  dataConnections: number;
  ms: number;
  findings: Finding[];
  tally: Map<string, number>;
}

async function storm(rng: Rng, target: string, w: World): Promise<StormReport> {
  const clients = Array.from({ length: 4 }, () => rawClient(target));
  const findings: Finding[] = [];
  const tally = new Map<string, number>();
  const started = Date.now();
  let requests = 0;
  let dataConnections = 0;
  const more = () => requests < STORM_REQUESTS && Date.now() - started < STORM_MS;
  try {
    await Promise.all([
      ...Array.from({ length: CONTROL_WORKERS }, async (_, i) => {
        const r = new Rng(rng.seed * 31 + i);
        while (more()) {
          requests++;
          await controlOp(r, clients, w, findings, tally);
        }
      }),
      ...Array.from({ length: DATA_WORKERS }, async (_, i) => {
        const r = new Rng(rng.seed * 37 + 1000 + i);
        while (more()) {
          dataConnections++;
          await dataOp(r, w, findings, tally);
        }
      }),
    ]);
  } finally {
    for (const c of clients) c.close();
  }
  return { requests, dataConnections, ms: Date.now() - started, findings, tally };
}

function summary(r: StormReport): string {
  const byStatus = [...r.tally].sort((a, b) => b[1] - a[1]).map(([k, n]) => `${k}: ${n}`);
  return `${r.requests} RPCs and ${r.dataConnections} data connections in ${r.ms} ms\n  ${byStatus.join('\n  ')}`;
}

function showFindings(f: Finding[]): string {
  const seen = new Map<string, { n: number; f: Finding }>();
  for (const x of f) {
    const k = `${x.method} ${x.what} ${x.code} ${x.errorCode}`;
    const e = seen.get(k);
    if (e) e.n++;
    else seen.set(k, { n: 1, f: x });
  }
  return [...seen.values()].map(({ n, f: x }) => `${n}x ${x.method}: ${x.what} — ${x.code}${x.errorCode ? ` ${x.errorCode}` : ''}: ${x.details}`).join('\n');
}

/** A normal echo through both data planes, SHA-256 checked. */
async function echoStillWorks(t: ExecutionContext, target: string, echoUri: string): Promise<void> {
  const sdk = await SdkGateway.connect(target);
  try {
    for (const plane of ['tcp', 'grpc'] as const) {
      const s = await within(sdk.connect(echoUri, { transports: [plane] }), 10_000, `connect over ${plane} after the storm`);
      const got = hashUntilEnd(s);
      const sent = await sendRandom(s, 1 << 20);
      const r = await within(got, 15_000, `echo over ${plane} after the storm`);
      t.is(r.bytes, 1 << 20, `${plane}: every byte back`);
      t.is(r.sha256, sent, `${plane}: SHA-256 matches`);
    }
  } finally {
    sdk.close();
  }
}

/** Close every socket the gateway lists (as the explicit admin identity). */
async function closeAll(target: string): Promise<{ listed: string[]; closeFailures: string[] }> {
  const client = rawClient(target);
  try {
    const out = await callRaw(client, method('ListSockets'), [method('ListSockets').serialize({ identity: '', pageSize: 0, pageToken: '' })], { metadata: bearer(ADMIN_TOKEN), deadlineMs: 5_000 });
    if (out.code !== status.OK) throw new Error(`ListSockets: ${status[out.code]} ${out.details}`);
    const listed = ListSocketsResponse.decode(out.messages[0]!).sockets.map((s) => s.socketId);
    const closeFailures: string[] = [];
    await Promise.all(
      listed.map(async (id) => {
        const r = await callRaw(client, method('CloseSocket'), [method('CloseSocket').serialize({ socketId: id })], { metadata: bearer(ADMIN_TOKEN), deadlineMs: 5_000 });
        if (r.code !== status.OK && r.errorCode !== 'ERR_SOCKGATE_SOCKET_NOT_FOUND') closeFailures.push(`${id}: ${status[r.code]} ${r.errorCode ?? ''} ${r.details}`);
      }),
    );
    return { listed, closeFailures };
  } finally {
    client.close();
  }
}

async function listedIds(target: string): Promise<string[]> {
  const client = rawClient(target);
  try {
    const out = await callRaw(client, method('ListSockets'), [method('ListSockets').serialize({ identity: '', pageSize: 0, pageToken: '' })], { metadata: bearer(ADMIN_TOKEN), deadlineMs: 5_000 });
    return out.code === status.OK ? ListSocketsResponse.decode(out.messages[0]!).sockets.map((s) => `${s.socketId}(${s.kind}/${s.state})`) : [`ListSockets failed: ${status[out.code]}`];
  } finally {
    client.close();
  }
}

function connectionsOf(server: { getConnections(cb: (e: Error | null, n: number) => void): void }): Promise<number> {
  return new Promise((r) => server.getConnections((_e, n) => r(n)));
}

const baseSeed = fuzzSeed();
/** One command that replays this file's run: every test derives its seed from the base seed. */
const RERUN = `SOCKGATE_FUZZ_SEED=${baseSeed} npx ava dist/test/server/fuzz.test.js`;

function announce(t: ExecutionContext, seed: number, what: string): void {
  // Printed at once (not only on failure) so a crash of the worker still leaves the seed behind.
  console.log(`[fuzz] ${what}: seed ${seed} (base seed ${baseSeed}; rerun with: ${RERUN})`);
  t.log(`seed ${seed}`);
}

// Whatever made a test fail (an assertion, a throw, a timeout), its message ends with how to replay it.
test.afterEach.always((t) => {
  if (!t.passed) console.error(`[fuzz] FAILED: ${t.title}\n[fuzz] reproduce with: ${RERUN}`);
});

// ---------------------------------------------------------------------------
// Tests. Serial and ordered: the child-process storm first (a crash there is
// reported with the child's stack), the in-process storm last (a crash there
// takes this test file down with it).

test.serial('minimized: an id whose 64th UTF-16 unit is half an emoji does not crash the gateway (status messages must stay well-formed)', async (t) => {
  t.timeout(60_000);
  const g = await startChildGateway(CHILD_CONFIG_YAML);
  t.teardown(() => {
    if (g.child.exitCode === null) g.child.kill('SIGKILL');
  });
  const client = rawClient(g.target);
  t.teardown(() => client.close());
  // Valid UTF-8 on the wire; the gateway's own truncation for its message would split the surrogate pair.
  const id = `${'a'.repeat(63)}\u{1F600}`;
  const requests: [string, unknown][] = [
    ['GetInfo', { socketId: id }],
    ['CloseSocket', { socketId: id }],
    ['Shutdown', { socketId: id, how: 3 }],
    ['SetOption', { socketId: id, option: { option: { $case: 'noDelay', noDelay: true } } }],
    ['Negotiate', { socketId: id, offers: [], failedTransport: 0, failedReason: 0, failedDetail: '' }],
    ['SendTo', { socketId: id, datagram: { uri: '', payload: Buffer.from('x') } }],
    ['RecvFrom', { socketId: id }],
    ['Accept', { listenerId: id, offers: [] }],
  ];
  for (const [name, req] of requests) {
    const m = method(name);
    const o = await callRaw(client, m, [m.serialize(req)], { deadlineMs: 5_000 });
    await new Promise((r) => setTimeout(r, 100));
    t.is(g.child.exitCode, null, `${name}: the gateway process died (exit ${g.child.exitCode}):\n${g
      .logs()
      .split('\n')
      .filter((l) => !l.startsWith('{'))
      .slice(0, 10)
      .join('\n')}`);
    t.is(o.code, status.NOT_FOUND, `${name}: ${status[o.code]} ${o.details}`);
    t.is(o.errorCode, 'ERR_SOCKGATE_SOCKET_NOT_FOUND', name);
  }
});

test.serial('fuzz storm at a `sockgate serve` child process: it keeps serving, no unexpected statuses, every socket can be closed', async (t) => {
  t.timeout(120_000);
  const seed = baseSeed;
  announce(t, seed, 'child-process storm');
  const echo = await echoServer();
  const udp = await udpEcho();
  const g = await startChildGateway(CHILD_CONFIG_YAML);
  t.teardown(async () => {
    if (g.child.exitCode === null) g.child.kill('SIGKILL');
    udp.sock.close();
    await echo.close();
  });
  const [dataHost, dataPort] = [g.data.slice(0, g.data.lastIndexOf(':')), Number(g.data.slice(g.data.lastIndexOf(':') + 1))];
  const w: World = { echoPort: echo.port, udpPort: udp.port, closedPort: await closedPort(), dataHost, dataPort, pools: { ids: [], tokens: [] } };
  const report = await storm(new Rng(seed), g.target, w);
  t.log(summary(report));
  const alive = g.child.exitCode === null;
  t.true(alive, `the gateway process died during the storm (exit ${g.child.exitCode}); its stderr:\n${g
    .logs()
    .split('\n')
    .filter((l) => !l.startsWith('{'))
    .slice(0, 20)
    .join('\n')}`);
  t.true(report.requests >= 500, `the storm made ${report.requests} requests`);
  t.is(report.findings.length, 0, `unexpected outcomes (seed ${seed}; reproduce with: ${RERUN}):\n${showFindings(report.findings)}`);
  await echoStillWorks(t, g.target, echo.uri);
  const { closeFailures } = await closeAll(g.target);
  t.deepEqual(closeFailures, [], 'every listed socket closes');
  t.true(await eventually(async () => (await listedIds(g.target)).length === 0, 5_000), `sockets left after closing: ${(await listedIds(g.target)).join(', ')}`);
  const text = await scrape(g.metrics!);
  t.is(metricSum(text, 'sockgate_sockets_open'), 0, 'the open-sockets gauge is back to 0');
  t.true(await eventually(async () => (await connectionsOf(echo.server)) === 0, 5_000), 'no host connection to the echo server is left');
});

test.serial('data-plane fuzz: random write sizes (1 B .. 6 MiB) through the tcp and grpc planes keep every byte (SHA-256)', async (t) => {
  t.timeout(120_000);
  const seed = (baseSeed + 1) >>> 0;
  announce(t, seed, 'write sizes');
  const rng = new Rng(seed);
  const gw = await startGateway();
  const echo = await echoServer();
  t.teardown(async () => {
    await echo.close();
    await gw.stop();
  });
  for (const plane of ['tcp', 'grpc'] as const) {
    // Random sizes, mostly small; always one write above the 4 MiB gRPC message limit.
    const sizes: number[] = [];
    let total = 0;
    while (total < 20 << 20) {
      const r = rng.int(0, 9);
      const n = r < 5 ? rng.int(1, 1024) : r < 8 ? rng.int(1024, 256 * 1024) : rng.int(256 * 1024, 6 << 20);
      sizes.push(n);
      total += n;
    }
    sizes.splice(rng.int(0, sizes.length), 0, (4 << 20) + rng.int(1, 1 << 20));
    total = sizes.reduce((a, b) => a + b, 0);
    const s = await gw.sdk.connect(echo.uri, { transports: [plane] });
    const got = hashUntilEnd(s).catch((err: Error & { code?: string }) => err);
    const h = createHash('sha256');
    const block = randomBytes(7 << 20);
    let failed: Error | undefined;
    s.once('error', (err) => (failed = err));
    for (const n of sizes) {
      if (failed) break;
      const off = rng.int(0, block.length - n);
      const piece = block.subarray(off, off + n);
      h.update(piece);
      if (!s.write(piece)) {
        await new Promise<void>((resolve) => {
          const done = () => {
            s.off('drain', done);
            s.off('close', done);
            resolve();
          };
          s.on('drain', done);
          s.on('close', done);
        });
      }
      if (rng.bool(0.05)) await new Promise((r) => setTimeout(r, rng.int(1, 20)));
    }
    if (!failed) s.end();
    const r = await within(got, 60_000, `${plane} echo of random write sizes`);
    const biggest = Math.max(...sizes);
    if (r instanceof Error) {
      t.fail(`${plane}: the transfer failed (${r.code}: ${r.message}); ${sizes.length} writes of up to ${biggest} bytes`);
      continue;
    }
    t.is(r.bytes, total, `${plane}: ${sizes.length} writes of 1..${biggest} bytes`);
    t.is(r.sha256, h.digest('hex'), `${plane}: SHA-256`);
  }
});

test.serial('boundary values on every RPC against every kind of socket: no INTERNAL or UNKNOWN, the gateway keeps serving', async (t) => {
  t.timeout(120_000);
  const echo = await echoServer();
  const udp = await udpEcho();
  const gw = await startGateway(IDENTITY_CONFIG);
  t.teardown(async () => {
    udp.sock.close();
    await echo.close();
    await gw.stop();
  });
  const client = rawClient(gw.target);
  t.teardown(() => client.close());
  const [dataHost, dataPort] = gw.gateway.addresses.data.split(':');
  const w: World = { echoPort: echo.port, udpPort: udp.port, closedPort: await closedPort(), dataHost: dataHost!, dataPort: Number(dataPort), pools: { ids: [], tokens: [] } };
  const call = async (name: string, req: unknown): Promise<CallOutcome> => {
    const m = method(name);
    const o = await callRaw(client, m, [m.serialize(req)], { deadlineMs: 8_000, ...(m.kind !== 'unary' ? { cancelAfterMs: 200 } : {}) });
    harvest(w, m, o);
    return o;
  };
  // One socket of each kind: a pending stream, a pending connected datagram, a bound datagram, a listener.
  const kinds: [string, string, unknown][] = [
    ['stream', 'Connect', { uri: echo.uri, offers: [], timeoutMs: 0, options: [] }],
    ['connected datagram', 'Connect', { uri: `udp://127.0.0.1:${udp.port}`, offers: [], timeoutMs: 0, options: [] }],
    ['bound datagram', 'Bind', { uri: 'udp://127.0.0.1:0', offers: [] }],
    ['listener', 'Listen', { uri: 'tcp://127.0.0.1:0', backlog: 0 }],
  ];
  const findings: Finding[] = [];
  const ids: [string, string][] = [];
  for (const [label, name, req] of kinds) {
    const o = await call(name, req);
    t.is(o.code, status.OK, `${label}: ${o.details}`);
    ids.push([label, w.pools.ids[w.pools.ids.length - 1]!]);
  }
  ids.push(['no socket', 'tzzzz'], ['empty id', ''], ['huge id', 'x'.repeat(100_000)]);
  const options: SocketOption[] = [
    { option: undefined },
    ...[0, 1, 1023, 1024, 65536, 64 << 20, (64 << 20) + 1, 0x7fffffff, 0x80000000, 0xffffffff].flatMap((v): SocketOption[] => [
      { option: { $case: 'keepAliveMs', keepAliveMs: v } },
      { option: { $case: 'sendBufferBytes', sendBufferBytes: v } },
      { option: { $case: 'recvBufferBytes', recvBufferBytes: v } },
    ]),
    { option: { $case: 'noDelay', noDelay: true } },
    { option: { $case: 'noDelay', noDelay: false } },
  ];
  const edgeOffers: TransportOffer[][] = [
    [],
    [{ kind: -1 as TransportKind, version: 0, params: undefined }],
    [{ kind: 0x7fffffff as TransportKind, version: 0xffffffff, params: undefined }],
    Array.from({ length: 40 }, (_, i) => ({ kind: (i % 6) as TransportKind, version: i, params: undefined })),
    [{ kind: TransportKind.TRANSPORT_KIND_SHM, version: 1, params: { $case: 'shm', shm: ShmOffer.fromPartial({ ringBytes: 0xffffffff, hostId: 'x'.repeat(50_000) }) } }],
  ];
  const check = async (label: string, name: string, req: unknown) => {
    const o = await call(name, req);
    const bad = verdict(method(name), o, method(name).kind !== 'unary');
    if (bad) record(findings, { name: `${name} on ${label}` }, o, bad);
  };
  for (const [label, id] of ids) {
    for (const option of options) await check(label, 'SetOption', { socketId: id, option });
    for (const how of [0, 1, 2, 3, 4, -1, 0x7fffffff]) await check(label, 'Shutdown', { socketId: id, how });
    for (const datagram of [undefined, { uri: '', payload: Buffer.alloc(0) }, { uri: '', payload: Buffer.alloc(65507) }, { uri: '', payload: Buffer.alloc(65508) }, { uri: `udp://127.0.0.1:${udp.port}`, payload: Buffer.from('x') }, { uri: 'udp6://[::1]:9', payload: Buffer.from('x') }, { uri: 'udp://255.255.255.255:9', payload: Buffer.from('x') }, { uri: `tcp://127.0.0.1:${echo.port}`, payload: Buffer.from('x') }]) {
      await check(label, 'SendTo', { socketId: id, datagram });
    }
    for (const offers of edgeOffers) {
      for (const [ft, fr] of [[0, 0], [-1, -1], [3, 8], [0x7fffffff, 0x7fffffff], [99, 99]]) {
        await check(label, 'Negotiate', { socketId: id, offers, failedTransport: ft, failedReason: fr, failedDetail: 'x'.repeat(10_000) });
      }
      await check(label, 'Accept', { listenerId: id, offers });
    }
    await check(label, 'GetInfo', { socketId: id });
    await check(label, 'RecvFrom', { socketId: id });
  }
  // Connect and Bind with every option and edge offers on fresh sockets.
  for (const option of options) {
    await check('new stream', 'Connect', { uri: echo.uri, offers: [], timeoutMs: 0, options: [option] });
    await check('new datagram', 'Connect', { uri: `udp://127.0.0.1:${udp.port}`, offers: [], timeoutMs: 0, options: [option] });
  }
  for (const uri of [`udp6://[::ffff:127.0.0.1]:${udp.port}`, `tcp6://[::ffff:127.0.0.1]:${echo.port}`, 'udp6://[::]:9', 'udp://0.0.0.0:9', `tcp://0.0.0.0:${echo.port}`, `udp6://[::1]:${udp.port}`]) {
    await check('new socket', 'Connect', { uri, offers: [], timeoutMs: 0, options: [] });
  }
  for (const offers of edgeOffers) {
    await check('new stream', 'Connect', { uri: echo.uri, offers, timeoutMs: 0xffffffff, options: [] });
    await check('new datagram', 'Bind', { uri: 'udp://127.0.0.1:0', offers });
  }
  for (const backlog of [0, 1, 0x7fffffff, 0xffffffff]) await check('new listener', 'Listen', { uri: 'tcp://127.0.0.1:0', backlog });
  // Close what is left, in every order, twice.
  for (const [label, id] of ids) {
    await check(label, 'CloseSocket', { socketId: id });
    await check(label, 'CloseSocket', { socketId: id });
  }
  t.is(findings.length, 0, `unexpected outcomes:\n${showFindings(findings)}`);
  await echoStillWorks(t, gw.target, echo.uri);
  await closeAll(gw.target);
  t.true(await eventually(() => gw.gateway.table.size === 0, 5_000), `sockets left: ${(await listedIds(gw.target)).join(', ')}`);
});

test.serial('fuzz storm at an in-process gateway: it keeps serving, no unexpected statuses, table.size back to 0 after closing', async (t) => {
  t.timeout(120_000);
  const seed = (baseSeed + 2) >>> 0;
  announce(t, seed, 'in-process storm');
  const echo = await echoServer();
  const udp = await udpEcho();
  const gw = await startGateway(IDENTITY_CONFIG);
  t.teardown(async () => {
    udp.sock.close();
    await echo.close();
    await gw.stop();
  });
  const [dataHost, dataPort] = gw.gateway.addresses.data.split(':');
  const w: World = { echoPort: echo.port, udpPort: udp.port, closedPort: await closedPort(), dataHost: dataHost!, dataPort: Number(dataPort), pools: { ids: [], tokens: [] } };
  const report = await storm(new Rng(seed), gw.target, w);
  t.log(summary(report));
  t.true(report.requests >= 500, `the storm made ${report.requests} requests`);
  t.is(report.findings.length, 0, `unexpected outcomes (seed ${seed}; reproduce with: ${RERUN}):\n${showFindings(report.findings)}`);
  await echoStillWorks(t, gw.target, echo.uri);
  // Sockets may close (token expiry reaps unattached ones) while the call is in flight:
  // every socket in the table both before and after the call must be listed.
  const before = new Set(gw.gateway.table.list().map((s) => s.id));
  const listed = new Set((await listedIds(gw.target)).map((l) => l.split('(')[0]));
  const stable = gw.gateway.table.list().map((s) => s.id).filter((id) => before.has(id));
  t.deepEqual(stable.filter((id) => !listed.has(id)), [], 'ListSockets shows every socket in the table');
  const { closeFailures } = await closeAll(gw.target);
  t.deepEqual(closeFailures, [], 'every listed socket closes');
  t.true(await eventually(() => gw.gateway.table.size === 0, 5_000), `table.size is ${gw.gateway.table.size} after closing everything: ${(await listedIds(gw.target)).join(', ')}`);
  t.true(await eventually(async () => (await connectionsOf(echo.server)) === 0, 5_000), 'no host connection to the echo server is left');
});
