// Interop test: real y-websocket clients (WebsocketProvider on Node with
// `ws`) and native crdt-socket-sync clients edit one document through the
// crate's server at the same time; one Yjs client disconnects, edits
// offline and reconnects; every replica must converge and awareness must
// cross between both kinds of client.
//
// The server and the native clients are the `yjs_interop` example
// (command in YWS_SERVER, default: cargo run). Run by .ci/yws.sh.
import { spawn } from 'node:child_process'
import readline from 'node:readline'
import WebSocket from 'ws'
import * as Y from 'yjs'
import { WebsocketProvider } from 'y-websocket'

const YJS = 3 // must match YJS in examples/yjs_interop.rs
const NATIVE = 2 // NATIVE there
const EDITS = 40 // EDITS there
const LIMIT_MS = Number(process.env.LIMIT_MS ?? 120_000)

const sleep = ms => new Promise(resolve => setTimeout(resolve, ms))
const fail = why => {
  console.error(`FAIL ${why}`)
  server?.kill()
  process.exit(1)
}
setTimeout(() => fail('timed out'), LIMIT_MS).unref()

const command = process.env.YWS_SERVER
  ? [process.env.YWS_SERVER]
  : ['cargo', 'run', '--quiet', '--example', 'yjs_interop', '--features', 'tokio,yrs']
const server = spawn(command[0], command.slice(1), { stdio: ['pipe', 'pipe', 'inherit'] })
server.on('exit', code => { if (code) fail(`server exited with ${code}`) })
const lines = []
let waiting = null
readline.createInterface({ input: server.stdout }).on('line', line => {
  if (waiting) { const w = waiting; waiting = null; w(line) } else lines.push(line)
})
const nextLine = () => lines.length ? Promise.resolve(lines.shift()) : new Promise(resolve => { waiting = resolve })

const ready = await nextLine()
if (!ready.startsWith('READY ')) fail(`unexpected first line: ${ready}`)
const url = ready.slice('READY '.length) + '/yjs'
console.log(`server at ${url}`)

const clients = []
for (let i = 0; i < YJS; i++) {
  const doc = new Y.Doc()
  // disableBc: in one Node process the providers would otherwise also sync
  // through a BroadcastChannel, around the server.
  const provider = new WebsocketProvider(url, 'shared', doc, { WebSocketPolyfill: WebSocket, disableBc: true })
  provider.awareness.setLocalStateField('user', { name: `yjs-${i}` })
  clients.push({ doc, provider, text: doc.getText('body') })
}
await Promise.all(clients.map(c => new Promise(resolve => {
  if (c.provider.synced) resolve()
  else c.provider.on('sync', s => { if (s) resolve() })
})))
console.log('all Yjs clients synced')

// Type concurrently with the native clients; client 0 goes offline for a
// while and keeps typing.
const OFF_AT = EDITS / 2
const ON_AT = OFF_AT + 10
for (let k = 0; k < EDITS; k++) {
  if (k === OFF_AT) clients[0].provider.disconnect()
  if (k === ON_AT) clients[0].provider.connect()
  clients.forEach((c, i) => {
    // At a marker boundary, so concurrent edits never split a marker.
    const s = c.text.toString()
    const bounds = [0]
    for (let p = s.indexOf(']'); p >= 0; p = s.indexOf(']', p + 1)) bounds.push(p + 1)
    const at = bounds[(k * 5 + i * 11) % bounds.length]
    c.text.insert(at, `[Y${i}:${k}]`)
  })
  await sleep(20)
}
console.log('Yjs edits done (client 0 was offline for 10 rounds)')

const markers = []
for (let i = 0; i < YJS; i++) for (let k = 0; k < EDITS; k++) markers.push(`[Y${i}:${k}]`)
for (let i = 0; i < NATIVE; i++) for (let k = 0; k < EDITS; k++) markers.push(`[N${i}:${k}]`)

const names = c => [...c.provider.awareness.getStates().values()].map(s => s?.user?.name)
let why = ''
for (;;) {
  const texts = clients.map(c => c.text.toString())
  const missing = markers.filter(m => !texts[0].includes(m))
  const awareness = clients.map((c, i) => {
    const seen = names(c)
    const want = [...Array(NATIVE).keys()].map(n => `native-${n}`)
      .concat([...Array(YJS).keys()].filter(j => j !== i).map(j => `yjs-${j}`))
    return want.filter(w => !seen.includes(w))
  })
  if (missing.length) why = `${missing.length} edits missing, e.g. ${missing[0]}`
  else if (texts.some(t => t !== texts[0])) why = 'Yjs replicas differ'
  else if (awareness.some(a => a.length)) why = `awareness missing: ${JSON.stringify(awareness)}`
  else break
  await sleep(100)
  if (!waiting && lines.length) console.log(lines.shift())
  process.stdout.write('') // keep the loop honest under the global deadline
  if (performance.now() > LIMIT_MS - 10_000) fail(`${why}; lengths ${texts.map(t => t.length)}; states of client 1: ${JSON.stringify([...clients[1].provider.awareness.getStates()])}`)
}
const text = clients[0].text.toString()
console.log(`Yjs replicas converged: ${text.length} chars, ${markers.length} edits; awareness crossed`)

server.stdin.write(`CHECK ${JSON.stringify(text)}\n`)
for (;;) {
  const line = await nextLine()
  if (line === 'OK') break
  if (line.startsWith('FAIL')) fail(`native side: ${line}`)
}
console.log('native replicas hold the same text and see every Yjs client: OK')
clients.forEach(c => c.provider.destroy())
process.exit(0)
