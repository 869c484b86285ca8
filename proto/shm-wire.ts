/**
 * The shm session's wire formats, shared by the gateway (transport-shm.ts) and
 * the SDK (clients/sdk/attach-shm.ts). Little-endian, encoded byte by byte.
 *
 * A client session is one region (native/SHM.md) attached once over the
 * gateway's Unix socket; every later socket of that client rides a slot of
 * the same region. Two formats ride on top of the native attach:
 *
 * 1. The attach hello's token (opaque to the native layer, 1..256 bytes) names
 *    the session being attached and the first socket's slot, and carries that
 *    socket's single-use attach token:
 *
 *    | off | type | field |
 *    |---|---|---|
 *    | 0 | u32 | magic `0x31534753` ("SGS1") |
 *    | 4 | u32 | slot of the socket whose token follows |
 *    | 8 | u8  | session id length n, 1..64 |
 *    | 9 | n bytes | session id (ASCII `[A-Za-z0-9_-]`) |
 *    | 9+n | rest | attach token, 16..128 bytes |
 *
 * 2. Slot 0 of every region is the session's control slot: a byte stream each
 *    way (the gateway pumps it into a socketpair it reads in JS), carrying
 *    8-byte-header messages: `u8 type, u8 flags = 0, u16 payload length
 *    (<= 1024), u32 slot`, then the payload.
 *
 *    client -> gateway: BIND (payload: the socket's attach token; the token is
 *    presented over the session, no new connection, mapping or fd), RELEASE
 *    (the client is done with the slot: close it once its link has ended; or
 *    gives back a pre-issued slot it does not want), ABORT (the client dropped
 *    the socket: close the link now; or a Connect naming a pre-issued slot
 *    ended with no known outcome: free it, or reset the socket it carries).
 *    A socket whose Connect named a pre-issued slot (ShmOffer.slot, gRPC)
 *    sends no BIND: it is linked when the Connect answers (native/SHM.md).
 *    gateway -> client: BOUND (payload: u16 status, then UTF-8 detail), END
 *    (payload: UTF-8 error code; the link ended abnormally, e.g.
 *    ERR_SOCKGATE_RING_CORRUPT, ECONNRESET, aborted).
 *
 * Everything a peer sends is validated; a malformed control message ends the
 * session that sent it.
 */
import { ProtocolError } from './errors.js';

export const HELLO_MAGIC = 0x31534753;
export const HELLO_FIXED_BYTES = 9;
export const MAX_SESSION_ID = 64;
export const MIN_TOKEN_BYTES = 16;
export const MAX_TOKEN_BYTES = 128;
/** Session ids: what the client may pick. */
export const SESSION_ID_RE = /^[A-Za-z0-9_-]{8,64}$/;

/** The session's control slot and its ring size (both directions). */
export const CONTROL_SLOT = 0;
export const CONTROL_RING_BYTES = 4096;

export const CTL_HEADER_BYTES = 8;
export const CTL_MAX_PAYLOAD = 1024;

export enum CtlType {
  BIND = 1,
  RELEASE = 2,
  ABORT = 3,
  BOUND = 0x81,
  END = 0x82,
}

/**
 * Attach statuses: the native layer uses 1..3 (malformed hello, version,
 * timeout); the gateway's own refusals (attach reply status, BOUND status)
 * start at 16.
 */
export const ShmStatus = {
  OK: 0,
  TOKEN: 16,
  POLICY: 17,
  NO_SESSION: 18,
  RESOURCE: 19,
  SHUTTING_DOWN: 20,
  MALFORMED: 21,
  NOT_WAITING: 22,
} as const;
export type ShmStatusCode = (typeof ShmStatus)[keyof typeof ShmStatus];

export function shmStatusName(status: number): string {
  for (const [k, v] of Object.entries(ShmStatus)) if (v === status) return k;
  if (status === 1) return 'MALFORMED_HELLO';
  if (status === 2) return 'VERSION';
  if (status === 3) return 'HELLO_TIMEOUT';
  return `STATUS_${status}`;
}

export interface Hello {
  sessionId: string;
  slot: number;
  token: Buffer;
}

export function encodeHello(h: Hello): Buffer {
  const id = Buffer.from(h.sessionId, 'ascii');
  const b = Buffer.alloc(HELLO_FIXED_BYTES + id.length + h.token.length);
  b.writeUInt32LE(HELLO_MAGIC, 0);
  b.writeUInt32LE(h.slot, 4);
  b.writeUInt8(id.length, 8);
  id.copy(b, HELLO_FIXED_BYTES);
  Buffer.from(h.token.buffer, h.token.byteOffset, h.token.byteLength).copy(b, HELLO_FIXED_BYTES + id.length);
  return b;
}

/** Parse a hello token; undefined when malformed. */
export function decodeHello(b: Buffer): Hello | undefined {
  if (b.length < HELLO_FIXED_BYTES + 8 + MIN_TOKEN_BYTES) return undefined;
  if (b.readUInt32LE(0) !== HELLO_MAGIC) return undefined;
  const slot = b.readUInt32LE(4);
  const n = b.readUInt8(8);
  if (n < 8 || n > MAX_SESSION_ID || b.length < HELLO_FIXED_BYTES + n + MIN_TOKEN_BYTES) return undefined;
  const sessionId = b.toString('ascii', HELLO_FIXED_BYTES, HELLO_FIXED_BYTES + n);
  if (!SESSION_ID_RE.test(sessionId)) return undefined;
  const token = b.subarray(HELLO_FIXED_BYTES + n);
  if (token.length > MAX_TOKEN_BYTES) return undefined;
  return { sessionId, slot, token: Buffer.from(token) };
}

export interface CtlMessage {
  type: CtlType;
  slot: number;
  payload: Buffer;
}

export function encodeCtl(type: CtlType, slot: number, payload: Buffer = Buffer.alloc(0)): Buffer {
  if (payload.length > CTL_MAX_PAYLOAD) throw new RangeError(`control payload of ${payload.length} bytes`);
  const b = Buffer.allocUnsafe(CTL_HEADER_BYTES + payload.length);
  b.writeUInt8(type, 0);
  b.writeUInt8(0, 1);
  b.writeUInt16LE(payload.length, 2);
  b.writeUInt32LE(slot, 4);
  payload.copy(b, CTL_HEADER_BYTES);
  return b;
}

export function encodeBound(slot: number, status: number, detail: string): Buffer {
  const d = Buffer.from(detail.slice(0, 400), 'utf8');
  const p = Buffer.allocUnsafe(2 + d.length);
  p.writeUInt16LE(status, 0);
  d.copy(p, 2);
  return encodeCtl(CtlType.BOUND, slot, p);
}

export function decodeBound(payload: Buffer): { status: number; detail: string } {
  if (payload.length < 2) throw new ProtocolError('shm control: BOUND without a status');
  return { status: payload.readUInt16LE(0), detail: payload.toString('utf8', 2) };
}

/**
 * Incremental parser of a control stream. `push` returns the complete
 * messages; a malformed header throws ProtocolError (the stream is then dead).
 * `allowed` restricts the message types this side accepts.
 */
export class CtlParser {
  /** Bytes of an incomplete message; never more than one header + max payload. */
  #pending: Buffer = Buffer.alloc(0);
  constructor(
    private readonly allowed: ReadonlySet<CtlType>,
    private readonly slotCount: number,
  ) {}

  push(chunk: Buffer): CtlMessage[] {
    let buf = this.#pending.length ? Buffer.concat([this.#pending, chunk]) : chunk;
    const out: CtlMessage[] = [];
    while (buf.length >= CTL_HEADER_BYTES) {
      const type = buf.readUInt8(0) as CtlType;
      const flags = buf.readUInt8(1);
      const len = buf.readUInt16LE(2);
      const slot = buf.readUInt32LE(4);
      if (!this.allowed.has(type)) throw new ProtocolError(`shm control: unexpected message type ${type}`);
      if (flags !== 0) throw new ProtocolError(`shm control: flags ${flags} on message type ${type}`);
      if (len > CTL_MAX_PAYLOAD) throw new ProtocolError(`shm control: payload of ${len} bytes`);
      if (slot === CONTROL_SLOT || slot >= this.slotCount) throw new ProtocolError(`shm control: slot ${slot} out of range`);
      if (buf.length < CTL_HEADER_BYTES + len) break;
      out.push({ type, slot, payload: Buffer.from(buf.subarray(CTL_HEADER_BYTES, CTL_HEADER_BYTES + len)) });
      buf = buf.subarray(CTL_HEADER_BYTES + len);
    }
    this.#pending = buf.length ? Buffer.from(buf) : Buffer.alloc(0);
    return out;
  }
}

/** Host identity for colocation checks: the kernel boot id (shared by containers, not by VMs). */
export function readBootId(read: (p: string) => string): string {
  try {
    return read('/proc/sys/kernel/random/boot_id').trim();
  } catch {
    return '';
  }
}
