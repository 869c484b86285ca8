/**
 * The resumable attach on the tcp data port (native/RDMA.md "Live failover"):
 * a stream socket whose RDMA connection failed continues on a TCP connection
 * to the gateway's data port, at the positions both ends agree on.
 *
 * Request (client -> gateway), all integers big-endian; the same magic as the
 * plain attach preamble (wire.ts) with version 2, so a gateway that does not
 * resume answers VERSION_MISMATCH and closes (the socket then ends with its
 * RDMA error, as without failover):
 *
 *   0  magic     "SGA1"
 *   4  version   u8   (2 = resume)
 *   5  flags     u8   (0)
 *   6  reserved  u16  (0)
 *   8  tok_len   u16  (16)
 *  10  token     16 bytes: the slot's resume token (resumeToken())
 *  26  position  u64: bytes of the gateway -> client stream the client has
 *                     delivered to its socket (its consumer cursor)
 *
 * Reply (gateway -> client), 16 bytes: "SGA1", status u8 (AttachStatus), 3
 * reserved zero bytes, position u64 (bytes of the client -> gateway stream the
 * gateway has delivered to its host socket). On OK each side then sends the
 * other's stream from the other's position on (bytes it still holds: never
 * before its peer's last CONSUMED), then relays its socket; on anything else
 * the gateway closes the connection.
 */
import { createHash } from 'node:crypto';
import { AttachStatus, PREAMBLE_MAGIC } from './wire.js';

export const RESUME_VERSION = 2;
export const RESUME_TOKEN_BYTES = 16;
export const RESUME_REQUEST_BYTES = 10 + RESUME_TOKEN_BYTES + 8;
export const RESUME_REPLY_BYTES = 16;
/** Reply status for a position outside what the gateway still holds (bytes would be lost or doubled). */
export const RESUME_BAD_POSITION = AttachStatus.BAD_PREAMBLE;
/** Domain separation: a resume token is never an attach token. */
const RESUME_LABEL = 'sockgate rdma resume v1';

/** Both ends derive a slot's resume token from the short attach token the slot was linked with (never sent in the clear as such). */
export function resumeToken(shortToken: Uint8Array): Buffer {
  return createHash('sha256').update(RESUME_LABEL).update(shortToken).digest().subarray(0, RESUME_TOKEN_BYTES);
}

export function encodeResumeRequest(token: Uint8Array, position: bigint): Buffer {
  if (token.length !== RESUME_TOKEN_BYTES) throw new RangeError(`a resume token is ${RESUME_TOKEN_BYTES} bytes`);
  const b = Buffer.alloc(RESUME_REQUEST_BYTES);
  PREAMBLE_MAGIC.copy(b, 0);
  b.writeUInt8(RESUME_VERSION, 4);
  b.writeUInt16BE(RESUME_TOKEN_BYTES, 8);
  b.set(token, 10);
  b.writeBigUInt64BE(position, 10 + RESUME_TOKEN_BYTES);
  return b;
}

export type ResumeRequestParse =
  | { state: 'need-more' }
  | { state: 'bad'; status: AttachStatus; detail: string }
  | { state: 'ok'; token: Buffer; position: bigint; rest: Buffer };

/** Whether the bytes so far announce a resume request (magic and version 2); false on fewer than 5 bytes. */
export function isResumeRequest(buf: Buffer): boolean {
  return buf.length >= 5 && buf.subarray(0, 4).equals(PREAMBLE_MAGIC) && buf.readUInt8(4) === RESUME_VERSION;
}

export function parseResumeRequest(buf: Buffer): ResumeRequestParse {
  if (buf.length < RESUME_REQUEST_BYTES) return { state: 'need-more' };
  if (!isResumeRequest(buf)) return { state: 'bad', status: AttachStatus.BAD_PREAMBLE, detail: 'not a resume request' };
  if (buf.readUInt8(5) !== 0 || buf.readUInt16BE(6) !== 0) return { state: 'bad', status: AttachStatus.BAD_PREAMBLE, detail: 'non-zero flags or reserved bytes' };
  if (buf.readUInt16BE(8) !== RESUME_TOKEN_BYTES) return { state: 'bad', status: AttachStatus.BAD_PREAMBLE, detail: `token length ${buf.readUInt16BE(8)}` };
  return {
    state: 'ok',
    token: Buffer.from(buf.subarray(10, 10 + RESUME_TOKEN_BYTES)),
    position: buf.readBigUInt64BE(10 + RESUME_TOKEN_BYTES),
    rest: buf.subarray(RESUME_REQUEST_BYTES),
  };
}

export function encodeResumeReply(status: AttachStatus, position: bigint): Buffer {
  const b = Buffer.alloc(RESUME_REPLY_BYTES);
  PREAMBLE_MAGIC.copy(b, 0);
  b.writeUInt8(status, 4);
  b.writeBigUInt64BE(position, 8);
  return b;
}

/**
 * The reply from the bytes received so far. A plain 8-byte refusal (an old
 * gateway's VERSION_MISMATCH) is complete as it is: the gateway closes after it.
 */
export function parseResumeReply(buf: Buffer, ended: boolean): { state: 'need-more' } | { state: 'bad'; detail: string } | { state: 'ok'; status: AttachStatus; position: bigint; rest: Buffer } {
  if (buf.length >= 4 && !buf.subarray(0, 4).equals(PREAMBLE_MAGIC)) return { state: 'bad', detail: 'bad magic in the resume reply' };
  if (buf.length >= 5 && buf.readUInt8(4) !== AttachStatus.OK && (ended || buf.length >= 8)) return { state: 'ok', status: buf.readUInt8(4) as AttachStatus, position: 0n, rest: Buffer.alloc(0) };
  if (buf.length < RESUME_REPLY_BYTES) return ended ? { state: 'bad', detail: `the gateway closed after ${buf.length} bytes of the resume reply` } : { state: 'need-more' };
  return { state: 'ok', status: buf.readUInt8(4) as AttachStatus, position: buf.readBigUInt64BE(8), rest: buf.subarray(RESUME_REPLY_BYTES) };
}
