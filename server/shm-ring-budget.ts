/**
 * Ring memory of the shm plane: bytes charged in TS per identity and
 * gateway-wide before anything is opened or grown (over the cap: decline
 * RESOURCE_LIMIT, the client falls back; the native byte caps enforce the same
 * numbers), and autotuning, which starts every ring small and grows a direction
 * that moves many ring-fulls per window, like TCP buffer autotuning; idle
 * sockets stay small.
 */
import { performance } from 'node:perf_hooks';
import type { Config } from './config.js';
import type { Session, Slot } from './shm-session.js';

type ShmConfig = Config['transports']['shm'];

/** Autotuning judges a ring by the traffic of windows this long. */
const AUTOTUNE_WINDOW_MS = 50;
/** A direction grows (x2) when it moved this many ring-fulls in one window: the ring, not the peer, is the limit. */
const AUTOTUNE_TURNS = 4;
/** ...and grows x4 when it moved this many (ramp up in a few windows, as TCP slow start does). */
const AUTOTUNE_FAST_TURNS = 16;

/** TS-charged ring bytes per identity name, and in total, against the configured caps. */
export class RingBudget {
  readonly #identityBytes = new Map<string, number>();
  #totalBytes = 0;

  constructor(private readonly config: ShmConfig) {}

  /** Ring bytes charged: in total, or for one identity. */
  bytes(identity?: string): number {
    return identity === undefined ? this.#totalBytes : (this.#identityBytes.get(identity) ?? 0);
  }

  charge(identity: string, bytes: number): boolean {
    const cfg = this.config;
    const cur = this.#identityBytes.get(identity) ?? 0;
    if (cur + bytes > cfg.max_ring_bytes_per_identity || this.#totalBytes + bytes > cfg.max_ring_bytes_total) return false;
    this.#identityBytes.set(identity, cur + bytes);
    this.#totalBytes += bytes;
    return true;
  }

  uncharge(identity: string, bytes: number): void {
    if (bytes <= 0) return;
    const left = (this.#identityBytes.get(identity) ?? 0) - bytes;
    if (left <= 0) this.#identityBytes.delete(identity);
    else this.#identityBytes.set(identity, left);
    this.#totalBytes -= bytes;
  }
}

/** Grow a direction that moved many ring-fulls in the last window (and, toward the client, had to wait). */
export function autotune(budget: RingBudget, max: number, s: Session, slot: Slot, toFd: number, toRing: number, stalls: number): void {
  const now = performance.now();
  if (slot.winStart === 0) slot.winStart = now;
  slot.winToFd += toFd;
  slot.winToRing += toRing;
  slot.winStalls += stalls;
  if (now - slot.winStart < AUTOTUNE_WINDOW_MS) return;
  for (const dir of [0, 1] as const) {
    const moved = dir === 0 ? slot.winToFd : slot.winToRing;
    const size = slot.size[dir];
    if (slot.growing[dir] || size >= max || moved < AUTOTUNE_TURNS * size) continue;
    if (dir === 1 && slot.winStalls === 0) continue;
    const want = Math.min(max, size * (moved >= AUTOTUNE_FAST_TURNS * size ? 4 : 2));
    const delta = want - size;
    if (!slot.link || !budget.charge(s.identity.name, delta)) continue; // at the cap: the ring stays as it is
    s.charged += delta;
    slot.growing[dir] = delta;
    try {
      slot.link.resize(dir, want);
    } catch {
      slot.growing[dir] = 0;
      s.charged -= delta;
      budget.uncharge(s.identity.name, delta);
    }
  }
  slot.winStart = now;
  slot.winToFd = 0;
  slot.winToRing = 0;
  slot.winStalls = 0;
}
