/**
 * The SMC_DIAG parser (native/smc-diag.ts) fed with dumps captured from real
 * kernels in the VM lab (test/rdma/vm/smc-probe.ts wrote them to
 * $SOCKGATE_VM_OUT/diag-<role>.hex), not bytes of our own making:
 * - Debian 6.1, server side of an AF_SMC pair where the client had no usable
 *   SMC-R device (rxe has only RoCEv2 GIDs, no UEID configured): the accepted
 *   socket fell back with 0x05000000 (peer declined), the peer's diagnosis
 *   0x03030000 (no SMC device); plus the listening socket;
 * - Debian 6.12 with UEID + PNET over rxe, both ends: SMC-R on rxe0
 *   (IPPROTO_SMC sockets, so diag_family is AF_INET).
 * And the status text and the parser's refusal of truncated input.
 */
import test from 'ava';
import { describeSmcReason, parseSmcDiag } from '../../native/smc-diag.js';

const DEBIAN61_SERVER_FALLBACK =
    '6400000014000200010000009b0000002b0101001d2fb5340a6300010000000000000000000000000a63000200000000' +
    '000000000000000000000000010000000000000000000000f42900000000000005000300000000000c00050000000005' +
    '000003036400000014000200010000009b0000002b0a00001d2f00000000000000000000000000000000000000000000' +
    '00000000000000000000000000000000020000000000000000000000f02900000000000005000300000000000c000500' +
    '0000000000000000';
const DEBIAN612_SERVER_SMCR =
    '4c0100001400020001000000c10000002b1600001d2fb42e000000000000000000000000000000000000000000000000' +
    '000000000000000000000000010000000000000000000000ac0100000000000005000300010000000c00050000000000' +
    '000000005000010001000000000001000000010000000100000040000000000000000000000000000000000000000000' +
    '000040000000000080800000000000000000000000000000000000000000000000000000970002000172786530000000' +
    '000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000' +
    '00000000000000000001303030303a303030303a303030303a303030303a303030303a666666663a306136333a303030' +
    '3100303030303a303030303a303030303a303030303a303030303a666666663a306136333a3030303200010064000000' +
    '1400020001000000c1000000020a00001d2f000000000000000000000000000000000000000000000000000000000000' +
    '0000000000000000020000000000000000000000a60100000000000005000300000000000c0005000000000000000000';
const DEBIAN612_CLIENT_SMCR =
    '4c0100001400020001000000ca0000000218000000001d2f000000000000000000000000000000000000000000000000' +
    '000000000000000000000000010000000000000000000000b50100000000000005000300030000000c00050000000000' +
    '000000005000010001000000000001000000010000000100000000004000000000004000000000000000400000000000' +
    '000000004000000000c08080000040000000000000004000000000000000400000000000970002000172786530000000' +
    '000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000' +
    '00000000000000000001303030303a303030303a303030303a303030303a303030303a666666663a306136333a303030' +
    '3200303030303a303030303a303030303a303030303a303030303a666666663a306136333a30303031000000';

test('6.1 fallback: reason 0x05000000 with the peer\'s 0x03030000, and the listener', (t) => {
  const [accepted, listener] = parseSmcDiag(Buffer.from(DEBIAN61_SERVER_FALLBACK, 'hex'));
  t.is(accepted!.family, 43); // AF_SMC
  t.is(accepted!.mode, 'fallback');
  t.is(accepted!.fallbackReason, 0x05000000);
  t.is(accepted!.peerDiagnosis, 0x03030000);
  t.is(accepted!.localPort, 7471);
  t.is(accepted!.inode, 10740);
  t.is(listener!.mode, 'listening');
  t.is(listener!.inode, 10736);
  t.is(listener!.fallbackReason, 0);
});

test('6.12 SMC-R: both ends report SMC-R on rxe0, no fallback', (t) => {
  const server = parseSmcDiag(Buffer.from(DEBIAN612_SERVER_SMCR, 'hex'));
  t.is(server.length, 2);
  t.is(server[0]!.family, 43); // the accepted socket is AF_SMC
  t.is(server[0]!.mode, 'SMC-R');
  t.is(server[0]!.ibDevice, 'rxe0');
  t.is(server[0]!.fallbackReason, 0);
  t.is(server[1]!.mode, 'listening');
  t.is(server[1]!.family, 2); // the listener was made with IPPROTO_SMC: AF_INET
  const [client] = parseSmcDiag(Buffer.from(DEBIAN612_CLIENT_SMCR, 'hex'));
  t.is(client!.family, 2);
  t.is(client!.mode, 'SMC-R');
  t.is(client!.ibDevice, 'rxe0');
  t.is(client!.remotePort, 7471);
  t.is(client!.inode, 437);
});

test('reasons print as smcss does (hex) with their meaning', (t) => {
  t.is(describeSmcReason(0x03030000), '0x03030000 no SMC device found');
  t.is(describeSmcReason(0x03010000), '0x03010000 peer did not indicate SMC');
  t.is(describeSmcReason(0x05000000), '0x05000000 peer declined during handshake');
  t.is(describeSmcReason(0x0abc0000), '0x0abc0000');
});

test('truncated or corrupt dumps are refused, not guessed', (t) => {
  const good = Buffer.from(DEBIAN61_SERVER_FALLBACK, 'hex');
  t.throws(() => parseSmcDiag(good.subarray(0, 90)), { message: /length/ });
  const shortMsg = Buffer.from(good.subarray(0, 40));
  shortMsg.writeUInt32LE(40, 0);
  t.throws(() => parseSmcDiag(shortMsg), { message: /too short/ });
  const badAttr = Buffer.from(good.subarray(0, 100));
  badAttr.writeUInt16LE(200, 80); // first attribute claims more than the message holds
  t.throws(() => parseSmcDiag(badAttr), { message: /attribute/ });
  t.deepEqual(parseSmcDiag(Buffer.alloc(0)), []);
});
