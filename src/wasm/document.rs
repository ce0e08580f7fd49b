//! The [`Document`] side of a JavaScript `Y.Doc`, and the one-document
//! registry a browser client syncs.
//!
//! Yjs and yrs share the update and state-vector encodings (v1), so the
//! server keeps yrs documents while the browser edits a `Y.Doc`. The bridge
//! object is written in JavaScript (`web/src/provider.js`, `docBridge`); it
//! applies remote updates with an origin of its own and records only the
//! updates whose origin is different, so remote updates are never echoed.

use wasm_bindgen::prelude::*;

use crate::document::{ApplyOutcome, Document, DocumentError};
use crate::registry::{Registry, RegistryError};

#[wasm_bindgen]
extern "C" {
    /// The JavaScript bridge to one `Y.Doc` (see the module docs).
    pub type DocBridge;

    /// `Y.encodeStateVector(doc)`.
    #[wasm_bindgen(method, js_name = stateVector)]
    fn state_vector(this: &DocBridge) -> Vec<u8>;

    /// `Y.encodeStateAsUpdate(doc, stateVector)`; throws on a malformed
    /// state vector.
    #[wasm_bindgen(method, catch)]
    fn diff(this: &DocBridge, state_vector: &[u8]) -> Result<Vec<u8>, JsValue>;

    /// `Y.applyUpdate(doc, update, remoteOrigin)`: 0 applied, 1 held
    /// (missing dependencies), 2 nothing new; throws on a malformed update.
    #[wasm_bindgen(method, catch)]
    fn apply(this: &DocBridge, update: &[u8]) -> Result<u32, JsValue>;

    /// The local updates since the last call, merged (`Y.mergeUpdates`), or
    /// `undefined`.
    #[wasm_bindgen(method, js_name = takeLocal)]
    fn take_local(this: &DocBridge) -> Option<Vec<u8>>;
}

/// A `Y.Doc` seen through its [`DocBridge`].
pub(crate) struct JsDocument {
    bridge: DocBridge,
    /// Bytes of updates Yjs holds for missing dependencies (as the yrs
    /// adapter counts them: reset once nothing is pending).
    held: usize,
}

impl JsDocument {
    pub(crate) fn new(bridge: DocBridge) -> Self {
        JsDocument { bridge, held: 0 }
    }
}

fn js_error(what: &str, e: &JsValue) -> DocumentError {
    let detail = e
        .as_string()
        .or_else(|| {
            e.dyn_ref::<js_sys::Error>()
                .map(|e| String::from(e.message()))
        })
        .unwrap_or_default();
    DocumentError::Invalid(format!("{what}: {detail}"))
}

impl Document for JsDocument {
    fn version(&self) -> Vec<u8> {
        self.bridge.state_vector()
    }

    fn delta_since(&self, version: &[u8]) -> Result<Vec<u8>, DocumentError> {
        self.bridge
            .diff(version)
            .map_err(|e| js_error("Yjs state vector", &e))
    }

    fn apply(&mut self, update: &[u8]) -> ApplyOutcome {
        match self.bridge.apply(update) {
            Ok(0) => {
                self.held = 0;
                ApplyOutcome::Applied
            }
            Ok(1) => {
                self.held = self.held.saturating_add(update.len());
                ApplyOutcome::Pending {
                    held_bytes: self.held,
                }
            }
            Ok(_) => ApplyOutcome::Duplicate,
            Err(e) => ApplyOutcome::Invalid(js_error("Yjs update", &e)),
        }
    }

    fn pending_bytes(&self) -> usize {
        self.held
    }

    fn snapshot(&self) -> Vec<u8> {
        self.bridge.diff(&[0]).unwrap_or_default()
    }

    fn load_snapshot(&mut self, snapshot: &[u8]) -> Result<(), DocumentError> {
        match self.apply(snapshot) {
            ApplyOutcome::Invalid(e) => Err(e),
            _ => Ok(()),
        }
    }

    fn take_local_update(&mut self) -> Option<Vec<u8>> {
        self.bridge.take_local()
    }
}

/// The registry of a browser client: the one document its provider syncs.
pub(crate) struct OneDoc {
    pub(crate) name: String,
    pub(crate) doc: JsDocument,
}

impl Registry for OneDoc {
    type Doc = JsDocument;

    fn open(&mut self, name: &str) -> Result<&mut JsDocument, RegistryError> {
        self.get(name)
            .ok_or_else(|| RegistryError::NotFound(name.to_string()))
    }

    fn get(&mut self, name: &str) -> Option<&mut JsDocument> {
        (name == self.name).then_some(&mut self.doc)
    }

    fn list(&self) -> Vec<String> {
        vec![self.name.clone()]
    }

    fn remove(&mut self, _name: &str) -> bool {
        false
    }
}
