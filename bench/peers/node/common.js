// Shared by server.js and worker.js: the queue and its Redis connection.
'use strict';
const { Queue } = require('bullmq');

const connection = {
  host: process.env.REDIS_HOST || '127.0.0.1',
  port: Number(process.env.REDIS_PORT || 6379),
  maxRetriesPerRequest: null,
};
const queueName = process.env.QUEUE || 'sluice-bench';

module.exports = { connection, queueName, Queue };
