/**
 * ListSockets answers in pages, so no table size can push an answer past the
 * gRPC message limit (one oversized answer used to fail the call for every
 * admin). Sockets are ordered by (creation time, id); a page token names the
 * last socket of the previous page, so pages stay consistent while sockets come
 * and go (a socket opened after the first page lands on a later one).
 */
import { InvalidArgumentError } from '../proto/errors.js';
import { SocketInfo, type ListSocketsRequest, type ListSocketsResponse } from '../proto/gen/sockgate/v1/sockgate.js';
import type { GatewaySocket } from './socket-table.js';

/** Serialized sockets per answer: well under the gateway's 4 MiB gRPC message limit. */
export const MAX_LIST_RESPONSE_BYTES = 3 << 20;
/** Per-entry framing in the answer (tag + length varint). */
const ENTRY_OVERHEAD_BYTES = 6;

function tokenOf(s: GatewaySocket): string {
  return `${s.createdAtMs}.${s.id}`;
}

function parseToken(token: string): { at: number; id: string } | undefined {
  if (token === '') return undefined;
  const dot = token.indexOf('.');
  const at = Number(token.slice(0, dot));
  if (dot <= 0 || !Number.isSafeInteger(at) || token.length > 128) throw new InvalidArgumentError('page_token is not one this gateway issued');
  return { at, id: token.slice(dot + 1) };
}

export function listSocketsPage(sockets: readonly GatewaySocket[], req: Pick<ListSocketsRequest, 'pageSize' | 'pageToken'>, maxPageSize: number): ListSocketsResponse {
  const after = parseToken(String(req.pageToken ?? ''));
  const limit = req.pageSize > 0 ? Math.min(req.pageSize, maxPageSize) : maxPageSize;
  const ordered = [...sockets].sort((a, b) => a.createdAtMs - b.createdAtMs || (a.id < b.id ? -1 : a.id > b.id ? 1 : 0));
  const start = after ? ordered.findIndex((s) => s.createdAtMs > after.at || (s.createdAtMs === after.at && s.id > after.id)) : 0;
  const out: SocketInfo[] = [];
  let bytes = 0;
  let last: GatewaySocket | undefined;
  if (start >= 0) {
    for (let i = start; i < ordered.length && out.length < limit; i++) {
      const s = ordered[i]!;
      const info = s.info();
      const size = SocketInfo.encode(info).finish().length + ENTRY_OVERHEAD_BYTES;
      if (out.length > 0 && bytes + size > MAX_LIST_RESPONSE_BYTES) break;
      out.push(info);
      bytes += size;
      last = s;
    }
  }
  const more = last !== undefined && ordered.indexOf(last) < ordered.length - 1;
  return { sockets: out, nextPageToken: more ? tokenOf(last!) : '', total: ordered.length };
}
