// The demo page: a textarea bound to a Y.Text, synced by SyncProvider, with
// remote carets and names from presence. `window.demo` is for the tests.
import * as Y from 'yjs'
import { SyncProvider } from '/web/src/provider.js'

const params = new URLSearchParams(location.search)
const docName = params.get('doc') || 'demo'
const wsUrl = params.get('ws') || `${location.protocol === 'https:' ? 'wss' : 'ws'}://${location.host}/`
const colors = ['#e6194b', '#3cb44b', '#4363d8', '#f58231', '#911eb4', '#008080', '#9a6324']

const doc = new Y.Doc()
const ytext = doc.getText('text')
const provider = new SyncProvider({ url: wsUrl, name: docName, doc, minDelay: 100, maxDelay: 2000 })

const $ = (id) => document.getElementById(id)
const area = $('text')
const nameInput = $('name')
$('docname').textContent = docName
$('url').textContent = wsUrl
nameInput.value = params.get('name') || `guest-${doc.clientID % 1000}`
let hash = 0
for (const c of nameInput.value) hash = (hash * 31 + c.charCodeAt(0)) >>> 0
const me = { name: nameInput.value, color: colors[hash % colors.length] }

// ---- textarea <-> Y.Text ----
const LOCAL = 'textarea'
area.value = ytext.toString()
area.addEventListener('input', () => {
  const before = ytext.toString()
  const after = area.value
  let start = 0
  while (start < before.length && start < after.length && before[start] === after[start]) start++
  let end = 0
  while (end < before.length - start && end < after.length - start &&
         before[before.length - 1 - end] === after[after.length - 1 - end]) end++
  doc.transact(() => {
    if (before.length - start - end > 0) ytext.delete(start, before.length - start - end)
    if (after.length - start - end > 0) ytext.insert(start, after.slice(start, after.length - end))
  }, LOCAL)
  publishCursor()
})
ytext.observe((event, txn) => {
  if (txn.origin === LOCAL) return
  // Keep the local selection where it was in the text (shifted by the
  // remote change's delta), not at its old offset.
  let a = area.selectionStart
  let h = area.selectionEnd
  let index = 0
  for (const op of event.delta) {
    if (op.retain !== undefined) index += op.retain
    else if (op.insert !== undefined) {
      const n = op.insert.length
      if (index < a) a += n
      if (index < h) h += n
      index += n
    } else if (op.delete !== undefined) {
      if (index < a) a -= Math.min(op.delete, a - index)
      if (index < h) h -= Math.min(op.delete, h - index)
    }
  }
  area.value = ytext.toString()
  if (document.activeElement === area) area.setSelectionRange(a, h)
  renderCarets()
})
document.addEventListener('selectionchange', () => { if (document.activeElement === area) publishCursor() })
area.addEventListener('keyup', publishCursor)
area.addEventListener('click', publishCursor)
area.addEventListener('scroll', () => { $('carets').scrollTop = area.scrollTop })

// ---- presence: name, color, cursor (relative positions survive edits) ----
let lastCursor = ''
function publishCursor () {
  const cursor = Y.relativePositionToJSON(Y.createRelativePositionFromTypeIndex(ytext, area.selectionStart))
  const key = JSON.stringify(cursor)
  if (key === lastCursor) return
  lastCursor = key
  provider.presence.setLocalState({ user: me, cursor })
}
nameInput.addEventListener('input', () => {
  me.name = nameInput.value
  provider.presence.setLocalState({ user: me, cursor: provider.presence.getLocalState()?.cursor ?? null })
})
provider.presence.setLocalState({ user: me, cursor: null })
provider.presence.on('change', renderCarets)

function escape (s) {
  return s.replace(/[&<>"]/g, c => ({ '&': '&amp;', '<': '&lt;', '>': '&gt;', '"': '&quot;' })[c])
}

function renderCarets () {
  const text = ytext.toString()
  const marks = []
  const peers = []
  for (const [, { state }] of provider.presence.getStates()) {
    if (!state?.user) continue
    peers.push(`<span style="background:${escape(state.user.color)}">${escape(String(state.user.name))}</span>`)
    if (!state.cursor) continue
    const pos = Y.createAbsolutePositionFromRelativePosition(Y.createRelativePositionFromJSON(state.cursor), doc)
    if (pos) marks.push({ index: pos.index, user: state.user })
  }
  marks.sort((x, y) => x.index - y.index)
  let html = ''
  let at = 0
  for (const m of marks) {
    html += escape(text.slice(at, m.index))
    html += `<span class="caret" style="border-color:${escape(m.user.color)}"><b style="background:${escape(m.user.color)}">${escape(String(m.user.name))}</b></span>`
    at = m.index
  }
  $('carets').innerHTML = html + escape(text.slice(at)) + '\n'
  $('carets').scrollTop = area.scrollTop
  $('peers').innerHTML = peers.join('')
}

// ---- status and unacknowledged edits ----
provider.on('status', ({ status }) => {
  $('status').textContent = status
  $('status').className = status
})
provider.on('unacknowledged', (n) => { $('unacked').textContent = String(n) })

window.demo = { Y, doc, ytext, provider, area }
provider.whenSynced().then(() => { window.demo.syncedAt = performance.now() })
