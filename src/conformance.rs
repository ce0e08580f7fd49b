//! A conformance suite every [`Document`] implementation must pass
//! (feature `conformance`, no extra dependencies).
//!
//! The suite edits a shared text through [`TextEditor`], a small trait the
//! implementation under test provides next to [`Document`], replays an
//! [`EditScript`] (real editing traces work well: sequential typing, or
//! several agents with causal `parents`) and checks:
//!
//! * the delta since a version brings a peer exactly up to date
//!   ([`check_delta`]);
//! * applying the same update twice changes nothing ([`check_idempotence`]);
//! * any permutation of concurrent updates converges ([`check_permutations`]);
//! * an update whose dependencies are missing is held (`Pending`) and
//!   applied once they arrive ([`check_pending`]);
//! * snapshots round-trip ([`check_snapshot`]);
//! * garbage is an error and leaves the document unchanged
//!   ([`check_garbage`]);
//! * a peer at an unknown or newer version gets a correct fallback
//!   ([`check_foreign_versions`]);
//! * [`Document::take_local_update`] excludes remote updates
//!   ([`check_local_excludes_remote`]);
//! * [`Document::common_version`] and [`Document::prune_to`], when
//!   implemented, keep deltas correct ([`check_pruning`]).
//!
//! Failures panic with a message naming the check, like `assert!`.
//!
//! Over 800 lines as one file on purpose: the checks are one suite over one
//! [`Replay`] and its private helpers, and each stays short.
//!
//! ```
//! use crdt_socket_sync::conformance::{self, EditScript, TextEditor};
//! use crdt_socket_sync::document::{ApplyOutcome, Document, DocumentError};
//!
//! /// A toy "CRDT" that only supports one writer appending text: enough to
//! /// show the shape of an implementation (it is not a real CRDT).
//! #[derive(Default)]
//! struct Log { ops: Vec<String>, sent: usize }
//! # impl Document for Log {
//! #     fn version(&self) -> Vec<u8> { (self.ops.len() as u64).to_be_bytes().to_vec() }
//! #     fn delta_since(&self, v: &[u8]) -> Result<Vec<u8>, DocumentError> {
//! #         let n = u64::from_be_bytes(v.try_into().map_err(|_| DocumentError::Invalid("len".into()))?) as usize;
//! #         if n > self.ops.len() { return Err(DocumentError::DeltaUnavailable) }
//! #         Ok(encode(n, &self.ops[n..]))
//! #     }
//! #     fn apply(&mut self, u: &[u8]) -> ApplyOutcome {
//! #         let Some((start, ops)) = decode(u) else { return ApplyOutcome::Invalid(DocumentError::Invalid("bad".into())) };
//! #         if start > self.ops.len() { return ApplyOutcome::Invalid(DocumentError::Unsupported) }
//! #         let before = self.ops.len();
//! #         for (i, op) in ops.into_iter().enumerate() { if start + i >= self.ops.len() { self.ops.push(op) } }
//! #         if self.sent == before { self.sent = self.ops.len() }
//! #         if self.ops.len() > before { ApplyOutcome::Applied } else { ApplyOutcome::Duplicate }
//! #     }
//! #     fn snapshot(&self) -> Vec<u8> { encode(0, &self.ops) }
//! #     fn load_snapshot(&mut self, s: &[u8]) -> Result<(), DocumentError> {
//! #         match self.apply(s) { ApplyOutcome::Invalid(e) => Err(e), _ => Ok(()) }
//! #     }
//! #     fn take_local_update(&mut self) -> Option<Vec<u8>> {
//! #         (self.sent < self.ops.len()).then(|| { let u = encode(self.sent, &self.ops[self.sent..]); self.sent = self.ops.len(); u })
//! #     }
//! # }
//! # fn encode(start: usize, ops: &[String]) -> Vec<u8> {
//! #     let mut out = b"LOG".to_vec(); out.extend((start as u32).to_be_bytes());
//! #     for op in ops { out.extend((op.len() as u32).to_be_bytes()); out.extend(op.as_bytes()); } out
//! # }
//! # fn decode(mut u: &[u8]) -> Option<(usize, Vec<String>)> {
//! #     u = u.strip_prefix(b"LOG")?; let start = u32::from_be_bytes(u.get(..4)?.try_into().ok()?) as usize; u = &u[4..];
//! #     let mut ops = Vec::new();
//! #     while !u.is_empty() { let n = u32::from_be_bytes(u.get(..4)?.try_into().ok()?) as usize; ops.push(String::from_utf8(u.get(4..4 + n)?.to_vec()).ok()?); u = &u[4 + n..]; }
//! #     Some((start, ops))
//! # }
//!
//! impl TextEditor for Log {
//!     fn insert(&mut self, _pos: usize, text: &str) { self.ops.push(text.to_string()) }
//!     fn delete(&mut self, _pos: usize, _len: usize) { unimplemented!() }
//!     fn text(&self) -> String { self.ops.concat() }
//! }
//!
//! // Appends by one agent: the single-writer checks apply.
//! let script = EditScript::sequential((0..20).map(|i| (i, 0, "x".to_string())));
//! let mut factory = |_id: u64| Log::default();
//! let replay = conformance::replay(&mut factory, &script);
//! conformance::check_delta(&mut factory, &replay);
//! conformance::check_idempotence(&mut factory, &replay);
//! conformance::check_garbage(&mut factory, &replay);
//! ```

use crate::document::{ApplyOutcome, Document, DocumentError};

/// Local text editing with the implementation's native API, for the suite.
///
/// Positions and lengths count Unicode code points in one shared text (the
/// adapters in this crate use a root text named `"text"`).
pub trait TextEditor: Document {
    /// Makes the shared text exist. The suite calls it once, on a "genesis"
    /// replica whose local update every other replica applies before
    /// editing. CRDTs whose root texts exist by name (yrs, loro) keep the
    /// default, which does nothing.
    fn create_text(&mut self) {}

    /// Inserts `text` at code point `pos`, as one local edit.
    fn insert(&mut self, pos: usize, text: &str);

    /// Deletes `len` code points from `pos`, as one local edit.
    fn delete(&mut self, pos: usize, len: usize);

    /// The shared text.
    fn text(&self) -> String;
}

/// One `splice` of a transaction: delete `del` code points at `pos`, then
/// insert `ins` there.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Patch {
    /// Position in code points, relative to the transaction's parents.
    pub pos: usize,
    /// Code points deleted at `pos`.
    pub del: usize,
    /// Text inserted at `pos`.
    pub ins: String,
}

/// One transaction of an [`EditScript`].
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Txn {
    /// The agent (replica) making the edit, `0..EditScript::agents`.
    pub agent: usize,
    /// Indexes of earlier transactions this one was made on top of; empty
    /// means the empty document.
    pub parents: Vec<usize>,
    /// Patches applied in order.
    pub patches: Vec<Patch>,
}

/// A list of transactions by one or more agents (the editing-trace model).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct EditScript {
    /// Number of agents.
    pub agents: usize,
    /// Transactions in causal order (every parent index is smaller).
    pub txns: Vec<Txn>,
    /// The expected final text, when known.
    pub end_content: Option<String>,
}

impl EditScript {
    /// A one-agent script, one transaction per `(pos, del, ins)` patch, each
    /// on top of the previous one. The expected text is computed.
    pub fn sequential(patches: impl IntoIterator<Item = (usize, usize, String)>) -> Self {
        let txns: Vec<Txn> = patches
            .into_iter()
            .enumerate()
            .map(|(i, (pos, del, ins))| Txn {
                agent: 0,
                parents: if i == 0 { vec![] } else { vec![i - 1] },
                patches: vec![Patch { pos, del, ins }],
            })
            .collect();
        let mut script = EditScript {
            agents: 1,
            txns,
            end_content: None,
        };
        script.end_content = script.sequential_text();
        script
    }

    /// The first `n` transactions. The expected text is recomputed for
    /// one-agent scripts and dropped otherwise.
    pub fn prefix(&self, n: usize) -> Self {
        let mut script = EditScript {
            agents: self.agents,
            txns: self.txns[..n.min(self.txns.len())].to_vec(),
            end_content: None,
        };
        if n >= self.txns.len() {
            script.end_content = self.end_content.clone();
        } else {
            script.end_content = script.sequential_text();
        }
        script
    }

    /// The text after all transactions, when every transaction's parent is
    /// its predecessor (one agent typing).
    pub fn sequential_text(&self) -> Option<String> {
        let chained = self
            .txns
            .iter()
            .enumerate()
            .all(|(i, t)| t.parents == if i == 0 { vec![] } else { vec![i - 1] });
        if !chained {
            return None;
        }
        let mut text: Vec<char> = Vec::new();
        for t in &self.txns {
            for p in &t.patches {
                let end = (p.pos + p.del).min(text.len());
                text.splice(p.pos.min(text.len())..end, p.ins.chars());
            }
        }
        Some(text.into_iter().collect())
    }
}

/// The result of [`replay`]: what the other checks work from.
pub struct Replay<D> {
    /// The update creating the shared text (see [`TextEditor::create_text`]),
    /// applied first by every replica.
    pub genesis: Option<Vec<u8>>,
    /// The local update of every transaction, by transaction index (`None`
    /// for transactions without effect).
    pub updates: Vec<Option<Vec<u8>>>,
    /// One replica per agent, all synced to the final state.
    pub replicas: Vec<D>,
    /// The final text.
    pub text: String,
    /// The final version.
    pub version: Vec<u8>,
}

impl<D> Replay<D> {
    /// The non-empty updates in transaction order, genesis first.
    pub fn all_updates(&self) -> Vec<&[u8]> {
        self.genesis
            .iter()
            .chain(self.updates.iter().flatten())
            .map(Vec::as_slice)
            .collect()
    }
}

/// Replica ids the suite hands to the factory: agents get `1..=agents`,
/// helper replicas get ids from here on.
const HELPER_IDS: u64 = 1000;

fn fresh<D: TextEditor>(factory: &mut impl FnMut(u64) -> D, id: u64, genesis: Option<&[u8]>) -> D {
    let mut d = factory(id);
    if let Some(g) = genesis {
        let outcome = d.apply(g);
        assert!(
            matches!(outcome, ApplyOutcome::Applied),
            "genesis update: expected Applied, got {outcome:?}"
        );
    }
    d
}

#[track_caller]
fn assert_same<D: TextEditor>(what: &str, a: &D, text: &str, version: &[u8]) {
    let got = a.text();
    assert!(
        got == text,
        "{what}: text differs ({} vs {} chars)",
        got.chars().count(),
        text.chars().count()
    );
    assert!(a.version() == version, "{what}: version differs");
}

#[track_caller]
fn assert_integrated(what: &str, outcomes: &[ApplyOutcome]) {
    for (i, o) in outcomes.iter().enumerate() {
        assert!(
            matches!(o, ApplyOutcome::Applied | ApplyOutcome::Duplicate),
            "{what}: update {i} gave {o:?}"
        );
    }
}

fn apply_all<D: Document>(d: &mut D, updates: &[&[u8]], batch: usize) -> Vec<ApplyOutcome> {
    let mut out = Vec::with_capacity(updates.len());
    for chunk in updates.chunks(batch.max(1)) {
        d.apply_batch(chunk, &mut out);
    }
    out
}

/// Replays `script`: one replica per agent (ids `1..=agents`), each
/// transaction made with [`TextEditor`] on its agent's replica after
/// delivering (with [`Document::apply_batch`]) exactly the updates of its
/// causal parents, then taken with [`Document::take_local_update`]. Checks
/// that no delivery is refused, that the final texts equal
/// [`EditScript::end_content`] and that all replicas converge.
///
/// # Panics
///
/// When a check fails, or when the script is not replayable this way (an
/// agent's replica already has an update its next transaction's parents
/// exclude).
pub fn replay<D: TextEditor>(factory: &mut impl FnMut(u64) -> D, script: &EditScript) -> Replay<D> {
    let agents = script.agents.max(1);
    let mut genesis_doc = factory(HELPER_IDS);
    genesis_doc.create_text();
    let genesis = genesis_doc.take_local_update();
    drop(genesis_doc);

    let mut replicas: Vec<D> = (0..agents)
        .map(|a| fresh(factory, a as u64 + 1, genesis.as_deref()))
        .collect();
    // Causal history of a transaction as a per-agent count of transactions
    // (agents edit sequentially, so a prefix of each agent's list).
    let mut clocks: Vec<Vec<u32>> = Vec::with_capacity(script.txns.len());
    let mut by_agent: Vec<Vec<usize>> = vec![Vec::new(); agents];
    let mut replica_clock = vec![vec![0u32; agents]; agents];
    let mut updates: Vec<Option<Vec<u8>>> = Vec::with_capacity(script.txns.len());

    for (t, txn) in script.txns.iter().enumerate() {
        let a = txn.agent;
        assert!(a < agents, "transaction {t}: agent {a} out of range");
        let mut target = vec![0u32; agents];
        for &p in &txn.parents {
            assert!(p < t, "transaction {t}: parent {p} is not earlier");
            for (x, y) in target.iter_mut().zip(&clocks[p]) {
                *x = (*x).max(*y);
            }
        }
        let have = &replica_clock[a];
        assert!(
            have.iter().zip(&target).all(|(h, t)| h <= t),
            "transaction {t}: agent {a} already has updates its parents exclude"
        );
        assert_eq!(
            have[a], target[a],
            "transaction {t}: agent {a} does not build on its own last transaction"
        );
        let mut deliver: Vec<usize> = Vec::new();
        for b in 0..agents {
            deliver.extend(&by_agent[b][have[b] as usize..target[b] as usize]);
        }
        deliver.sort_unstable();
        let batch: Vec<&[u8]> = deliver
            .iter()
            .filter_map(|&i| updates[i].as_deref())
            .collect();
        if !batch.is_empty() {
            let outcomes = apply_all(&mut replicas[a], &batch, batch.len());
            assert_integrated(
                &format!("replay: delivery before transaction {t}"),
                &outcomes,
            );
        }
        let r = &mut replicas[a];
        for p in &txn.patches {
            if p.del > 0 {
                r.delete(p.pos, p.del);
            }
            if !p.ins.is_empty() {
                r.insert(p.pos, &p.ins);
            }
        }
        updates.push(r.take_local_update());
        assert!(
            r.take_local_update().is_none(),
            "replay: take_local_update twice in a row returned an update"
        );
        target[a] += 1;
        by_agent[a].push(t);
        replica_clock[a] = target.clone();
        clocks.push(target);
    }

    // Bring every replica up to date.
    let all: Vec<usize> = (0..script.txns.len()).collect();
    for (a, r) in replicas.iter_mut().enumerate() {
        let missing: Vec<&[u8]> = all
            .iter()
            .filter(|&&i| {
                let ag = script.txns[i].agent;
                by_agent[ag][replica_clock[a][ag] as usize..].contains(&i)
            })
            .filter_map(|&i| updates[i].as_deref())
            .collect();
        let outcomes = apply_all(r, &missing, 1024);
        assert_integrated("replay: final delivery", &outcomes);
        assert_eq!(r.pending_bytes(), 0, "replay: pending bytes after sync");
        assert!(
            r.take_local_update().is_none(),
            "replay: remote updates leaked into take_local_update"
        );
    }
    let text = replicas[0].text();
    let version = replicas[0].version();
    if let Some(expected) = &script.end_content {
        assert!(
            &text == expected,
            "replay: final text differs from the script's end content"
        );
    }
    for (a, r) in replicas.iter().enumerate() {
        assert_same(&format!("replay: replica {a}"), r, &text, &version);
    }
    Replay {
        genesis,
        updates,
        replicas,
        text,
        version,
    }
}

/// Versions and snapshots of a fresh replica at a few points while it
/// catches up with all updates in batches.
struct Checkpoints {
    points: Vec<(usize, Vec<u8>, Vec<u8>, String)>,
}

fn checkpoints<D: TextEditor>(factory: &mut impl FnMut(u64) -> D, r: &Replay<D>) -> Checkpoints {
    let all = r.all_updates();
    let mut d = factory(HELPER_IDS + 1);
    let cuts = [
        0,
        all.len() / 4,
        all.len() / 2,
        all.len() * 9 / 10,
        all.len(),
    ];
    let mut points = Vec::new();
    let mut done = 0;
    for &cut in &cuts {
        let outcomes = apply_all(&mut d, &all[done..cut], 512);
        assert_integrated("batch catch-up", &outcomes);
        done = cut;
        points.push((cut, d.version(), d.snapshot(), d.text()));
    }
    assert_same("batch catch-up: final", &d, &r.text, &r.version);
    Checkpoints { points }
}

/// The delta since each of a few past versions (and since the empty
/// version, and since the current one) brings a peer exactly up to date.
pub fn check_delta<D: TextEditor>(factory: &mut impl FnMut(u64) -> D, r: &Replay<D>) {
    let source = &r.replicas[0];
    let cps = checkpoints(factory, r);
    for (i, (cut, version, snapshot, text)) in cps.points.iter().enumerate() {
        let mut peer = factory(HELPER_IDS + 10 + i as u64);
        peer.load_snapshot(snapshot)
            .unwrap_or_else(|e| panic!("delta: loading checkpoint {cut}: {e}"));
        assert_same("delta: checkpoint snapshot", &peer, text, version);
        let delta = source
            .delta_since(version)
            .unwrap_or_else(|e| panic!("delta: since checkpoint {cut} (a known version): {e}"));
        let outcome = peer.apply(&delta);
        assert!(
            matches!(outcome, ApplyOutcome::Applied | ApplyOutcome::Duplicate),
            "delta: since checkpoint {cut} gave {outcome:?}"
        );
        assert_same("delta: peer after delta", &peer, &r.text, &r.version);
        assert_eq!(peer.pending_bytes(), 0, "delta: pending bytes after delta");
    }
    let up_to_date = source
        .delta_since(&r.version)
        .expect("delta: since the current version");
    let mut peer = fresh(factory, HELPER_IDS + 20, None);
    peer.load_snapshot(&source.snapshot()).expect("delta: load");
    let outcome = peer.apply(&up_to_date);
    assert!(
        matches!(outcome, ApplyOutcome::Duplicate | ApplyOutcome::Applied),
        "delta: an empty delta gave {outcome:?}"
    );
    assert_same("delta: empty delta", &peer, &r.text, &r.version);
}

/// Applying updates, deltas and snapshots a second time changes nothing
/// and is not refused.
pub fn check_idempotence<D: TextEditor>(factory: &mut impl FnMut(u64) -> D, r: &Replay<D>) {
    let all = r.all_updates();
    let mut d = fresh(factory, HELPER_IDS + 30, None);
    let outcomes = apply_all(&mut d, &all, 512);
    assert_integrated("idempotence: first pass", &outcomes);
    let sample: Vec<&[u8]> = all
        .iter()
        .take(20)
        .chain(all.iter().skip(all.len().saturating_sub(20)))
        .copied()
        .collect();
    for (i, u) in sample.iter().enumerate() {
        let o = d.apply(u);
        assert!(
            matches!(o, ApplyOutcome::Duplicate | ApplyOutcome::Applied),
            "idempotence: re-applying update {i} gave {o:?}"
        );
    }
    let outcomes = apply_all(&mut d, &sample, 64);
    assert_integrated("idempotence: re-applying a batch", &outcomes);
    let empty = factory(HELPER_IDS + 31).version();
    let delta = r.replicas[0]
        .delta_since(&empty)
        .expect("idempotence: full delta");
    for _ in 0..2 {
        let o = d.apply(&delta);
        assert!(
            matches!(o, ApplyOutcome::Duplicate | ApplyOutcome::Applied),
            "idempotence: re-applying a full delta gave {o:?}"
        );
        d.load_snapshot(&r.replicas[0].snapshot())
            .expect("idempotence: re-loading a snapshot");
    }
    assert_same("idempotence", &d, &r.text, &r.version);
    assert_eq!(d.pending_bytes(), 0, "idempotence: pending bytes");
    assert!(
        d.take_local_update().is_none(),
        "idempotence: remote updates leaked into take_local_update"
    );
}

/// Snapshots round-trip: loading one reproduces text and version, creates
/// no local update, and the loaded replica can keep editing with the
/// source.
pub fn check_snapshot<D: TextEditor>(factory: &mut impl FnMut(u64) -> D, r: &Replay<D>) {
    let snap = r.replicas[0].snapshot();
    let mut d = factory(HELPER_IDS + 40);
    d.load_snapshot(&snap).expect("snapshot: load");
    assert_same("snapshot: loaded", &d, &r.text, &r.version);
    assert!(
        d.take_local_update().is_none(),
        "snapshot: loading created a local update"
    );
    let mut e = factory(HELPER_IDS + 41);
    e.load_snapshot(&d.snapshot()).expect("snapshot: reload");
    assert_same("snapshot: reloaded", &e, &r.text, &r.version);
    // Both keep editing and converge.
    d.insert(0, "<d>");
    let len = e.text().chars().count();
    e.insert(len, "<e>");
    let ud = d
        .take_local_update()
        .expect("snapshot: local edit after load");
    let ue = e
        .take_local_update()
        .expect("snapshot: local edit after load");
    assert!(
        matches!(e.apply(&ud), ApplyOutcome::Applied),
        "snapshot: d → e"
    );
    assert!(
        matches!(d.apply(&ue), ApplyOutcome::Applied),
        "snapshot: e → d"
    );
    assert_eq!(d.text(), e.text(), "snapshot: diverged after edits");
    assert_eq!(d.version(), e.version(), "snapshot: versions diverged");
}

/// Garbage updates, snapshots and versions are refused, and leave the
/// document unchanged.
pub fn check_garbage<D: TextEditor>(factory: &mut impl FnMut(u64) -> D, r: &Replay<D>) {
    let mut d = factory(HELPER_IDS + 50);
    d.load_snapshot(&r.replicas[0].snapshot())
        .expect("garbage: load");
    let real = r
        .updates
        .iter()
        .flatten()
        .max_by_key(|u| u.len())
        .cloned()
        .unwrap_or_default();
    let mut inputs: Vec<Vec<u8>> = vec![
        vec![0x00],
        vec![0xff; 32],
        b"definitely not a CRDT update".to_vec(),
    ];
    if real.len() > 2 {
        inputs.push(real[..real.len() / 2].to_vec());
        inputs.push(real[..real.len() - 1].to_vec());
    }
    let mut seed = 0x9e37_79b9_7f4a_7c15u64;
    for len in [7, 64, 300] {
        inputs.push((0..len).map(|_| (next(&mut seed) >> 56) as u8).collect());
    }
    let (text, version) = (d.text(), d.version());
    for (i, g) in inputs.iter().enumerate() {
        let o = d.apply(g);
        assert!(
            matches!(o, ApplyOutcome::Invalid(_)),
            "garbage: input {i} ({} bytes) gave {o:?}",
            g.len()
        );
        let mut out = Vec::new();
        d.apply_batch(&[g.as_slice()], &mut out);
        assert!(
            matches!(out.as_slice(), [ApplyOutcome::Invalid(_)]),
            "garbage: input {i} in a batch gave {out:?}"
        );
        assert!(
            d.load_snapshot(g).is_err(),
            "garbage: input {i} loaded as a snapshot"
        );
        assert_same(&format!("garbage: after input {i}"), &d, &text, &version);
        assert_eq!(d.pending_bytes(), 0, "garbage: input {i} is held pending");
    }
    for v in [vec![0xff; 9], vec![0xff; 33], b"??".to_vec()] {
        let got = d.delta_since(&v);
        assert!(
            matches!(
                got,
                Err(DocumentError::Invalid(_) | DocumentError::DeltaUnavailable)
            ),
            "garbage: version {v:?} gave {:?}",
            got.map(|d| d.len())
        );
    }
    // A valid update mixed into a batch with garbage still applies.
    if let Some(u) = r.updates.iter().flatten().next() {
        let mut e = fresh(factory, HELPER_IDS + 51, r.genesis.as_deref());
        let mut out = Vec::new();
        e.apply_batch(&[&inputs[1], u], &mut out);
        assert!(
            matches!(
                out.as_slice(),
                [ApplyOutcome::Invalid(_), ApplyOutcome::Applied]
            ),
            "garbage: a batch of garbage then a valid update gave {out:?}"
        );
    }
}

/// `take_local_update` returns local edits only: after syncing, a local
/// edit's update does not carry the remote history (a fresh replica holds
/// it as `Pending`), and applying it to the source converges.
pub fn check_local_excludes_remote<D: TextEditor>(
    factory: &mut impl FnMut(u64) -> D,
    r: &Replay<D>,
) {
    let all = r.all_updates();
    let mut b = factory(HELPER_IDS + 60);
    let outcomes = apply_all(&mut b, &all, 512);
    assert_integrated("local: sync", &outcomes);
    assert!(
        b.take_local_update().is_none(),
        "local: remote updates leaked into take_local_update"
    );
    let len = b.text().chars().count();
    if len < 2 {
        return;
    }
    b.insert(len / 2, "local");
    let u = b
        .take_local_update()
        .expect("local: an edit gives an update");
    assert!(b.take_local_update().is_none(), "local: taken twice");
    let mut f = fresh(factory, HELPER_IDS + 61, r.genesis.as_deref());
    let o = f.apply(&u);
    assert!(
        matches!(o, ApplyOutcome::Pending { held_bytes } if held_bytes > 0),
        "local: the update of one edit in remote text must depend on it, got {o:?}"
    );
    assert!(f.text().chars().count() < len, "local: remote text leaked");
    let mut a = factory(HELPER_IDS + 62);
    a.load_snapshot(&r.replicas[0].snapshot())
        .expect("local: load");
    assert!(matches!(a.apply(&u), ApplyOutcome::Applied), "local: apply");
    assert_eq!(a.text(), b.text(), "local: diverged");
    assert_eq!(a.version(), b.version(), "local: versions diverged");
}

/// Updates whose dependencies are missing are held (`Pending`, counted in
/// `pending_bytes`) and applied once the dependencies arrive.
pub fn check_pending<D: TextEditor>(factory: &mut impl FnMut(u64) -> D, r: &Replay<D>) {
    let all = r.all_updates();
    if all.len() < 8 {
        return;
    }
    let k = all.len() / 2;
    let m = 20.min(all.len() - k - 1);
    let mut p = fresh(factory, HELPER_IDS + 70, None);
    let outcomes = apply_all(&mut p, &all[..k], 512);
    assert_integrated("pending: base", &outcomes);
    let (text, version) = (p.text(), p.version());
    let mut held = false;
    for (i, u) in all[k + 1..=k + m].iter().enumerate() {
        match p.apply(u) {
            ApplyOutcome::Pending { held_bytes } => {
                assert!(held_bytes > 0, "pending: update {i} held 0 bytes");
                held = true;
            }
            ApplyOutcome::Applied => {}
            o => panic!("pending: update {i} without its dependency gave {o:?}"),
        }
    }
    assert!(
        held,
        "pending: none of {m} updates following a missing one was held"
    );
    assert!(p.pending_bytes() > 0, "pending: pending_bytes is 0");
    let _ = (text, version);
    let o = p.apply(all[k]);
    assert!(
        matches!(o, ApplyOutcome::Applied),
        "pending: the missing update gave {o:?}"
    );
    assert_eq!(p.pending_bytes(), 0, "pending: still held after release");
    let mut reference = fresh(factory, HELPER_IDS + 71, None);
    let outcomes = apply_all(&mut reference, &all[..=k + m], 512);
    assert_integrated("pending: reference", &outcomes);
    assert_same(
        "pending: after release",
        &p,
        &reference.text(),
        &reference.version(),
    );
}

/// Concurrent updates of three replicas, applied in several orders
/// (including orders that put an update before its dependency), converge
/// to one state.
pub fn check_permutations<D: TextEditor>(factory: &mut impl FnMut(u64) -> D, r: &Replay<D>) {
    let all = r.all_updates();
    let base_len = all.len().min(50);
    let mut base = fresh(factory, HELPER_IDS + 80, None);
    let outcomes = apply_all(&mut base, &all[..base_len], 512);
    assert_integrated("permutations: base", &outcomes);
    let base_snapshot = base.snapshot();
    let mut seed = 0x2545_f491_4f6c_dd1du64;
    let mut updates: Vec<Vec<u8>> = Vec::new();
    let mut editors: Vec<D> = Vec::new();
    for e in 0..3 {
        let mut d = factory(HELPER_IDS + 81 + e);
        d.load_snapshot(&base_snapshot).expect("permutations: load");
        for i in 0..5 {
            let len = d.text().chars().count();
            let pos = (next(&mut seed) as usize) % (len + 1);
            if len > 0 && i % 3 == 2 {
                d.delete(pos.min(len - 1), 1);
            } else {
                d.insert(pos, &format!("[{e}{i}]"));
            }
            updates.push(d.take_local_update().expect("permutations: edit"));
        }
        editors.push(d);
    }
    let mut reference: Option<(String, Vec<u8>)> = None;
    for round in 0..5 {
        let mut order: Vec<usize> = (0..updates.len()).collect();
        match round {
            0 => {}
            1 => order.reverse(),
            _ => {
                for i in (1..order.len()).rev() {
                    let j = (next(&mut seed) as usize) % (i + 1);
                    order.swap(i, j);
                }
            }
        }
        let mut d = factory(HELPER_IDS + 90 + round);
        d.load_snapshot(&base_snapshot).expect("permutations: load");
        for &i in &order {
            let o = d.apply(&updates[i]);
            assert!(
                // Duplicate: two replicas deleted the same character.
                !matches!(o, ApplyOutcome::Invalid(_)),
                "permutations: round {round}, update {i} gave {o:?}"
            );
        }
        assert_eq!(
            d.pending_bytes(),
            0,
            "permutations: round {round} holds bytes"
        );
        let state = (d.text(), d.version());
        match &reference {
            None => reference = Some(state),
            Some(r) => assert!(*r == state, "permutations: round {round} diverged"),
        }
    }
    // Batched, too.
    let mut d = factory(HELPER_IDS + 99);
    d.load_snapshot(&base_snapshot).expect("permutations: load");
    let batch: Vec<&[u8]> = updates.iter().rev().map(Vec::as_slice).collect();
    let mut out = Vec::new();
    d.apply_batch(&batch, &mut out);
    let (text, version) = reference.expect("at least one round");
    assert_same("permutations: reversed batch", &d, &text, &version);
}

/// Versions from another history (unknown) or ahead of the source (newer)
/// get [`DocumentError::DeltaUnavailable`] or a delta that is correct.
pub fn check_foreign_versions<D: TextEditor>(factory: &mut impl FnMut(u64) -> D, r: &Replay<D>) {
    let source = &r.replicas[0];
    // Unknown: a replica with its own, unrelated history.
    let mut e = factory(HELPER_IDS + 100);
    e.create_text();
    e.insert(0, "unrelated");
    let own = e.take_local_update().expect("foreign: edit");
    match source.delta_since(&e.version()) {
        Err(DocumentError::DeltaUnavailable) => {}
        Err(err) => panic!("foreign: unknown version gave {err}"),
        Ok(delta) => {
            let o = e.apply(&delta);
            assert!(
                matches!(o, ApplyOutcome::Applied | ApplyOutcome::Duplicate),
                "foreign: delta for an unknown version gave {o:?}"
            );
            assert_eq!(e.pending_bytes(), 0, "foreign: delta left pending bytes");
            let mut m = factory(HELPER_IDS + 101);
            m.load_snapshot(&source.snapshot()).expect("foreign: load");
            assert!(
                !matches!(m.apply(&own), ApplyOutcome::Invalid(_)),
                "foreign: merge"
            );
            assert_eq!(
                e.text(),
                m.text(),
                "foreign: delta for an unknown version was wrong"
            );
            assert_eq!(e.version(), m.version(), "foreign: versions differ");
        }
    }
    // Newer: the source's state plus one more edit.
    let mut n = factory(HELPER_IDS + 102);
    n.load_snapshot(&source.snapshot()).expect("foreign: load");
    n.insert(0, "newer");
    let (text, version) = (n.text(), n.version());
    match source.delta_since(&version) {
        Err(DocumentError::DeltaUnavailable) => {}
        Err(err) => panic!("foreign: newer version gave {err}"),
        Ok(delta) => {
            let o = n.apply(&delta);
            assert!(
                matches!(o, ApplyOutcome::Applied | ApplyOutcome::Duplicate),
                "foreign: delta for a newer version gave {o:?}"
            );
            assert_same("foreign: newer peer after delta", &n, &text, &version);
        }
    }
}

/// When [`Document::common_version`] answers, it is the older of two
/// versions of one history; when [`Document::prune_to`] prunes, the text is
/// kept, deltas since later versions stay correct and earlier ones are
/// refused or correct.
pub fn check_pruning<D: TextEditor>(factory: &mut impl FnMut(u64) -> D, r: &Replay<D>) {
    let cps = checkpoints(factory, r);
    let (_, v_old, s_old, t_old) = &cps.points[1];
    let (_, v_mid, s_mid, t_mid) = &cps.points[2];
    let source = &r.replicas[0];
    if let Some(common) = source.common_version(&[v_mid, v_old]) {
        assert!(
            &common == v_old,
            "pruning: common version of v and an older v"
        );
    }
    let mut p = factory(HELPER_IDS + 110);
    p.load_snapshot(&source.snapshot()).expect("pruning: load");
    let pruned = p
        .prune_to(v_mid)
        .expect("pruning: prune_to a known version");
    assert_same("pruning: after prune", &p, &r.text, &r.version);
    let mut peer = factory(HELPER_IDS + 111);
    peer.load_snapshot(s_mid).expect("pruning: load");
    let delta = p
        .delta_since(v_mid)
        .expect("pruning: delta since the prune version");
    assert!(!matches!(peer.apply(&delta), ApplyOutcome::Invalid(_)));
    assert_same(
        "pruning: delta since the prune version",
        &peer,
        &r.text,
        &r.version,
    );
    let _ = t_mid;
    if pruned && v_old != v_mid {
        let mut old = factory(HELPER_IDS + 112);
        old.load_snapshot(s_old).expect("pruning: load");
        assert_eq!(&old.text(), t_old);
        match p.delta_since(v_old) {
            Err(DocumentError::DeltaUnavailable) => {}
            Err(e) => panic!("pruning: delta since a pruned version gave {e}"),
            Ok(delta) => {
                assert!(!matches!(old.apply(&delta), ApplyOutcome::Invalid(_)));
                assert_same(
                    "pruning: delta since a pruned version",
                    &old,
                    &r.text,
                    &r.version,
                );
            }
        }
        // The pruned document's snapshot still loads, and it keeps syncing.
        let mut s = factory(HELPER_IDS + 113);
        s.load_snapshot(&p.snapshot())
            .expect("pruning: pruned snapshot");
        assert_eq!(s.text(), r.text, "pruning: pruned snapshot text");
        p.insert(0, "after-prune");
        let u = p.take_local_update().expect("pruning: edit after prune");
        assert!(
            matches!(s.apply(&u), ApplyOutcome::Applied),
            "pruning: edit"
        );
        assert_eq!(s.text(), p.text(), "pruning: diverged");
    }
}

/// Runs [`replay`] and every check. `factory(id)` must return a new, empty
/// document writing with replica id `id` (all ids differ).
pub fn run_all<D: TextEditor>(mut factory: impl FnMut(u64) -> D, script: &EditScript) {
    let f = &mut factory;
    let r = replay(f, script);
    check_delta(f, &r);
    check_idempotence(f, &r);
    check_snapshot(f, &r);
    check_garbage(f, &r);
    check_local_excludes_remote(f, &r);
    check_pending(f, &r);
    check_permutations(f, &r);
    check_foreign_versions(f, &r);
    check_pruning(f, &r);
}

/// xorshift64*: deterministic pseudo-random numbers for the checks.
fn next(state: &mut u64) -> u64 {
    *state ^= *state >> 12;
    *state ^= *state << 25;
    *state ^= *state >> 27;
    state.wrapping_mul(0x2545_f491_4f6c_dd1d)
}
