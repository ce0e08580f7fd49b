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
