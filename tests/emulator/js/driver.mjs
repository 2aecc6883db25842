// Drives the official JavaScript Service Bus SDK (@azure/service-bus) for tests/emulator/test_js_sdk.py.
//
//   node driver.mjs <scenario> '<json arguments>'
//
// Arguments always carry `conn` (a connection string) and `queue`. The scenario prints one JSON object
// on stdout; errors print {"error": {name, code, message}} and exit 1. Bodies travel as base64 (the
// tests compare bytes); messages are sent with Buffer bodies so no JSON encoding is added.
import sb from "@azure/service-bus";

const { ServiceBusClient } = sb;

const PROPS = ["messageId", "correlationId", "subject", "to", "replyTo", "contentType", "partitionKey",
  "replyToSessionId"];

function toSdkMessage(spec) {
  const msg = { body: Buffer.from(spec.body ?? "", "base64") };
  for (const p of PROPS) if (spec[p] !== undefined) msg[p] = spec[p];
  if (spec.timeToLiveMs !== undefined) msg.timeToLive = spec.timeToLiveMs;
  if (spec.applicationProperties) msg.applicationProperties = spec.applicationProperties;
  if (spec.scheduledEnqueueTimeUtc) msg.scheduledEnqueueTimeUtc = new Date(spec.scheduledEnqueueTimeUtc);
  return msg;
}

function describe(m) {
  const body = Buffer.isBuffer(m.body) ? m.body : Buffer.from(JSON.stringify(m.body ?? null));
  const out = { body: body.toString("base64") };
  for (const p of PROPS) if (m[p] !== undefined) out[p] = Buffer.isBuffer(m[p]) ? m[p].toString("hex") : m[p];
  out.timeToLiveMs = m.timeToLive;
  out.applicationProperties = m.applicationProperties ?? {};
  out.sequenceNumber = m.sequenceNumber === undefined ? null : m.sequenceNumber.toString();
  out.enqueuedTimeUtc = m.enqueuedTimeUtc ? m.enqueuedTimeUtc.getTime() : null;
  out.lockedUntilUtc = m.lockedUntilUtc ? m.lockedUntilUtc.getTime() : null;
  out.scheduledEnqueueTimeUtc = m.scheduledEnqueueTimeUtc ? m.scheduledEnqueueTimeUtc.getTime() : null;
  out.expiresAtUtc = m.expiresAtUtc ? m.expiresAtUtc.getTime() : null;
  out.deliveryCount = m.deliveryCount ?? null;
  out.state = m.state ?? null;
  out.lockToken = m.lockToken ?? null;
  out.deadLetterReason = m.deadLetterReason ?? null;
  out.deadLetterErrorDescription = m.deadLetterErrorDescription ?? null;
  out.deadLetterSource = m.deadLetterSource ?? null;
  return out;
}

const RECEIVE = { skipParsingBodyAsJson: true };

async function receive(receiver, count, waitMs = 5000) {
  const got = [];
  const deadline = Date.now() + waitMs;
  while (got.length < count && Date.now() < deadline) {
    const batch = await receiver.receiveMessages(count - got.length,
      { maxWaitTimeInMs: Math.max(200, deadline - Date.now()) });
    got.push(...batch);
  }
  return got;
}

const scenarios = {
  // send each of args.messages (one by one, or as one batch when args.batch)
  async send(client, a) {
    const sender = client.createSender(a.queue);
    const msgs = a.messages.map(toSdkMessage);
    if (a.batch) {
      const batch = await sender.createMessageBatch();
      for (const m of msgs) if (!batch.tryAddMessage(m)) throw new Error("batch full");
      await sender.sendMessages(batch);
      await sender.close();
      return { sent: msgs.length, batchCount: batch.count };
    }
    for (const m of msgs) await sender.sendMessages(m);
    await sender.close();
    return { sent: msgs.length };
  },

  // receive args.count messages and settle them with args.settle (complete | abandon | none)
  async receive(client, a) {
    const mode = a.receiveAndDelete ? "receiveAndDelete" : "peekLock";
    const receiver = client.createReceiver(a.queue, { receiveMode: mode, ...RECEIVE,
      ...(a.subQueue ? { subQueueType: a.subQueue } : {}) });
    const got = await receive(receiver, a.count ?? 1, a.waitMs ?? 5000);
    const out = got.map(describe);
    if (mode === "peekLock") {
      for (const m of got) {
        if ((a.settle ?? "complete") === "complete") await receiver.completeMessage(m);
        else if (a.settle === "abandon") await receiver.abandonMessage(m);
      }
    }
    await receiver.close();
    return { messages: out };
  },

  // receive and abandon args.times times, reporting each delivery count
  async abandon(client, a) {
    const receiver = client.createReceiver(a.queue, RECEIVE);
    const counts = [];
    for (let i = 0; i < a.times; i++) {
      const [m] = await receive(receiver, 1, a.waitMs ?? 5000);
      if (!m) break;
      counts.push(m.deliveryCount);
      await receiver.abandonMessage(m);
    }
    await receiver.close();
    return { deliveryCounts: counts };
  },

  async deadLetter(client, a) {
    const receiver = client.createReceiver(a.queue, RECEIVE);
    const [m] = await receive(receiver, 1);
    await receiver.deadLetterMessage(m, { deadLetterReason: a.reason, deadLetterErrorDescription: a.description });
    await receiver.close();
    const dlq = client.createReceiver(a.queue, { subQueueType: "deadLetter", ...RECEIVE });
    const [d] = await receive(dlq, 1);
    const out = describe(d);
    await dlq.completeMessage(d);
    await dlq.close();
    return { deadLettered: out };
  },

  async defer(client, a) {
    const receiver = client.createReceiver(a.queue, RECEIVE);
    const [m] = await receive(receiver, 1);
    await receiver.deferMessage(m);
    const [peeked] = await receiver.peekMessages(1, { fromSequenceNumber: m.sequenceNumber });
    const [back] = await receiver.receiveDeferredMessages(m.sequenceNumber);
    const out = { peeked: describe(peeked), deferred: describe(back) };
    await receiver.completeMessage(back);
    out.afterComplete = (await receiver.peekMessages(5, { fromSequenceNumber: m.sequenceNumber })).length;
    await receiver.close();
    return out;
  },

  async scheduleCancel(client, a) {
    const sender = client.createSender(a.queue);
    const when = new Date(Date.now() + (a.delayMs ?? 60000));
    const [keep, cancel] = await sender.scheduleMessages(
      [toSdkMessage({ body: a.keepBody }), toSdkMessage({ body: a.cancelBody })], when);
    const receiver = client.createReceiver(a.queue, RECEIVE);
    const before = (await receiver.peekMessages(10, { fromSequenceNumber: keep })).map(describe);
    await sender.cancelScheduledMessages(cancel);
    const after = (await receiver.peekMessages(10, { fromSequenceNumber: keep })).map(describe);
    await receiver.close();
    await sender.close();
    return { keep: keep.toString(), cancel: cancel.toString(), before, after };
  },

  async peek(client, a) {
    const receiver = client.createReceiver(a.queue, { ...RECEIVE, ...(a.subQueue ? { subQueueType: a.subQueue } : {}) });
    const got = await receiver.peekMessages(a.count ?? 10);
    await receiver.close();
    return { messages: got.map(describe) };
  },

  async renewLock(client, a) {
    const receiver = client.createReceiver(a.queue, RECEIVE);
    const [m] = await receive(receiver, 1);
    const first = m.lockedUntilUtc.getTime();
    await new Promise((r) => setTimeout(r, a.sleepMs ?? 1200));
    const renewed = (await receiver.renewMessageLock(m)).getTime();
    await receiver.completeMessage(m);
    await receiver.close();
    return { first, renewed, lockedUntilAfter: m.lockedUntilUtc.getTime() };
  },

  // a queue-scoped SAS connection string (EntityPath) whose first management call is a peek
  async managementFirst(client, a) {
    const receiver = client.createReceiver(a.queue, RECEIVE);
    const got = await receiver.peekMessages(5);
    await receiver.close();
    return { peeked: got.length };
  },

  // receive one message and complete it (the SDK needs a message id to settle)
  async receiveOne(client, a) {
    const receiver = client.createReceiver(a.queue, RECEIVE);
    const [m] = await receive(receiver, 1);
    const out = describe(m);
    await receiver.completeMessage(m);
    await receiver.close();
    return { message: out };
  },
};

async function codeOf(fn) {
  try {
    await fn();
    return "no error";
  } catch (err) {
    return err.code ?? err.name;
  }
}

// each failure the broker can return, as the SDK reports it (ServiceBusError.code)
scenarios.errors = async (client, a) => {
  const out = {};
  out.sendUnknownQueue = await codeOf(async () => {
    const s = client.createSender(`${a.queue}-missing`);
    try { await s.sendMessages({ body: Buffer.from("x"), messageId: "1" }); } finally { await s.close(); }
  });
  out.receiveUnknownQueue = await codeOf(async () => {
    const r = client.createReceiver(`${a.queue}-missing`);
    try { await r.receiveMessages(1, { maxWaitTimeInMs: 2000 }); } finally { await r.close(); }
  });
  out.tooLarge = await codeOf(async () => {
    const s = client.createSender(a.queue);
    try { await s.sendMessages({ body: Buffer.alloc(a.tooLargeBytes), messageId: "big" }); } finally { await s.close(); }
  });
  const sender = client.createSender(a.queue);
  await sender.sendMessages([{ body: Buffer.from("a"), messageId: "a" }, { body: Buffer.from("b"), messageId: "b" }]);
  await sender.close();
  // the JS receiver renews locks on its own by default: switch that off to let them expire
  const r = client.createReceiver(a.queue, { ...RECEIVE, maxAutoLockRenewalDurationInMs: 0 });
  const got = await receive(r, 2);
  out.deferredNotFound = await codeOf(() => r.receiveDeferredMessages(got[1].sequenceNumber.add(987654)));
  await new Promise((res) => setTimeout(res, a.lockMs + 700));
  out.completeAfterLockExpired = await codeOf(() => r.completeMessage(got[0]));
  out.renewAfterLockExpired = await codeOf(() => r.renewMessageLock(got[1]));
  await r.close();
  const listen = new ServiceBusClient(a.listenConn, { retryOptions: { maxRetries: 0, timeoutInMs: 15000 } });
  out.sendWithoutSendRight = await codeOf(async () => {
    const s = listen.createSender(a.queue);
    try { await s.sendMessages({ body: Buffer.from("x"), messageId: "x" }); } finally { await s.close(); }
  });
  await listen.close();
  const forged = new ServiceBusClient(a.forgedConn, { retryOptions: { maxRetries: 0, timeoutInMs: 15000 } });
  out.badSignature = await codeOf(async () => {
    const s = forged.createSender(a.queue);
    try { await s.sendMessages({ body: Buffer.from("x"), messageId: "x" }); } finally { await s.close(); }
  });
  await forged.close();
  return out;
};

async function main() {
  const [name, json] = process.argv.slice(2);
  const args = JSON.parse(json ?? "{}");
  const scenario = scenarios[name];
  if (!scenario) throw new Error(`unknown scenario ${name}`);
  const client = new ServiceBusClient(args.conn, { retryOptions: { maxRetries: args.retries ?? 0, timeoutInMs: 15000 } });
  try {
    const result = await scenario(client, args);
    process.stdout.write(JSON.stringify(result) + "\n");
  } finally {
    await client.close();
  }
}

main().then(() => process.exit(0), (err) => {
  process.stdout.write(JSON.stringify({ error: { name: err.name, code: err.code ?? null, message: String(err.message) } }) + "\n");
  process.exit(1);
});
