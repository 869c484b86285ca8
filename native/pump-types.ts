/**
 * The pump's event and raw-surface types (native/src/pump_wrap.cc); the
 * wrappers live in native/index.ts, which re-exports these.
 */
import type { RawRegion, RdmaEvent, RingDir } from './index.js';

/** What a pump's I/O thread did since it started (read on demand; tests and diagnostics). */
export interface PumpStats {
  /** Sleeps in epoll_wait that ended with news (thread wake-ups). */
  wakeups: number;
  /** Spins before sleeping, and how many found news (no sleep, no doorbell). */
  spins: number;
  spinHits: number;
  /** Doorbells its ring links rang (the others were suppressed: the peer was awake). */
  doorbells: number;
  /** readv / writev calls of its ring links that moved bytes. */
  fdReads: number;
  fdWrites: number;
  /** Rings shrunk back to their first size after an idle spell. */
  shrinks: number;
  /** The adaptive spin budget now, and the setting (µs). */
  spinBudgetUs: number;
  spinUs: number;
}

export type PumpEvent =
  | { type: 'progress'; link: number; toFd: number; toRing: number; stalls: number }
  /** The answer to PumpLink.resize(), or (`idle`) the pump's own shrink of an idle ring back to its first size. */
  | { type: 'resized'; link: number; dir: RingDir; ringSize: number; errno: number; idle?: true }
  | { type: 'fdEof'; link: number }
  | { type: 'ringEof'; link: number }
  | {
      type: 'end';
      link: number;
      reason: 'ok' | 'error' | 'corrupt' | 'aborted';
      errno: number;
      code?: string;
      totalToFd: number;
      totalToRing: number;
    }
  | { type: 'corrupt'; region: number; code: 'ERR_SOCKGATE_RING_CORRUPT' }
  | { type: 'hints'; region: number; slots: number[] }
  | { type: 'attach'; listener: number; conn: number; pid: number; uid: number; gid: number; version: number; flags: number; token: Buffer }
  | { type: 'connClosed'; listener: number; conn: number; errno: number }
  | RdmaEvent;

export interface RawPump {
  readonly activeLinks: number;
  readonly closed: boolean;
  ref(): void;
  unref(): void;
  watch(region: RawRegion): void;
  unwatch(region: RawRegion): void;
  /** The spin setting from now on (µs, 0..1000). */
  setSpin(us: number): void;
  stats(): PumpStats;
  close(): void;
}

export interface RawPumpLink {
  readonly id: number;
  resize(dir: RingDir, ringSize: number): void;
  setHostSockopt(level: number, name: number, value: number): void;
  getHostSockopt(level: number, name: number): number;
  /** Stop reading the fd; the peer gets EOF after what the ring holds. */
  shutdownRead(): void;
  /** shutdown(2) of the fd in order with the rings (write: FIN after what the inbound ring holds; later bytes dropped). */
  shutdownHost(read: boolean, write: boolean): void;
  /** [bytes ring->fd, bytes fd->ring] as of the I/O thread's last round. */
  totals(): [number, number];
  /** No more progress events (totals() is read on demand instead). */
  mute(): void;
  close(reset?: boolean): void;
}

