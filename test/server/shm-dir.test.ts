/**
 * Finding 6: the shm attach socket's directory. Whoever can write it can swap
 * the socket and receive clients' hellos (attach tokens), so the gateway
 * creates its non-root default 0700 and refuses a directory owned by another
 * user, writable by others, or a symlink; the SDK checks the same before it
 * sends a hello. Ownership cases need root (chown); without it they are
 * skipped, saying why.
 */
import test from 'ava';
import { spawn } from 'node:child_process';
import { chmodSync, chownSync, lstatSync, mkdirSync, mkdtempSync, renameSync, rmSync, symlinkSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { Gateway as SdkGateway } from '../../clients/sdk/gateway.js';
import { shmSupport } from '../../clients/sdk/attach-shm.js';
import { ensureShmDir, shmDirProblem } from '../../native/shm-dir.js';
import { CLI_PATH, echoServer, hashUntilEnd, sendRandom, startGateway, within } from '../helpers/harness.js';

/** An unprivileged uid/gid (nobody on Debian). */
const OTHER_UID = 65534;
const isRoot = process.getuid?.() === 0;

function scratch(t: { teardown(fn: () => void): void }): string {
  const dir = mkdtempSync(join(tmpdir(), 'sockgate-shmdir-'));
  t.teardown(() => rmSync(dir, { recursive: true, force: true }));
  return dir;
}

test('a fresh private directory is created 0700 and accepted; the shared form is created without group/other write', (t) => {
  const base = scratch(t);
  const priv = join(base, 'sockgate-1234');
  ensureShmDir(priv, { private: true });
  t.is(lstatSync(priv).mode & 0o777, 0o700);
  t.is(shmDirProblem(priv, { private: true }), undefined);
  const shared = join(base, 'run', 'sockgate');
  ensureShmDir(shared);
  t.is(lstatSync(shared).mode & 0o022, 0);
  t.is(shmDirProblem(shared), undefined);
});

test('a directory with group/other bits, a symlink, a file or nothing is refused with the reason', (t) => {
  const base = scratch(t);
  const open = join(base, 'open');
  mkdirSync(open);
  chmodSync(open, 0o777);
  t.regex(shmDirProblem(open, { private: true })!, /mode 0777: it must be 0700/);
  t.regex(shmDirProblem(open)!, /mode 0777, writable by group or others/);
  t.throws(() => ensureShmDir(open, { private: true }), { message: /refusing the shm socket directory: .*mode 0777/ });
  // A private directory may not even be readable by others.
  const readable = join(base, 'readable');
  mkdirSync(readable);
  chmodSync(readable, 0o755);
  t.regex(shmDirProblem(readable, { private: true })!, /mode 0755/);
  t.is(shmDirProblem(readable), undefined, 'shared: others may search it');
  const good = join(base, 'good');
  mkdirSync(good, { mode: 0o700 });
  const link = join(base, 'link');
  symlinkSync(good, link);
  t.regex(shmDirProblem(link, { private: true })!, /symbolic link/);
  t.throws(() => ensureShmDir(link, { private: true }), { message: /symbolic link/ });
  t.throws(() => ensureShmDir(link), { message: /symbolic link/ });
  t.regex(shmDirProblem(join(base, 'missing'))!, /does not exist/);
});

test('a directory another user owns is refused, unless (shared) root made it in a parent only root writes', (t) => {
  if (!isRoot) {
    t.log('skipped: chown to another uid needs root');
    t.pass();
    return;
  }
  const base = scratch(t);
  chmodSync(base, 0o755);
  // Made first by another user in a directory where anyone may create (like /tmp): refused both ways.
  const squatted = join(tmpdir(), `sockgate-shmdir-squat-${process.pid}`);
  mkdirSync(squatted, { mode: 0o700 });
  t.teardown(() => rmSync(squatted, { recursive: true, force: true }));
  chownSync(squatted, OTHER_UID, OTHER_UID);
  t.regex(shmDirProblem(squatted, { private: true })!, new RegExp(`owned by uid ${OTHER_UID}`));
  t.regex(shmDirProblem(squatted)!, new RegExp(`owned by uid ${OTHER_UID}, neither this process`));
  t.throws(() => ensureShmDir(squatted, { private: true }), { message: /owned by uid 65534/ });
  // Given to a service user by root under a root-only parent (systemd RuntimeDirectory): clients may trust it.
  const runtime = join(base, 'sockgate');
  mkdirSync(runtime, { mode: 0o750 });
  chownSync(runtime, OTHER_UID, OTHER_UID);
  t.is(shmDirProblem(runtime), undefined);
  // ... but the service user itself must own a private one.
  t.regex(shmDirProblem(runtime, { private: true })!, /owned by uid 65534/);
});

/** Start `sockgate serve` as uid 65534 with its own TMPDIR; resolves with its log once it serves. */
async function serveAsOther(tmp: string, env: NodeJS.ProcessEnv = {}): Promise<string> {
  const child = spawn(
    process.execPath,
    [CLI_PATH, 'serve', '--set', 'listen.control=127.0.0.1:0', '--set', 'listen.data=127.0.0.1:0', '--set', 'listen.metrics=""', '--set', 'shutdown.drain_timeout_ms=1000'],
    { uid: OTHER_UID, gid: OTHER_UID, cwd: tmp, env: { ...process.env, TMPDIR: tmp, ...env }, stdio: ['ignore', 'pipe', 'pipe'] },
  );
  let logs = '';
  child.stdout!.on('data', (c: Buffer) => (logs += c));
  child.stderr!.on('data', (c: Buffer) => (logs += c));
  try {
    await within(
      new Promise<void>((resolve, reject) => {
        const timer = setInterval(() => {
          if (logs.includes('sockgate gateway serving')) {
            clearInterval(timer);
            resolve();
          }
        }, 50);
        child.once('exit', (code) => {
          clearInterval(timer);
          reject(new Error(`gateway exited ${code}: ${logs}`));
        });
      }),
      20_000,
      'child gateway start',
    );
  } finally {
    child.kill('SIGKILL');
  }
  return logs;
}

test('the non-root gateway creates <tmpdir>/sockgate-<uid> 0700, and refuses one another user made first', async (t) => {
  if (!isRoot || !shmSupport.available) {
    t.log(`skipped: ${!isRoot ? 'running the gateway as another uid needs root' : `no shm here (${shmSupport.reason})`}`);
    t.pass();
    return;
  }
  const tmp = scratch(t);
  chmodSync(tmp, 0o1777); // a shared tmpdir, like /tmp
  const fresh = await serveAsOther(tmp);
  const dir = join(tmp, `sockgate-${OTHER_UID}`);
  t.regex(fresh, /shm attach socket listening/, fresh);
  const st = lstatSync(dir);
  t.true(st.isDirectory());
  t.is(st.uid, OTHER_UID);
  t.is(st.mode & 0o777, 0o700);
  // Another user (root here) made the directory first: the gateway serves without shm, saying why.
  rmSync(dir, { recursive: true, force: true });
  mkdirSync(dir, { mode: 0o700 });
  const squatted = await serveAsOther(tmp);
  t.notRegex(squatted, /shm attach socket listening/);
  t.regex(squatted, /refusing the shm socket directory: .*owned by uid 0, not by this process \(uid 65534\).*shm data plane unavailable/, squatted);
  // Mode with other bits, or a symlink to a directory of its own: refused too.
  rmSync(dir, { recursive: true, force: true });
  mkdirSync(dir, { mode: 0o700 });
  chownSync(dir, OTHER_UID, OTHER_UID);
  chmodSync(dir, 0o777);
  t.regex(await serveAsOther(tmp), /refusing the shm socket directory: .*mode 0777/);
  rmSync(dir, { recursive: true, force: true });
  const real = join(tmp, 'elsewhere');
  mkdirSync(real, { mode: 0o700 });
  chownSync(real, OTHER_UID, OTHER_UID);
  symlinkSync(real, dir);
  t.regex(await serveAsOther(tmp), /refusing the shm socket directory: .*symbolic link/);
});

test('under systemd (PrivateTmp) the default is the RuntimeDirectory, /run/sockgate with deploy/sockgate.service', async (t) => {
  if (!isRoot || !shmSupport.available) {
    t.log(`skipped: ${!isRoot ? 'running the gateway as another uid needs root' : `no shm here (${shmSupport.reason})`}`);
    t.pass();
    return;
  }
  const base = scratch(t);
  chmodSync(base, 0o755);
  const privateTmp = join(base, 'private-tmp');
  mkdirSync(privateTmp, { mode: 0o1777 });
  chmodSync(privateTmp, 0o1777);
  // What systemd makes for RuntimeDirectory=sockgate, RuntimeDirectoryMode=0750, User=sockgate.
  const runtime = join(base, 'run-sockgate');
  mkdirSync(runtime, { mode: 0o750 });
  chownSync(runtime, OTHER_UID, OTHER_UID);
  const logs = await serveAsOther(privateTmp, { RUNTIME_DIRECTORY: runtime });
  t.true(logs.includes(`"path":"${join(runtime, 'shm.sock')}"`), logs);
  t.regex(logs, /shm attach socket listening/);
});

test('a gateway given an explicit path in a world-writable directory declines shm, saying why', async (t) => {
  if (!shmSupport.available) {
    t.log(`skipped: no shm here (${shmSupport.reason})`);
    t.pass();
    return;
  }
  const base = scratch(t);
  const open = join(base, 'open');
  mkdirSync(open);
  chmodSync(open, 0o777);
  const gw = await startGateway({ transports: { shm: { path: join(open, 'shm.sock') } } });
  const echo = await echoServer();
  t.teardown(async () => {
    await gw.stop();
    await echo.close();
  });
  const sock = await within(gw.sdk.connect(echo.uri), 10_000, 'connect');
  t.not(sock.transport, 'shm');
  const shm = sock.fallbacks.find((f) => f.transport === 'shm');
  t.regex(shm?.detail ?? '', /refusing the shm socket directory: .*mode 0777/, JSON.stringify(sock.fallbacks));
  sock.destroy();
});

test('the SDK refuses to send its hello to a socket whose directory was opened up, handed over or symlinked, and falls back', async (t) => {
  if (!shmSupport.available) {
    t.log(`skipped: no shm here (${shmSupport.reason})`);
    t.pass();
    return;
  }
  const cases: [string, (dir: string) => string, RegExp][] = [
    ['mode 0777', (dir) => (chmodSync(dir, 0o777), dir), /mode 0777, writable by group or others/],
    ['a symlink', (dir) => (renameSync(dir, `${dir}-real`), symlinkSync(`${dir}-real`, dir), dir), /symbolic link/],
  ];
  if (isRoot) cases.push(['owned by another uid', (dir) => (chownSync(dir, OTHER_UID, OTHER_UID), dir), /owned by uid 65534, neither this process/]);
  else t.log('the other-owner case is skipped: chown needs root');
  const echo = await echoServer();
  t.teardown(() => echo.close());
  for (const [what, tamper, reason] of cases) {
    // A directory in the shared tmpdir, as the non-root default would be.
    const dir = mkdtempSync(join(tmpdir(), 'sockgate-shmdir-sdk-'));
    t.teardown(() => rmSync(dir, { recursive: true, force: true }));
    t.teardown(() => rmSync(`${dir}-real`, { recursive: true, force: true }));
    const gw = await startGateway({ transports: { shm: { path: join(dir, 'shm.sock') } } });
    t.teardown(() => gw.stop());
    // Someone changes the directory after the gateway checked it: the SDK checks again before sending a token.
    tamper(dir);
    const guest = await SdkGateway.connect(gw.target, { transports: ['shm', 'tcp'] });
    t.teardown(() => guest.close());
    const sock = await within(guest.connect(echo.uri), 10_000, `connect (${what})`);
    t.is(sock.transport, 'tcp', what);
    const shm = sock.fallbacks.find((f) => f.transport === 'shm');
    t.regex(shm?.detail ?? '', reason, `${what}: ${JSON.stringify(sock.fallbacks)}`);
    const got = hashUntilEnd(sock);
    const sent = await sendRandom(sock, 256 << 10);
    t.is((await within(got, 10_000, 'echo')).sha256, sent, what);
  }
});
