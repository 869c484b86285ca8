/** The two-VM lab's addresses and ports (topology b: a = 10.99.0.1, b = 10.99.0.2). */
import { createHash } from 'node:crypto';

export const A_ADDR = '10.99.0.1';
export const PORTS = {
  /** The gateway under test: control; data = +1, metrics = +2. */
  gateway: 7100,
  /** A gateway on a without rdma (address ""). */
  plainGateway: 7110,
  /** The rdma_cm listener of the gateway under test. */
  rdma: 7150,
  /** A gateway with live failover (transports.rdma.resume_ms): control; data = +1, metrics = +2. */
  failoverGateway: 7120,
  failoverRdma: 7151,
  echo: 7200,
  sink: 7201,
  /** Sends SOURCE_BYTES of sourceBlock() rotations, then ends. */
  source: 7202,
  /** b tells a "done" here. */
  control: 7199,
} as const;
/** Both gateways let anonymous callers reach the lab's subnet and loopback. */
export const LAB_RULES = [{ name: 'lab', action: 'allow', destinations: ['10.99.0.0/24', '127.0.0.0/8'] }];

/** How long the failover gateway waits for a resume (transports.rdma.resume_ms). */
export const RESUME_MS = 5000;
/** The source's stream: 32 MiB (the two-VM stage's time budget; the benchmark would use 256). */
export const SOURCE_BYTES = 32 << 20;
export const CHUNK = 64 * 1024;

/** A deterministic 1 MiB block both VMs derive (sha256 chain), so the receiver knows the stream's hash. */
export function sourceBlock(): Buffer {
  const parts: Buffer[] = [];
  let h = createHash('sha256').update('sockgate failover lab').digest();
  for (let i = 0; i < (1 << 20) / 32; i++) {
    parts.push(h);
    h = createHash('sha256').update(h).digest();
  }
  return Buffer.concat(parts);
}

/** Chunk `i` of a lab stream: a rotation of the block (never the same 64 KiB twice in a row). */
export function sourceChunk(block: Buffer, sent: number): Buffer {
  const off = (sent * 7) % (block.length - CHUNK);
  return block.subarray(off, off + CHUNK);
}

/** The gateway under test's Prometheus text. */
export async function metrics(): Promise<string> {
  const res = await fetch(`http://${A_ADDR}:${PORTS.gateway + 2}/metrics`);
  return res.text();
}

/** Sum of `name`'s samples whose labels include `labels`. */
export function metric(text: string, name: string, labels = ''): number {
  let sum = 0;
  for (const line of text.split('\n')) {
    if (!line.startsWith(name)) continue;
    const m = /^([a-z_]+)(\{[^}]*\})? ([0-9.e+-]+)$/.exec(line);
    if (m && m[1] === name && (!labels || (m[2] ?? '').includes(labels))) sum += Number(m[3]);
  }
  return sum;
}
