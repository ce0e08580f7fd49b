//! The conformance suite for the three adapters, driven by real editing
//! traces: automerge-paper (one author typing) and friendsforever (two
//! concurrent agents, replayed along the trace's `parents`).

mod common;

use common::trace;
use crdt_socket_sync::adapters::automerge::AutomergeDocument;
use crdt_socket_sync::adapters::loro::LoroDocument;
use crdt_socket_sync::adapters::yrs::YrsDocument;
use crdt_socket_sync::conformance::{self, EditScript, Patch, Txn};

/// Converts a trace into a script of its first `n` transactions.
fn script(name: &str, n: usize) -> EditScript {
    let t = trace::load(name);
    let full = EditScript {
        agents: t.agents,
        txns: t
            .txns
            .into_iter()
            .map(|x| Txn {
                agent: x.agent,
                parents: x.parents,
                patches: x
                    .patches
                    .into_iter()
                    .map(|p| Patch {
                        pos: p.pos,
                        del: p.del,
                        ins: p.ins,
                    })
                    .collect(),
            })
            .collect(),
        end_content: Some(t.end_content),
    };
    full.prefix(n)
}

#[test]
fn yrs_sequential() {
    conformance::run_all(
        YrsDocument::with_client_id,
        &script("automerge-paper", 6_000),
    );
}

#[test]
fn yrs_concurrent() {
    conformance::run_all(
        YrsDocument::with_client_id,
        &script("friendsforever", 6_000),
    );
}

#[test]
fn loro_sequential() {
    conformance::run_all(
        LoroDocument::with_peer_id,
        &script("automerge-paper", 6_000),
    );
}

#[test]
fn loro_concurrent() {
    conformance::run_all(LoroDocument::with_peer_id, &script("friendsforever", 4_000));
}

#[test]
fn automerge_sequential() {
    conformance::run_all(
        AutomergeDocument::with_actor,
        &script("automerge-paper", 1_500),
    );
}

#[test]
fn automerge_concurrent() {
    conformance::run_all(
        AutomergeDocument::with_actor,
        &script("friendsforever", 1_500),
    );
}
