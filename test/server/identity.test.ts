/**
 * Who a caller is (issue 12, findings 1 and 2): anonymous access as the
 * configuration defines it (on, never admin, in the loopback-only embedded
 * default; off once identities are configured and nothing is said about it;
 * admin only when written out), and client certificates: a CN that maps to
 * no identity, or a certificate without one, is refused, never anonymous.
 */
import test from 'ava';
import { execFileSync } from 'node:child_process';
import { mkdtempSync, readFileSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { Gateway as SdkGateway } from '../../clients/sdk/gateway.js';
import { loadConfig } from '../../server/config.js';
import { PolicyDeniedError, SocketNotFoundError, UnauthenticatedError } from '../../proto/errors.js';
import { ADMIN_IDENTITY, ADMIN_TOKEN, echoServer, startGateway } from '../helpers/harness.js';

const TOKEN_A = 'identity-test-token-a-0123456789';

function yamlFile(text: string): string {
  const file = join(mkdtempSync(join(tmpdir(), 'sockgate-id-')), 'config.yaml');
  writeFileSync(file, text);
  return file;
}

test('the embedded default: anonymous on (loopback-only quick start), never admin', (t) => {
  const c = loadConfig();
  t.true(c.anonymous.enabled);
  t.false(c.anonymous.admin);
});

test('a config that adds identities and says nothing about anonymous turns it off (file, --set)', (t) => {
  const ids = `[{ name: ops, tokens: ["${TOKEN_A}"] }]`;
  const fromFile = loadConfig({ file: yamlFile(`identities:\n  - name: ops\n    tokens: ["${TOKEN_A}"]\n`) });
  t.false(fromFile.anonymous.enabled);
  t.false(fromFile.anonymous.admin);
  t.false(loadConfig({ sets: [`identities=${ids}`] }).anonymous.enabled);
  // Written out, it stays as written; admin is granted only explicitly.
  const explicit = loadConfig({ file: yamlFile(`identities: ${ids}\nanonymous:\n  enabled: true\n`) });
  t.true(explicit.anonymous.enabled);
  t.false(explicit.anonymous.admin);
  t.true(loadConfig({ sets: [`identities=${ids}`, 'anonymous.enabled=true', 'anonymous.admin=true'] }).anonymous.admin);
  t.false(loadConfig({ sets: ['anonymous.enabled=false'] }).anonymous.enabled);
});

test('end to end: without identities anonymous connects and lists its own sockets but is no admin; with identities a token-less caller is refused', async (t) => {
  const echo = await echoServer();
  t.teardown(() => echo.close());
  const open = await startGateway({ transports: { enabled: ['tcp', 'grpc'] } });
  t.teardown(() => open.stop());
  const s = await open.sdk.connect(echo.uri, { transports: ['tcp'] });
  t.deepEqual((await open.sdk.listSockets()).map((i) => `${i.socketId}:${i.identity}`), [`${s.socketId}:anonymous`]);
  await t.throwsAsync(open.sdk.listSockets('someone-else'), { instanceOf: PolicyDeniedError });
  s.destroy();

  // Identities (one admin, explicitly) and anonymous explicitly on: anonymous still acts only on its own sockets.
  const mixed = await startGateway({ transports: { enabled: ['tcp', 'grpc'] }, identities: [{ name: 'a', tokens: [TOKEN_A] }, ADMIN_IDENTITY], anonymous: { enabled: true } });
  t.teardown(() => mixed.stop());
  const sdkA = await SdkGateway.connect(mixed.target, { token: TOKEN_A });
  const adm = await SdkGateway.connect(mixed.target, { token: ADMIN_TOKEN });
  t.teardown(() => {
    sdkA.close();
    adm.close();
  });
  const a = await sdkA.connect(echo.uri, { transports: ['tcp'] });
  await t.throwsAsync(mixed.sdk.getInfo(a.socketId), { instanceOf: SocketNotFoundError });
  t.deepEqual(await mixed.sdk.listSockets(), []);
  t.deepEqual((await adm.listSockets()).map((i) => i.socketId), [a.socketId]);
  a.destroy();

  const closed = await startGateway({ transports: { enabled: ['tcp', 'grpc'] }, identities: [{ name: 'a', tokens: [TOKEN_A] }] });
  t.teardown(() => closed.stop());
  await t.throwsAsync(closed.sdk.connect(echo.uri, { transports: ['tcp'] }), { instanceOf: UnauthenticatedError });
  await t.throwsAsync(closed.sdk.listSockets(), { instanceOf: UnauthenticatedError });
});

/** A CA, a server certificate for 127.0.0.1 and client certificates with the given subjects. */
function certificates(clients: Record<string, string>): { dir: string; ca: Buffer; clients: Record<string, { cert: Buffer; key: Buffer }> } {
  const dir = mkdtempSync(join(tmpdir(), 'sockgate-mtls-'));
  const ossl = (...args: string[]) => execFileSync('openssl', args, { cwd: dir, stdio: 'ignore' });
  const ec = ['-newkey', 'ec', '-pkeyopt', 'ec_paramgen_curve:prime256v1', '-nodes'];
  ossl('req', '-x509', ...ec, '-days', '1', '-subj', '/CN=sockgate-test-ca', '-keyout', 'ca.key', '-out', 'ca.pem');
  const sign = (name: string, subject: string, ext?: string) => {
    ossl('req', ...ec, '-subj', subject, '-keyout', `${name}.key`, '-out', `${name}.csr`);
    const extArgs: string[] = [];
    if (ext) {
      writeFileSync(join(dir, `${name}.ext`), ext);
      extArgs.push('-extfile', `${name}.ext`);
    }
    ossl('x509', '-req', '-in', `${name}.csr`, '-CA', 'ca.pem', '-CAkey', 'ca.key', '-CAcreateserial', '-days', '1', '-out', `${name}.pem`, ...extArgs);
  };
  sign('server', '/CN=localhost', 'subjectAltName=DNS:localhost,IP:127.0.0.1\n');
  const out: Record<string, { cert: Buffer; key: Buffer }> = {};
  for (const [name, subject] of Object.entries(clients)) {
    sign(name, subject);
    out[name] = { cert: readFileSync(join(dir, `${name}.pem`)), key: readFileSync(join(dir, `${name}.key`)) };
  }
  return { dir, ca: readFileSync(join(dir, 'ca.pem')), clients: out };
}

test('mTLS: a mapped CN is its identity; an unmapped CN or a certificate without a CN is refused, never anonymous', async (t) => {
  let pki: ReturnType<typeof certificates>;
  try {
    pki = certificates({ mapped: '/CN=mapped-user', stranger: '/CN=stranger', nocn: '/O=no-common-name' });
  } catch (err) {
    return t.pass(`skipped: openssl could not make test certificates (${(err as Error).message})`);
  }
  const gw = await startGateway(
    {
      transports: { enabled: ['tcp', 'grpc'] },
      tls: { cert: join(pki.dir, 'server.pem'), key: join(pki.dir, 'server.key'), ca: join(pki.dir, 'ca.pem'), require_client_cert: true },
      identities: [{ name: 'mapped', mtls_cn: 'mapped-user' }],
      // Anonymous on, on purpose: an unmapped certificate used to land here.
      anonymous: { enabled: true },
    },
    { tls: { ca: pki.ca, ...pki.clients['mapped']! } },
  );
  t.teardown(() => gw.stop());
  const as = async (name: string) => {
    const sdk = await SdkGateway.connect(gw.target, { tls: { ca: pki.ca, ...pki.clients[name]! } });
    t.teardown(() => sdk.close());
    return sdk;
  };
  const echo = await echoServer();
  t.teardown(() => echo.close());
  const mapped = await as('mapped');
  const s = await mapped.connect(echo.uri, { transports: ['grpc'] });
  t.is((await mapped.getInfo(s.socketId)).identity, 'mapped');
  s.destroy();
  const stranger = await as('stranger');
  const e = await t.throwsAsync(stranger.listSockets(), { instanceOf: UnauthenticatedError });
  t.regex(e?.message ?? '', /CN "stranger" maps to no identity/);
  const nocn = await as('nocn');
  await t.throwsAsync(nocn.listSockets(), { instanceOf: UnauthenticatedError });
});
