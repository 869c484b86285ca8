/**
 * A count bounded gateway-wide and per identity (pending sockets, the sum of
 * listen backlogs): take() before the resource exists, give() when it goes.
 * Over either bound, take() throws LimitExceededError (RESOURCE_EXHAUSTED)
 * naming the config key, and nothing is taken.
 */
import { LimitExceededError } from '../proto/errors.js';

export interface CountBudgetSpec {
  /** What is counted, for messages: "pending sockets". */
  what: string;
  maxTotal: number;
  maxPerIdentity: number;
  /** Config keys of the two bounds, for messages. */
  totalKey: string;
  perIdentityKey: string;
}

export class CountBudget {
  private readonly used = new Map<string, number>();
  private totalUsed = 0;

  constructor(private readonly spec: CountBudgetSpec) {}

  take(identity: string, n = 1): void {
    const mine = this.used.get(identity) ?? 0;
    const s = this.spec;
    if (mine + n > s.maxPerIdentity) {
      throw new LimitExceededError(`identity "${identity}" holds ${mine} ${s.what}; ${n} more would exceed its limit of ${s.maxPerIdentity} (${s.perIdentityKey})`);
    }
    if (this.totalUsed + n > s.maxTotal) {
      throw new LimitExceededError(`the gateway holds ${this.totalUsed} ${s.what}; ${n} more would exceed its limit of ${s.maxTotal} (${s.totalKey})`);
    }
    this.used.set(identity, mine + n);
    this.totalUsed += n;
  }

  give(identity: string, n = 1): void {
    const left = (this.used.get(identity) ?? 0) - n;
    if (left > 0) this.used.set(identity, left);
    else this.used.delete(identity);
    this.totalUsed = Math.max(0, this.totalUsed - n);
  }

  usedBy(identity: string): number {
    return this.used.get(identity) ?? 0;
  }

  get total(): number {
    return this.totalUsed;
  }
}
