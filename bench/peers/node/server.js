// The ingest side of workload E, the way a Node team would build it:
// Express receives an NDJSON batch, zod validates every record, and the
// batch goes onto a BullMQ queue in Redis; 202 once Redis has the job.
//
//   PORT=0 QUEUE=name node server.js     (prints {"port": N} when listening)
'use strict';
const express = require('express');
const { z } = require('zod');
const { connection, queueName, Queue } = require('./common');

const Event = z.looseObject({
  ts: z.string(),
  id: z.string().uuid(),
  level: z.enum(['debug', 'info', 'warn', 'error']),
  service: z.string(),
  host: z.string(),
  message: z.string(),
  user: z.looseObject({
    id: z.number().int(),
    email: z.string(),
    name: z.string(),
    ip: z.string(),
  }),
  http: z.looseObject({
    method: z.string(),
    path: z.string(),
    status: z.number().int(),
    latency_ms: z.number(),
  }),
  items: z.array(z.looseObject({ sku: z.string(), qty: z.number().int(), price: z.number() })),
  tags: z.array(z.string()),
  debug: z.boolean().optional(),
});

const queue = new Queue(queueName, { connection });
const app = express();
app.post(
  '/batches',
  express.text({ type: 'application/x-ndjson', limit: '64mb' }),
  async (req, res) => {
    const records = [];
    const lines = req.body.split('\n');
    for (let i = 0; i < lines.length; i++) {
      if (lines[i].length === 0) continue;
      let value;
      try {
        value = JSON.parse(lines[i]);
      } catch (e) {
        return res.status(400).json({ error: `line ${i + 1}: not JSON` });
      }
      const parsed = Event.safeParse(value);
      if (!parsed.success) {
        return res.status(400).json({ error: `line ${i + 1}: ${parsed.error.issues[0].message}` });
      }
      records.push(parsed.data);
    }
    try {
      const job = await queue.add('batch', { records }, { removeOnComplete: true, removeOnFail: 1000 });
      res.status(202).json({ id: job.id, record_count: records.length });
    } catch (e) {
      res.status(503).json({ error: 'queue unavailable' });
    }
  },
);

const server = app.listen(Number(process.env.PORT || 0), '127.0.0.1', () => {
  console.log(JSON.stringify({ port: server.address().port }));
});
process.on('SIGTERM', async () => {
  server.close();
  await queue.close();
  process.exit(0);
});
