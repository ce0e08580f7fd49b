//! Frame codec benchmarks, each next to a bare baseline.
//!
//! Cases: one 30-byte update, a ~1 KiB `UpdateBatch` (32 × 30 bytes) and a
//! 1 MiB snapshot chunk. For each, encode and decode with the codec and with
//! the bare minimum it does: `postcard` of the same message plus
//! `crc32fast::hash` over the bytes.
//!
//! After criterion's report, `main` times every pair again (interleaved,
//! median of many samples) and prints the ratio ours / baseline and the
//! 1 MiB decode throughput, so the numbers compared come from the same run.
//!
//! `cargo bench --bench codec` (about a minute and a half).

use std::hint::black_box;
use std::time::{Duration, Instant};

use crdt_socket_sync::Limits;
use crdt_socket_sync::wire::{Bytes, DocId, Encoder, Message, MessageDecoder, SyncKind};
use criterion::{Criterion, Throughput};

/// Deterministic incompressible bytes.
fn noise(len: usize, seed: u64) -> Vec<u8> {
    let mut x = seed.wrapping_mul(0x9e37_79b9_7f4a_7c15) | 1;
    (0..len)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            (x >> 32) as u8
        })
        .collect()
}

struct Case {
    name: &'static str,
    message: Message,
    limits: Limits,
}

fn cases() -> Vec<Case> {
    let big = Limits {
        max_frame_len: 2 << 20,
        ..Limits::default()
    };
    vec![
        Case {
            name: "update_30B",
            message: Message::Update {
                doc: DocId(3),
                seq: 1000,
                data: Bytes(noise(30, 1)),
            },
            limits: Limits::default(),
        },
        Case {
            name: "batch_1KiB",
            message: Message::UpdateBatch {
                doc: DocId(3),
                first_seq: 1000,
                data: (0..32).map(|i| Bytes(noise(30, i))).collect(),
            },
            limits: Limits::default(),
        },
        Case {
            name: "snapshot_1MiB",
            message: Message::SyncChunk {
                doc: DocId(3),
                transfer: 7,
                kind: SyncKind::Snapshot,
                offset: 0,
                total: 1 << 20,
                data: Bytes(noise(1 << 20, 2)),
            },
            limits: big,
        },
    ]
}

/// The four operations of one case, as reusable closures.
struct Ops {
    frame_len: usize,
    ours_encode: Box<dyn FnMut()>,
    base_encode: Box<dyn FnMut()>,
    ours_decode: Box<dyn FnMut()>,
    base_decode: Box<dyn FnMut()>,
}

fn ops(case: &Case) -> Ops {
    let message = case.message.clone();
    let limits = case.limits;
    let mut frame = Vec::new();
    Encoder::new(&limits)
        .encode(std::slice::from_ref(&message), &mut frame)
        .unwrap();
    let plain = postcard::to_allocvec(&message).unwrap();
    let frame_len = frame.len();

    let ours_encode = {
        let message = message.clone();
        let mut encoder = Encoder::new(&limits);
        let mut out = Vec::with_capacity(frame_len);
        Box::new(move || {
            out.clear();
            encoder
                .encode(std::slice::from_ref(black_box(&message)), &mut out)
                .unwrap();
            black_box(&out);
        }) as Box<dyn FnMut()>
    };
    let base_encode = {
        let message = message.clone();
        let mut buf = vec![0u8; plain.len() + 16];
        Box::new(move || {
            let used = postcard::to_slice(black_box(&message), &mut buf).unwrap();
            black_box(crc32fast::hash(used));
        }) as Box<dyn FnMut()>
    };
    let ours_decode = {
        let frame = frame.clone();
        let mut decoder = MessageDecoder::new(limits);
        let mut out = Vec::with_capacity(1);
        Box::new(move || {
            out.clear();
            decoder.decode(black_box(&frame), &mut out).unwrap();
            black_box(&out);
        }) as Box<dyn FnMut()>
    };
    let base_decode = {
        Box::new(move || {
            let bytes = black_box(&plain[..]);
            black_box(crc32fast::hash(bytes));
            let m: Message = postcard::from_bytes(bytes).unwrap();
            black_box(m);
        }) as Box<dyn FnMut()>
    };
    Ops {
        frame_len,
        ours_encode,
        base_encode,
        ours_decode,
        base_decode,
    }
}

fn criterion_benches(c: &mut Criterion, all: &mut [(&'static str, Ops)]) {
    for (name, ops) in all.iter_mut() {
        let mut group = c.benchmark_group(format!("encode/{name}"));
        group.throughput(Throughput::Bytes(ops.frame_len as u64));
        group.bench_function("ours", |b| b.iter(&mut ops.ours_encode));
        group.bench_function("baseline", |b| b.iter(&mut ops.base_encode));
        group.finish();
        let mut group = c.benchmark_group(format!("decode/{name}"));
        group.throughput(Throughput::Bytes(ops.frame_len as u64));
        group.bench_function("ours", |b| b.iter(&mut ops.ours_decode));
        group.bench_function("baseline", |b| b.iter(&mut ops.base_decode));
        group.finish();
    }
}

/// Per-call times (ns) of `a` and `b`: (median, minimum) of each, timed in
/// alternating samples of about 1 ms so drift and load affect both alike.
fn paired_ns(a: &mut dyn FnMut(), b: &mut dyn FnMut(), samples: usize) -> [(f64, f64); 2] {
    // Calibrate the iteration count on `a`.
    let mut iters = 1u64;
    loop {
        let start = Instant::now();
        for _ in 0..iters {
            a();
        }
        if start.elapsed() >= Duration::from_millis(1) || iters >= 1 << 30 {
            break;
        }
        iters *= 2;
    }
    let time = |f: &mut dyn FnMut()| {
        let start = Instant::now();
        for _ in 0..iters {
            f();
        }
        start.elapsed().as_nanos() as f64 / iters as f64
    };
    let (mut ta, mut tb) = (Vec::new(), Vec::new());
    for _ in 0..samples {
        ta.push(time(a));
        tb.push(time(b));
    }
    [stats(&mut ta), stats(&mut tb)]
}

fn stats(v: &mut [f64]) -> (f64, f64) {
    v.sort_by(f64::total_cmp);
    (v[v.len() / 2], v[0])
}

fn summary(all: &mut [(&'static str, Ops)]) {
    println!();
    println!("codec vs bare postcard + crc32, per call, this run (median; ratio of minima too):");
    println!(
        "{:<15} {:<7} {:>12} {:>12} {:>7} {:>9}",
        "case", "op", "ours", "baseline", "ratio", "min ratio"
    );
    let mut snapshot_decode = None;
    for (name, ops) in all.iter_mut() {
        let encode = paired_ns(&mut ops.ours_encode, &mut ops.base_encode, 201);
        let decode = paired_ns(&mut ops.ours_decode, &mut ops.base_decode, 201);
        for (op, [ours, base]) in [("encode", encode), ("decode", decode)] {
            println!(
                "{:<15} {:<7} {:>12} {:>12} {:>6.2}x {:>8.2}x",
                name,
                op,
                fmt_ns(ours.0),
                fmt_ns(base.0),
                ours.0 / base.0,
                ours.1 / base.1
            );
        }
        if *name == "snapshot_1MiB" {
            snapshot_decode = Some((ops.frame_len, decode[0].0));
        }
    }
    if let Some((len, ns)) = snapshot_decode {
        println!(
            "1 MiB frame decode throughput: {:.2} GB/s ({len} bytes in {})",
            len as f64 / ns,
            fmt_ns(ns)
        );
    }
}

fn fmt_ns(ns: f64) -> String {
    if ns >= 1e6 {
        format!("{:.3} ms", ns / 1e6)
    } else if ns >= 1e3 {
        format!("{:.3} µs", ns / 1e3)
    } else {
        format!("{ns:.1} ns")
    }
}

fn main() {
    let mut all: Vec<_> = cases().iter().map(|c| (c.name, ops(c))).collect();
    let mut criterion = Criterion::default()
        .warm_up_time(Duration::from_millis(500))
        .measurement_time(Duration::from_secs(2))
        .sample_size(30)
        .without_plots()
        .configure_from_args();
    criterion_benches(&mut criterion, &mut all);
    criterion.final_summary();
    // `cargo test --benches` runs each benchmark once, and `--profile-time`
    // runs one for a profiler; skip the timing then.
    let args: Vec<String> = std::env::args().collect();
    let skip = ["--test", "--profile-time"];
    if args.iter().any(|a| a == "--bench") && !args.iter().any(|a| skip.contains(&a.as_str())) {
        summary(&mut all);
    }
}
