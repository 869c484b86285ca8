/**
 * IP address literals as bytes, parsed exactly as the kernel will use them.
 *
 * ipaddr.js (2.x) reads the IPv4-compatible form `::a.b.c.d` as if it were the
 * IPv4-mapped `::ffff:a.b.c.d`, so policy judged `[::10.1.2.3]` as IPv4
 * 10.1.2.3 while the socket dialled the IPv6 address ::a01:203. Only the
 * mapped form (::ffff:0:0/96) reaches an IPv4 host through an IPv6 socket, so
 * only it is folded to IPv4, and the dial then uses the folded IPv4 address.
 */
import { isIP } from 'node:net';

/** An address as bytes. */
export interface Address {
  readonly family: 4 | 6;
  /** 4 or 16 bytes, network order. */
  readonly bytes: Uint8Array;
}

/** Bytes of an IPv6 literal that node:net already accepted (isIP === 6); a zone (%eth0) is dropped. */
function ipv6Bytes(text: string): Uint8Array {
  const zone = text.indexOf('%');
  let s = zone >= 0 ? text.slice(0, zone) : text;
  if (s.includes('.')) {
    // A dotted-quad tail is the last 32 bits, whatever precedes it (::a.b.c.d is not ::ffff:a.b.c.d).
    const colon = s.lastIndexOf(':');
    const q = s.slice(colon + 1).split('.').map(Number);
    s = `${s.slice(0, colon + 1)}${((q[0]! << 8) | q[1]!).toString(16)}:${((q[2]! << 8) | q[3]!).toString(16)}`;
  }
  const halves = s.split('::');
  const groups = (part: string | undefined): number[] => (part ? part.split(':').map((g) => parseInt(g, 16)) : []);
  const head = groups(halves[0]);
  const tail = groups(halves[1]);
  const all = halves.length === 1 ? head : [...head, ...new Array<number>(8 - head.length - tail.length).fill(0), ...tail];
  const out = new Uint8Array(16);
  all.forEach((g, i) => {
    out[2 * i] = g >> 8;
    out[2 * i + 1] = g & 0xff;
  });
  return out;
}

/** The literal's own bytes and family, nothing folded; undefined if `text` is not an address literal. */
export function addressBytes(text: string): Address | undefined {
  const family = isIP(text);
  if (family === 4) return { family: 4, bytes: Uint8Array.from(text.split('.').map(Number)) };
  if (family === 6) return { family: 6, bytes: ipv6Bytes(text) };
  return undefined;
}

/** Is this IPv6 address IPv4-mapped (::ffff:0:0/96)? IPv4-compatible ::a.b.c.d is not. */
export function isV4Mapped(addr: Address): boolean {
  const b = addr.bytes;
  return addr.family === 6 && b.subarray(0, 10).every((x) => x === 0) && b[10] === 0xff && b[11] === 0xff;
}

/**
 * Parse an address literal, folding IPv4-mapped IPv6 to IPv4 (the host it
 * reaches), so the same host is never matched by one family's rules and missed
 * by the other's. Undefined if `text` is not an address literal.
 */
export function parseAddress(text: string): Address | undefined {
  const addr = addressBytes(text);
  if (addr && isV4Mapped(addr)) return { family: 4, bytes: addr.bytes.slice(12) };
  return addr;
}

/** Text of an address: dotted quad, or RFC 5952 IPv6 (lowercase, longest zero run as ::). */
export function formatAddress(addr: Address): string {
  if (addr.family === 4) return Array.from(addr.bytes).join('.');
  const g: number[] = [];
  for (let i = 0; i < 16; i += 2) g.push((addr.bytes[i]! << 8) | addr.bytes[i + 1]!);
  let best = -1;
  let bestLen = 1;
  for (let i = 0; i < 8; ) {
    let j = i;
    while (j < 8 && g[j] === 0) j++;
    if (j - i > bestLen) {
      best = i;
      bestLen = j - i;
    }
    i = j === i ? i + 1 : j;
  }
  const hex = g.map((x) => x.toString(16));
  if (best < 0) return hex.join(':');
  return `${hex.slice(0, best).join(':')}::${hex.slice(best + bestLen).join(':')}`;
}

/** The address the kernel really uses for `text`: IPv4-mapped IPv6 folded to IPv4, else the literal unchanged. */
export function dialAddress(text: string): { address: string; family: 4 | 6 } {
  const addr = addressBytes(text);
  if (!addr) throw new TypeError(`${JSON.stringify(text)} is not an IP address`);
  if (isV4Mapped(addr)) return { address: Array.from(addr.bytes.slice(12)).join('.'), family: 4 };
  return { address: text, family: addr.family };
}
