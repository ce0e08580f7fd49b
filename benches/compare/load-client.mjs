// Yjs load client for the incumbents (Hocuspocus, y-websocket server).
// One process, one event loop, like the Rust load generator (examples/loadgen.rs).
// Configured through the environment by compare.py; prints JSON lines:
// {"mark": "..."} at phase boundaries (the orchestrator samples the server's
// /proc at those instants) and finally {"result": {...}}.
// Reads "go" lines on stdin when it asked for a server restart, and after
// every mark with BARRIER=1. Workloads A and B can be split over several
// processes: SHARD=i/n runs the clients whose index is i modulo n; latencies
// then use the wall clock and come out as a histogram that adds up across
// shards (the same as the Rust load generator's).
import { WebSocket } from 'ws'
import * as Y from 'yjs'
import fs from 'node:fs'
import crypto from 'node:crypto'
import readline from 'node:readline'
process.setMaxListeners(0) // y-websocket adds a process 'exit' listener per provider
globalThis.WebSocket ??= WebSocket // Node 20 has no global WebSocket
const { HocuspocusProvider, HocuspocusProviderWebsocket } = await import('@hocuspocus/provider')
const { WebsocketProvider } = await import('y-websocket')

const env = (k, d) => process.env[k] ?? d
const TARGET = env('TARGET', 'hocuspocus')
const URL = env('URL', 'ws://127.0.0.1:1234')
const WORKLOAD = env('WORKLOAD', 'A')
const num = (k, d) => Number(env(k, d))
const deadline = Date.now() + num('MAX_S', 600) * 1000 // hard bound on the whole run
setTimeout(() => { out({ error: 'MAX_S exceeded' }); process.exit(2) }, num('MAX_S', 600) * 1000).unref()

const out = o => process.stdout.write(JSON.stringify(o) + '\n')
const BARRIER = env('BARRIER', '0') === '1'
// Prints a phase mark; with BARRIER=1 (and always for "restart") waits for "go".
const mark = async name => {
  out({ mark: name, t: Date.now() })
  if (BARRIER || name === 'restart') await waitStdin('go')
}
const sleep = ms => new Promise(resolve => setTimeout(resolve, ms))
// Wall-clock milliseconds (sub-millisecond resolution): comparable between
// the shards' processes.
const now = () => performance.timeOrigin + performance.now()
const [SHARD, SHARDS] = env('SHARD', '0/1').split('/').map(Number)
// Latency histogram: bucket k holds [0.01 ms × 1.02^k, 0.01 ms × 1.02^(k+1)).
const latBucket = ms => Math.floor(Math.log(Math.max(ms, 0.01) / 0.01) / Math.log(1.02))

// Bytes on the wire, WebSocket frame headers included (server→client
// unmasked, client→server with the 4-byte mask).
const wire = { rx: 0, tx: 0 }
const hdr = n => 2 + (n >= 126 ? 2 : 0) + (n >= 65536 ? 6 : 0)
class CountingWebSocket extends WebSocket {
  constructor (...args) {
    super(...args)
    this.on('message', d => { const n = d.byteLength ?? d.length; wire.rx += n + hdr(n) })
  }

  send (data, ...rest) {
    const n = data.byteLength ?? data.length
    wire.tx += n + hdr(n) + 4
    return super.send(data, ...rest)
  }
}

let stdinLines = null
function waitStdin (word) {
  stdinLines ??= readline.createInterface({ input: process.stdin })[Symbol.asyncIterator]()
  return (async () => { for (;;) { const { value, done } = await stdinLines.next(); if (done || value.trim() === word) return } })()
}

// One client: a Y.Doc, a provider, an array "log" whose remote inserts carry
// their send time.
function mkClient (room, { onRemote, preload } = {}) {
  const doc = new Y.Doc()
  if (preload) Y.applyUpdate(doc, preload)
  const c = { doc, synced: false, syncCount: 0, socket: () => null }
  if (TARGET === 'hocuspocus') {
    const ws = new HocuspocusProviderWebsocket({ url: URL, WebSocketPolyfill: CountingWebSocket })
    c.p = new HocuspocusProvider({ websocketProvider: ws, name: room, document: doc, token: 'x' })
    c.p.attach()
    c.p.on('synced', () => { c.synced = true; c.syncCount++ })
    c.p.on('disconnect', () => { c.synced = false })
    c.socket = () => ws.webSocket
    c.destroy = () => { c.p.destroy(); ws.destroy() }
  } else {
    c.p = new WebsocketProvider(URL, room, doc, { WebSocketPolyfill: CountingWebSocket, disableBc: true })
    c.p.on('sync', s => { c.synced = s; if (s) c.syncCount++ })
    c.socket = () => c.p.ws
    c.destroy = () => c.p.destroy()
  }
  c.log = doc.getArray('log')
  if (onRemote) {
    c.log.observe(ev => {
      if (ev.transaction.local) return
      for (const d of ev.changes.delta) for (const it of d.insert ?? []) onRemote(it)
    })
  }
  return c
}

async function waitAll (clients, pred, maxMs) {
  const end = Math.min(deadline, Date.now() + maxMs)
  while (Date.now() < end) {
    if (clients.every(pred)) return true
    await sleep(20)
  }
  return clients.every(pred)
}

function quantiles (lat) {
  lat.sort((a, b) => a - b)
  const q = x => lat.length ? lat[Math.min(lat.length - 1, Math.floor(lat.length * x))] : null
  return { p50_ms: q(0.5), p99_ms: q(0.99), max_ms: q(1) }
}

// (A) and (B): ROOMS rooms × PER_ROOM clients, WRITERS of them writing every
// WRITE_MS. After the writers stop, deliveries drain until none came for
// QUIET_MS (or DRAIN_MAX_S passed); what is missing then is "undelivered".
async function live () {
  const ROOMS = num('ROOMS', 10); const PER_ROOM = num('PER_ROOM', 3); const WRITERS = num('WRITERS', 1)
  const WRITE_MS = num('WRITE_MS', 100); const DURATION_S = num('DURATION_S', 10); const RESTART = env('RESTART', '0') === '1'
  const QUIET_MS = num('QUIET_MS', 500); const DRAIN_MAX_S = num('DRAIN_MAX_S', 20)
  const lat = []; let sent = 0; let recv = 0; let measuring = false
  const clients = []
  for (let r = 0; r < ROOMS; r++) {
    for (let i = 0; i < PER_ROOM; i++) {
      if ((r * PER_ROOM + i) % SHARDS !== SHARD) continue
      const c = mkClient(`room-${r}`, { onRemote: it => { if (it.m) { recv++; lat.push(now() - it.ts) } } })
      c.writer = i < WRITERS
      clients.push(c)
    }
    if (r % 50 === 49) await sleep(10)
  }
  const allSynced = await waitAll(clients, c => c.synced, 60000)
  await sleep(500)
  await mark('steady_start')
  const rx0 = wire.rx; const tx0 = wire.tx; const t0 = now()
  measuring = true
  const writers = clients.filter(c => c.writer)
  // Writers are spread over the interval, one timer for all of them.
  let tick = 0; const slots = Math.max(1, Math.round(WRITE_MS / 10))
  const timer = setInterval(() => {
    const slot = tick++ % slots
    for (let i = slot; i < writers.length; i += slots) { writers[i].log.push([{ ts: now(), seq: sent, m: measuring }]); sent++ }
  }, WRITE_MS / slots)
  await sleep(DURATION_S * 1000)
  clearInterval(timer); measuring = false
  const tWrite = (now() - t0) / 1000
  await mark('write_end')
  const drainStart = now(); let last = recv; let lastChange = drainStart
  while (now() - lastChange < QUIET_MS && now() - drainStart < DRAIN_MAX_S * 1000 && Date.now() < deadline) {
    await sleep(20)
    if (recv !== last) { last = recv; lastChange = now() }
  }
  const drainS = (lastChange - drainStart) / 1000
  await mark('steady_end')
  const rx = wire.rx - rx0; const tx = wire.tx - tx0
  const expected = sent * (PER_ROOM - 1)
  const hist = {}
  for (const l of lat) { const k = latBucket(l); hist[k] = (hist[k] ?? 0) + 1 }
  const res = { clients: clients.length, all_synced: allSynced, sent, delivered: recv, expected, undelivered: expected - recv,
    write_s: tWrite, drain_ms: drainS * 1000, delivered_per_s: recv / (tWrite + drainS), shard: SHARD, shards: SHARDS, lat_hist: hist,
    ...quantiles(lat), rx_bytes: rx, tx_bytes: tx, rx_bytes_per_delivered: recv ? rx / recv : null, tx_bytes_per_sent: sent ? tx / sent : null }
  if (RESTART) {
    await mark('restart') // the orchestrator kills the server, starts it again on the same port, writes "go"
    const t1 = now()
    const before = clients.map(c => c.syncCount)
    const ok = await waitAll(clients.map((c, i) => [c, before[i]]), ([c, b]) => c.synced && c.syncCount > b, num('RESYNC_MAX_S', 60) * 1000)
    res.resync_ms = ok ? now() - t1 : null
    res.resynced = clients.filter((c, i) => c.synced && c.syncCount > before[i]).length
  }
  for (const c of clients) c.destroy()
  return res
}

// (C): CONNS idle connections over DOCS documents; marks c0 (none), c1 (one per doc), c2 (all).
async function idle () {
  const CONNS = num('CONNS', 500); const DOCS = num('DOCS', 100); const BATCH = num('BATCH', 100)
  await sleep(1000); await mark('c0')
  const clients = []
  const connect = async (from, to) => {
    for (let i = from; i < to; i += BATCH) {
      const group = []
      for (let j = i; j < Math.min(to, i + BATCH); j++) group.push(mkClient(`doc-${j % DOCS}`))
      clients.push(...group)
      await waitAll(group, c => c.synced, 30000)
    }
  }
  await connect(0, DOCS); await sleep(num('SETTLE_MS', 3000)); await mark('c1')
  await connect(DOCS, CONNS); await sleep(num('SETTLE_MS', 3000)); await mark('c2')
  const synced = clients.filter(c => c.synced).length
  await sleep(num('HOLD_MS', 2000)); await mark('c3')
  for (const c of clients) c.destroy()
  return { conns: CONNS, docs: DOCS, synced }
}

// (D): a seeder uploads DOC_FILE (a Yjs update), then JOINERS join at once.
async function bigsync () {
  const update = new Uint8Array(fs.readFileSync(env('DOC_FILE')))
  const JOINERS = num('JOINERS', 10)
  const probeDoc = new Y.Doc(); Y.applyUpdate(probeDoc, update)
  const want = probeDoc.getText('text').length
  const seeder = mkClient('big', { preload: update })
  await waitAll([seeder], c => c.synced, 120000)
  // The server has it all once a fresh client sees the whole text.
  let seeded = false
  for (let i = 0; i < 60 && !seeded; i++) {
    const probe = mkClient('big')
    seeded = await waitAll([probe], c => c.synced && c.doc.getText('text').length === want, 10000)
    probe.destroy()
  }
  await sleep(1000)
  await mark('join_start')
  const t0 = now(); const times = []
  const joiners = []
  for (let i = 0; i < JOINERS; i++) {
    const c = mkClient('big'); joiners.push(c)
    c.doc.getText('text').observe(() => { if (c.doc.getText('text').length === want && c.t === undefined) { c.t = now() - t0; times.push(c.t) } })
  }
  const ok = await waitAll(joiners, c => c.t !== undefined && c.synced, num('JOIN_MAX_S', 120) * 1000)
  const total = now() - t0
  await mark('join_end')
  times.sort((a, b) => a - b)
  for (const c of [seeder, ...joiners]) c.destroy()
  return { doc_bytes: update.length, text_len: want, seeded, joiners: JOINERS, all_joined: ok, joined: times.length,
    all_joined_ms: ok ? total : null, join_p50_ms: times[Math.floor(times.length / 2)] ?? null, join_max_ms: times[times.length - 1] ?? null }
}

// (E): a writer overwrites one map entry with an UPDATE_BYTES value at
// RATE_HZ (the document stays small: Yjs collects the overwritten values, so
// server memory growth is queueing, not document growth); a reader stops
// reading its socket for PAUSE_S, then resumes. Caught up = the reader holds
// the writer's last value.
async function slowReader () {
  const UPDATE_BYTES = num('UPDATE_BYTES', 10000); const RATE_HZ = num('RATE_HZ', 200)
  const DURATION_S = num('DURATION_S', 20); const PAUSE_AT_S = num('PAUSE_AT_S', 2); const PAUSE_S = num('PAUSE_S', 10)
  let got = 0; let last = -1
  const writer = mkClient('slow')
  const reader = mkClient('slow')
  reader.doc.getMap('slow').observe(ev => { if (ev.transaction.local) return; got++; last = reader.doc.getMap('slow').get('v')?.seq ?? last })
  await waitAll([writer, reader], c => c.synced, 30000)
  await mark('e_start')
  // Fresh random base64 text each time, as ours (incompressible to ~75 %).
  const payload = () => crypto.randomBytes(Math.ceil(UPDATE_BYTES * 3 / 4)).toString('base64').slice(0, UPDATE_BYTES)
  const wmap = writer.doc.getMap('slow')
  let sent = 0
  const t0 = now()
  const timer = setInterval(() => { wmap.set('v', { ts: now(), seq: sent++, pad: payload() }) }, 1000 / RATE_HZ)
  await sleep(PAUSE_AT_S * 1000)
  const sock = reader.socket()
  sock?._socket?.pause(); await mark('pause')
  await sleep(PAUSE_S * 1000)
  sock?._socket?.resume(); await mark('resume')
  const tResume = now()
  await sleep(Math.max(0, DURATION_S * 1000 - (now() - t0)))
  clearInterval(timer)
  const caught = await waitAll([reader], () => last === sent - 1, 30000)
  const catchUp = now() - tResume
  await mark('e_end')
  writer.destroy(); reader.destroy()
  return { sent, reader_events: got, caught_up: caught, catch_up_ms_after_resume: caught ? catchUp : null,
    reader_reconnected: reader.syncCount > 1, update_bytes: UPDATE_BYTES, rate_hz: RATE_HZ, pause_s: PAUSE_S }
}

const run = { A: live, B: live, C: idle, D: bigsync, E: slowReader }[WORKLOAD]
const result = await run()
out({ result: { target: TARGET, workload: WORKLOAD, ...result } })
setTimeout(() => process.exit(0), 300)
