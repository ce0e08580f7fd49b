// The browser end to end: the demo server (examples/server.rs --web,
// SQLite, feature axum) on 127.0.0.1, Debian's chromium driven by playwright-core,
// headless. Needs `bash web/build.sh` first (web/pkg, web/node_modules).
//
//   node web/test/e2e.mjs            # the scenarios below, then the numbers
//
// Scenarios: two pages type concurrently; one goes offline (its browser
// context loses the network), keeps typing and comes back; a page reloads
// mid-way and loses nothing acknowledged; presence shows both names; an
// application message goes from one page to the other; the
// server is killed (SIGKILL) and restarted on the same SQLite file. After
// each, both pages and a fresh page (what the server holds) have the same
// text. Then it measures: wasm size gzipped, page load -> synced for the
// automerge-paper document, keystroke latency page -> page (p50/p99), and
// takes the README's screenshot (E2E_SCREENSHOT=1 writes web/screenshot.png).
//
// Everything is bounded in time (each wait has a deadline; the whole run a
// watchdog). Only loopback is used.

import { spawn, execFileSync } from 'node:child_process'
import { readFileSync, mkdirSync, rmSync, writeFileSync, existsSync } from 'node:fs'
import { gunzipSync, gzipSync } from 'node:zlib'
import { dirname, join } from 'node:path'
import { fileURLToPath } from 'node:url'
import * as Y from 'yjs'
import { chromium } from 'playwright-core'

const web = join(dirname(fileURLToPath(import.meta.url)), '..')
const root = join(web, '..')
const target = process.env.CARGO_TARGET_DIR || join(root, 'target')
const features = 'tokio,yrs,loro,automerge,sqlite,axum'
const chromiumPath = process.env.CHROMIUM || '/usr/bin/chromium'
const results = {}

function check (cond, what) {
  if (!cond) throw new Error(`check failed: ${what}`)
  console.log(`  ok: ${what}`)
}

// ---- the server process ----

// E2E_RELEASE=1: an optimised server (for the README's numbers).
const release = process.env.E2E_RELEASE === '1'
execFileSync('cargo', ['build', '--quiet', '--example', 'server', '--features', features,
  ...(release ? ['--release'] : [])], { cwd: root, stdio: 'inherit' })
const serverBin = join(target, release ? 'release' : 'debug', 'examples', 'server')
const dataDir = join(target, `web-e2e-${process.pid}`)

// Started after the build (which blocks the event loop).
const watchdog = setTimeout(() => {
  console.error('e2e: watchdog: the run took over 4 minutes')
  process.exit(2)
}, 240_000)
mkdirSync(dataDir, { recursive: true })

let server = null
async function startServer (addr = '127.0.0.1:0') {
  const child = spawn(serverBin, ['--web', '--addr', addr, '--data-dir', dataDir], {
    cwd: root, stdio: ['ignore', 'pipe', 'inherit'], env: { ...process.env, RUST_LOG: 'warn' }
  })
  const url = await new Promise((resolve, reject) => {
    let out = ''
    const timer = setTimeout(() => reject(new Error('server did not start in 30 s')), 30_000)
    child.stdout.on('data', (d) => {
      out += d
      const m = out.match(/demo page: (http:\/\/[^\s]+)/)
      if (m) { clearTimeout(timer); resolve(m[1]) }
    })
    child.on('exit', (code) => reject(new Error(`server exited (${code}): ${out}`)))
  })
  child.stdout.resume()
  server = child
  return url
}
function killServer () {
  return new Promise((resolve) => {
    server.once('exit', resolve)
    server.kill('SIGKILL')
  })
}

// ---- pages ----

async function until (page, fn, arg, what, ms = 20_000) {
  try {
    await page.waitForFunction(fn, arg, { timeout: ms, polling: 20 })
  } catch (e) {
    throw new Error(`timed out (${ms} ms) waiting for: ${what}`)
  }
}

async function openPage (context, base, doc, name) {
  const page = await context.newPage()
  page.on('pageerror', (e) => console.error(`[${name}] page error:`, e))
  await page.goto(`${base}?doc=${doc}&name=${name}`)
  await until(page, () => window.demo?.provider.synced, null, `${name} synced`)
  return page
}

const text = (page) => page.evaluate(() => window.demo.ytext.toString())

/** Both pages and a fresh page (the server's copy) hold the same text. */
async function converged (pages, context, base, doc, what) {
  for (const p of pages) {
    await until(p, () => window.demo.provider.synced && window.demo.provider.unacknowledged === 0,
      null, `${what}: all acknowledged`)
  }
  const want = await text(pages[0])
  for (const p of pages.slice(1)) {
    await until(p, (w) => window.demo.ytext.toString() === w, want, `${what}: pages equal`)
  }
  const fresh = await openPage(context, base, doc, 'fresh')
  check(await text(fresh) === want, `${what}: pages and server hold the same ${want.length} chars`)
  await fresh.close()
  return want
}

async function typeInto (page, s) {
  await page.click('#text')
  await page.keyboard.press('End')
  await page.keyboard.type(s, { delay: 5 })
}

const browser = await chromium.launch({
  executablePath: chromiumPath,
  headless: true,
  args: ['--no-sandbox', '--disable-gpu']
})
try {
  let base = await startServer()
  const port = new URL(base).port
  console.log(`server at ${base}`)
  const ctxA = await browser.newContext({ viewport: { width: 620, height: 480 } })
  const ctxB = await browser.newContext({ viewport: { width: 620, height: 480 } })
  const ctxC = await browser.newContext()

  console.log('two pages type concurrently')
  let a = await openPage(ctxA, base, 'notes', 'alice')
  const b = await openPage(ctxB, base, 'notes', 'bob')
  await Promise.all([typeInto(a, 'Alice writes here. '), typeInto(b, 'Bob types too. ')])
  let t = await converged([a, b], ctxC, base, 'notes', 'concurrent typing')
  check(t.includes('Alice writes here. ') && t.includes('Bob types too. '), 'both texts kept')

  console.log('presence shows both names')
  await until(a, () => document.getElementById('peers').textContent.includes('bob'), null, 'alice sees bob')
  await until(b, () => document.getElementById('peers').textContent.includes('alice'), null, 'bob sees alice')
  check(true, 'each page lists the other name')

  console.log('application messages')
  await b.evaluate(() => {
    window.messages = []
    window.demo.provider.on('message', (m) => window.messages.push({ kind: m.kind, text: new TextDecoder().decode(m.data) }))
  })
  await a.evaluate(() => window.demo.provider.sendMessage(7, new TextEncoder().encode('hi bob')))
  await until(b, () => window.messages.length > 0, null, 'bob gets the message')
  const msg = await b.evaluate(() => window.messages[0])
  check(msg.kind === 7 && msg.text === 'hi bob', 'an application message reaches the other page')

  console.log('one page goes offline, keeps typing, comes back')
  await ctxB.setOffline(true)
  await until(b, () => window.demo.provider.status === 'offline', null, 'bob offline', 15_000)
  await typeInto(b, 'Offline edit by Bob. ')
  await typeInto(a, 'Online edit by Alice. ')
  const pending = await b.evaluate(() => window.demo.provider.unacknowledged)
  check(pending > 0, `bob's page holds ${pending} unacknowledged edits offline`)
  check(await b.evaluate(() => document.getElementById('unacked').textContent) === String(pending),
    'the page shows the unacknowledged count')
  await ctxB.setOffline(false)
  t = await converged([a, b], ctxC, base, 'notes', 'after reconnecting')
  check(t.includes('Offline edit by Bob. ') && t.includes('Online edit by Alice. '), 'offline and online edits kept')

  console.log('a page reloads mid-way and loses nothing acknowledged')
  await typeInto(a, 'Before reload. ')
  await a.evaluate(() => window.demo.provider.acknowledged())
  const acked = await text(a)
  await a.reload()
  await until(a, () => window.demo?.provider.synced, null, 'alice synced after reload')
  check((await text(a)).includes(acked) || (await text(a)) === acked, 'the reloaded page holds everything acknowledged')
  await typeInto(a, 'After reload. ')
  await converged([a, b], ctxC, base, 'notes', 'after the reload')

  console.log('the server is killed and restarted on the same SQLite file')
  await typeInto(b, 'Durable line. ')
  await b.evaluate(() => window.demo.provider.durable())
  const durable = await text(b)
  await killServer()
  await until(a, () => window.demo.provider.status !== 'connected', null, 'alice notices', 15_000)
  await typeInto(a, 'Typed while the server was down. ')
  base = await startServer(`127.0.0.1:${port}`)
  t = await converged([a, b], ctxC, base, 'notes', 'after the restart')
  check(t.startsWith(durable.slice(0, 10)) && t.includes('Durable line. '), 'durable text survived the crash')
  check(t.includes('Typed while the server was down. '), 'the edit made while it was down arrived')

  console.log('measurements')
  const wasm = readFileSync(join(web, 'pkg', 'crdt_socket_sync_bg.wasm'))
  results.wasmBytes = wasm.length
  results.wasmGzip = gzipSync(wasm, { level: 9 }).length

  // Keystroke latency page -> page: alice inserts one character at a time
  // (every 20 ms); bob's page stamps its arrival. Both pages run in one
  // browser, so performance.timeOrigin + now() is one clock.
  await b.evaluate(() => {
    window.arrivals = []
    window.demo.ytext.observe((e) => {
      for (const op of e.delta) {
        if (op.insert && op.insert.startsWith('§')) window.arrivals.push(performance.timeOrigin + performance.now())
      }
    })
  })
  const sent = await a.evaluate(async () => {
    const out = []
    for (let i = 0; i < 300; i++) {
      out.push(performance.timeOrigin + performance.now())
      window.demo.ytext.insert(window.demo.ytext.length, '§')
      await new Promise(resolve => setTimeout(resolve, 20))
    }
    return out
  })
  await until(b, (n) => window.arrivals.length >= n, sent.length, 'all keystrokes arrived')
  const arrivals = await b.evaluate(() => window.arrivals)
  const lat = sent.map((s, i) => arrivals[i] - s).sort((x, y) => x - y)
  results.keystrokeP50 = lat[Math.floor(lat.length * 0.5)]
  results.keystrokeP99 = lat[Math.floor(lat.length * 0.99)]

  // Page load -> synced for the automerge-paper document: the trace is
  // replayed into a Y.Doc here, uploaded by one page, then fresh pages load.
  const trace = JSON.parse(gunzipSync(readFileSync(join(root, 'traces', 'automerge-paper.json.gz'))))
  const paper = new Y.Doc()
  const ptext = paper.getText('text')
  paper.transact(() => {
    for (const txn of trace.txns) {
      for (const [pos, del, ins] of txn.patches) {
        if (del > 0) ptext.delete(pos, del)
        if (ins.length > 0) ptext.insert(pos, ins)
      }
    }
  })
  check(ptext.toString() === trace.endContent, 'the trace replays to its end content')
  const update = Y.encodeStateAsUpdate(paper)
  results.paperUpdateBytes = update.length
  const uploader = await openPage(ctxA, base, 'paper', 'uploader')
  await uploader.evaluate(async (bytes) => {
    window.demo.Y.applyUpdate(window.demo.doc, new Uint8Array(bytes))
    await window.demo.provider.acknowledged()
  }, [...update])
  await uploader.close()
  const loads = []
  for (let i = 0; i < 5; i++) {
    const p = await ctxC.newPage()
    await p.goto(`${base}?doc=paper&name=reader`)
    await until(p, () => window.demo?.syncedAt !== undefined, null, 'paper synced')
    check(await p.evaluate(() => window.demo.ytext.length) === trace.endContent.length, `load ${i + 1}: the whole paper arrived`)
    loads.push(await p.evaluate(() => window.demo.syncedAt))
    await p.close()
  }
  loads.sort((x, y) => x - y)
  results.paperLoadToSyncedMs = loads[Math.floor(loads.length / 2)]

  // The README's screenshot: the two pages side by side, a short text with
  // both carets.
  const shotDoc = 'screenshot'
  a = await openPage(ctxA, base, shotDoc, 'alice')
  const b2 = await openPage(ctxB, base, shotDoc, 'bob')
  await typeInto(a, 'Hello from Alice: this text is a Y.Text shared through crdt-socket-sync.\n')
  await typeInto(b2, 'And Bob, in another browser context, types at the same time.')
  await converged([a, b2], ctxC, base, shotDoc, 'screenshot pages')
  await a.click('#text')
  await a.keyboard.press('Home')
  await until(b2, () => document.querySelectorAll('.caret').length > 0, null, 'bob sees alice\'s caret')
  await until(a, () => document.querySelectorAll('.caret').length > 0, null, 'alice sees bob\'s caret')
  const shots = [await a.screenshot(), await b2.screenshot()]
  const composer = await ctxC.newPage({ viewport: { width: 1250, height: 480 } })
  await composer.setViewportSize({ width: 1250, height: 480 })
  await composer.setContent(`<body style="margin:0;display:flex;gap:10px;background:#ddd">${
    shots.map(s => `<img src="data:image/png;base64,${s.toString('base64')}">`).join('')}</body>`)
  await composer.waitForFunction(() => [...document.images].every(i => i.complete))
  // Into the target directory; E2E_SCREENSHOT=1 also replaces the README's
  // web/screenshot.png (so CI leaves the checkout untouched).
  const shot = await composer.screenshot()
  writeFileSync(join(target, 'web-screenshot.png'), shot)
  if (process.env.E2E_SCREENSHOT === '1') writeFileSync(join(web, 'screenshot.png'), shot)
  check(existsSync(join(target, 'web-screenshot.png')), 'screenshot written')

  console.log('\nresults')
  console.log(`  wasm: ${results.wasmBytes} bytes, ${(results.wasmGzip / 1024).toFixed(1)} KiB gzipped`)
  console.log(`  automerge-paper (${results.paperUpdateBytes} bytes as a Yjs update): page load -> synced ${results.paperLoadToSyncedMs.toFixed(0)} ms (median of 5)`)
  console.log(`  keystroke page -> page: p50 ${results.keystrokeP50.toFixed(1)} ms, p99 ${results.keystrokeP99.toFixed(1)} ms (${lat.length} keystrokes)`)
  writeFileSync(join(target, 'web-e2e-results.json'), JSON.stringify(results, null, 2))
  console.log('e2e: all checks passed')
} finally {
  await browser.close()
  if (server && server.exitCode === null) server.kill('SIGKILL')
  rmSync(dataDir, { recursive: true, force: true })
  clearTimeout(watchdog)
}
