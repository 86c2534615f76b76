// The processing side of workload E: a BullMQ worker applies E's edits
// (drop /debug, set /pipeline, rename /level to /severity, upper-case
// /service, redact-pii on /message and /user/email for emails and card
// numbers) and appends NDJSON to a file. GET / on STATS_PORT answers
// {"records": delivered, "last_ms": unix ms of the last write}.
//
//   OUTPUT=file STATS_PORT=0 QUEUE=name node worker.js   (prints {"stats_port": N})
'use strict';
const fs = require('fs');
const http = require('http');
const { Worker } = require('bullmq');
const { SyncRedactor } = require('redact-pii');
const { connection, queueName } = require('./common');

const off = { enabled: false };
const redactor = new SyncRedactor({
  builtInRedactors: {
    names: off, streetAddress: off, zipcode: off, phoneNumber: off, ipAddress: off,
    username: off, password: off, credentials: off, digits: off, url: off,
    usSocialSecurityNumber: off,
    emailAddress: { enabled: true },
    creditCardNumber: { enabled: true },
  },
});

const output = fs.openSync(process.env.OUTPUT || 'node-output.ndjson', 'a');
let delivered = 0;
let lastMs = 0;

const worker = new Worker(
  queueName,
  async (job) => {
    let out = '';
    for (const r of job.data.records) {
      delete r.debug;
      r.pipeline = 'bench';
      r.severity = r.level;
      delete r.level;
      r.service = r.service.toUpperCase();
      r.message = redactor.redact(r.message);
      r.user.email = redactor.redact(r.user.email);
      out += JSON.stringify(r) + '\n';
    }
    fs.writeSync(output, out);
    delivered += job.data.records.length;
    lastMs = Date.now();
  },
  { connection, concurrency: 1 },
);
worker.on('failed', (job, err) => console.error(`job ${job && job.id} failed: ${err.message}`));

const stats = http.createServer((req, res) => {
  res.setHeader('content-type', 'application/json');
  res.end(JSON.stringify({ records: delivered, last_ms: lastMs }));
});
stats.listen(Number(process.env.STATS_PORT || 0), '127.0.0.1', () => {
  console.log(JSON.stringify({ stats_port: stats.address().port }));
});
process.on('SIGTERM', async () => {
  stats.close();
  await worker.close();
  process.exit(0);
});
