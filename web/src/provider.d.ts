// Type declarations for provider.js.
import type * as Y from 'yjs'

/** Loads the WebAssembly module once (optional: SyncProvider calls it). */
export function initWasm (wasmUrl?: string | URL): Promise<unknown>

export type Status = 'connecting' | 'connected' | 'offline'

export interface SyncProviderOptions {
  /** ws:// or wss:// URL of the server's sync endpoint. */
  url: string
  /** Document name on the server. */
  name: string
  /** The document to keep in sync. */
  doc: Y.Doc
  /** Credentials for the server's authorizer. */
  token?: string | Uint8Array
  /** Informational peer id (default `yjs-<clientID>`). */
  peer?: string
  /** Connect at once (default true). */
  connect?: boolean
  /** Shortest reconnect delay in ms (default 100). */
  minDelay?: number
  /** Longest reconnect delay in ms (default 10000). */
  maxDelay?: number
  /** Where the .wasm file is, when not beside pkg/crdt_socket_sync.js. */
  wasmUrl?: string | URL
}

export interface PeerState<T = any> {
  /** The identity the server authenticated for that session. */
  identity: string
  /** Its JSON state (null when it could not be parsed). */
  state: T | null
}

/** Awareness-like presence: JSON states, never stored by the server. */
export class Presence<T = any> {
  getLocalState (): T | null
  setLocalState (state: T | null): void
  setLocalStateField (field: string, value: unknown): void
  /** Everyone else's states, by session id. */
  getStates (): Map<string, PeerState<T>>
  on (event: 'change', fn: (e: { updated: string[] }) => void): this
  off (event: 'change', fn: (e: { updated: string[] }) => void): this
}

export interface AppMessage {
  kind: number
  /** Sender's session id (null: the server). */
  from: string | null
  data: Uint8Array
}

export class SyncProvider {
  constructor (options: SyncProviderOptions)
  readonly url: string
  readonly name: string
  readonly doc: Y.Doc
  /** Connection status. */
  readonly status: Status
  /** In sync with the server (false while offline). */
  readonly synced: boolean
  /** Local updates the server has not acknowledged yet. */
  readonly unacknowledged: number
  readonly presence: Presence
  /** Resolves once the WebAssembly module is loaded and the client created. */
  readonly ready: Promise<void>
  /** Whether the server stores acknowledged edits durably (after a handshake). */
  readonly serverDurable: boolean | undefined
  /** The server's session id for the current connection. */
  readonly sessionId: string | undefined
  whenSynced (): Promise<void>
  /** Resolves when the server has applied every edit made so far. */
  acknowledged (): Promise<void>
  /** Resolves when every edit made so far is durable on the server. */
  durable (): Promise<void>
  /** Application message to the document's other pages, or one session. */
  sendMessage (kind: number, data: Uint8Array, to?: string): void
  connect (): void
  disconnect (): void
  destroy (): void
  on (event: 'status', fn: (e: { status: Status }) => void): this
  on (event: 'synced', fn: (synced: boolean) => void): this
  on (event: 'unacknowledged', fn: (n: number) => void): this
  on (event: 'message', fn: (m: AppMessage) => void): this
  on (event: 'error', fn: (e: { code: string, message: string }) => void): this
  on (event: 'connection-closed', fn: (e: { reason: string }) => void): this
  off (event: string, fn: (...args: any[]) => void): this
  once (event: string, fn: (...args: any[]) => void): this
}
