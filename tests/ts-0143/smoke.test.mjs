// The Daytona TypeScript SDK 0.143 (pinned by @mastra/daytona and @langchain/daytona) against
// a real `corral serve`, with node's own test runner: what those integrations call, the
// offset-paged list this SDK uses, and the error wording they match on. Started by
// tests/e2e/test_older_sdks.py with CORRAL_API_URL and CORRAL_API_KEY set.
import assert from 'node:assert/strict';
import { createRequire } from 'node:module';
import { after, before, test } from 'node:test';
import { Daytona, DaytonaError, DaytonaNotFoundError } from '@daytonaio/sdk';

const require = createRequire(import.meta.url);
const env = (name) => {
  const v = process.env[name];
  assert.ok(v, `${name} is not set`);
  return v;
};
const daytona = new Daytona({ apiKey: env('CORRAL_API_KEY'), apiUrl: env('CORRAL_API_URL') });
const mark = `ts0143-${process.pid}`;
let sandbox;

before(async () => {
  // Mastra's and LangChain's create: labels, env vars, a language.
  sandbox = await daytona.create(
    { language: 'typescript', labels: { smoke: mark }, envVars: { MASTRA: 'yes' } },
    { timeout: 60 },
  );
});

after(async () => {
  if (sandbox) await daytona.delete(sandbox, 60);
});

test('the pinned SDK is 0.143', () => {
  assert.match(require('@daytonaio/sdk/package.json').version, /^0\.143\./);
  assert.equal(sandbox.state, 'started');
});

test('exec, cwd, env and dirs (executeCommand, getWorkDir, getUserHomeDir)', async () => {
  const r = await sandbox.process.executeCommand('echo $MASTRA $EXTRA; pwd', '/tmp', { EXTRA: 'x' }, 30);
  assert.equal(r.exitCode, 0, r.result);
  assert.match(r.result, /yes x/);
  assert.match(r.result, /\/tmp/);
  assert.ok(await sandbox.getWorkDir());
  assert.ok(await sandbox.getUserHomeDir());
});

test('files up and down (uploadFile, uploadFiles, downloadFile, downloadFiles, createFolder)', async () => {
  await sandbox.fs.createFolder('work/in', '755');
  await sandbox.fs.uploadFile(Buffer.from('one\n'), 'work/in/a.txt');
  await sandbox.fs.uploadFiles([{ source: Buffer.from('two\n'), destination: 'work/in/b.txt' }]);
  assert.equal((await sandbox.fs.downloadFile('work/in/a.txt')).toString(), 'one\n');
  const [b] = await sandbox.fs.downloadFiles([{ source: 'work/in/b.txt' }]);
  assert.equal(b.error, undefined);
  assert.equal(b.result.toString(), 'two\n');
});

test('sessions (createSession, executeSessionCommand, getSessionCommand, deleteSession)', async () => {
  await sandbox.process.createSession('mastra');
  const run = await sandbox.process.executeSessionCommand('mastra', { command: 'echo from-session', runAsync: true });
  let cmd;
  for (let i = 0; i < 100; i++) {
    cmd = await sandbox.process.getSessionCommand('mastra', run.cmdId);
    if (cmd.exitCode !== undefined && cmd.exitCode !== null) break;
    await new Promise((r) => setTimeout(r, 50));
  }
  assert.equal(cmd.exitCode, 0);
  await sandbox.process.deleteSession('mastra');
});

// This SDK reads a command's logs as text with Daytona's stdout/stderr markers and splits it
// itself; the agent answers so for SDK versions before 0.167 (X-Daytona-SDK-Version).
test('session command logs as 0.143 reads them', async () => {
  await sandbox.process.createSession('logs');
  const run = await sandbox.process.executeSessionCommand('logs', {
    command: 'echo from-session; echo to-stderr >&2',
  });
  const logs = await sandbox.process.getSessionCommandLogs('logs', run.cmdId);
  await sandbox.process.deleteSession('logs');
  assert.equal(logs.stdout, 'from-session\n');
  assert.equal(logs.stderr, 'to-stderr\n');
});

// This SDK creates a terminal with POST /process/pty, then connects by WebSocket.
test('PTY: createPty, input, output, exit code (POST /process/pty + connect)', async () => {
  let out = '';
  const pty = await sandbox.process.createPty({
    id: `pty-${process.pid}`,
    cols: 100,
    rows: 30,
    onData: (d) => {
      out += new TextDecoder().decode(d);
    },
  });
  await pty.waitForConnection();
  const info = await sandbox.process.getPtySessionInfo(`pty-${process.pid}`);
  assert.equal(info.cols, 100);
  await pty.sendInput('echo pty-$((6*7))\n');
  await pty.sendInput('exit 3\n');
  const result = await pty.wait();
  assert.equal(result.exitCode, 3);
  assert.match(out, /pty-42/);
  await pty.disconnect();
});

test("Daytona's wording: an exec timeout says timed out, a missing file says file not found", async () => {
  await assert.rejects(sandbox.process.executeCommand('sleep 5', undefined, undefined, 1), (e) => {
    assert.ok(e instanceof DaytonaError, String(e));
    assert.match(e.message, /timed out/);
    return true;
  });
  await assert.rejects(sandbox.fs.downloadFile('/tmp/definitely-missing.txt'), (e) => {
    assert.ok(e instanceof DaytonaError, String(e));
    assert.match(e.message, /file not found/);
    return true;
  });
});

test('list pages by offset (GET /sandbox/paginated), get, stop and start', async () => {
  const page = await daytona.list({ smoke: mark }, 1, 10);
  assert.deepEqual(page.items.map((s) => s.id), [sandbox.id]);
  assert.equal(page.total, 1);
  assert.equal(page.page, 1);
  assert.equal(page.totalPages, 1);
  const empty = await daytona.list({ smoke: mark }, 2, 10);
  assert.equal(empty.items.length, 0);
  assert.equal(empty.total, 1);
  assert.equal((await daytona.get(sandbox.id)).id, sandbox.id);
  await daytona.stop(sandbox);
  assert.equal(sandbox.state, 'stopped');
  await daytona.start(sandbox, 60);
  assert.equal(sandbox.state, 'started');
});

test('bad paging is a clear error, an unknown sandbox a DaytonaNotFoundError', async () => {
  await assert.rejects(daytona.list({ smoke: mark }, 0, 10), (e) => {
    assert.ok(e instanceof DaytonaError, String(e));
    assert.match(e.message, /page must be/);
    return true;
  });
  await assert.rejects(daytona.get('no-such-sandbox-0143'), DaytonaNotFoundError);
});
