// A Node.js client of the mCP orchestrator: submit a task, watch it live, print a JSON summary.
// usage: node client.js SERVER_ADDRESS WORKFLOW_ID [INPUT_JSON] [--run | --follow | --refused] [--delete | --bulk-rerun]
//        [--queue-timeout-ms MS]
//        node client.js SERVER_ADDRESS EVENT_NAME [DATA_JSON] --publish
// With --run: one RunTask call (submit and wait), with a deadline, so the task id also comes at
// once in the `mcp-task-id` response header. With --follow: one SubmitAndWatchTask stream (submit,
// then every event to the end; the first message names the task). With --refused: submit once,
// expecting a refusal, and print what the server said in its google.rpc.Status details (the
// ErrorInfo's reason and metadata, a RetryInfo's delay, a BadRequest's fields). With --publish:
// publish an event (twice, with one request_id; with --key K, that key) and follow the tasks the
// workflows it triggers got; the waits it reached are listed.
'use strict';
const path = require('path');
const grpc = require('@grpc/grpc-js');
const protoLoader = require('@grpc/proto-loader');
const protobuf = require('protobufjs');

const PROTOS = path.resolve(__dirname, '../../../protos');
const definition = protoLoader.loadSync(['mcp/v1/task.proto', 'mcp/v1/bulk.proto', 'mcp/v1/events.proto'], {
  includeDirs: [PROTOS], keepCase: true, longs: Number, enums: String, defaults: true, oneofs: true,
});
const mcp = grpc.loadPackageDefinition(definition).mcp.v1;

// google.protobuf.Struct <-> plain JSON (protobufjs names the well-known types' fields in camelCase)
function toValue(v) {
  if (v === null || v === undefined) return { nullValue: 'NULL_VALUE' };
  if (typeof v === 'number') return { numberValue: v };
  if (typeof v === 'string') return { stringValue: v };
  if (typeof v === 'boolean') return { boolValue: v };
  if (Array.isArray(v)) return { listValue: { values: v.map(toValue) } };
  return { structValue: toStruct(v) };
}
function toStruct(obj) {
  const fields = {};
  for (const [k, v] of Object.entries(obj)) fields[k] = toValue(v);
  return { fields };
}
function fromValue(v) {
  if (!v || !v.kind) return null;
  switch (v.kind) {
    case 'structValue': return fromStruct(v.structValue);
    case 'listValue': return (v.listValue.values || []).map(fromValue);
    case 'nullValue': return null;
    default: return v[v.kind];
  }
}
function fromStruct(s) {
  const out = {};
  for (const [k, v] of Object.entries((s && s.fields) || {})) out[k] = fromValue(v);
  return out;
}

// google.rpc's Status and the details the server sends (googleapis' status.proto and
// error_details.proto; Any and Duration have the same wire format as google.protobuf's).
const rpc = protobuf.parse(`syntax = "proto3"; package rpc;
  message Any { string type_url = 1; bytes value = 2; }
  message Duration { int64 seconds = 1; int32 nanos = 2; }
  message Status { int32 code = 1; string message = 2; repeated Any details = 3; }
  message ErrorInfo { string reason = 1; string domain = 2; map<string, string> metadata = 3; }
  message RetryInfo { Duration retry_delay = 1; }
  message FieldViolation { string field = 1; string description = 2; }
  message BadRequest { repeated FieldViolation field_violations = 1; }`, { keepCase: true }).root;

// What a refused call's `grpc-status-details-bin` trailer says.
function statusDetails(err) {
  const [bin] = err.metadata ? err.metadata.get('grpc-status-details-bin') : [];
  if (!bin) return null;
  const status = rpc.lookupType('rpc.Status').decode(bin);
  const said = { code: status.code, message: status.message };
  for (const detail of status.details) {
    const name = detail.type_url.split('/').pop();
    if (name === 'google.rpc.ErrorInfo') {
      const info = rpc.lookupType('rpc.ErrorInfo').decode(detail.value);
      Object.assign(said, { reason: info.reason, domain: info.domain, metadata: info.metadata });
    } else if (name === 'google.rpc.RetryInfo') {
      const delay = rpc.lookupType('rpc.RetryInfo').decode(detail.value).retry_delay || {};
      said.retry_after_seconds = Number(delay.seconds || 0) + (delay.nanos || 0) / 1e9;
    } else if (name === 'google.rpc.BadRequest') {
      said.violations = rpc.lookupType('rpc.BadRequest').decode(detail.value).field_violations.map((v) => v.field);
    }
  }
  return said;
}

async function main() {
  const [address, workflowId, inputJson] = process.argv.slice(2);
  const tasks = new mcp.TaskService(address, grpc.credentials.createInsecure());
  const submit = (req) => new Promise((resolve, reject) => tasks.SubmitTask(req, (err, res) => (err ? reject(err) : resolve(res))));
  const get = (req) => new Promise((resolve, reject) => tasks.GetTask(req, (err, res) => (err ? reject(err) : resolve(res))));

  const input = JSON.parse(inputJson || '{}');
  if (process.argv.includes('--publish')) {
    // an event, not a task: every workflow whose trigger takes it gets one; sent again, the same ones
    const events = new mcp.EventService(address, grpc.credentials.createInsecure());
    const keyAt = process.argv.indexOf('--key');
    const key = keyAt > 0 ? process.argv[keyAt + 1] : '';
    const request = { name: workflowId, data: toStruct(input), request_id: `node-${Date.now()}`, key };
    const publish = () => new Promise((resolve, reject) => events.PublishEvent(request, (err, res) => (err ? reject(err) : resolve(res))));
    const first = await publish();
    const again = await publish();
    const finished = [];
    for (const started of first.tasks) {
      let task = (await get({ task_id: started.task_id })).task;
      while (!['TASK_STATUS_COMPLETED', 'TASK_STATUS_FAILED', 'TASK_STATUS_CANCELLED'].includes(task.status)) {
        await new Promise((resolve) => setTimeout(resolve, 50));
        task = (await get({ task_id: started.task_id })).task;
      }
      finished.push({ workflow_id: started.workflow_id, status: task.status, result: fromValue(task.result),
        event_label: task.labels['mcp/event'] });
    }
    console.log(JSON.stringify({ event_id: first.event_id, created: first.tasks.map((t) => t.created),
      created_again: again.tasks.map((t) => t.created),
      same_tasks: JSON.stringify(first.tasks.map((t) => t.task_id)) === JSON.stringify(again.tasks.map((t) => t.task_id)),
      refused: first.refused.map((r) => [r.workflow_id, r.status.code]), finished,
      woken: first.woken.map((w) => [w.task_id, w.step_path, w.created]),
      woken_again: again.woken.filter((w) => w.created).map((w) => w.task_id) }));
    events.close();
    tasks.close();
    return;
  }
  if (process.argv.includes('--refused')) {
    const refusal = await submit({ workflow_id: workflowId, input_data: toStruct(input) }).then(() => null, (err) => err);
    console.log(JSON.stringify({ refused: refusal !== null, grpc_code: refusal && refusal.code,
      status: refusal && statusDetails(refusal) }));
    tasks.close();
    return;
  }
  if (process.argv.includes('--run')) {
    let headerTaskId = null;
    let statusAtHeader = null;
    const deadline = new Date(Date.now() + 60_000);
    const reply = await new Promise((resolve, reject) => {
      const call = tasks.RunTask({ workflow_id: workflowId, input_data: toStruct(input), request_id: `node-run-${Date.now()}` },
        { deadline }, (err, res) => (err ? reject(err) : resolve(res)));
      call.on('metadata', (metadata) => {
        headerTaskId = (metadata.get('mcp-task-id') || [null])[0];
        // where the task stood when its id arrived: the id comes at once, before the task ends
        if (headerTaskId) statusAtHeader = get({ task_id: headerTaskId }).then((r) => r.task.status);
      });
    });
    const done = reply.task;
    console.log(JSON.stringify({ task_id: done.task_id, header_task_id: headerTaskId, status_at_header: await statusAtHeader,
      status: done.status, result: fromValue(done.result) }));
    tasks.close();
    return;
  }
  const request = { workflow_id: workflowId, input_data: toStruct(input), request_id: `node-${Date.now()}` };
  const waitsAtMost = process.argv.indexOf('--queue-timeout-ms');
  if (waitsAtMost > 0) {  // a google.protobuf.Duration: not started within it, the task ends CANCELLED
    const ms = Number(process.argv[waitsAtMost + 1]);
    request.queue_timeout = { seconds: Math.floor(ms / 1000), nanos: (ms % 1000) * 1e6 };
  }
  const events = [];
  const seen = (event) => {
    events.push({ sequence: event.sequence, type: event.type, step_path: event.step_path });
    process.stderr.write(`${event.sequence} ${event.type} ${event.step_path}\n`);
  };
  let task;
  if (process.argv.includes('--follow')) {
    await new Promise((resolve, reject) => {
      const stream = tasks.SubmitAndWatchTask(request);
      stream.on('data', (reply) => {
        if (reply.submitted) task = reply.submitted.task;
        reply.events.forEach(seen);
      });
      stream.on('end', resolve);
      stream.on('error', reject);
    });
  } else {
    ({ task } = await submit(request));
    await new Promise((resolve, reject) => {
      const stream = tasks.WatchTask({ task_id: task.task_id, after_sequence: 0 });
      stream.on('data', seen);
      stream.on('end', resolve);
      stream.on('error', reject);
    });
  }
  const final = (await get({ task_id: task.task_id })).task;
  const summary = { task_id: task.task_id, status: final.status, result: fromValue(final.result), events };
  if (final.queue_deadline) {  // a google.protobuf.Timestamp, as every time the server sends
    const ms = (t) => Number(t.seconds) * 1000 + t.nanos / 1e6;
    summary.queue_timeout_ms = Math.round(ms(final.queue_deadline) - ms(final.create_time));
  }
  if (process.argv.includes('--delete')) {
    // the finished task goes, with everything stored of it: a read of it is NOT_FOUND afterwards
    const removed = await new Promise((resolve, reject) => tasks.DeleteTask({ task_id: task.task_id },
      (err, res) => (err ? reject(err) : resolve(res))));
    summary.deleted = removed.deleted;
    summary.after_delete = await get({ task_id: task.task_id }).then(() => 'found', (err) => err.code);
  }
  if (process.argv.includes('--bulk-rerun')) {
    // a bulk action on the server: rerun the finished task in the background, then find its rerun by label
    const bulk = new mcp.BulkActionService(address, grpc.credentials.createInsecure());
    const call = (method, req) => new Promise((resolve, reject) => bulk[method](req, (err, res) => (err ? reject(err) : resolve(res))));
    let action = await call('StartBulkAction', { kind: 'BULK_ACTION_KIND_RERUN', selection: { task_ids: [task.task_id] } });
    while (action.state === 'BULK_ACTION_STATE_RUNNING') {
      await new Promise((resolve) => setTimeout(resolve, 50));
      action = await call('GetBulkAction', { action_id: action.action_id });
    }
    const listed = await new Promise((resolve, reject) => tasks.ListTasks({ labels: { 'mcp/bulk-action': action.action_id } },
      (err, res) => (err ? reject(err) : resolve(res))));
    summary.bulk = { state: action.state, matched: action.matched, succeeded: action.succeeded,
      reruns_of: listed.tasks.map((t) => t.rerun_of) };
    bulk.close();
  }
  console.log(JSON.stringify(summary));
  tasks.close();
}

main().catch((err) => { console.error(`error: ${err.code} ${err.details || err.message}`); process.exit(1); });
