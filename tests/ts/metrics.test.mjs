// The TypeScript SDK's getMetrics against a `corral serve` sampling every second. Started
// by tests/e2e/test_metrics.py, which passes CORRAL_API_URL and CORRAL_API_KEY.
import assert from 'node:assert/strict';
import { test } from 'node:test';
import { Daytona } from '@daytonaio/sdk';

const env = (name) => {
  const v = process.env[name];
  assert.ok(v, `${name} is not set`);
  return v;
};

test('getMetrics returns sampled CPU, memory and disk figures', async () => {
  const daytona = new Daytona({ apiKey: env('CORRAL_API_KEY'), apiUrl: env('CORRAL_API_URL') });
  const sb = await daytona.create();
  try {
    await sb.process.executeCommand("nohup timeout 10 sh -c 'while :; do :; done' >/dev/null 2>&1 &");
    const end = Date.now() + 30000;
    let samples = [];
    while (Date.now() < end) {
      samples = await sb.getMetrics();
      if (samples.length >= 3 && samples.some((s) => s.cpuUsedPct > 0)) break;
      await new Promise((r) => setTimeout(r, 500));
    }
    assert.ok(samples.length >= 3, `only ${samples.length} samples`);
    assert.ok(samples.some((s) => s.cpuUsedPct > 0), JSON.stringify(samples));
    const last = samples[samples.length - 1];
    assert.ok(last.memUsed > 0 && last.memTotal >= last.memUsed, JSON.stringify(last));
    assert.equal(last.diskTotal, sb.disk * 2 ** 30);
    assert.ok(last.timestamp instanceof Date && !Number.isNaN(last.timestamp.getTime()));
  } finally {
    await daytona.delete(sb);
  }
});
