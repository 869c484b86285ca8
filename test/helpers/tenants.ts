/**
 * Tenants for the bounds tests: a gateway config with a good tenant, a
 * hostile one and an admin (each with its own bearer token, anonymous off),
 * raw control clients, a UDP flooder whose datagrams carry their own check,
 * and /proc readings of a gateway process.
 */
import { createHash } from 'node:crypto';
import { createSocket, type Socket as DgramSocket } from 'node:dgram';
import { readFileSync, readdirSync } from 'node:fs';
import type { ClientReadableStream, Metadata, StatusObject } from '@grpc/grpc-js';
import { connect as http2Connect } from 'node:http2';
import { RecvFromRequest, type RecvFromResponse, type SocketGatewayServiceClient } from '../../proto/gen/sockgate/v1/sockgate.js';
import { TransportKind, type TransportOffer } from '../../proto/gen/sockgate/v1/transport.js';

export const TOKEN = {
  good: 'good-tenant-token-0123456789abcdef',
  evil: 'evil-tenant-token-0123456789abcdef',
  root: 'root-admin-token-0123456789abcdef0',
} as const;

export const TCP_OFFER: TransportOffer = { kind: TransportKind.TRANSPORT_KIND_TCP, version: 1, params: undefined };

/** Identities, rules and `anonymous: off` as a config tree (merged with a test's limits). */
export function tenantConfig(limits: Record<string, unknown> = {}): Record<string, unknown> {
  return {
    anonymous: { enabled: false, admin: false },
    identities: [
      { name: 'good', tokens: [TOKEN.good] },
      { name: 'evil', tokens: [TOKEN.evil] },
      { name: 'root', tokens: [TOKEN.root], admin: true },
    ],
    rules: [{ name: 'loopback', action: 'allow', destinations: ['127.0.0.1'], ports: ['1-65535'] }],
    limits,
  };
}

/** A RecvFrom stream: never read unless `read` (then the datagrams are collected). */
export interface Receiver {
  call: ClientReadableStream<RecvFromResponse>;
  status: Promise<StatusObject>;
  got: Buffer[];
}

export function recvFrom(client: SocketGatewayServiceClient, socketId: string, md: Metadata, read: boolean): Receiver {
  const call = client.recvFrom({ socketId }, md);
  const got: Buffer[] = [];
  const status = new Promise<StatusObject>((resolve) => call.on('status', resolve));
  call.on('error', () => {});
  if (read) call.on('data', (m: RecvFromResponse) => m.datagram && got.push(Buffer.from(m.datagram.payload)));
  return { call, status, got };
}

/** Datagram `i` of `size` bytes: its index, then bytes derived from it (so each one checks itself). */
export function datagram(i: number, size: number): Buffer {
  const out = Buffer.alloc(size);
  out.writeUInt32BE(i, 0);
  let seed = createHash('sha256').update(String(i)).digest();
  for (let off = 4; off < size; off += seed.length) {
    seed.copy(out, off, 0, Math.min(seed.length, size - off));
    seed = createHash('sha256').update(seed).digest();
  }
  return out;
}

/** Whether `b` is exactly a datagram this module made (any index, its size). */
export function isIntact(b: Buffer): boolean {
  return b.length >= 4 && b.equals(datagram(b.readUInt32BE(0), b.length));
}

/** Send `count` datagrams of `size` bytes to 127.0.0.1:`port`, yielding every `burst` (bounded). */
export async function flood(port: number, count: number, size: number, burst = 32): Promise<void> {
  const sock: DgramSocket = createSocket('udp4');
  const one = datagram(0, size);
  try {
    for (let i = 0; i < count; i++) {
      // The payload's check is per index only for the first ones; the flood itself reuses one buffer.
      await new Promise<void>((resolve) => sock.send(i < 8 ? datagram(i, size) : one, port, '127.0.0.1', () => resolve()));
      if (i % burst === burst - 1) await new Promise((r) => setTimeout(r, 1));
    }
  } finally {
    sock.close();
  }
}

/** The port of a udp://host:port URI. */
export function portOf(uri: string): number {
  return Number(uri.slice(uri.lastIndexOf(':') + 1));
}

/** Resident set size of process `pid`, in bytes (VmRSS). */
export function rssOf(pid: number): number {
  const m = /VmRSS:\s+(\d+) kB/.exec(readFileSync(`/proc/${pid}/status`, 'utf8'));
  if (!m) throw new Error(`no VmRSS for ${pid}`);
  return Number(m[1]) * 1024;
}

/** Open descriptors of process `pid`. */
export function fdsOf(pid: number): number {
  return readdirSync(`/proc/${pid}/fd`).length;
}

/**
 * A RecvFrom stream whose reader truly never reads: a bare HTTP/2 client that
 * never consumes, so it grants no flow-control window beyond the first 64 KiB
 * and the gateway's writes stall (a grpc-js client would drain the window and
 * buffer on its own side). One HTTP/2 connection per stream.
 */
export interface StuckReceiver {
  /** Resolves with the grpc-status trailer (or -1 if the connection ended without one). */
  status: Promise<number>;
  close(): void;
}

export function stuckReceiver(target: string, socketId: string, token: string): StuckReceiver {
  const session = http2Connect(`http://${target}`, { settings: { initialWindowSize: 65_535 } });
  session.on('error', () => {});
  const req = session.request({
    ':method': 'POST',
    ':path': '/sockgate.v1.SocketGatewayService/RecvFrom',
    'content-type': 'application/grpc',
    te: 'trailers',
    authorization: `Bearer ${token}`,
  });
  req.on('error', () => {});
  const body = Buffer.from(RecvFromRequest.encode({ socketId }).finish());
  const frame = Buffer.alloc(5 + body.length);
  frame.writeUInt32BE(body.length, 1);
  body.copy(frame, 5);
  req.end(frame);
  req.pause();
  const status = new Promise<number>((resolve) => {
    req.on('trailers', (h) => resolve(Number(h['grpc-status'] ?? -1)));
    req.on('response', (h) => h['grpc-status'] !== undefined && resolve(Number(h['grpc-status'])));
    req.on('close', () => resolve(-1));
  });
  return {
    status,
    close: () => {
      req.close();
      session.destroy();
    },
  };
}
