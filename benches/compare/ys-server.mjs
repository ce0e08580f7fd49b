// y-websocket server (@y/websocket-server utils) for the comparison, in memory
// (YPERSISTENCE unset): room = URL path.
import http from 'node:http'
import { WebSocketServer } from 'ws'
import { setupWSConnection, docs } from '@y/websocket-server/utils'
const port = Number(process.env.PORT ?? 1235)
const wss = new WebSocketServer({ noServer: true })
const server = http.createServer((_q, r) => { r.writeHead(200); r.end('okay') })
wss.on('connection', setupWSConnection)
server.on('upgrade', (req, s, h) => wss.handleUpgrade(req, s, h, ws => wss.emit('connection', ws, req)))
server.listen(port, process.env.HOST ?? '127.0.0.1', () => console.log(JSON.stringify({ listening: port })))
setInterval(() => {
  const m = process.memoryUsage()
  console.log(JSON.stringify({ t: Date.now(), docs: docs.size, conns: wss.clients.size, rss: m.rss, heap: m.heapUsed }))
}, 5000).unref()
for (const sig of ['SIGTERM', 'SIGINT']) process.on(sig, () => process.exit(0))
