// The contract-only plugin of bench/unary_plugin.py, written in Node.js from protocol.proto
// alone: Describe and a unary Execute, nothing else (ExecuteMany answers UNIMPLEMENTED, so the
// orchestrator calls Execute). `echo` returns its input; `sleep` waits `ms` milliseconds. A
// plugin in a language other than Python, as the protocols of a real pipeline often are; the
// thin orchestrator calls the same one, so ratios against it still compare like with like.
// usage: node bench/unary_plugin.js   (prints "MCP_PLUGIN_LISTENING host:port" when ready)
'use strict';
const path = require('path');
const grpc = require('@grpc/grpc-js');
const protoLoader = require('@grpc/proto-loader');

const definition = protoLoader.loadSync(['mcp/v1/protocol.proto'], {
  includeDirs: [path.resolve(__dirname, '../protos')], keepCase: true, longs: Number, enums: String, defaults: false,
  oneofs: true,
});
const mcp = grpc.loadPackageDefinition(definition).mcp.v1;

const service = {
  Describe(call, callback) {
    callback(null, {
      protocols: [
        { name: 'echo', version: '1.0.0', description: 'returns its input' },
        { name: 'sleep', version: '1.0.0', description: 'waits input.ms' },
      ],
    });
  },
  Execute(call, callback) {
    const input = call.request.input || {};
    if (call.request.protocol === 'sleep') {
      const ms = input.fields && input.fields.ms ? input.fields.ms.numberValue : 0;
      setTimeout(() => callback(null, { output: input }), ms);
      return;
    }
    callback(null, { output: input });
  },
};

const server = new grpc.Server({ 'grpc.max_concurrent_streams': 20000 });
server.addService(mcp.ProtocolService.service, service);
server.bindAsync('127.0.0.1:0', grpc.ServerCredentials.createInsecure(), (err, port) => {
  if (err) { console.error(err.message); process.exit(1); }
  console.log(`MCP_PLUGIN_LISTENING 127.0.0.1:${port}`);
});
process.on('SIGTERM', () => server.tryShutdown(() => process.exit(0)));
