/**
 * Single-use attach tokens. The negotiator issues one per accepted offer; the
 * transport that the client attaches through redeems it exactly once, before it
 * expires, for the transport it was issued for. Tokens are 256 random bits;
 * only their SHA-256 is kept, so a heap dump does not leak live tokens.
 */
import { createHash, randomBytes } from 'node:crypto';
import { AttachTokenError } from '../proto/errors.js';
import type { TransportKind } from '../proto/gen/sockgate/v1/transport.js';
import { tracer } from '../native/trace.js';

const trace = tracer('attach');

// Token sizes are the contract's (redeem() never takes a short form).
import { ATTACH_TOKEN_BYTES, SHORT_TOKEN_BYTES } from '../proto/attach-limits.js';
export { ATTACH_TOKEN_BYTES, SHORT_TOKEN_BYTES };
/** Redeemed and expired tokens are remembered this long so a replay is told apart from garbage. */
const SPENT_MEMORY_MS = 60_000;
/** Upper bound on remembered spent tokens, so replays cannot grow memory. */
const MAX_SPENT = 65_536;

/** Spent short forms are remembered under this prefix, so redeem() never matches one. */
const SHORT_SPENT = 's:';

// The error classes live in the one table; re-exported for the transports that import them from here.
export { AttachTokenError, type RedeemFailure } from '../proto/errors.js';

/** A pending attach: what the token unlocks. */
export interface PendingAttach<T> {
  readonly target: T;
  readonly transport: TransportKind;
  readonly expiresAtMs: number;
}

function digest(token: Uint8Array): string {
  return createHash('sha256').update(token).digest('base64');
}

export class AttachRegistry<T> {
  /** Live tokens by digest; each entry has a timer that expires it. */
  private readonly pending = new Map<string, PendingAttach<T> & { timer: NodeJS.Timeout; onExpire: () => void; short: string }>();
  /** Digest of a live token's short form -> the digest of the token. */
  private readonly shortKeys = new Map<string, string>();
  /** Digests of redeemed/expired tokens -> why they are spent; insertion-ordered for eviction. */
  private readonly spent = new Map<string, { why: 'replayed' | 'expired'; at: number }>();
  /** Live token digests per target, so revoke() is proportional to the target's tokens. */
  private readonly byTarget = new Map<T, Set<string>>();
  /**
   * Data connections that came before their token (parallel open), by the
   * digest they wait for; woken when it is issued. Bounded by the transport's
   * unauthenticated-connection limits and preamble timeout (each is one).
   */
  private readonly early = new Map<string, () => void>();

  constructor(
    private readonly ttlMs: number,
    /** Whether a target can still take an attach (a closed socket cannot); a token for one that cannot is expired. */
    private readonly isAttachable: (target: T) => boolean = () => true,
  ) {}

  /**
   * Issue a token for `target` on `transport`. `onExpire` runs if it is not
   * redeemed in time (the socket table uses it to reap unattached sockets).
   * The token expires after the registry's TTL, or at `notAfterMs` if sooner.
   * `chosen` (the client's parallel-open nonce) becomes the token if it has the
   * token's length and was never issued nor spent; else a fresh one is made.
   */
  issue(target: T, transport: TransportKind, onExpire: () => void, notAfterMs = Number.POSITIVE_INFINITY, chosen?: Uint8Array): { token: Buffer; expiresAtMs: number } {
    let token = randomBytes(ATTACH_TOKEN_BYTES);
    let key = digest(token);
    if (chosen?.length === ATTACH_TOKEN_BYTES) {
      const k = digest(chosen);
      const s = digest(chosen.subarray(0, SHORT_TOKEN_BYTES));
      if (!this.pending.has(k) && !this.spent.has(k) && !this.shortKeys.has(s) && !this.spent.has(SHORT_SPENT + s)) {
        token = Buffer.from(chosen);
        key = k;
      }
    }
    const short = digest(token.subarray(0, SHORT_TOKEN_BYTES));
    // Never past notAfterMs: renewing a token must not extend its target's life forever.
    const ttlMs = Math.max(0, Math.min(this.ttlMs, notAfterMs - Date.now()));
    const expiresAtMs = Date.now() + ttlMs;
    const timer = setTimeout(() => {
      const entry = this.pending.get(key);
      if (!entry) return;
      this.forget(key, entry.target);
      this.remember(key, 'expired', entry.short);
      trace(`token for transport ${transport} expired`);
      entry.onExpire();
    }, ttlMs);
    timer.unref();
    this.pending.set(key, { target, transport, expiresAtMs, timer, onExpire, short });
    this.shortKeys.set(short, key);
    let keys = this.byTarget.get(target);
    if (!keys) this.byTarget.set(target, (keys = new Set()));
    keys.add(key);
    const waiting = this.early.get(key);
    if (waiting) {
      this.early.delete(key);
      // After the caller has recorded the negotiation, still before its answer goes out.
      queueMicrotask(waiting);
    }
    return { token, expiresAtMs };
  }

  /**
   * A data connection presented `token` before it was issued (parallel open):
   * `ready` runs once it is; redeem then. Returns a cancel function, or
   * undefined if the token cannot be waited for (wrong length, spent, or
   * another connection waits for it already).
   */
  park(token: Uint8Array, ready: () => void): (() => void) | undefined {
    if (token.length !== ATTACH_TOKEN_BYTES) return undefined;
    const key = digest(token);
    if (this.pending.has(key) || this.spent.has(key) || this.early.has(key)) return undefined;
    this.early.set(key, ready);
    return () => {
      if (this.early.get(key) === ready) this.early.delete(key);
    };
  }

  /** Data connections waiting for their token (tests, diagnostics). */
  get parked(): number {
    return this.early.size;
  }

  /** Redeem a token once; throws AttachTokenError saying why it was refused. */
  redeem(token: Uint8Array, transport: TransportKind): T {
    return this.redeemKey(digest(token), transport);
  }

  /** Redeem a token by its short form (SHORT_TOKEN_BYTES); the same rules as redeem(). */
  redeemShort(prefix: Uint8Array, transport: TransportKind): T {
    if (prefix.length !== SHORT_TOKEN_BYTES) throw new AttachTokenError('wrong_token');
    const short = digest(prefix);
    const key = this.shortKeys.get(short);
    if (key === undefined) {
      const spent = this.spent.get(SHORT_SPENT + short);
      throw new AttachTokenError(spent ? spent.why : 'wrong_token');
    }
    return this.redeemKey(key, transport);
  }

  private redeemKey(key: string, transport: TransportKind): T {
    const entry = this.pending.get(key);
    if (!entry) {
      const spent = this.spent.get(key);
      throw new AttachTokenError(spent ? spent.why : 'wrong_token');
    }
    if (entry.transport !== transport) throw new AttachTokenError('wrong_transport');
    this.forget(key, entry.target);
    clearTimeout(entry.timer);
    if (Date.now() > entry.expiresAtMs || !this.isAttachable(entry.target)) {
      this.remember(key, 'expired', entry.short);
      entry.onExpire();
      throw new AttachTokenError('expired');
    }
    this.remember(key, 'replayed', entry.short);
    return entry.target;
  }

  /** Drop every live token for `target` (its socket closed). */
  revoke(target: T): void {
    for (const key of this.byTarget.get(target) ?? []) {
      const entry = this.pending.get(key);
      if (entry) {
        clearTimeout(entry.timer);
        this.shortKeys.delete(entry.short);
      }
      this.pending.delete(key);
      this.remember(key, 'expired', entry?.short);
    }
    this.byTarget.delete(target);
  }

  private forget(key: string, target: T): void {
    const entry = this.pending.get(key);
    if (entry) this.shortKeys.delete(entry.short);
    this.pending.delete(key);
    const keys = this.byTarget.get(target);
    keys?.delete(key);
    if (keys?.size === 0) this.byTarget.delete(target);
  }

  get size(): number {
    return this.pending.size;
  }

  close(): void {
    for (const entry of this.pending.values()) clearTimeout(entry.timer);
    this.pending.clear();
    this.shortKeys.clear();
    this.spent.clear();
    this.byTarget.clear();
    this.early.clear();
  }

  /** Remember a spent token (and its short form, so a replay of that is told apart too). */
  private remember(key: string, why: 'replayed' | 'expired', short?: string): void {
    const now = Date.now();
    this.spent.set(key, { why, at: now });
    if (short !== undefined) this.spent.set(SHORT_SPENT + short, { why, at: now });
    for (const [k, v] of this.spent) {
      if (this.spent.size <= MAX_SPENT && now - v.at < SPENT_MEMORY_MS) break;
      this.spent.delete(k);
    }
  }
}
