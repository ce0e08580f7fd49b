//! A yrs update of a few bytes must not make the server allocate in
//! proportion to the counts it declares: yrs reserves room for every block,
//! map entry and array element a count announces before reading them, so
//! the adapter validates the counts against the bytes that follow first.
//!
//! The largest single allocation request is recorded by a global allocator,
//! which refuses (returns null for) any request over 256 MiB, so even a
//! failing run never commits the memory asked for: yrs' `try_reserve` turns
//! the refusal into an error.
#![cfg(feature = "yrs")]

use std::alloc::{GlobalAlloc, Layout, System};
use std::sync::Mutex;
use std::sync::atomic::{AtomicUsize, Ordering};

use crdt_socket_sync::adapters::yrs::YrsDocument;
use crdt_socket_sync::document::{ApplyOutcome, Document};

struct Recording;

static LARGEST: AtomicUsize = AtomicUsize::new(0);
const REFUSE_OVER: usize = 256 << 20;

unsafe impl GlobalAlloc for Recording {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        LARGEST.fetch_max(layout.size(), Ordering::Relaxed);
        if layout.size() > REFUSE_OVER {
            return std::ptr::null_mut();
        }
        unsafe { System.alloc(layout) }
    }
    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        unsafe { System.dealloc(ptr, layout) };
    }
    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        LARGEST.fetch_max(new_size, Ordering::Relaxed);
        if new_size > REFUSE_OVER {
            return std::ptr::null_mut();
        }
        unsafe { System.realloc(ptr, layout, new_size) }
    }
}

#[global_allocator]
static GLOBAL: Recording = Recording;

/// The tests read one global maximum.
static SERIAL: Mutex<()> = Mutex::new(());

/// Applies `update` to a fresh server document and returns the outcome
/// and the largest allocation requested while applying it.
fn apply_measured(update: &[u8]) -> (ApplyOutcome, usize) {
    let mut doc = YrsDocument::server();
    LARGEST.store(0, Ordering::Relaxed);
    let outcome = doc.apply(update);
    (outcome, LARGEST.load(Ordering::Relaxed))
}

/// Bytes one input of `len` bytes may make the adapter request at once.
fn budget(len: usize) -> usize {
    64 * 1024 + 256 * len
}

#[test]
fn declared_block_count_does_not_size_an_allocation() {
    let _serial = SERIAL.lock().unwrap_or_else(|e| e.into_inner());
    // One client with 2^28 blocks announced, none present: 9 bytes.
    let update = [0x01, 0x80, 0x80, 0x80, 0x80, 0x01, 0x01, 0x00, 0x00];
    let (outcome, largest) = apply_measured(&update);
    assert!(matches!(outcome, ApplyOutcome::Invalid(_)), "{outcome:?}");
    assert!(
        largest <= budget(update.len()),
        "a {}-byte update requested {largest} bytes at once",
        update.len()
    );
}

#[test]
fn declared_client_count_does_not_size_an_allocation() {
    let _serial = SERIAL.lock().unwrap_or_else(|e| e.into_inner());
    // 2^26 clients announced, none present.
    let update = [0x80, 0x80, 0x80, 0x20, 0x00];
    let (outcome, largest) = apply_measured(&update);
    assert!(matches!(outcome, ApplyOutcome::Invalid(_)), "{outcome:?}");
    assert!(largest <= budget(update.len()), "requested {largest} bytes");
}

#[test]
fn declared_any_array_length_does_not_size_an_allocation() {
    let _serial = SERIAL.lock().unwrap_or_else(|e| e.into_inner());
    // One client, one item: info 8 (ContentAny), parent = root "t",
    // content: 2^28 values announced, none present.
    let update = [
        0x01, 0x01, 0x01, 0x00, // 1 client, 1 block, client 1, clock 0
        0x08, 0x01, 0x01, b't', // info, parent info: root name "t"
        0x80, 0x80, 0x80, 0x80, 0x01, // 2^28 values
        0x00, // empty delete set
    ];
    let (outcome, largest) = apply_measured(&update);
    assert!(matches!(outcome, ApplyOutcome::Invalid(_)), "{outcome:?}");
    assert!(largest <= budget(update.len()), "requested {largest} bytes");
}

#[test]
fn deeply_nested_any_values_are_refused_without_recursing() {
    let _serial = SERIAL.lock().unwrap_or_else(|e| e.into_inner());
    // An array in an array in ... 200 000 deep: yrs decodes `Any`
    // recursively, one stack frame per level.
    let mut update = vec![0x01, 0x01, 0x01, 0x00, 0x08, 0x01, 0x01, b't', 0x01];
    for _ in 0..200_000 {
        update.extend([117, 0x01]);
    }
    update.extend([126, 0x00]);
    let (outcome, _) = apply_measured(&update);
    assert!(matches!(outcome, ApplyOutcome::Invalid(_)), "{outcome:?}");
}

#[test]
fn ordinary_updates_still_apply() {
    use yrs::{Array, Map, Text, Transact};
    let _serial = SERIAL.lock().unwrap_or_else(|e| e.into_inner());
    let mut author = YrsDocument::with_client_id(7);
    {
        let text = author.get_or_insert_text("t");
        let map = author.get_or_insert_map("m");
        let array = author.get_or_insert_array("a");
        let mut txn = author.transact_mut();
        text.insert(&mut txn, 0, "hello world");
        text.remove_range(&mut txn, 2, 3);
        map.insert(
            &mut txn,
            "k",
            yrs::Any::from(vec![yrs::Any::from(1.5), yrs::Any::Null]),
        );
        array.insert(&mut txn, 0, "x");
        array.insert(&mut txn, 1, yrs::Any::Buffer(vec![1, 2, 3].into()));
    }
    let update = author.take_local_update().unwrap();
    let (outcome, largest) = apply_measured(&update);
    assert_eq!(outcome, ApplyOutcome::Applied);
    assert!(largest <= budget(update.len()), "requested {largest} bytes");
    let _ = &mut author;
}
