/**
 * Control-plane connection admission: how many connections the control
 * listeners hold, per peer and in total, and how long one may sit without
 * making an identified call. Refused and timed-out connections are closed at
 * once; their log lines are rate-limited so a flood of them cannot flood the log.
 */
import type { Socket } from 'node:net';
import type { Logger } from '../native/log.js';
import type { PeerCredentials } from './control-peer.js';

/** One refusal line per this interval at most, carrying the count since the last one. */
const REFUSAL_LOG_INTERVAL_MS = 10_000;

export interface AdmissionLimits {
  /** Control connections held at once across every control listener. */
  maxConnections: number;
  /** Control connections held at once from one peer (TCP address, Unix uid, VMM socket). */
  maxConnectionsPerPeer: number;
  /** A connection with no identified call this long after it was accepted is closed; 0 = never. */
  firstCallTimeoutMs: number;
}

/** The peer an admission count is kept for: the address a TCP peer comes from, a Unix peer's uid. */
export function admissionKeyOf(creds: PeerCredentials): string {
  switch (creds.kind) {
    case 'tcp':
      // An IPv4 peer on a dual-stack listener shows as ::ffff:a.b.c.d: count it with its plain form.
      return `tcp:${creds.address.startsWith('::ffff:') && creds.address.includes('.') ? creds.address.slice(7) : creds.address}`;
    case 'unix':
      return `uid:${creds.uid}`;
    case 'unix-unknown':
      return 'unix';
    case 'vmm':
      return `vmm:${creds.path}`;
    case 'vsock':
      return `vsock:${creds.cid}`;
  }
}

/** Counts refusals by reason and logs at most one line per interval. */
export class RefusalLog {
  private readonly counts = new Map<string, number>();
  private timer: NodeJS.Timeout | undefined;
  private lastAt = 0;

  constructor(
    private readonly logger: Logger,
    private readonly intervalMs = REFUSAL_LOG_INTERVAL_MS,
  ) {}

  note(reason: string): void {
    this.counts.set(reason, (this.counts.get(reason) ?? 0) + 1);
    if (this.timer) return;
    const wait = Math.max(0, this.lastAt + this.intervalMs - Date.now());
    this.timer = setTimeout(() => this.flush(), wait);
    this.timer.unref();
  }

  flush(): void {
    if (this.timer) clearTimeout(this.timer);
    this.timer = undefined;
    if (this.counts.size === 0) return;
    this.lastAt = Date.now();
    this.logger.warn({ refused: Object.fromEntries(this.counts) }, 'control connections refused or closed (counts since the last such line)');
    this.counts.clear();
  }
}

export class ControlAdmission {
  private total = 0;
  private readonly perPeer = new Map<string, number>();
  /** Connections refused or closed by a bound, by reason, since start (tests, metrics). */
  readonly refusedTotal = { total: 0, per_peer: 0, first_call_timeout: 0 };
  private readonly log: RefusalLog;

  constructor(
    private readonly limits: AdmissionLimits,
    logger: Logger,
  ) {
    this.log = new RefusalLog(logger);
  }

  /** Connections currently held. */
  get open(): number {
    return this.total;
  }

  /**
   * Admit `sock` from the peer `creds`, or close it and return false. An
   * admitted connection is counted until it closes and, unless `firstCall` is
   * false, closed if `identified()` is not called within the first-call timeout.
   */
  admit(sock: Socket, creds: PeerCredentials, firstCall: boolean): { admitted: false } | { admitted: true; identified(): void } {
    const key = admissionKeyOf(creds);
    const n = this.perPeer.get(key) ?? 0;
    const reason = this.total >= this.limits.maxConnections ? 'total' : n >= this.limits.maxConnectionsPerPeer ? 'per_peer' : undefined;
    if (reason) {
      this.refusedTotal[reason]++;
      this.log.note(reason === 'total' ? 'limits.max_control_connections' : 'limits.max_control_connections_per_peer');
      sock.destroy();
      return { admitted: false };
    }
    this.total++;
    this.perPeer.set(key, n + 1);
    let timer: NodeJS.Timeout | undefined;
    if (firstCall && this.limits.firstCallTimeoutMs > 0) {
      timer = setTimeout(() => {
        this.refusedTotal.first_call_timeout++;
        this.log.note('limits.control_first_call_timeout_ms');
        sock.destroy();
      }, this.limits.firstCallTimeoutMs);
      timer.unref();
    }
    sock.once('close', () => {
      if (timer) clearTimeout(timer);
      this.total--;
      const left = (this.perPeer.get(key) ?? 1) - 1;
      if (left <= 0) this.perPeer.delete(key);
      else this.perPeer.set(key, left);
    });
    return {
      admitted: true,
      identified: () => {
        if (timer) clearTimeout(timer);
        timer = undefined;
      },
    };
  }

  close(): void {
    this.log.flush();
  }
}
