/**
 * Maglev consistent hashing (Eisenbud et al., "Maglev: A Fast and Reliable
 * Software Network Load Balancer", NSDI 2016, section 3.4): every backend
 * walks its own permutation of a prime-sized table, and backends take turns
 * claiming their next free slot until the table is full. A key maps to
 * `table[hash(key) % size]`, so lookups are O(1), each backend owns an almost
 * equal share of slots, and removing one backend moves little more than that
 * backend's own keys.
 */
import type { Endpoint } from './endpoint.js';
import type { LoadBalancer, PickContext } from './load-balancer.js';

/** Seed of the hash that places a backend's permutation start. */
const SEED_OFFSET = 0x9e3779b9;
/** Seed of the hash that picks a backend's permutation stride (independent of the offset). */
const SEED_SKIP = 0x85ebca6b;
/** Seed of the hash of lookup keys (client addresses). */
const SEED_KEY = 0xc2b2ae35;

/**
 * A 32-bit hash of a string: MurmurHash3's mixing applied per UTF-16 code
 * unit, then its finalizer (full avalanche), so near-identical keys such as
 * `10.0.0.1` and `10.0.0.2` land far apart.
 */
export function hash32(s: string, seed: number): number {
  let h = seed | 0;
  for (let i = 0; i < s.length; i++) {
    let k = Math.imul(s.charCodeAt(i), 0xcc9e2d51);
    k = (k << 15) | (k >>> 17);
    k = Math.imul(k, 0x1b873593);
    h ^= k;
    h = (h << 13) | (h >>> 19);
    h = (Math.imul(h, 5) + 0xe6546b64) | 0;
  }
  h ^= s.length;
  h ^= h >>> 16;
  h = Math.imul(h, 0x85ebca6b);
  h ^= h >>> 13;
  h = Math.imul(h, 0xc2b2ae35);
  h ^= h >>> 16;
  return h >>> 0;
}

/**
 * A Maglev lookup table over backend names. The table depends only on the set
 * of names, not their order (names are sorted first), so every sidecar with
 * the same endpoint set sends a client to the same backend.
 */
export class MaglevTable {
  /** Backend names, sorted; `entries` holds indexes into this. */
  readonly names: readonly string[];
  /** Slot -> backend index; every slot filled when there is at least one backend. */
  private readonly entries: Int32Array;

  /**
   * @param names backend names (duplicates are ignored)
   * @param size table size: a prime larger than the number of backends
   */
  constructor(names: Iterable<string>, readonly size: number) {
    this.names = [...new Set(names)].sort();
    if (this.names.length > 0 && this.names.length >= size) throw new RangeError(`Maglev table of ${size} slots cannot hold ${this.names.length} backends`);
    this.entries = MaglevTable.populate(this.names, size);
  }

  private static populate(names: readonly string[], m: number): Int32Array {
    const entries = new Int32Array(m).fill(-1);
    const n = names.length;
    if (n === 0) return entries;
    // Backend i's permutation is offset_i, offset_i + skip_i, ... (mod m);
    // m prime and 1 <= skip_i < m make it visit every slot exactly once.
    const pos = new Float64Array(n);
    const skip = new Float64Array(n);
    for (let i = 0; i < n; i++) {
      pos[i] = hash32(names[i]!, SEED_OFFSET) % m;
      skip[i] = (hash32(names[i]!, SEED_SKIP) % (m - 1)) + 1;
    }
    let filled = 0;
    for (;;) {
      for (let i = 0; i < n; i++) {
        let c = pos[i]!;
        while (entries[c]! >= 0) c = (c + skip[i]!) % m;
        entries[c] = i;
        pos[i] = (c + skip[i]!) % m;
        if (++filled === m) return entries;
      }
    }
  }

  /** The slot a key hashes to. */
  slotOf(key: string): number {
    return hash32(key, SEED_KEY) % this.size;
  }

  /** Backend index at a slot, or -1 for an empty table. */
  at(slot: number): number {
    return this.entries[slot % this.size]!;
  }

  /** Backend name for a key, or undefined for an empty table. */
  lookup(key: string): string | undefined {
    const i = this.entries[this.slotOf(key)]!;
    return i < 0 ? undefined : this.names[i];
  }
}

/**
 * Consistent hashing on the client address: the same client reaches the same
 * endpoint while the set of available endpoints stays the same. The table is
 * rebuilt (a few milliseconds at 65537 slots) only when that set changes.
 */
export class MaglevLoadBalancer implements LoadBalancer {
  readonly policy = 'maglev' as const;
  /** Table over the names of `built`; rebuilt when the candidate set differs. */
  private table: MaglevTable | undefined;
  /** The candidates the table was built for, by name. */
  private built = new Map<string, Endpoint>();

  constructor(private readonly tableSize: number) {}

  pick(candidates: readonly Endpoint[], ctx: PickContext): Endpoint | undefined {
    if (candidates.length === 0) return undefined;
    if (!this.table || !this.sameSet(candidates)) {
      this.built = new Map(candidates.map((e) => [e.key, e]));
      this.table = new MaglevTable(this.built.keys(), this.tableSize);
    }
    const table = this.table;
    const first = table.slotOf(ctx.hashKey);
    // A retry must go elsewhere: walk on from the key's slot to the next
    // backend not yet tried (deterministic, so a client's retries repeat too).
    for (let step = 0; step < table.size; step++) {
      const ep = this.built.get(table.names[table.at(first + step)]!)!;
      if (!ctx.exclude?.has(ep)) return ep;
      if (step > table.names.length * 64) break;
    }
    return candidates.find((e) => !ctx.exclude?.has(e));
  }

  private sameSet(candidates: readonly Endpoint[]): boolean {
    if (candidates.length !== this.built.size) return false;
    for (const e of candidates) if (this.built.get(e.key) !== e) return false;
    return true;
  }
}
