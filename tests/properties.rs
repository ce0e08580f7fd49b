//! Property tests over random schedules of edits, cuts, stalls, clock jumps
//! and reconnects: no busy loop at any step, and convergence at the end with
//! every outbox emptied through acknowledgements.

mod common;

use std::time::Duration;

use common::*;
use crdt_socket_sync::client::ClientConfig;
use crdt_socket_sync::registry::Registry;
use crdt_socket_sync::server::{AllowAll, ServerConfig};
use proptest::prelude::*;

#[derive(Clone, Debug)]
enum Op {
    Edit { client: usize, doc: usize },
    Cut { client: usize },
    Offline { client: usize, offline: bool },
    Stall { client: usize, stalled: bool },
    Advance { ms: u64 },
}

fn op(clients: usize, docs: usize) -> impl Strategy<Value = Op> {
    prop_oneof![
        6 => (0..clients, 0..docs).prop_map(|(client, doc)| Op::Edit { client, doc }),
        1 => (0..clients).prop_map(|client| Op::Cut { client }),
        1 => (0..clients, any::<bool>()).prop_map(|(client, offline)| Op::Offline { client, offline }),
        1 => (0..clients, any::<bool>()).prop_map(|(client, stalled)| Op::Stall { client, stalled }),
        2 => (0u64..15_000).prop_map(|ms| Op::Advance { ms }),
    ]
}

fn scenario() -> impl Strategy<Value = (usize, usize, u64, Vec<Op>)> {
    (1usize..6, 1usize..4, any::<u64>()).prop_flat_map(|(clients, docs, seed)| {
        (
            Just(clients),
            Just(docs),
            Just(seed),
            prop::collection::vec(op(clients, docs), 1..60),
        )
    })
}

/// After `handle_timeout(now)`, each session either has output queued or a
/// next deadline later than `now`: no busy loop.
fn assert_no_busy_loop(n: &mut Net<AllowAll>) {
    let now = n.now;
    for (i, c) in n.clients.iter_mut().enumerate() {
        c.session.handle_timeout(now);
        let has_output = c.session.queued_bytes() > 0;
        let later = c.session.poll_timeout().is_none_or(|t| t > now);
        assert!(has_output || later, "client {i} would spin at {now:?}");
    }
    n.hub.handle_timeout(now, &mut n.server_reg);
    let later = n.hub.poll_timeout().is_none_or(|t| t > now);
    let has_output = n
        .clients
        .iter()
        .filter_map(|c| c.conn)
        .filter_map(|conn| n.hub.session(conn))
        .any(|s| s.queued_messages() > 0);
    assert!(later || has_output, "hub would spin");
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 256, ..ProptestConfig::default() })]

    #[test]
    fn random_schedules_converge_without_busy_loops((clients, docs, seed, ops) in scenario()) {
        let mut n = Net::new(ServerConfig { seed, ..ServerConfig::default() }, AllowAll);
        n.record = false;
        let names: Vec<String> = (0..docs).map(|d| format!("doc{d}")).collect();
        for i in 0..clients {
            n.add_client(ClientConfig { seed: seed ^ i as u64, ..client_config(&format!("c{i}")) });
            for name in &names {
                n.open(i, name);
            }
            n.connect(i);
        }
        let mut edits = 0;
        for op in ops {
            match op {
                Op::Edit { client, doc } => {
                    edits += 1;
                    n.edit(client, &names[doc], &format!("<{client}.{edits}>"));
                }
                Op::Cut { client } => n.cut(client),
                Op::Offline { client, offline } => n.clients[client].offline = offline,
                Op::Stall { client, stalled } => {
                    n.clients[client].stalled = stalled;
                    n.run();
                }
                Op::Advance { ms } => n.advance(Duration::from_millis(ms)),
            }
            assert_no_busy_loop(&mut n);
        }
        // Heal: everyone online and reading, then let timers and reconnects run.
        for c in &mut n.clients {
            c.offline = false;
            c.stalled = false;
        }
        n.run();
        for _ in 0..40 {
            n.advance(Duration::from_millis(500));
        }
        for name in &names {
            let server = n.server_text(name);
            let ops_on_server = n.server_reg.get(name).map_or(0, |d| d.op_count());
            for i in 0..clients {
                let text = n.text(i, name);
                prop_assert!(text == server, "client {} diverged on {}: {} vs {} bytes", i, name, text.len(), server.len());
                prop_assert_eq!(n.clients[i].session.unacknowledged(name), 0);
            }
            prop_assert!(ops_on_server <= edits);
        }
        let total: usize = names.iter().map(|d| n.server_reg.get(d).map_or(0, |d| d.op_count())).sum();
        prop_assert_eq!(total, edits, "every edit reached the server");
    }
}

// ---------------------------------------------------------------------------
// The simulator under proptest: shrinkable schedules over 1–20 clients and
// 1–5 documents, with OpLog documents and with yrs documents edited by the
// real automerge-paper trace.
// ---------------------------------------------------------------------------

#[cfg(feature = "sim")]
mod simulated {
    use crdt_socket_sync::sim::{Sim, SimConfig, SimDoc, SimOp};
    use crdt_socket_sync::testing::OpLog;
    use proptest::prelude::*;

    pub fn sim_op() -> impl Strategy<Value = SimOp> {
        prop_oneof![
            8 => (any::<u8>(), any::<u8>()).prop_map(|(client, doc)| SimOp::Edit { client, doc }),
            2 => (any::<u8>(), any::<u8>(), 0u8..30).prop_map(|(client, doc, count)| SimOp::Burst { client, doc, count }),
            2 => any::<u8>().prop_map(|client| SimOp::Cut { client }),
            1 => (any::<u8>(), any::<bool>()).prop_map(|(client, on)| SimOp::Stall { client, on }),
            1 => (any::<u8>(), any::<bool>()).prop_map(|(client, on)| SimOp::Offline { client, on }),
            1 => Just(SimOp::Restart),
            3 => (0u16..5000).prop_map(|ms| SimOp::Advance { ms }),
        ]
    }

    pub fn check<D: SimDoc>(
        clients: usize,
        docs: usize,
        seed: u64,
        ops: Vec<SimOp>,
    ) -> Result<(), TestCaseError> {
        let mut sim: Sim<D> = Sim::new(SimConfig {
            clients,
            docs,
            seed,
            ..SimConfig::default()
        });
        for op in ops {
            sim.apply(op)
                .map_err(|f| TestCaseError::fail(f.to_string()))?;
        }
        sim.heal().map_err(|f| TestCaseError::fail(f.to_string()))?;
        sim.check_converged()
            .map_err(|f| TestCaseError::fail(f.to_string()))
    }

    proptest! {
        #![proptest_config(ProptestConfig { cases: 48, ..ProptestConfig::default() })]

        #[test]
        fn simulated_schedules_converge(
            clients in 1usize..=20,
            docs in 1usize..=5,
            seed: u64,
            ops in prop::collection::vec(sim_op(), 1..80),
        ) {
            check::<OpLog>(clients, docs, seed, ops)?;
        }
    }

    /// yrs documents whose local edits replay the automerge-paper trace
    /// (positions clamped to each replica's current length).
    #[cfg(feature = "yrs")]
    mod traced {
        use super::*;
        use crdt_socket_sync::adapters::yrs::YrsDocument;
        use crdt_socket_sync::document::{ApplyOutcome, Document, DocumentError};
        use crdt_socket_sync::rng::Rng;
        use std::sync::OnceLock;

        use crate::common::trace;

        fn patches() -> &'static [(usize, usize, String)] {
            static P: OnceLock<Vec<(usize, usize, String)>> = OnceLock::new();
            P.get_or_init(|| {
                trace::load("automerge-paper")
                    .txns
                    .into_iter()
                    .take(20_000)
                    .flat_map(|t| t.patches)
                    .map(|p| (p.pos, p.del, p.ins))
                    .collect()
            })
        }

        pub struct Traced(YrsDocument);

        impl Document for Traced {
            fn version(&self) -> Vec<u8> {
                self.0.version()
            }
            fn delta_since(&self, v: &[u8]) -> Result<Vec<u8>, DocumentError> {
                self.0.delta_since(v)
            }
            fn apply(&mut self, u: &[u8]) -> ApplyOutcome {
                self.0.apply(u)
            }
            fn apply_batch(&mut self, u: &[&[u8]], out: &mut Vec<ApplyOutcome>) {
                self.0.apply_batch(u, out)
            }
            fn pending_bytes(&self) -> usize {
                self.0.pending_bytes()
            }
            fn snapshot(&self) -> Vec<u8> {
                self.0.snapshot()
            }
            fn load_snapshot(&mut self, s: &[u8]) -> Result<(), DocumentError> {
                self.0.load_snapshot(s)
            }
            fn take_local_update(&mut self) -> Option<Vec<u8>> {
                self.0.take_local_update()
            }
        }

        impl SimDoc for Traced {
            fn replica(client: u32) -> Self {
                Traced(YrsDocument::replica(client))
            }
            fn random_edit(&mut self, _rng: &mut Rng, tag: u64) {
                use yrs::{Text, Transact};
                let all = patches();
                let (pos, del, ins) = &all[tag as usize % all.len()];
                let text = self.0.get_or_insert_text("body");
                let mut txn = self.0.transact_mut();
                let len = text.len(&txn) as usize;
                let pos = (*pos).min(len) as u32;
                let del = (*del).min(len - pos as usize) as u32;
                if del > 0 {
                    text.remove_range(&mut txn, pos, del);
                }
                if !ins.is_empty() {
                    text.insert(&mut txn, pos, ins);
                }
            }
            fn digest(&self) -> Vec<u8> {
                self.0.digest()
            }
        }

        proptest! {
            #![proptest_config(ProptestConfig { cases: 12, ..ProptestConfig::default() })]

            #[test]
            fn trace_edits_on_yrs_converge(
                clients in 1usize..=8,
                docs in 1usize..=3,
                seed: u64,
                ops in prop::collection::vec(sim_op(), 1..60),
            ) {
                check::<Traced>(clients, docs, seed, ops)?;
            }
        }
    }
}

/// The hub applies an input that is exactly one frame holding a single
/// `Update` without building a message (`Hub::apply_one`). Whatever such
/// frames carry — a valid op, garbage, an unknown handle, any sequence
/// number — the hub must answer exactly as its general path does. The
/// general path is reached with stream framing and each frame given in two
/// pieces (a partial frame never takes the shortcut).
mod single_update_fast_path {
    use super::*;
    use crdt_socket_sync::Framing;
    use crdt_socket_sync::wire::{Bytes, DocId, Message};

    /// An OpLog op (see `testing::OpLog`) or arbitrary bytes.
    fn payload() -> impl Strategy<Value = Vec<u8>> {
        prop_oneof![
            (1u32..4, 0u32..6, prop::collection::vec(any::<u8>(), 0..6)).prop_map(
                |(client, counter, text)| {
                    let mut op = vec![crdt_socket_sync::testing::MAGIC];
                    op.extend_from_slice(&(client + 10).to_le_bytes());
                    op.extend_from_slice(&counter.to_le_bytes());
                    op.extend_from_slice(&(text.len() as u16).to_le_bytes());
                    op.extend_from_slice(&text);
                    op
                }
            ),
            prop::collection::vec(any::<u8>(), 0..12),
        ]
    }

    /// Everything the hub sent and reported while handling `inputs` from a
    /// raw connection that opened "doc", as text.
    /// `split`: each update frame is given in two pieces (stream framing
    /// only), which keeps it off the shortcut.
    fn run(framing: Framing, split: bool, inputs: &[(u32, u64, Vec<u8>)]) -> Vec<String> {
        let (mut n, raw) = with_raw_connection(
            ServerConfig {
                framing,
                ..ServerConfig::default()
            },
            AllowAll,
        );
        let hello = hello("raw", &[]);
        let open = Message::Open {
            name: "doc".into(),
            version: Bytes(vec![]),
            resume: None,
        };
        let mut log = Vec::new();
        let step = |n: &mut Net<AllowAll>, bytes: &[u8], log: &mut Vec<String>| {
            n.hub.handle_input(raw, n.now, bytes, &mut n.server_reg);
            while let Some((conn, f)) = n.hub.poll_transmit() {
                log.extend(frame_text(&f).into_iter().map(|t| format!("{conn:?} {t}")));
            }
            while let Some(e) = n.hub.poll_event() {
                log.push(format!("{e:?}"));
            }
        };
        step(&mut n, &frame(&[hello, open]), &mut log);
        log.clear();
        for (doc, seq, data) in inputs {
            let f = frame(&[Message::Update {
                doc: DocId(*doc),
                seq: *seq,
                data: Bytes(data.clone()),
            }]);
            if split {
                step(&mut n, &f[..1], &mut log);
                step(&mut n, &f[1..], &mut log);
            } else {
                step(&mut n, &f, &mut log);
            }
        }
        log.push(n.server_text("doc"));
        log
    }

    #[test]
    fn a_valid_update_is_applied_acked_and_forwarded() {
        let op = |counter: u32| {
            let mut op = vec![crdt_socket_sync::testing::MAGIC];
            op.extend_from_slice(&10u32.to_le_bytes());
            op.extend_from_slice(&counter.to_le_bytes());
            op.extend_from_slice(&1u16.to_le_bytes());
            op.push(b'q');
            op
        };
        for (framing, split) in [
            (Framing::Datagram, false),
            (Framing::Stream, false),
            (Framing::Stream, true),
        ] {
            let log = run(framing, split, &[(0, 1, op(1)), (0, 2, op(2))]);
            assert_eq!(
                log.iter().filter(|l| l.contains("Broadcast")).count(),
                4,
                "{log:#?}"
            );
            assert!(log.iter().any(|l| l.ends_with("Ack #0 2/0")), "{log:?}");
            assert_eq!(log.last().unwrap(), "qq");
        }
    }

    proptest! {
        #![proptest_config(ProptestConfig { cases: 128, ..ProptestConfig::default() })]

        #[test]
        fn answers_like_the_general_path(
            inputs in prop::collection::vec((0u32..3, 0u64..8, payload()), 1..24)
        ) {
            let general = run(Framing::Stream, true, &inputs);
            let fast = run(Framing::Datagram, false, &inputs);
            prop_assert_eq!(&fast, &general);
            // A stream read holding exactly one frame takes the shortcut too.
            let stream_fast = run(Framing::Stream, false, &inputs);
            prop_assert_eq!(&stream_fast, &general);
        }
    }
}
