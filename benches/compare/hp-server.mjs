// Hocuspocus server for the comparison (see README in run.sh). In-memory:
// onStoreDocument is a stub, so only the sync path is measured.
import { Server } from '@hocuspocus/server'
let stores = 0
const server = new Server({
  port: Number(process.env.PORT ?? 1234),
  address: process.env.HOST ?? '127.0.0.1',
  quiet: true,
  stopOnSignals: true,
  debounce: Number(process.env.DEBOUNCE ?? 2000),
  maxDebounce: Number(process.env.MAX_DEBOUNCE ?? 10000),
  async onStoreDocument () { stores++ },
})
await server.listen()
console.log(JSON.stringify({ listening: Number(process.env.PORT ?? 1234) }))
setInterval(() => {
  const m = process.memoryUsage()
  console.log(JSON.stringify({ t: Date.now(), docs: server.hocuspocus.getDocumentsCount(),
    conns: server.hocuspocus.getConnectionsCount(), stores, rss: m.rss, heap: m.heapUsed }))
}, 5000).unref()
