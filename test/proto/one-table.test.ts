/**
 * One of each small thing: every error class in the one table
 * (proto/errors.ts), one rdma failure vocabulary shared by the native addon
 * and TS (native/src/rdma_conn_impl.h `namespace fail` == proto/rdma-failures.ts),
 * and no Error subclass outside the table.
 */
import test from 'ava';
import { readdirSync, readFileSync, statSync } from 'node:fs';
import { dirname, join, resolve } from 'node:path';
import { fileURLToPath } from 'node:url';
import { AttachFailedError, AttachTokenError, ERROR_CLASSES, RdmaAttachError, SockgateError, SocksProtocolError } from '../../proto/errors.js';
import { DeclineReason } from '../../proto/gen/sockgate/v1/transport.js';
import { declineReasonOfRdmaFailure, RDMA_CONNECTION_FAILURES, RDMA_SETUP_FAILURES } from '../../proto/rdma-failures.js';
import { TRANSPORT_KINDS, TRANSPORT_NAMES, transportKindOfName, transportNameOfKind } from '../../proto/transports.js';

const ROOT = resolve(dirname(fileURLToPath(import.meta.url)), '../../..');
const SRC = join(ROOT, 'native', 'src');

function tsFiles(dir: string): string[] {
  return readdirSync(dir).flatMap((f) => {
    const p = join(dir, f);
    if (statSync(p).isDirectory()) return f === 'gen' ? [] : tsFiles(p);
    return f.endsWith('.ts') && !f.endsWith('.d.ts') ? [p] : [];
  });
}

test('the error classes that lived elsewhere are in proto/errors.ts with stable codes', (t) => {
  t.is(new SocksProtocolError('x', { reply: 1 }).code, 'ERR_SOCKGATE_SOCKS_PROTOCOL');
  t.is(ERROR_CLASSES.get('ERR_SOCKGATE_SOCKS_PROTOCOL'), SocksProtocolError);
  t.is(new SocksProtocolError('x', { reply: 5 }).reply, 5);
  t.is(new SocksProtocolError('x').reply, undefined);
  // Refinements travel as their parent's code (what clients already see on the wire).
  const token = new AttachTokenError('replayed');
  t.true(token instanceof AttachFailedError);
  t.is(token.code, 'ERR_SOCKGATE_ATTACH_FAILED');
  t.is(token.failure, 'replayed');
  const rdma = new RdmaAttachError('no device', DeclineReason.DECLINE_REASON_NO_RDMA_DEVICE);
  t.is(rdma.code, 'ERR_SOCKGATE_ATTACH_FAILED');
  t.is(rdma.declineReason, DeclineReason.DECLINE_REASON_NO_RDMA_DEVICE);
  for (const [code, cls] of ERROR_CLASSES) t.true(new cls('m') instanceof SockgateError, code);
});

test('no hand-written source outside proto/errors.ts declares an error class', (t) => {
  const offenders: string[] = [];
  for (const dir of ['proto', 'native', 'server', 'clients']) {
    for (const f of tsFiles(join(ROOT, dir))) {
      if (f.endsWith(join('proto', 'errors.ts'))) continue;
      const text = readFileSync(f, 'utf8');
      for (const m of text.matchAll(/class\s+(\w+)\s+extends\s+(\w*Error)\b/g)) offenders.push(`${f.slice(ROOT.length + 1)}: ${m[1]} extends ${m[2]}`);
    }
  }
  t.deepEqual(offenders, [], 'every error class, refinements included, lives in proto/errors.ts');
});

test('the rdma failure vocabulary is one list: the native header equals proto/rdma-failures.ts', (t) => {
  const header = readFileSync(join(SRC, 'rdma_conn_impl.h'), 'utf8');
  const block = /namespace fail \{([\s\S]*?)\}\s*\/\/ namespace fail/.exec(header);
  t.truthy(block, 'rdma_conn_impl.h has namespace fail');
  const native = [...block![1]!.matchAll(/constexpr const char\* \w+ = "([A-Z_]+)";/g)].map((m) => m[1]!).sort();
  t.deepEqual(native, [...RDMA_SETUP_FAILURES, ...RDMA_CONNECTION_FAILURES].sort());
  for (const code of RDMA_CONNECTION_FAILURES) t.truthy(ERROR_CLASSES.get(code), `${code} is an error class`);
  // Every emitter names the codes through the header, never as a literal of its own.
  const emitters = readdirSync(SRC).filter((f) => /^rdma_(conn|listener|async_monitor).*\.cc$/.test(f));
  t.true(emitters.length >= 5, emitters.join(', '));
  for (const f of emitters) {
    const text = readFileSync(join(SRC, f), 'utf8');
    for (const code of native) t.false(text.includes(`"${code}"`), `${f} spells "${code}" itself`);
  }
  // Each setup code has its decline reason (CONNECT_FAILED when nothing more specific applies).
  t.is(declineReasonOfRdmaFailure('RESOURCE'), DeclineReason.DECLINE_REASON_RESOURCE_LIMIT);
  t.is(declineReasonOfRdmaFailure('TIMEOUT'), DeclineReason.DECLINE_REASON_CONNECT_FAILED);
});

test('transport names are defined once and round-trip with their wire kinds', (t) => {
  t.deepEqual([...TRANSPORT_NAMES], ['shm', 'rdma', 'tcp', 'grpc']);
  for (const n of TRANSPORT_NAMES) {
    t.is(transportNameOfKind(TRANSPORT_KINDS[n]), n);
    t.is(transportKindOfName(n), TRANSPORT_KINDS[n]);
  }
  t.is(transportKindOfName('toString'), undefined, 'no prototype key is a transport');
  t.is(transportKindOfName('smc'), undefined);
});
