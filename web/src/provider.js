// SyncProvider: keeps a Yjs Y.Doc in sync with a crdt-socket-sync server.
//
// The protocol runs in the crate's client core compiled to WebAssembly
// (`WasmClient`, ../pkg). This file only does I/O for it: one WebSocket, one
// timer, the Y.Doc's update events. After every call into the core it drains
// the core's outputs (messages for the socket, then events) and re-arms the
// timer, as the crate's driving contract says.

import * as Y from 'yjs'
import init, { WasmClient } from '../pkg/crdt_socket_sync.js'

let ready = null

/**
 * Loads the WebAssembly module (once). `SyncProvider` calls it itself;
 * call it earlier to start the download sooner, or to pass where the
 * `.wasm` file lives when it is not beside `pkg/crdt_socket_sync.js`.
 */
export function initWasm (wasmUrl) {
  if (ready === null) {
    ready = init(wasmUrl === undefined ? undefined : { module_or_path: wasmUrl })
  }
  return ready
}

const encoder = new TextEncoder()
const decoder = new TextDecoder()

function pendingSize (store) {
  return (store.pendingStructs ? store.pendingStructs.update.length : 0) +
    (store.pendingDs ? store.pendingDs.length : 0)
}

/**
 * The core's view of a Y.Doc. Remote updates are applied with `origin`, and
 * only updates with another origin are recorded as local, so nothing the
 * server sent is echoed back.
 */
function docBridge (doc, origin, onLocal) {
  const local = []
  const onUpdate = (update, o) => {
    if (o !== origin) {
      local.push(update)
      onLocal()
    }
  }
  doc.on('update', onUpdate)
  return {
    stateVector: () => Y.encodeStateVector(doc),
    diff: (sv) => Y.encodeStateAsUpdate(doc, sv),
    // 0 applied, 1 held for missing dependencies, 2 nothing new.
    apply: (update) => {
      const before = pendingSize(doc.store)
      let changed = false
      const mark = (_, o) => { if (o === origin) changed = true }
      doc.on('update', mark)
      try {
        Y.applyUpdate(doc, update, origin)
      } finally {
        doc.off('update', mark)
      }
      const after = pendingSize(doc.store)
      if (after > 0 && after !== before) return 1
      return changed ? 0 : 2
    },
    takeLocal: () => {
      if (local.length === 0) return undefined
      const update = local.length === 1 ? local[0] : Y.mergeUpdates(local)
      local.length = 0
      return update
    },
    destroy: () => doc.off('update', onUpdate)
  }
}

/** A tiny event emitter (`on`, `off`, `once`). */
class Emitter {
  constructor () { this._handlers = new Map() }
  on (name, fn) {
    if (!this._handlers.has(name)) this._handlers.set(name, new Set())
    this._handlers.get(name).add(fn)
    return this
  }

  off (name, fn) {
    this._handlers.get(name)?.delete(fn)
    return this
  }

  once (name, fn) {
    const wrapped = (...args) => { this.off(name, wrapped); fn(...args) }
    return this.on(name, wrapped)
  }

  emit (name, ...args) {
    for (const fn of [...(this._handlers.get(name) ?? [])]) fn(...args)
  }
}

/**
 * Presence in the provider's document, shaped like y-protocols' Awareness:
 * a local JSON state that reaches the other pages (throttled, renewed,
 * re-published after reconnects, never stored) and theirs.
 */
export class Presence extends Emitter {
  constructor (provider) {
    super()
    this._provider = provider
    this._local = null
    this._remote = new Map()
  }

  /** This page's state (`null`: none). */
  getLocalState () { return this._local }

  /** Sets this page's state (a JSON value; `null` clears it). */
  setLocalState (state) {
    this._local = state
    const bytes = state === null ? undefined : encoder.encode(JSON.stringify(state))
    this._provider._call(c => c.setPresence(bytes))
    this.emit('change', { updated: ['local'] })
  }

  /** Sets one field of this page's state. */
  setLocalStateField (field, value) {
    this.setLocalState({ ...(this._local ?? {}), [field]: value })
  }

  /**
   * Everyone else's states: a Map from session id to `{ identity, state }`
   * (`identity`: what the server authenticated; `state`: their JSON).
   */
  getStates () { return new Map(this._remote) }

  _changed (event) {
    if (event.state === null) {
      this._remote.delete(event.session)
    } else {
      let state = null
      try { state = JSON.parse(decoder.decode(event.state)) } catch { state = null }
      this._remote.set(event.session, { identity: event.identity, state })
    }
    this.emit('change', { updated: [event.session] })
  }

  _clear () {
    if (this._remote.size === 0) return
    const updated = [...this._remote.keys()]
    this._remote.clear()
    this.emit('change', { updated })
  }
}

function randomSeed () {
  const seed = new Uint8Array(8)
  globalThis.crypto.getRandomValues(seed)
  return seed
}

/**
 * Keeps `doc` (a Y.Doc) in sync with document `name` on the server at `url`.
 *
 * Events (`provider.on(name, fn)`): `status` ({ status }: 'connecting',
 * 'connected' or 'offline'), `synced` (true / false), `unacknowledged`
 * (number), `message` ({ kind, from, data }), `error` ({ code, message }),
 * `connection-closed` ({ reason }).
 */
export class SyncProvider extends Emitter {
  /**
   * @param {object} options
   * @param {string} options.url        ws:// or wss:// URL of the endpoint
   * @param {string} options.name       document name
   * @param {Y.Doc}  options.doc        the document to sync
   * @param {string|Uint8Array} [options.token]  credentials for the server
   * @param {string} [options.peer]     informational peer id
   * @param {boolean} [options.connect] connect now (default true)
   * @param {number} [options.minDelay] reconnect backoff bounds, ms (100)
   * @param {number} [options.maxDelay] (10000); jitter from crypto.getRandomValues
   * @param {string|URL} [options.wasmUrl] where the .wasm file is
   */
  constructor ({ url, name, doc, token = '', peer = '', connect = true, minDelay = 100, maxDelay = 10000, wasmUrl } = {}) {
    super()
    this.url = url
    this.name = name
    this.doc = doc
    this.status = 'offline'
    this.synced = false
    this.unacknowledged = 0
    this.presence = new Presence(this)
    this._token = typeof token === 'string' ? encoder.encode(token) : token
    this._peer = peer || `yjs-${doc.clientID}`
    this._delays = [minDelay, maxDelay]
    this._origin = Symbol('crdt-socket-sync remote update')
    this._client = null
    this._ws = null
    this._timer = null
    this._flushQueued = false
    this._pumping = false
    this._again = false
    this._destroyed = false
    this._wantConnect = connect
    this._lastSeq = 0
    this._applied = 0
    this._durable = 0
    this._waiters = []
    this._bridge = docBridge(doc, this._origin, () => this._queueFlush())
    this.ready = initWasm(wasmUrl).then(() => {
      if (this._destroyed) return
      this._client = new WasmClient(name, this._bridge, this._peer, this._token,
        randomSeed(), minDelay, maxDelay)
      this._queueFlush()
      if (this._wantConnect) this._dial()
    })
  }

  /** Whether the server stores acknowledged edits durably (after a handshake). */
  get serverDurable () { return this._client?.serverDurable }

  /** The server's session id for this page's current connection. */
  get sessionId () { return this._client?.sessionId }

  /** Resolves when the document is in sync with the server. */
  whenSynced () {
    if (this.synced) return Promise.resolve()
    return new Promise(resolve => this.once('synced', resolve))
  }

  /** Resolves when the server has applied every edit made so far. */
  acknowledged () { return this._wait('applied') }

  /**
   * Resolves when every edit made so far is durable on the server (stored;
   * a server without durable storage never acknowledges that).
   */
  durable () { return this._wait('durable') }

  /**
   * Sends an application message (`kind`: a number; `data`: bytes) to the
   * document's other pages, or to one session (`to`: a session id).
   * Throws when offline.
   */
  sendMessage (kind, data, to) {
    this._call(c => c.sendApp(kind, data, to))
  }

  /** Connects (again, after `disconnect()`). */
  connect () {
    this._wantConnect = true
    if (this._client && !this._ws) this._dial()
  }

  /** Closes the connection and stops reconnecting; edits keep queueing. */
  disconnect () {
    this._wantConnect = false
    this._call(c => c.disconnect())
    this._closeSocket()
    this._setStatus('offline')
  }

  /** Closes for good and stops listening to the document. */
  destroy () {
    if (this._destroyed) return
    this._destroyed = true
    this._call(c => c.close())
    this._closeSocket()
    clearTimeout(this._timer)
    this._bridge.destroy()
    this._client?.free()
    this._client = null
    this._setStatus('offline')
  }

  // ---- driving the core ----

  _wait (kind) {
    return this.ready.then(() => {
      const seq = this._lastSeq
      const done = () => (kind === 'applied' ? this._applied : this._durable) >= seq
      if (done()) return
      return new Promise(resolve => this._waiters.push({ done, resolve }))
    })
  }

  _queueFlush () {
    if (this._flushQueued || this._client === null) return
    this._flushQueued = true
    queueMicrotask(() => {
      this._flushQueued = false
      try {
        this._call(c => {
          const seq = c.flushLocal()
          if (seq !== undefined) this._lastSeq = seq
        })
      } catch (err) {
        // Read-only document or backpressure: the edit stays in the Y.Doc
        // (the initial sync after the next reconnect sends what the server
        // lacks), but this update left the outbox.
        this.emit('error', { code: 'Local', message: String(err?.message ?? err) })
      }
    })
  }

  /** Runs `f` on the core, then drains its outputs. */
  _call (f) {
    if (this._client === null) return
    try {
      f(this._client)
    } finally {
      this._pump()
    }
  }

  _pump () {
    if (this._pumping) { this._again = true; return }
    this._pumping = true
    try {
      do {
        this._again = false
        const c = this._client
        if (c === null) return
        let out
        while ((out = c.pollTransmit()) !== undefined) {
          if (this._ws !== null && this._ws.readyState === WebSocket.OPEN) this._ws.send(out)
        }
        let event
        while ((event = c.pollEvent()) !== undefined) this._onEvent(event)
        if (this._client === null) return
        clearTimeout(this._timer)
        const ms = c.pollTimeout()
        if (ms !== undefined) {
          this._timer = setTimeout(() => this._call(c => c.handleTimeout()), Math.min(Math.ceil(ms), 0x7fffffff))
        }
        const unacked = c.unacknowledged
        if (unacked !== this.unacknowledged) {
          this.unacknowledged = unacked
          this.emit('unacknowledged', unacked)
        }
      } while (this._again)
    } finally {
      this._pumping = false
    }
  }

  _onEvent (e) {
    switch (e.type) {
      case 'status':
        if (e.status === 'connected') this._setStatus('connected')
        else if (e.status === 'connecting') this._setStatus('connecting')
        else this._setStatus('offline')
        if (e.status !== 'connected') this._setSynced(false)
        break
      case 'synced':
        this._setSynced(true)
        break
      case 'ack':
        this._applied = e.applied
        this._durable = e.durable
        this._waiters = this._waiters.filter(w => {
          if (w.done()) { w.resolve(); return false }
          return true
        })
        break
      case 'closed':
        this._closeSocket()
        this.presence._clear()
        this.emit('connection-closed', { reason: e.reason })
        break
      case 'dial':
        if (this._wantConnect) this._dial()
        break
      case 'presence':
        this.presence._changed(e)
        break
      case 'app':
        this.emit('message', { kind: e.kind, from: e.from, data: e.data })
        break
      case 'error':
        this.emit('error', { code: e.code, message: e.message })
        break
      default:
        break
    }
  }

  _setStatus (status) {
    if (status === this.status) return
    this.status = status
    this.emit('status', { status })
  }

  _setSynced (synced) {
    if (synced === this.synced) return
    this.synced = synced
    this.emit('synced', synced)
  }

  _dial () {
    if (this._destroyed || this._ws !== null) return
    this._setStatus('connecting')
    let ws
    try {
      ws = new WebSocket(this.url)
    } catch (err) {
      this._call(c => c.dialFailed())
      return
    }
    ws.binaryType = 'arraybuffer'
    let opened = false
    ws.onopen = () => {
      opened = true
      this._call(c => c.connect())
    }
    ws.onmessage = (m) => {
      if (m.data instanceof ArrayBuffer) this._call(c => c.handleInput(new Uint8Array(m.data)))
    }
    ws.onclose = () => {
      if (this._ws !== ws) return
      this._ws = null
      this.presence._clear()
      this._call(c => (opened ? c.transportLost() : c.dialFailed()))
    }
    this._ws = ws
  }

  _closeSocket () {
    const ws = this._ws
    if (ws === null) return
    this._ws = null
    ws.onopen = ws.onmessage = ws.onclose = null
    ws.onerror = null
    try { ws.close() } catch { }
  }
}
