//! Adapter overhead: the automerge-paper trace replayed keystroke by
//! keystroke through each `Document` adapter (local edit with the native
//! API → `take_local_update` → `apply` on a second replica) next to the
//! same work with the native API only (encode the transaction's update →
//! native apply), in the same run.
//!
//! Prints, per library, the median time per keystroke of the local half
//! (edit + take), the remote half (apply) and both, bytes per update, and
//! the adapter/native ratio; then runs criterion over whole replays.
//!
//! automerge applies remote changes in batches (`apply_batch` for the
//! adapter, one `apply_changes` call for the native side), as one change per
//! call costs milliseconds on a long text in automerge 0.12.

#[path = "../tests/common/trace.rs"]
mod trace;

use std::hint::black_box;
use std::time::{Duration, Instant};

use crdt_socket_sync::adapters::automerge::AutomergeDocument;
use crdt_socket_sync::adapters::loro::LoroDocument;
use crdt_socket_sync::adapters::yrs::YrsDocument;
use crdt_socket_sync::document::{ApplyOutcome, Document};
use criterion::Criterion;

const YRS_KEYS: usize = 10_000;
const LORO_KEYS: usize = 10_000;
const AUTOMERGE_KEYS: usize = 2_000;
const AUTOMERGE_BATCH: usize = 100;
const ROUNDS: usize = 5;

/// One keystroke of automerge-paper: a 1-char insert or delete.
#[derive(Clone, Copy)]
enum Key {
    Ins(u32, char),
    Del(u32),
}

fn keys(n: usize) -> Vec<Key> {
    let t = trace::load("automerge-paper");
    t.txns
        .iter()
        .take(n)
        .map(|txn| {
            let p = &txn.patches[0];
            if p.del > 0 {
                Key::Del(p.pos as u32)
            } else {
                Key::Ins(p.pos as u32, p.ins.chars().next().expect("one char"))
            }
        })
        .collect()
}

/// Timings of one replay: per keystroke local and remote nanoseconds (for
/// batched libraries, remote is the batch time spread over its updates),
/// and the total update bytes.
#[derive(Default)]
struct Run {
    local: Vec<u64>,
    remote: Vec<u64>,
    bytes: usize,
}

fn ns(d: Duration) -> u64 {
    d.as_nanos() as u64
}

// ---------------------------------------------------------------- yrs

fn yrs_native(keys: &[Key]) -> Run {
    use yrs::updates::decoder::Decode;
    use yrs::{Doc, Text, Transact, Update};
    let a = Doc::with_client_id(1);
    let b = Doc::with_client_id(2);
    let ta = a.get_or_insert_text("text");
    let mut run = Run::default();
    for k in keys {
        let t0 = Instant::now();
        let update = {
            let mut txn = a.transact_mut();
            match *k {
                Key::Ins(pos, c) => ta.insert(&mut txn, pos, c.encode_utf8(&mut [0; 4])),
                Key::Del(pos) => ta.remove_range(&mut txn, pos, 1),
            }
            txn.encode_update_v1()
        };
        let t1 = Instant::now();
        b.transact_mut()
            .apply_update(Update::decode_v1(&update).expect("valid"))
            .expect("applies");
        let t2 = Instant::now();
        run.local.push(ns(t1 - t0));
        run.remote.push(ns(t2 - t1));
        run.bytes += update.len();
    }
    black_box(&b);
    run
}

fn yrs_adapter(keys: &[Key]) -> Run {
    use yrs::{Text, Transact};
    let mut a = YrsDocument::with_client_id(1);
    let mut b = YrsDocument::with_client_id(2);
    let ta = a.get_or_insert_text("text");
    let mut run = Run::default();
    for k in keys {
        let t0 = Instant::now();
        {
            let mut txn = a.transact_mut();
            match *k {
                Key::Ins(pos, c) => ta.insert(&mut txn, pos, c.encode_utf8(&mut [0; 4])),
                Key::Del(pos) => ta.remove_range(&mut txn, pos, 1),
            }
        }
        let update = a.take_local_update().expect("an edit");
        let t1 = Instant::now();
        let outcome = b.apply(&update);
        let t2 = Instant::now();
        debug_assert_eq!(outcome, ApplyOutcome::Applied);
        run.local.push(ns(t1 - t0));
        run.remote.push(ns(t2 - t1));
        run.bytes += update.len();
    }
    black_box(&b);
    run
}

// ---------------------------------------------------------------- loro

fn loro_native(keys: &[Key]) -> Run {
    use loro::{ExportMode, LoroDoc};
    let a = LoroDoc::new();
    a.set_peer_id(1).expect("peer");
    let b = LoroDoc::new();
    b.set_peer_id(2).expect("peer");
    let ta = a.get_text("text");
    let mut vv = a.oplog_vv();
    let mut run = Run::default();
    let mut buf = [0; 4];
    for k in keys {
        let t0 = Instant::now();
        match *k {
            Key::Ins(pos, c) => ta.insert(pos as usize, c.encode_utf8(&mut buf)),
            Key::Del(pos) => ta.delete(pos as usize, 1),
        }
        .expect("in range");
        let update = a.export(ExportMode::updates(&vv)).expect("export");
        vv = a.oplog_vv();
        let t1 = Instant::now();
        b.import(&update).expect("import");
        let t2 = Instant::now();
        run.local.push(ns(t1 - t0));
        run.remote.push(ns(t2 - t1));
        run.bytes += update.len();
    }
    black_box(&b);
    run
}

fn loro_adapter(keys: &[Key]) -> Run {
    let mut a = LoroDocument::with_peer_id(1);
    let mut b = LoroDocument::with_peer_id(2);
    let ta = a.get_text("text");
    let mut run = Run::default();
    let mut buf = [0; 4];
    for k in keys {
        let t0 = Instant::now();
        match *k {
            Key::Ins(pos, c) => ta.insert(pos as usize, c.encode_utf8(&mut buf)),
            Key::Del(pos) => ta.delete(pos as usize, 1),
        }
        .expect("in range");
        let update = a.take_local_update().expect("an edit");
        let t1 = Instant::now();
        let outcome = b.apply(&update);
        let t2 = Instant::now();
        debug_assert_eq!(outcome, ApplyOutcome::Applied);
        run.local.push(ns(t1 - t0));
        run.remote.push(ns(t2 - t1));
        run.bytes += update.len();
    }
    black_box(&b);
    run
}

// ----------------------------------------------------------- automerge

fn am_edit(doc: &mut automerge::Automerge, text: &automerge::ObjId, k: Key) {
    use automerge::transaction::Transactable;
    let mut tx = doc.transaction();
    match k {
        Key::Ins(pos, c) => tx.splice_text(text, pos as usize, 0, c.encode_utf8(&mut [0; 4])),
        Key::Del(pos) => tx.splice_text(text, pos as usize, 1, ""),
    }
    .expect("in range");
    tx.commit();
}

/// Both replicas start from one shared text object.
fn am_genesis() -> (Vec<u8>, automerge::ObjId) {
    use automerge::transaction::Transactable;
    let mut g = automerge::Automerge::new().with_actor(automerge::ActorId::from([0u8; 8]));
    let mut tx = g.transaction();
    let text = tx
        .put_object(automerge::ROOT, "text", automerge::ObjType::Text)
        .expect("root");
    tx.commit();
    (g.save(), text)
}

fn automerge_native(keys: &[Key]) -> Run {
    use automerge::{ActorId, Automerge, Change};
    let (genesis, text) = am_genesis();
    let mut a = Automerge::load(&genesis)
        .expect("load")
        .with_actor(ActorId::from(1u64.to_be_bytes()));
    let mut b = Automerge::load(&genesis)
        .expect("load")
        .with_actor(ActorId::from(2u64.to_be_bytes()));
    let mut run = Run::default();
    let mut batch: Vec<Vec<u8>> = Vec::with_capacity(AUTOMERGE_BATCH);
    for (i, k) in keys.iter().enumerate() {
        let t0 = Instant::now();
        am_edit(&mut a, &text, *k);
        let update = a
            .get_last_local_change()
            .expect("a change")
            .raw_bytes()
            .to_vec();
        let t1 = Instant::now();
        run.local.push(ns(t1 - t0));
        run.bytes += update.len();
        batch.push(update);
        if batch.len() == AUTOMERGE_BATCH || i + 1 == keys.len() {
            let t2 = Instant::now();
            let changes: Vec<Change> = batch
                .iter()
                .map(|u| Change::try_from(u.as_slice()).expect("valid"))
                .collect();
            b.apply_changes(changes).expect("applies");
            let per = ns(t2.elapsed()) / batch.len() as u64;
            run.remote.extend(std::iter::repeat_n(per, batch.len()));
            batch.clear();
        }
    }
    black_box(&b);
    run
}

fn automerge_adapter(keys: &[Key]) -> Run {
    let (genesis, text) = am_genesis();
    let mut a = AutomergeDocument::with_actor(1u64);
    a.load_snapshot(&genesis).expect("load");
    let mut b = AutomergeDocument::with_actor(2u64);
    b.load_snapshot(&genesis).expect("load");
    let mut run = Run::default();
    let mut batch: Vec<Vec<u8>> = Vec::with_capacity(AUTOMERGE_BATCH);
    let mut outcomes = Vec::with_capacity(AUTOMERGE_BATCH);
    for (i, k) in keys.iter().enumerate() {
        let t0 = Instant::now();
        am_edit(a.doc_mut(), &text, *k);
        let update = a.take_local_update().expect("an edit");
        let t1 = Instant::now();
        run.local.push(ns(t1 - t0));
        run.bytes += update.len();
        batch.push(update);
        if batch.len() == AUTOMERGE_BATCH || i + 1 == keys.len() {
            let t2 = Instant::now();
            let refs: Vec<&[u8]> = batch.iter().map(Vec::as_slice).collect();
            outcomes.clear();
            b.apply_batch(&refs, &mut outcomes);
            let per = ns(t2.elapsed()) / batch.len() as u64;
            debug_assert!(outcomes.iter().all(|o| *o == ApplyOutcome::Applied));
            run.remote.extend(std::iter::repeat_n(per, batch.len()));
            batch.clear();
        }
    }
    black_box(&b);
    run
}

// ------------------------------------------------------------- report

fn median(mut v: Vec<u64>) -> f64 {
    if v.is_empty() {
        return 0.0;
    }
    v.sort_unstable();
    v[v.len() / 2] as f64
}

struct Summary {
    local: f64,
    remote: f64,
    both: f64,
    bytes: f64,
}

fn summarize(runs: &[Run]) -> Summary {
    let mut local = Vec::new();
    let mut remote = Vec::new();
    let mut both = Vec::new();
    for r in runs {
        local.extend(&r.local);
        remote.extend(&r.remote);
        both.extend(r.local.iter().zip(&r.remote).map(|(a, b)| a + b));
    }
    let keys = runs[0].local.len().max(1);
    Summary {
        local: median(local),
        remote: median(remote),
        both: median(both),
        bytes: runs[0].bytes as f64 / keys as f64,
    }
}

fn compare(name: &str, keys: &[Key], native: fn(&[Key]) -> Run, adapter: fn(&[Key]) -> Run) {
    let mut n_runs = Vec::new();
    let mut a_runs = Vec::new();
    // Interleaved, so drift in machine load hits both sides alike.
    for _ in 0..ROUNDS {
        n_runs.push(native(keys));
        a_runs.push(adapter(keys));
    }
    let n = summarize(&n_runs);
    let a = summarize(&a_runs);
    println!(
        "{name:<10} {:>6} keys | median ns/keystroke local {:>8.0} / {:>8.0}  remote {:>8.0} / {:>8.0}  \
         both {:>8.0} / {:>8.0} (adapter / native) | ratio {:.3} | bytes/update {:.1} / {:.1}",
        keys.len(),
        a.local,
        n.local,
        a.remote,
        n.remote,
        a.both,
        n.both,
        a.both / n.both,
        a.bytes,
        n.bytes,
    );
}

fn main() {
    let yrs_keys = keys(YRS_KEYS);
    let loro_keys = keys(LORO_KEYS);
    let am_keys = keys(AUTOMERGE_KEYS);

    println!("automerge-paper, per keystroke: local edit + take → remote apply ({ROUNDS} rounds)");
    compare("yrs", &yrs_keys, yrs_native, yrs_adapter);
    compare("loro", &loro_keys, loro_native, loro_adapter);
    compare("automerge", &am_keys, automerge_native, automerge_adapter);

    let mut c = Criterion::default()
        .sample_size(10)
        .warm_up_time(Duration::from_millis(500))
        .measurement_time(Duration::from_secs(3))
        .configure_from_args();
    let mut g = c.benchmark_group("automerge-paper replay");
    g.bench_function("yrs/native", |b| b.iter(|| yrs_native(&yrs_keys)));
    g.bench_function("yrs/adapter", |b| b.iter(|| yrs_adapter(&yrs_keys)));
    g.bench_function("loro/native", |b| b.iter(|| loro_native(&loro_keys)));
    g.bench_function("loro/adapter", |b| b.iter(|| loro_adapter(&loro_keys)));
    g.bench_function("automerge/native", |b| {
        b.iter(|| automerge_native(&am_keys))
    });
    g.bench_function("automerge/adapter", |b| {
        b.iter(|| automerge_adapter(&am_keys))
    });
    g.finish();
    c.final_summary();
}
