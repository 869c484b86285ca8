/**
 * The image's build stage, replayed without a container runtime: the test
 * reads deploy/Containerfile's `build` stage (its WORKDIR, COPY and RUN lines)
 * and Containerfile.dockerignore, copies into a clean temporary directory only
 * what those COPY lines copy, and runs the RUN steps there. A COPY the build
 * needs that is missing (clients/ was) makes tsc fail here, as it would in the
 * image; a path the runtime stage copies out of the build stage, or its
 * ENTRYPOINT script, that the build did not produce fails too.
 *
 * Steps replayed differently, each said where it is handled below: apt-get
 * (system toolchain, not ours), `npm ci` (node_modules linked from the
 * repository instead of downloaded), `npm run build:native` (not run: it takes
 * ~35 s on a 2-core runner, over half this file's budget; its input is checked
 * to be there and every checkout builds it), `npm prune` (not run: it would
 * prune the linked node_modules). Any other step fails the test until taught.
 */
import test from 'ava';
import { execFile } from 'node:child_process';
import { cpSync, existsSync, mkdtempSync, readFileSync, rmSync, symlinkSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join, posix, relative, sep } from 'node:path';
import { fileURLToPath } from 'node:url';
import { promisify } from 'node:util';

const run = promisify(execFile);
/** The repository root, the build context (this file runs from dist/test/deploy/). */
const ROOT = fileURLToPath(new URL('../../../', import.meta.url));
/** tsc on the product sources takes ~20 s here; generous for a loaded runner. */
const TSC_TIMEOUT_MS = 100_000;

interface Instruction {
  op: string;
  args: string;
}

interface Stage {
  name: string | undefined;
  steps: Instruction[];
}

/** The Containerfile's stages: comments dropped, continuation lines joined. */
function parseContainerfile(text: string): Stage[] {
  const lines = text.split('\n').filter((l) => !/^\s*#/.test(l));
  const joined = lines.join('\n').replace(/\\\n/g, ' ');
  const stages: Stage[] = [];
  for (const line of joined.split('\n')) {
    const m = /^\s*([A-Za-z]+)\s+(.*)$/.exec(line);
    if (!m) continue;
    const op = m[1]!.toUpperCase();
    const args = m[2]!.trim();
    if (op === 'FROM') stages.push({ name: /\sAS\s+(\S+)/i.exec(args)?.[1], steps: [] });
    else stages.at(-1)?.steps.push({ op, args });
  }
  return stages;
}

/** A .dockerignore as a predicate on context-relative paths (a match excludes the path and everything under it). */
function ignoreMatcher(text: string): (path: string) => boolean {
  const patterns = text
    .split('\n')
    .map((l) => l.trim())
    .filter((l) => l && !l.startsWith('#'));
  if (patterns.some((p) => p.startsWith('!'))) throw new Error('exception patterns (!) are not replayed: teach ignoreMatcher');
  const regexes = patterns.map((p) => {
    const body = p
      .replace(/^\/+|\/+$/g, '')
      .split('/')
      .map((seg) => (seg === '**' ? '(?:.*/)?' : seg.replace(/[.+^${}()|[\]\\]/g, '\\$&').replace(/\*/g, '[^/]*').replace(/\?/g, '[^/]') + '/'))
      .join('');
    return new RegExp(`^${body.replace(/\/$/, '')}(?:/.*)?$`);
  });
  return (path) => regexes.some((r) => r.test(path));
}

function toPosix(p: string): string {
  return p.split(sep).join('/');
}

interface Replay {
  dir: string;
  /** Steps not run as written, with why. */
  notes: string[];
}

/** Replay the build stage in `dir`: WORKDIR is `dir`, COPY takes from the repository. */
async function replayBuildStage(stage: Stage, ignored: (path: string) => boolean, dir: string): Promise<Replay> {
  const notes: string[] = [];
  for (const { op, args } of stage.steps) {
    if (op === 'WORKDIR' || op === 'ARG' || op === 'ENV') continue;
    if (op === 'COPY') {
      const words = args.split(/\s+/);
      if (words.some((w) => w.startsWith('--'))) throw new Error(`COPY flags are not replayed: ${args}`);
      const dest = words.pop()!;
      for (const src of words) {
        const to = dest.endsWith('/') ? join(dir, dest, posix.basename(src)) : join(dir, dest);
        if (!existsSync(join(ROOT, src))) throw new Error(`COPY ${src}: not in the build context`);
        cpSync(join(ROOT, src), to, {
          recursive: true,
          filter: (from) => {
            const rel = toPosix(relative(ROOT, from));
            return rel === '' || !ignored(rel);
          },
        });
      }
      continue;
    }
    if (op !== 'RUN') throw new Error(`instruction ${op} in the build stage is not replayed: teach this test`);
    for (const cmd of args.split('&&').map((c) => c.trim())) {
      if (/^apt-get /.test(cmd) || cmd === 'rm -rf /var/lib/apt/lists/*') {
        notes.push(`${cmd.split(' ').slice(0, 2).join(' ')}: system toolchain, not replayed`);
      } else if (cmd === 'npm ci --ignore-scripts') {
        // Not downloaded: the repository's installed node_modules (same lockfile) is linked in.
        symlinkSync(join(ROOT, 'node_modules'), join(dir, 'node_modules'), 'dir');
        notes.push('npm ci: node_modules linked from the repository');
      } else if (cmd === 'npm run build:native') {
        // Too slow to run here (see the header); what node-gyp builds from must have been copied.
        if (!existsSync(join(dir, 'native/binding.gyp'))) throw new Error('npm run build:native: native/binding.gyp was not copied');
        notes.push('build:native: input checked, not compiled');
      } else if (cmd === 'npx tsc -p tsconfig.json') {
        await run(process.execPath, [join(dir, 'node_modules/typescript/bin/tsc'), '-p', 'tsconfig.json'], { cwd: dir, timeout: TSC_TIMEOUT_MS }).catch(
          (err: Error & { stdout?: string }) => {
            throw new Error(`npx tsc failed in the replayed build context:\n${err.stdout ?? ''}${err.message}`);
          },
        );
      } else if (cmd === 'npm prune --omit=dev') {
        notes.push('npm prune: not run (node_modules is the repository\'s, linked)');
      } else if (/^rm -rf [\w./-]+$/.test(cmd) && !cmd.includes('..')) {
        rmSync(join(dir, cmd.slice('rm -rf '.length)), { recursive: true, force: true });
      } else {
        throw new Error(`RUN step not replayed: ${cmd}: teach this test`);
      }
    }
  }
  return { dir, notes };
}

test('the Containerfile build stage passes in a clean context holding only what it copies', async (t) => {
  t.timeout(TSC_TIMEOUT_MS + 20_000);
  const stages = parseContainerfile(readFileSync(join(ROOT, 'deploy/Containerfile'), 'utf8'));
  const build = stages.find((s) => s.name === 'build');
  const runtime = stages.at(-1)!;
  t.truthy(build, 'no `FROM ... AS build` stage');
  t.not(runtime, build);
  t.true(build!.steps.some((s) => s.op === 'WORKDIR' && s.args === '/app'), 'the replay maps /app to its directory');
  const ignored = ignoreMatcher(readFileSync(join(ROOT, 'deploy/Containerfile.dockerignore'), 'utf8'));
  t.true(ignored('node_modules') && ignored('test/x.ts') && ignored('native/build/Release/a.node') && ignored('a/b.log'));
  t.false(ignored('native/index.ts') || ignored('server/gateway.ts'));

  const dir = mkdtempSync(join(tmpdir(), 'sockgate-image-'));
  t.teardown(() => rmSync(dir, { recursive: true, force: true }));
  const replay = await replayBuildStage(build!, ignored, dir);
  t.log(replay.notes.join('\n'));
  t.false(existsSync(join(dir, 'test')), 'test/ reached the build context');

  // What the runtime stage takes from the build stage must have been built, except the addon (not compiled here).
  let checked = 0;
  for (const { op, args } of runtime.steps) {
    const m = /^--from=build\s+\/app\/(\S+)\s+\S+$/.exec(args);
    if (op !== 'COPY' || !m) continue;
    if (m[1]!.startsWith('native/build/')) continue;
    checked++;
    t.true(existsSync(join(dir, m[1]!)), `the runtime stage copies /app/${m[1]}, which the build stage did not produce`);
  }
  t.true(checked >= 3, `only ${checked} runtime COPY --from=build lines checked`);
  const entry = runtime.steps.find((s) => s.op === 'ENTRYPOINT');
  const script = (JSON.parse(entry!.args) as string[]).find((a) => a.startsWith('/app/'));
  t.truthy(script, 'ENTRYPOINT runs no /app script');
  t.true(existsSync(join(dir, script!.slice('/app/'.length))), `ENTRYPOINT ${script} was not built`);
  // package.json's bin is the same command.
  const bin = (JSON.parse(readFileSync(join(ROOT, 'package.json'), 'utf8')) as { bin: Record<string, string> }).bin['sockgate'];
  t.is(`/app/${bin}`, script!);
});
