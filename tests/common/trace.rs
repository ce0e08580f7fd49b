//! Loading the editing traces in `traces/` at the root of the repository
//! (gzipped JSON, CC BY 4.0: see `traces/README.md` for their origin and
//! attribution), shared by the conformance tests, the demo and the benches.
#![allow(dead_code)]

use std::io::Read;

/// One `splice`: delete `del` code points at `pos`, then insert `ins`.
#[derive(Clone, Debug)]
pub struct Patch {
    pub pos: usize,
    pub del: usize,
    pub ins: String,
}

/// One transaction of a trace.
#[derive(Clone, Debug)]
pub struct Txn {
    pub agent: usize,
    /// Earlier transactions this one builds on (sequential traces: the
    /// previous one).
    pub parents: Vec<usize>,
    pub patches: Vec<Patch>,
}

/// A whole trace.
#[derive(Clone, Debug)]
pub struct Trace {
    pub agents: usize,
    pub txns: Vec<Txn>,
    pub end_content: String,
}

/// Path of a trace file by name (`"automerge-paper"`, `"friendsforever"`).
pub fn path(name: &str) -> String {
    // `CRDT_TRACES_DIR` points at other copies of the same files.
    match std::env::var("CRDT_TRACES_DIR") {
        Ok(dir) => format!("{dir}/{name}.json.gz"),
        Err(_) => format!("{}/traces/{name}.json.gz", env!("CARGO_MANIFEST_DIR")),
    }
}

/// Loads a trace by name; panics with the reason when it cannot (tests).
pub fn load(name: &str) -> Trace {
    try_load(name).unwrap_or_else(|e| panic!("{e}"))
}

/// Loads a trace by name, or says in one line why it could not.
pub fn try_load(name: &str) -> Result<Trace, String> {
    let path = path(name);
    let file = std::fs::File::open(&path).map_err(|e| format!("cannot open trace {path}: {e}"))?;
    let mut json = String::new();
    flate2::read::GzDecoder::new(file)
        .read_to_string(&mut json)
        .map_err(|e| format!("trace {path} is not gzipped UTF-8: {e}"))?;
    Ok(parse(&json))
}

fn parse(json: &str) -> Trace {
    let v: serde_json::Value = serde_json::from_str(json).expect("trace is JSON");
    let concurrent = v["kind"] == "concurrent";
    let txns: Vec<Txn> = v["txns"]
        .as_array()
        .expect("txns")
        .iter()
        .enumerate()
        .map(|(i, t)| Txn {
            agent: if concurrent {
                t["agent"].as_u64().expect("agent") as usize
            } else {
                0
            },
            parents: if concurrent {
                t["parents"]
                    .as_array()
                    .expect("parents")
                    .iter()
                    .map(|p| p.as_u64().expect("parent index") as usize)
                    .collect()
            } else if i == 0 {
                vec![]
            } else {
                vec![i - 1]
            },
            patches: t["patches"]
                .as_array()
                .expect("patches")
                .iter()
                .map(|p| Patch {
                    pos: p[0].as_u64().expect("pos") as usize,
                    del: p[1].as_u64().expect("del") as usize,
                    ins: p[2].as_str().expect("ins").to_string(),
                })
                .collect(),
        })
        .collect();
    Trace {
        agents: if concurrent {
            v["numAgents"].as_u64().expect("numAgents") as usize
        } else {
            1
        },
        txns,
        end_content: v["endContent"].as_str().expect("endContent").to_string(),
    }
}
