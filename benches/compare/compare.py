#!/usr/bin/env python3
"""Orchestrates the side-by-side comparison (see run.sh).

For every workload and every target (ours, hocuspocus, ywebsocket): starts the
server as a child process on 127.0.0.1 with a free port, samples its RSS and
CPU from /proc/<pid> every 100 ms, runs the load client (examples/loadgen.rs
for ours, load-client.mjs for the incumbents) with the same parameters, reads
its JSON marks and result, stops the server, and writes JSON, a markdown table
and PNG plots into benches/results/<mode>/.

Workloads A and B run SHARDS client processes per target (the same number on
each side), each driving the clients whose index is its shard modulo SHARDS.
Every mark is a barrier: when all shards printed it, the server is sampled
and each shard gets a "go" line; their results are then merged (sums,
quantiles from the added latency histograms).
"""
import argparse, json, math, os, platform, queue, signal, socket, subprocess, sys, threading, time

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.abspath(os.path.join(HERE, '..', '..'))
TICK = os.sysconf('SC_CLK_TCK')
PAGE = os.sysconf('SC_PAGE_SIZE')

MODES = {
    # quick: every workload scaled down so the whole run stays under 5 minutes
    'quick': {
        'A': dict(ROOMS=50, PER_ROOM=3, WRITERS=1, WRITE_MS=100, DURATION_S=8, RESTART=1, SHARDS=2),
        'B': dict(ROOMS=1, PER_ROOM=50, WRITERS=50, WRITE_MS=200, DURATION_S=8, SHARDS=2),
        'C': dict(CONNS=500, DOCS=100, BATCH=100, SETTLE_MS=1500, HOLD_MS=500),
        'D-paper': dict(DOC='paper.bin', JOINERS=10),
        'D-synth': dict(DOC='synth.bin', JOINERS=10),
        'E': dict(UPDATE_BYTES=10000, RATE_HZ=200, DURATION_S=10, PAUSE_AT_S=2, PAUSE_S=6),
        'synth_mb': 2,
    },
    'full': {
        'A': dict(ROOMS=500, PER_ROOM=3, WRITERS=1, WRITE_MS=100, DURATION_S=20, RESTART=1, SHARDS=2),
        'B': dict(ROOMS=1, PER_ROOM=200, WRITERS=200, WRITE_MS=200, DURATION_S=20, SHARDS=2),
        'C': dict(CONNS=5000, DOCS=1000, BATCH=250, SETTLE_MS=4000, HOLD_MS=1000),
        'D-paper': dict(DOC='paper.bin', JOINERS=50),
        'D-synth': dict(DOC='synth.bin', JOINERS=50),
        'E': dict(UPDATE_BYTES=10000, RATE_HZ=200, DURATION_S=40, PAUSE_AT_S=2, PAUSE_S=30),
        'synth_mb': 20,
    },
}
TARGETS = ['ours', 'hocuspocus', 'ywebsocket']


def free_port():
    s = socket.socket(); s.bind(('127.0.0.1', 0)); p = s.getsockname()[1]; s.close(); return p


def proc_sample(pid):
    try:
        with open(f'/proc/{pid}/stat') as f:
            parts = f.read().rsplit(')', 1)[1].split()
        cpu = (int(parts[11]) + int(parts[12])) / TICK  # utime + stime
        rss = int(parts[21]) * PAGE
        return cpu, rss
    except (FileNotFoundError, ProcessLookupError, IndexError):
        return None


class Server:
    def __init__(self, target, port, bins):
        self.target, self.port, self.bins = target, port, bins
        self.samples = []  # (t, cpu_s, rss_bytes)
        self.start()

    def start(self):
        env = dict(os.environ, PORT=str(self.port), HOST='127.0.0.1', RUST_LOG='warn')
        if self.target == 'ours':
            # In memory, like the incumbents here.
            cmd = [self.bins['server'], '--addr', f'127.0.0.1:{self.port}', '--max-connections', '100000', '--storage', 'memory']
        else:
            cmd = ['node', os.path.join(HERE, 'hp-server.mjs' if self.target == 'hocuspocus' else 'ys-server.mjs')]
        self.log = open(os.path.join(self.bins['logdir'], f'server-{self.target}.log'), 'a')
        self.p = subprocess.Popen(cmd, cwd=HERE, env=env, stdout=self.log, stderr=subprocess.STDOUT)
        end = time.time() + 30
        while time.time() < end:
            try:
                socket.create_connection(('127.0.0.1', self.port), timeout=0.5).close(); break
            except OSError:
                if self.p.poll() is not None:
                    raise RuntimeError(f'{self.target} server exited: see {self.log.name}')
                time.sleep(0.05)
        else:
            raise RuntimeError(f'{self.target} server did not listen in 30 s')
        self.stop_flag = False
        self.t = threading.Thread(target=self.sample, daemon=True); self.t.start()

    def sample(self):
        pid = self.p.pid
        while not self.stop_flag:
            s = proc_sample(pid)
            if s:
                self.samples.append((time.time(), s[0], s[1]))
            time.sleep(0.1)

    def now(self):
        s = proc_sample(self.p.pid)
        return (time.time(), s[0], s[1]) if s else None

    def kill(self, sig=signal.SIGKILL):
        self.stop_flag = True
        if self.p.poll() is None:
            self.p.send_signal(sig)
            try:
                self.p.wait(10)
            except subprocess.TimeoutExpired:
                self.p.kill(); self.p.wait()
        self.log.close()


def run_one(target, workload, params, bins, docdir, max_s):
    port = free_port()
    srv = Server(target, port, bins)
    wl = workload.split('-')[0]
    shards = int(params.get('SHARDS', 1)) if wl in ('A', 'B') else 1
    env = dict(os.environ, TARGET=target, WORKLOAD=wl, URL=f'ws://127.0.0.1:{port}', MAX_S=str(max_s), RUST_LOG='warn',
               BARRIER='1')
    for k, v in params.items():
        if k == 'DOC':
            env['DOC_FILE'] = os.path.join(docdir, v)
        elif k != 'SHARDS':
            env[k] = str(v)
    if target == 'ours':
        cmd = [bins['loadgen']]
    else:
        cmd = ['node', os.path.join(HERE, 'load-client.mjs')]
    t_start = time.time()
    lines = queue.Queue(maxsize=10000)
    clients = []
    for i in range(shards):
        suffix = f'.{i}' if shards > 1 else ''
        cl = subprocess.Popen(cmd, cwd=HERE, env=dict(env, SHARD=f'{i}/{shards}'), stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                              stderr=open(os.path.join(bins['logdir'], f'client-{target}-{workload}{suffix}.log'), 'w'), text=True)
        def pump(i=i, out=cl.stdout):
            for line in out:
                lines.put((i, line))
            lines.put((i, None))
        threading.Thread(target=pump, daemon=True).start()
        clients.append(cl)
    killers = [threading.Timer(max_s + 30, cl.kill) for cl in clients]
    for k in killers:
        k.start()
    marks, results, restart = {}, [None] * shards, None
    waiting, running = {}, shards
    while running:
        i, line = lines.get()
        if line is None:
            running -= 1
            continue
        line = line.strip()
        if not line.startswith('{'):
            continue
        msg = json.loads(line)
        if 'mark' in msg:
            name = msg['mark']
            waiting.setdefault(name, set()).add(i)
            if len(waiting[name]) < shards:
                continue
            # Every shard reached it: sample, act, release them.
            marks[name] = srv.now()
            if name == 'restart':
                t0 = time.time()
                srv.kill(signal.SIGKILL)
                pre = srv.samples
                srv.start(); srv.samples = pre + srv.samples
                restart = {'server_down_to_listening_ms': (time.time() - t0) * 1000}
            for cl in clients:
                try:
                    cl.stdin.write('go\n'); cl.stdin.flush()
                except (BrokenPipeError, OSError):
                    pass
        elif 'result' in msg:
            results[i] = msg['result']
        elif 'error' in msg:
            results[i] = {'error': msg['error']}
    for cl in clients:
        cl.wait()
    for k in killers:
        k.cancel()
    srv.kill(signal.SIGTERM)
    samples = srv.samples
    res = {'target': target, 'workload': workload, 'params': params, 'client': merge(results, params, wl), 'restart': restart,
           'wall_s': time.time() - t_start,
           'marks': {k: (None if v is None else {'t': v[0] - t_start, 'cpu_s': v[1], 'rss': v[2]}) for k, v in marks.items()},
           'peak_rss': max((s[2] for s in samples), default=None),
           'series': [(round(s[0] - t_start, 3), round(s[1], 3), s[2]) for s in samples]}
    return res


def hist_quantiles(hist):
    """p50/p99/max from a latency histogram (bucket k = [0.01 ms × 1.02^k, × 1.02))."""
    items = sorted((int(k), n) for k, n in hist.items())
    total = sum(n for _, n in items)
    if not total:
        return {'p50_ms': None, 'p99_ms': None, 'max_ms': None}
    mid = lambda k: 0.01 * 1.02 ** (k + 0.5)
    def q(x):
        rank = min(total - 1, math.floor(total * x))
        seen = 0
        for k, n in items:
            seen += n
            if seen > rank:
                return mid(k)
        return mid(items[-1][0])
    return {'p50_ms': q(0.5), 'p99_ms': q(0.99), 'max_ms': mid(items[-1][0])}


def merge(results, params, wl):
    """One result from the shards' (A/B); the single result otherwise."""
    if any(r is None or 'error' in r for r in results):
        errs = [r.get('error') if r else 'no result' for r in results if r is None or 'error' in r]
        return {'error': '; '.join(str(e) for e in errs)}
    if wl not in ('A', 'B'):
        return results[0]
    m = dict(results[0]) if len(results) == 1 else {}
    if len(results) > 1:
        for k in ('clients', 'sent', 'delivered', 'rx_bytes', 'tx_bytes'):
            m[k] = sum(r.get(k) or 0 for r in results)
        m['all_synced'] = all(r.get('all_synced') for r in results)
        m['write_s'] = max(r['write_s'] for r in results)
        m['drain_ms'] = max(r['drain_ms'] for r in results)
        hist = {}
        for r in results:
            for k, n in r['lat_hist'].items():
                hist[k] = hist.get(k, 0) + n
        m['lat_hist'] = hist
        m.update(hist_quantiles(hist))
        m['expected'] = m['sent'] * (params['PER_ROOM'] - 1)
        m['undelivered'] = m['expected'] - m['delivered']
        m['delivered_per_s'] = m['delivered'] / (m['write_s'] + m['drain_ms'] / 1000)
        m['rx_bytes_per_delivered'] = m['rx_bytes'] / m['delivered'] if m['delivered'] else None
        m['tx_bytes_per_sent'] = m['tx_bytes'] / m['sent'] if m['sent'] else None
        if any('resync_ms' in r for r in results):
            rs = [r.get('resync_ms') for r in results]
            m['resync_ms'] = None if None in rs else max(rs)
            m['resynced'] = sum(r.get('resynced') or 0 for r in results)
    m['shards'] = len(results)
    m['offered_per_s'] = params['ROOMS'] * params['WRITERS'] * 1000 / params['WRITE_MS']
    m['sent_per_s'] = m['sent'] / m['write_s'] if m.get('write_s') else None
    return m


def derive(r):
    """Per-workload numbers from marks and samples."""
    m, c, d = r['marks'], r['client'] or {}, {}
    wl = r['workload'].split('-')[0]
    if wl in ('A', 'B') and m.get('steady_start') and m.get('steady_end'):
        cpu = m['steady_end']['cpu_s'] - m['steady_start']['cpu_s']
        d['server_cpu_s'] = cpu
        win = m['steady_end']['t'] - m['steady_start']['t']
        d['server_cpu_pct'] = 100 * cpu / win if win else None
        dl = c.get('delivered') or 0
        d['updates_per_cpu_s'] = dl / cpu if cpu > 0 else None
        d['rss_steady_mib'] = m['steady_end']['rss'] / 2**20
    if wl == 'C' and all(m.get(k) for k in ('c0', 'c1', 'c2')):
        p = r['params']
        per_conn = (m['c2']['rss'] - m['c1']['rss']) / (p['CONNS'] - p['DOCS'])
        d['rss_per_conn_kib'] = per_conn / 1024
        d['rss_per_doc_kib'] = ((m['c1']['rss'] - m['c0']['rss']) / p['DOCS'] - per_conn) / 1024
        d['rss_all_mib'] = m['c2']['rss'] / 2**20
    if wl == 'D' and m.get('join_start') and m.get('join_end'):
        d['server_cpu_s'] = m['join_end']['cpu_s'] - m['join_start']['cpu_s']
        d['rss_before_join_mib'] = m['join_start']['rss'] / 2**20
    if wl == 'E' and m.get('e_start'):
        base = m['e_start']['rss']
        t0 = m['e_start']['t']
        tend = m['e_end']['t'] if m.get('e_end') else 1e9
        d['rss_growth_peak_mib'] = max((s[2] - base for s in r['series'] if t0 <= s[0] <= tend), default=0) / 2**20
        if m.get('resume'):
            d['rss_growth_at_resume_mib'] = (m['resume']['rss'] - base) / 2**20
    if r['peak_rss']:
        d['peak_rss_mib'] = r['peak_rss'] / 2**20
    r['derived'] = d
    return r


def machine():
    def sh(cmd):
        try:
            return subprocess.run(cmd, capture_output=True, text=True, timeout=20).stdout.strip()
        except Exception as e:  # noqa
            return f'n/a ({e})'
    model = next((l.split(':', 1)[1].strip() for l in open('/proc/cpuinfo') if l.startswith('model name')), 'unknown')
    mem = next((l.split()[1] for l in open('/proc/meminfo') if l.startswith('MemTotal')), '0')
    return {'nproc': os.cpu_count(), 'cpu': model, 'mem_gib': round(int(mem) / 2**20, 1), 'kernel': platform.release(),
            'node': sh(['node', '--version']), 'rustc': sh(['rustc', '--version']),
            'loadavg_at_start': open('/proc/loadavg').read().split()[:3],
            'note': 'shared machine: other builds and a fuzzer ran at the same time; servers and clients were not pinned'}


def fmt(x, nd=1):
    if x is None:
        return '—'
    if isinstance(x, bool):
        return 'yes' if x else 'no'
    if isinstance(x, (int, float)):
        if abs(x) >= 100:
            return f'{x:,.0f}'
        return f'{x:.{nd}f}'
    return str(x)


def ratio(ours, best, lower_better):
    if ours is None or best is None or ours == 0 or best == 0:
        return None
    return best / ours if lower_better else ours / best


def report(results, mode, outdir, meta):
    by = {}
    for r in results:
        by.setdefault(r['workload'], {})[r['target']] = r
    L = [f'# Side-by-side comparison ({mode} mode)', '',
         f"Machine: {meta['machine']['nproc']} cores, {meta['machine']['cpu']}, {meta['machine']['mem_gib']} GiB, "
         f"Linux {meta['machine']['kernel']}; {meta['machine']['node']}; {meta['machine']['rustc']}. "
         f"Load average at start {' '.join(meta['machine']['loadavg_at_start'])}: **{meta['machine']['note']}** (expect ±30 %).", '',
         f"Versions: {meta['versions']}", '',
         f"Command: `{meta['command']}`; wall time {meta['wall_s']:.0f} s.", '']
    def row(name, key, src, unit, nd=1):
        cells = []
        for t in TARGETS:
            r = by.get(name, {}).get(t)
            v = None if r is None else (r['client'] or {}).get(key) if src == 'c' else r.get('derived', {}).get(key)
            cells.append(fmt(v, nd))
        return f'| {name} | {key} ({unit}) | ' + ' | '.join(cells) + ' |'
    L += ['| workload | metric | ours | Hocuspocus | y-websocket |', '|---|---|---|---|---|']
    for name in by:
        wl = name.split('-')[0]
        p = next(iter(by[name].values()))['params']
        L.append(f"| **{name}** | params: {', '.join(f'{k}={v}' for k, v in p.items())} | | | |")
        if wl in ('A', 'B'):
            for key, src, unit in [('offered_per_s', 'c', 'updates/s'), ('sent_per_s', 'c', 'updates/s'), ('delivered_per_s', 'c', 'updates/s'),
                                   ('undelivered', 'c', 'updates'), ('drain_ms', 'c', 'ms'), ('p50_ms', 'c', 'ms'), ('p99_ms', 'c', 'ms'),
                                   ('max_ms', 'c', 'ms'), ('server_cpu_s', 'd', 's'), ('server_cpu_pct', 'd', '% of a core'),
                                   ('updates_per_cpu_s', 'd', 'delivered/CPU-s'), ('rx_bytes_per_delivered', 'c', 'B'),
                                   ('tx_bytes_per_sent', 'c', 'B'), ('peak_rss_mib', 'd', 'MiB'), ('resync_ms', 'c', 'ms')]:
                if key == 'resync_ms' and wl != 'A':
                    continue
                L.append(row(name, key, src, unit, 2 if unit == 'ms' else 1))
        elif wl == 'C':
            for key, src, unit in [('synced', 'c', 'conns'), ('rss_per_conn_kib', 'd', 'KiB'), ('rss_per_doc_kib', 'd', 'KiB'), ('rss_all_mib', 'd', 'MiB')]:
                L.append(row(name, key, src, unit))
        elif wl == 'D':
            for key, src, unit in [('doc_bytes', 'c', 'B'), ('joined', 'c', 'joiners'), ('all_joined_ms', 'c', 'ms'), ('join_p50_ms', 'c', 'ms'),
                                   ('server_cpu_s', 'd', 's'), ('peak_rss_mib', 'd', 'MiB')]:
                L.append(row(name, key, src, unit))
        elif wl == 'E':
            for key, src, unit in [('sent', 'c', 'updates'), ('reader_events', 'c', 'changes'), ('caught_up', 'c', ''), ('catch_up_ms_after_resume', 'c', 'ms'),
                                   ('reader_reconnected', 'c', ''), ('rss_growth_at_resume_mib', 'd', 'MiB'), ('rss_growth_peak_mib', 'd', 'MiB')]:
                L.append(row(name, key, src, unit))
    # Ratios against the best incumbent, same run.
    def get(name, t, key, src):
        r = by.get(name, {}).get(t)
        if not r:
            return None
        return (r['client'] or {}).get(key) if src == 'c' else r.get('derived', {}).get(key)
    def best(name, key, src, lower):
        vals = [v for v in (get(name, t, key, src) for t in TARGETS[1:]) if isinstance(v, (int, float))]
        return (min(vals) if lower else max(vals)) if vals else None
    L += ['', '## Targets (ratio against the best incumbent in this run)', '',
          '| target | workload | ours | best incumbent | ratio | goal | met |', '|---|---|---|---|---|---|---|']
    def tgt(label, name, key, src, lower, goal, ok):
        o, b = get(name, 'ours', key, src), best(name, key, src, lower)
        rt = ratio(o, b, lower)
        L.append(f'| {label} | {name} | {fmt(o, 2)} | {fmt(b, 2)} | {fmt(rt, 2)}× | {goal} | {fmt(ok(rt, o, b)) if rt is not None else "—"} |')
    for name in ('A', 'B'):
        if name in by:
            tgt('throughput at equal load: delivered updates per server CPU-second', name, 'updates_per_cpu_s', 'd', False, '≥ 5×', lambda r, o, b: r >= 5)
            tgt('p99 latency (ratio = incumbent / ours)', name, 'p99_ms', 'c', True, '≥ 3× (ours ≤ 1/3)', lambda r, o, b: r >= 3)
    if 'A' in by:
        o, hp, ys = get('A', 'ours', 'rx_bytes_per_delivered', 'c'), get('A', 'hocuspocus', 'rx_bytes_per_delivered', 'c'), get('A', 'ywebsocket', 'rx_bytes_per_delivered', 'c')
        ok = None if None in (o, hp, ys) else (o <= hp and o <= ys + 10)
        L.append(f'| bytes on the wire per delivered update (server→client, WS headers included) | A | {fmt(o, 1)} B | HP {fmt(hp, 1)} B, YS {fmt(ys, 1)} B | — | ≤ HP and ≤ YS + 10 B | {fmt(ok)} |')
    if 'C' in by:
        tgt('memory per idle connection (ratio = incumbent / ours)', 'C', 'rss_per_conn_kib', 'd', True, '≥ 5× (ours ≤ 1/5)', lambda r, o, b: r >= 5)
    if 'E' in by:
        o = get('E', 'ours', 'rss_growth_peak_mib', 'd'); b = best('E', 'rss_growth_peak_mib', 'd', True)
        L.append(f'| E: server memory growth while a reader stalls | E | {fmt(o)} MiB | {fmt(b)} MiB | {fmt(ratio(o, b, True), 1)}× | bounded where they grow | see plot |')
    L += ['', 'Plots: `latency.png` (A/B p50/p99), `idle_memory.png` (C), `slow_reader_rss.png` (E: server RSS over time).', '',
          'Definitions: offered = writers × rate the workload asks for; sent = what the client processes managed to write (they skip ticks when saturated, '
          'so the servers are not offered the same load when a client is the bottleneck); delivered/s = delivered ÷ (write time + drain); '
          'undelivered = expected − delivered once deliveries stopped for 500 ms after the writers stopped (drain = time to the last one, at most 20 s); '
          'SHARDS = client processes per target (the same on every side); '
          'latency = edit → remote apply in another client (wall-clock timestamp inside the update; p50/p99 from a histogram with 2 % buckets when SHARDS > 1); '
          'bytes = WebSocket payload + frame header as counted by the clients, over the measured window, divided by delivered updates '
          '(includes acks, awareness and pings in that window); CPU = utime+stime of the server process from /proc; '
          'memory per connection/document = RSS deltas between marks (C); resync = from the restarted server listening to every client synced again.']
    open(os.path.join(outdir, 'results.md'), 'w').write('\n'.join(L) + '\n')
    return '\n'.join(L)


def plots(results, outdir):
    try:
        import matplotlib
        matplotlib.use('Agg')
        import matplotlib.pyplot as plt
    except ImportError:
        print('matplotlib not available: no plots', file=sys.stderr); return
    colors = {'ours': 'tab:green', 'hocuspocus': 'tab:blue', 'ywebsocket': 'tab:orange'}
    by = {}
    for r in results:
        by.setdefault(r['workload'], {})[r['target']] = r
    # E: RSS over time
    if 'E' in by:
        fig, ax = plt.subplots(figsize=(8, 4.5))
        for t, r in by['E'].items():
            m = r['marks']
            if not m.get('e_start'):
                continue
            t0, base = m['e_start']['t'], m['e_start']['rss']
            xs = [s[0] - t0 for s in r['series'] if s[0] >= t0 - 1]
            ys = [(s[2] - base) / 2**20 for s in r['series'] if s[0] >= t0 - 1]
            ax.plot(xs, ys, label=t, color=colors[t])
            for k in ('pause', 'resume'):
                if m.get(k):
                    ax.axvline(m[k]['t'] - t0, color=colors[t], ls=':', lw=0.8)
        ax.set_xlabel('seconds since the writer started'); ax.set_ylabel('server RSS growth (MiB)')
        ax.set_title('(E) a reader stops reading (dotted: pause / resume)'); ax.legend(); fig.tight_layout()
        fig.savefig(os.path.join(outdir, 'slow_reader_rss.png'), dpi=110); plt.close(fig)
    # A/B latency bars
    names = [n for n in ('A', 'B') if n in by]
    if names:
        fig, axes = plt.subplots(1, len(names), figsize=(5 * len(names), 4))
        axes = axes if len(names) > 1 else [axes]
        for ax, n in zip(axes, names):
            ts = [t for t in TARGETS if t in by[n]]
            for i, q in enumerate(('p50_ms', 'p99_ms')):
                vals = [(by[n][t]['client'] or {}).get(q) or 0 for t in ts]
                ax.bar([j + i * 0.4 for j in range(len(ts))], vals, width=0.4, label=q.split('_')[0])
            ax.set_xticks([j + 0.2 for j in range(len(ts))], ts); ax.set_ylabel('edit → remote apply (ms)')
            ax.set_title(f'({n}) latency'); ax.legend()
        fig.tight_layout(); fig.savefig(os.path.join(outdir, 'latency.png'), dpi=110); plt.close(fig)
    if 'C' in by:
        fig, ax = plt.subplots(figsize=(6, 4))
        ts = [t for t in TARGETS if t in by['C']]
        for i, k in enumerate(('rss_per_conn_kib', 'rss_per_doc_kib')):
            ax.bar([j + i * 0.4 for j in range(len(ts))], [by['C'][t]['derived'].get(k) or 0 for t in ts], width=0.4, label=k)
        ax.set_xticks([j + 0.2 for j in range(len(ts))], ts); ax.set_ylabel('KiB (RSS delta)'); ax.set_title('(C) idle memory'); ax.legend()
        fig.tight_layout(); fig.savefig(os.path.join(outdir, 'idle_memory.png'), dpi=110); plt.close(fig)


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument('--mode', choices=MODES, default='quick')
    ap.add_argument('--workloads', default='A,B,C,D-paper,D-synth,E')
    ap.add_argument('--targets', default=','.join(TARGETS))
    ap.add_argument('--server-bin')
    ap.add_argument('--loadgen-bin')
    ap.add_argument('--out', required=True)
    ap.add_argument('--command', default='')
    ap.add_argument('--versions', default='')
    ap.add_argument('--shards', type=int, help='client processes per target in A and B (default: the mode\'s SHARDS)')
    ap.add_argument('--report-only', action='store_true', help='rebuild results.md and plots from results.json')
    a = ap.parse_args()
    if a.report_only:
        data = json.load(open(os.path.join(a.out, 'results.json')))
        print(report(data['results'], a.mode, a.out, data['meta']))
        plots(data['results'], a.out)
        return
    cfg = {k: (dict(v) if isinstance(v, dict) else v) for k, v in MODES[a.mode].items()}
    if a.shards:
        for w in ('A', 'B'):
            cfg[w]['SHARDS'] = max(1, a.shards)
    os.makedirs(a.out, exist_ok=True)
    logdir = os.path.join(a.out, 'logs'); os.makedirs(logdir, exist_ok=True)
    docdir = os.path.join(a.out, 'docs-tmp'); os.makedirs(docdir, exist_ok=True)
    bins = {'server': a.server_bin, 'loadgen': a.loadgen_bin, 'logdir': logdir}
    meta = {'machine': machine(), 'mode': a.mode, 'command': a.command, 'versions': a.versions}
    t0 = time.time()
    wls = a.workloads.split(',')
    if any(w.startswith('D') for w in wls):
        subprocess.run([a.loadgen_bin, 'gen-docs', docdir, str(cfg['synth_mb'])], check=True)
    results = []
    path = os.path.join(a.out, 'results.json')
    if os.path.exists(path) and a.workloads != ap.get_default('workloads'):
        # A partial run replaces only its own workloads in the committed results.
        old = json.load(open(path))
        results = [r for r in old['results'] if r['workload'] not in wls]
    for w in wls:
        for t in a.targets.split(','):
            print(f'== {w} / {t}', flush=True)
            try:
                r = derive(run_one(t, w, cfg[w], bins, docdir, max_s=180 if a.mode == 'full' else 90))
            except Exception as e:  # keep going: a failed run is a row of dashes
                r = {'target': t, 'workload': w, 'params': cfg[w], 'client': {'error': str(e)}, 'marks': {}, 'series': [], 'derived': {}, 'peak_rss': None}
            print(json.dumps({'client': r['client'], 'derived': r.get('derived')}), flush=True)
            results.append(r)
            meta['wall_s'] = time.time() - t0
            json.dump({'meta': meta, 'results': results}, open(path, 'w'), indent=1)
    meta['wall_s'] = time.time() - t0
    json.dump({'meta': meta, 'results': results}, open(path, 'w'), indent=1)
    print(report(results, a.mode, a.out, meta))
    plots(results, a.out)
    subprocess.run(['rm', '-rf', docdir])


if __name__ == '__main__':
    main()
