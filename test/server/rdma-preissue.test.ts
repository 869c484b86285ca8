/**
 * The gateway side of pre-issued rdma slots (server/rdma-preissue.ts) on the
 * session book alone, on any host (the linked path itself runs in the
 * Soft-RoCE VM: test/rdma/preissue.test.ts): slots are pre-issued only to a
 * connected session and only up to the bound; a Connect naming a slot not
 * pre-issued to its identity's session, or one taken already, is refused
 * (SlotRefusedError); an answer that never went out gives the named slot back
 * and frees the slots it carried; a slot that cannot be linked is answered
 * linked: false and stays the socket's reservation.
 */
import test from 'ava';
import { TransportKind, type RdmaAttach, type RdmaOffer } from '../../proto/gen/sockgate/v1/transport.js';
import { SlotRefusedError } from '../../proto/errors.js';
import type { Identity } from '../../server/policy.js';
import { RdmaSessions } from '../../server/rdma-sessions.js';
import { RdmaPreissue, type Answer, type SlotAnswer } from '../../server/rdma-preissue.js';
import type { GatewaySocket } from '../../server/socket-table.js';
import type { OfferOutcome } from '../../server/transport.js';

function identity(name: string): Identity {
  return { name, admin: false, maxSockets: 100, source: 'token', transports: new Set(['rdma']) } as Identity;
}
const socketOf = (id: string, who: Identity) => ({ id, identity: who }) as unknown as GatewaySocket;
const answer = (p: SlotAnswer): OfferOutcome => ({
  ok: true,
  accepted: { kind: TransportKind.TRANSPORT_KIND_RDMA, version: 2, params: { $case: 'rdma', rdma: { address: '10.0.0.1', port: 7471, ringBytes: 4096, slots: 8, resumeHost: '', resumePort: 0, resumeMs: 0, ...p } } },
});
const offer = (sessionId: string, o: Partial<RdmaOffer> = {}): RdmaOffer => ({ address: '', ringBytes: 4096, sessionId, preissue: 0, ...o });
const paramsOf = (out: OfferOutcome): RdmaAttach => {
  if (!out.ok || out.accepted.params?.$case !== 'rdma') throw new Error('not an rdma answer');
  return out.accepted.params.rdma;
};

function setup(max = 3) {
  const sessions = new RdmaSessions({ slots: 8, maxSessions: 8, maxSessionsPerIdentity: 4, reservationMs: 60_000 });
  const refused: string[] = [];
  const linked: number[] = [];
  const pre = new RdmaPreissue({
    sessions,
    max,
    closing: () => false,
    refused: (detail) => refused.push(detail),
    link: (_s, slot) => (linked.push(slot.no), true),
    revoke: () => {},
  });
  const alice = identity('alice');
  const r = sessions.reserve(alice, 'alice-session-1');
  if (!r.ok) throw new Error('declined');
  return { sessions, pre, refused, linked, alice, s: r.session, first: r.slot };
}

test('slots are pre-issued to a connected session only, at most max unused, each a distinct free slot', (t) => {
  const { pre, s, first } = setup(3);
  t.deepEqual(pre.preissue(s, offer(s.id, { preissue: 5 })), [], 'a pending session gets none');
  s.state = 'live';
  const got = pre.preissue(s, offer(s.id, { preissue: 5 }));
  t.is(got.length, 3);
  t.false(got.includes(first.no), 'never a slot in use');
  t.is(new Set(got).size, 3);
  for (const n of got) t.is(s.slots.get(n)?.state, 'issued');
  t.deepEqual(pre.preissue(s, offer(s.id, { preissue: 5 })), [], 'none past the bound');
  t.deepEqual(pre.preissue(s, undefined), []);
  t.is(s.preissued, 3);
});

test('naming a slot: refused when not pre-issued, already taken, or of another identity; taken otherwise', (t) => {
  const { pre, s, alice, refused } = setup();
  s.state = 'live';
  const [a, b] = pre.preissue(s, offer(s.id, { preissue: 2 }));
  t.throws(() => pre.acceptNamed(offer(s.id, { slot: 7 }), alice, answer), { instanceOf: SlotRefusedError, message: /not pre-issued/ });
  t.throws(() => pre.acceptNamed(offer(s.id, { slot: a! }), identity('mallory'), answer), { instanceOf: SlotRefusedError, message: /identity "mallory"/ });
  const out = pre.acceptNamed(offer(s.id, { slot: a! }), alice, answer);
  const p = paramsOf(out);
  t.true(p.linked);
  t.is(p.slot, a);
  t.is(s.slots.get(a!)?.state, 'reserved');
  t.throws(() => pre.acceptNamed(offer(s.id, { slot: a! }), alice, answer), { instanceOf: SlotRefusedError, message: /in use/ });
  t.is(refused.length, 3, 'each refusal is counted');
  t.is(s.slots.get(b!)?.state, 'issued', 'the other slot stays pre-issued');
});

test('an answer that never went out gives the named slot back and frees the slots it carried', (t) => {
  const { pre, s, alice } = setup(4);
  s.state = 'live';
  const [a] = pre.preissue(s, offer(s.id, { preissue: 1 }));
  const out = pre.acceptNamed(offer(s.id, { slot: a!, preissue: 2 }), alice, answer);
  const carried = paramsOf(out).preissuedSlots;
  t.is(carried.length, 2);
  t.true(out.ok);
  if (!out.ok) return;
  t.true(pre.abandoned(out.accepted as Answer));
  t.is(s.slots.get(a!)?.state, 'issued', 'named slot pre-issued again');
  for (const n of carried) t.false(s.slots.has(n), `carried slot ${n} freed`);
  t.is(s.preissued, 1);
});

test('a named slot that cannot be linked (the socket is not waiting for an attach) is answered linked: false and stays its reservation to BIND', (t) => {
  const { pre, s, alice, linked, sessions } = setup();
  s.state = 'live';
  s.conn = {} as never; // connected; the socket below is no StreamSocket waiting for an attach, so the claim fails
  const [a] = pre.preissue(s, offer(s.id, { preissue: 1 }));
  const out = pre.acceptNamed(offer(s.id, { slot: a! }), alice, answer);
  if (!out.ok) return t.fail('declined');
  const sock = socketOf('t1', alice);
  const amended = pre.issued(sock, out.accepted as Answer, new Uint8Array(32));
  t.truthy(amended);
  t.false(amended!.params?.$case === 'rdma' && amended!.params.rdma.linked, 'answered unlinked');
  t.deepEqual(linked, [], 'nothing linked');
  const slot = s.slots.get(a!)!;
  t.is(slot.state, 'reserved');
  t.false(slot.preissued, 'a plain reservation now (it expires like one)');
  t.is(sessions.reservationOf(sock), slot, 'tied to the socket, which BINDs it');
  t.is(pre.issued(sock, out.accepted as Answer, undefined), undefined, 'asked once per answer');
  clearTimeout(slot.timer);
});
