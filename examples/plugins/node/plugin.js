// A protocol plugin written in Node.js: serves mcp.v1.ProtocolService with one protocol,
// `word_stats`, which counts the words of `text` and reverses their order.
// It declares what one call needs (100 millicores) and what this instance offers (2000
// millicores): the orchestrator runs at most 20 of its calls at once, across all replicas.
// It serves ExecuteMany too (many calls over one stream, both ways), which the orchestrator
// uses for plain calls; with --execute-only it does not, and the orchestrator calls Execute.
// usage: node plugin.js [HOST:PORT] [--execute-only]   (prints "MCP_PLUGIN_LISTENING host:port" when ready)
'use strict';
const path = require('path');
const grpc = require('@grpc/grpc-js');
const protoLoader = require('@grpc/proto-loader');

const PROTOS = path.resolve(__dirname, '../../../protos');
const definition = protoLoader.loadSync(['mcp/v1/protocol.proto'], {
  includeDirs: [PROTOS], keepCase: true, longs: Number, enums: String, defaults: true, oneofs: true,
});
const mcp = grpc.loadPackageDefinition(definition).mcp.v1;

const str = (s) => ({ stringValue: s });
const num = (n) => ({ numberValue: n });

function wordStats(input) {
  const textValue = input.fields && input.fields.text;
  if (!textValue || textValue.kind !== 'stringValue') {
    const err = new Error('word_stats needs a string field `text`');
    err.code = grpc.status.INVALID_ARGUMENT;
    throw err;
  }
  const words = textValue.stringValue.split(/\s+/).filter(Boolean);
  return { fields: { words: num(words.length), reversed: str(words.reverse().join(' ')), by: str('node') } };
}

// One call's outcome, as ExecuteMany carries it: the response, or the status Execute would end with.
function outcome(id, request) {
  try {
    if (request.protocol !== 'word_stats') {
      throw Object.assign(new Error(`no protocol ${request.protocol}`), { code: grpc.status.NOT_FOUND });
    }
    return { id, response: { output: wordStats(request.input || {}) } };
  } catch (err) {
    return { id, error: { code: err.code || grpc.status.INTERNAL, message: err.message } };
  }
}

const service = {
  Describe(call, callback) {
    callback(null, {
      protocols: [{ name: 'word_stats', version: '1.0.0', type: 'PROTOCOL_TYPE_ANALYSIS',
        description: 'Counts words and reverses their order (a plugin written in Node.js)', max_concurrency: 0,
        resources: { cpu_millis: 100 } }],
      capacity: { cpu_millis: 2000 },
    });
  },
  Execute(call, callback) {
    if (call.request.protocol !== 'word_stats') {
      callback({ code: grpc.status.NOT_FOUND, details: `no protocol ${call.request.protocol}` });
      return;
    }
    try {
      callback(null, { output: wordStats(call.request.input || {}) });
    } catch (err) {
      callback({ code: err.code || grpc.status.INTERNAL, details: err.message });
    }
  },
  // word_stats answers at once, so each message's calls are answered together and there is
  // nothing to cancel; its outputs are far below max_response_bytes.
  ExecuteMany(call) {
    call.on('data', (message) => {
      const outcomes = message.calls.map((c) => outcome(c.id, c.request || {}));
      if (outcomes.length) call.write({ outcomes });
    });
    call.on('end', () => call.end());
    call.on('error', () => {});
  },
  ExecuteStream(call) {
    try {
      call.write({ progress: { fraction: 0.5, message: 'counting' } });
      call.write({ result: { output: wordStats(call.request.input || {}) } });
      call.end();
    } catch (err) {
      call.destroy({ code: err.code || grpc.status.INTERNAL, details: err.message });
    }
  },
};

if (process.argv.includes('--execute-only')) delete service.ExecuteMany;
const server = new grpc.Server();
server.addService(mcp.ProtocolService.service, service);
const address = process.argv.slice(2).find((a) => !a.startsWith('--')) || '127.0.0.1:0';
server.bindAsync(address, grpc.ServerCredentials.createInsecure(), (err, port) => {
  if (err) { console.error(err.message); process.exit(1); }
  console.log(`MCP_PLUGIN_LISTENING ${address.replace(/:\d+$/, '')}:${port}`);
});
process.on('SIGTERM', () => server.tryShutdown(() => process.exit(0)));
