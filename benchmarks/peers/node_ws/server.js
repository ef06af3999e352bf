'use strict';
// Broadcast server on node's `ws`: rawchat's plain mode, for the benchmarks.
//
// Every text message goes to every open client, sender included, with a loop
// over wss.clients and ws.send(): the idiomatic broadcast of ws's own README.
// send() never waits: a slow client's frames queue in its socket's buffer
// (bufferedAmount) without bound, as in the websockets peer, until its TCP
// connection fails; there is no eviction and no keepalive.
//
// Takes --host, --port (0 picks a free one) and, like the Python peers,
// --uvloop, which means nothing here (node has one loop: libuv). Logs
// "node-ws-peer listening on http://HOST:PORT (node)", the line the load tool
// reads the port from. Stops on SIGTERM or SIGINT.

const http = require('node:http');
const { WebSocketServer, WebSocket } = require('ws');

function parseArgs(argv) {
  const args = { host: '127.0.0.1', port: 0 };
  for (let i = 0; i < argv.length; i++) {
    const [flag, inline] = argv[i].split('=', 2);
    const value = () => (inline !== undefined ? inline : argv[++i]);
    if (flag === '--host') args.host = value();
    else if (flag === '--port') args.port = Number(value());
    else if (flag === '--uvloop') continue;
    else {
      process.stderr.write(`unknown argument ${argv[i]}\n`);
      process.exit(2);
    }
  }
  return args;
}

const args = parseArgs(process.argv.slice(2));

const server = http.createServer((req, res) => {
  res.writeHead(404, { 'Content-Type': 'text/plain' });
  res.end('not found\n');
});

// Same message limit as the Python peers (64 KiB); no compression, as they have none.
const wss = new WebSocketServer({ server, path: '/ws', maxPayload: 64 * 1024 });

wss.on('connection', (ws) => {
  ws.on('error', () => {}); // a reset at the end of a run is not worth a crash
  ws.on('message', (data, isBinary) => {
    if (isBinary) return; // plain mode relays text only
    for (const client of wss.clients) {
      if (client.readyState === WebSocket.OPEN) {
        client.send(data, { binary: false });
      }
    }
  });
});

server.listen(args.port, args.host, () => {
  const { address, port } = server.address();
  process.stderr.write(`node-ws-peer listening on http://${address}:${port} (node)\n`);
});

function stop() {
  for (const client of wss.clients) client.terminate();
  wss.close();
  server.close(() => process.exit(0));
  setTimeout(() => process.exit(0), 1000).unref();
}

process.on('SIGTERM', stop);
process.on('SIGINT', stop);
