/**
 * Live failover onto a new rdma connection, the gateway's matching without
 * verbs (the live path: test/rdma/move.test.ts in the Soft-RoCE VM): RdmaMoves
 * with the real ResumeBook and session book and a recording stand-in for the
 * native link, positions forced by the test. Checks: a move connection is
 * accepted only for a resume token the book tracks (as a session of that
 * socket's identity; one whose connection still looks up is failed first); a
 * RESUME BIND at a position outside [outAcked, outSent] is refused (the slot
 * closed, the suspension kept for a tcp resume), one inside links the host
 * descriptor with exactly tail[position - outAcked ..] to send first and our
 * position in BOUND, records the move rdma -> rdma and counts it; a busy slot
 * is refused without closing it; a BIND before the suspension waits for it.
 */
import test from 'ava';
import { randomBytes } from 'node:crypto';
import type { Logger } from '../../native/log.js';
import type { RawRdmaConn, RawRdmaListener, RdmaLinkResume } from '../../native/index.js';
import type { RdmaEvent } from '../../native/pump-hub.js';
import { TransportKind } from '../../proto/gen/sockgate/v1/transport.js';
import { resumeToken } from '../../proto/resume-wire.js';
import { ResumeBook, type MovedLink, type Resumable, type Suspension } from '../../server/rdma-resume.js';
import { RdmaMoves } from '../../server/rdma-move.js';
import { RdmaSessions, type RdmaSession, type RdmaSlot } from '../../server/rdma-sessions.js';
import type { NativeLink, NativeLinkEnd, NativeLinkEvents } from '../../server/data-channel.js';

const quiet = { info() {}, warn() {}, error() {}, debug() {} } as unknown as Logger;
const IDENTITY = { name: 'tenant-a' } as unknown as NonNullable<Resumable['identity']>;

function setup() {
  const closed: number[] = [];
  const records: string[] = [];
  const refusals: string[] = [];
  const links: Array<{ slot: number; fd: number; resume: RdmaLinkResume }> = [];
  const unlinked: number[] = [];
  const accepted: number[] = [];
  const rejected: number[] = [];
  const book = new ResumeBook({
    resumeMs: 10_000,
    native: { dupFd: (fd) => fd, closeFd: (fd) => void closed.push(fd) },
    pump: () => {
      throw new Error('no pump in this test');
    },
    logger: quiet,
    highWatermark: 1 << 16,
    record: (o, c, to) => records.push(`${o}:${c}${to ? `:${to}` : ''}`),
  });
  const sessions = new RdmaSessions({ slots: 4, maxSessions: 8, maxSessionsPerIdentity: 2, reservationMs: 10_000 });
  const conn = { id: 7 } as unknown as RawRdmaConn;
  const moves = new RdmaMoves({
    book,
    sessions,
    logger: quiet,
    native: { closeFd: (fd) => void closed.push(fd), translateError: (e) => e },
    closing: () => false,
    region: () => ({}),
    refuse: (reason, detail) => refusals.push(`${reason}: ${detail}`),
    connected: (s: RdmaSession, c: RawRdmaConn) => {
      s.conn = c;
      s.state = 'live';
    },
    startLink: (_s: RdmaSession, slot: RdmaSlot, fd: number, events: NativeLinkEvents, resume: RdmaLinkResume): NativeLink => {
      links.push({ slot: slot.no, fd, resume });
      slot.state = 'open';
      void events;
      const ended = new Promise<NativeLinkEnd>(() => {});
      return { ended, close: () => ended, shutdownHost() {}, setHostOption() {} };
    },
    closeUnlinked: (_s, slot) => {
      unlinked.push(slot.no);
      slot.state = 'closing';
    },
  });
  const listener = {
    accept: (c: number) => (accepted.push(c), conn),
    reject: (c: number) => void rejected.push(c),
  } as unknown as RawRdmaListener;
  return { book, sessions, moves, listener, closed, records, refusals, links, unlinked, accepted, rejected };
}

function observed() {
  const seen = { failed: 0, moved: [] as Array<{ cause: string; to: TransportKind; link: MovedLink }>, expired: [] as NativeLinkEnd[] };
  const r: Resumable = {
    socketId: 't-1',
    identity: IDENTITY,
    events: { progress() {} },
    failConnection: () => void seen.failed++,
    moved: (link, cause, to) => void seen.moved.push({ cause, to, link }),
    expired: (e) => void seen.expired.push(e),
  };
  return { r, seen };
}

/** Host stream H cut as a failed connection leaves it: acked 4 KiB, sent 12 KiB, read 16 KiB; the client delivered 9 KiB of ours and we 5 KiB of its. */
function suspension(H: Buffer): Suspension {
  return { hostFd: 42, inPos: 5n << 10n, outAcked: 4n << 10n, outSent: 12n << 10n, outPos: 16n << 10n, tail: Buffer.from(H.subarray(4 << 10, 16 << 10)), cause: 'ERR_SOCKGATE_RDMA_QP_FATAL' };
}

const request = (token: Buffer): Extract<RdmaEvent, { event: 'request' }> => ({ type: 'rdma', rdma: 1, event: 'request', conn: 3, token, peer: '10.0.0.2:1', move: true });

test('a move connection is accepted only for a tracked resume token, as a session of its identity; a live connection under it is failed first', (t) => {
  const h = setup();
  h.moves.request(h.listener, request(randomBytes(16)));
  t.deepEqual(h.rejected, [3]);
  t.regex(h.refusals[0]!, /^token: /);
  t.is(h.sessions.byId.size, 0);
  const token = resumeToken(randomBytes(16));
  const { r, seen } = observed();
  h.book.track(token, r);
  h.moves.request(h.listener, request(token));
  t.deepEqual(h.accepted, [3]);
  t.is(seen.failed, 1, 'not suspended yet: its connection is failed (the client saw the fault first)');
  const [s] = [...h.sessions.byId.values()];
  t.is(s!.identity, IDENTITY);
  t.is(s!.state, 'live');
});

test('a RESUME BIND outside [outAcked, outSent] is refused (slot closed, suspension kept); inside, the host fd is linked with tail[position - outAcked ..] and our position', (t) => {
  const h = setup();
  const H = randomBytes(16 << 10);
  const token = resumeToken(randomBytes(16));
  const { r, seen } = observed();
  h.book.track(token, r);
  t.true(h.book.suspend(token, suspension(H)));
  h.moves.request(h.listener, request(token));
  const s = [...h.sessions.byId.values()][0]!;
  for (const [no, bad] of [[0, (4n << 10n) - 1n], [1, (12n << 10n) + 1n]] as const) {
    h.moves.bind(s, no, token, bad);
    t.is(h.links.length, 0, `position ${bad} is not linked`);
  }
  t.deepEqual(h.unlinked, [0, 1]);
  t.deepEqual(h.records, ['refused:BAD_PREAMBLE', 'refused:BAD_PREAMBLE']);
  t.deepEqual(h.closed, [], 'the host descriptor stays held for another resume');
  // Still suspended: a RESUME BIND at the client's true position (9 KiB) on another slot takes it.
  h.moves.bind(s, 2, token, 9n << 10n);
  t.is(h.links.length, 1);
  const l = h.links[0]!;
  t.is(l.slot, 2);
  t.is(l.fd, 42);
  t.is(l.resume.position, 5n << 10n, 'BOUND carries our position (the client bytes on the host)');
  t.is(l.resume.outBase, 9n << 10n);
  t.deepEqual(l.resume.bytes, H.subarray(9 << 10, 16 << 10), 'exactly the bytes from the client position on go first');
  t.is(seen.moved.length, 1);
  t.like(seen.moved[0], { cause: 'ERR_SOCKGATE_RDMA_QP_FATAL', to: TransportKind.TRANSPORT_KIND_RDMA });
  t.deepEqual(h.records.slice(2), ['resumed:ERR_SOCKGATE_RDMA_QP_FATAL:rdma']);
  t.is(s.slots.get(2)!.resumeToken, token, 'the new slot is resumable under the same token');
  // Taken: the token no longer names a suspended socket.
  h.moves.bind(s, 3, token, 9n << 10n);
  t.is(h.links.length, 1);
  t.regex(h.refusals.at(-1)!, /no socket to resume/);
});

test('a RESUME BIND for a busy slot is refused without closing it; one before the suspension waits for it', (t) => {
  const h = setup();
  const H = randomBytes(16 << 10);
  const token = resumeToken(randomBytes(16));
  const { r, seen } = observed();
  h.book.track(token, r);
  h.moves.request(h.listener, request(token));
  const s = [...h.sessions.byId.values()][0]!;
  h.moves.bind(s, 0, token, 9n << 10n);
  t.is(h.links.length, 0, 'waits for the suspension');
  h.moves.bind(s, 0, randomBytes(16), 0n);
  t.regex(h.refusals.at(-1)!, /^busy: /);
  t.deepEqual(h.unlinked, [], 'the busy slot is not closed');
  t.true(h.book.suspend(token, suspension(H)));
  t.is(h.links.length, 1);
  t.deepEqual(h.links[0]!.resume.bytes, H.subarray(9 << 10, 16 << 10));
  t.is(seen.moved.length, 1);
  h.book.close();
});

test("a RESUME BIND naming another identity's socket is refused; the suspension stays for its owner", (t) => {
  const h = setup();
  const H = randomBytes(16 << 10);
  const mine = resumeToken(randomBytes(16));
  const { r: myR } = observed();
  h.book.track(mine, myR);
  t.true(h.book.suspend(mine, suspension(H)));
  h.moves.request(h.listener, request(mine));
  const s = [...h.sessions.byId.values()][0]!;
  // Another tenant's suspended socket, its token somehow known.
  const theirs = resumeToken(randomBytes(16));
  const { r: theirR, seen: theirSeen } = observed();
  h.book.track(theirs, { ...theirR, identity: { name: 'tenant-b' } as unknown as NonNullable<Resumable['identity']> });
  t.true(h.book.suspend(theirs, suspension(H)));
  h.moves.bind(s, 0, theirs, 9n << 10n);
  t.is(h.links.length, 0);
  t.deepEqual(h.unlinked, [0]);
  t.regex(h.refusals.at(-1)!, /not a socket of tenant-a/);
  t.deepEqual(h.closed, [], "the other tenant's host descriptor is untouched");
  t.is(theirSeen.failed + theirSeen.moved.length + theirSeen.expired.length, 0);
  // Its owner can still take it: the suspension was kept.
  h.moves.bind(s, 1, mine, 9n << 10n);
  t.is(h.links.length, 1);
});
