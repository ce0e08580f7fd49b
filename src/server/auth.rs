//! Who a client is, and what it may do with each document.

use std::collections::BTreeMap;

use crate::wire::Access;

/// The identity the server authenticated for a session. It is what other
/// clients see (e.g. in presence), never what the client claims.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Identity(pub String);

impl Identity {
    /// TEMP
    pub fn new(name: impl Into<String>) -> Self {
        Identity(name.into())
    }
    /// TEMP
    pub fn name(&self) -> &str {
        &self.0
    }
}

/// Decides who may connect and what each session may do per document.
///
/// Called by the hub during the handshake, on every `Open`, and again for
/// every open document when the client refreshes its token.
///
/// ```
/// use crdt_socket_sync::server::{Authorizer, Identity};
/// use crdt_socket_sync::wire::Access;
///
/// /// Everyone may read; only "alice" may write.
/// struct Readers;
/// impl Authorizer for Readers {
///     fn authenticate(&mut self, _peer: &str, token: &[u8]) -> Result<Identity, String> {
///         String::from_utf8(token.to_vec()).map(Identity).map_err(|_| "token is not UTF-8".into())
///     }
///     fn authorize(&mut self, who: &Identity, _doc: &str) -> Option<Access> {
///         Some(if who.0 == "alice" { Access::ReadWrite } else { Access::ReadOnly })
///     }
/// }
/// let mut a = Readers;
/// let bob = a.authenticate("peer-1", b"bob").unwrap();
/// assert_eq!(a.authorize(&bob, "notes"), Some(Access::ReadOnly));
/// ```
pub trait Authorizer {
    /// Checks the opaque token from `Hello` (or `RefreshToken`) and returns
    /// the session's identity, or a reason to refuse.
    fn authenticate(&mut self, peer: &str, token: &[u8]) -> Result<Identity, String>;

    /// What `identity` may do with document `doc`; `None` denies access.
    fn authorize(&mut self, identity: &Identity, doc: &str) -> Option<Access>;
}

/// Accepts everyone with read-write access; the identity is the client's
/// peer id. For development and tests.
#[derive(Clone, Copy, Debug, Default)]
pub struct AllowAll;

impl Authorizer for AllowAll {
    fn authenticate(&mut self, peer: &str, _token: &[u8]) -> Result<Identity, String> {
        Ok(Identity(peer.to_string()))
    }
    fn authorize(&mut self, _identity: &Identity, _doc: &str) -> Option<Access> {
        Some(Access::ReadWrite)
    }
}

/// A fixed table of tokens: each token names an identity and its access,
/// the same for every document.
///
/// ```
/// use crdt_socket_sync::server::{Authorizer, StaticTokens};
/// use crdt_socket_sync::wire::Access;
///
/// let mut auth = StaticTokens::default()
///     .with("secret-w", "writer", Access::ReadWrite)
///     .with("secret-r", "reader", Access::ReadOnly);
/// let who = auth.authenticate("p", b"secret-r").unwrap();
/// assert_eq!(auth.authorize(&who, "any"), Some(Access::ReadOnly));
/// assert!(auth.authenticate("p", b"wrong").is_err());
/// ```
#[derive(Clone, Debug, Default)]
pub struct StaticTokens {
    tokens: BTreeMap<Vec<u8>, (Identity, Access)>,
    access: BTreeMap<Identity, Access>,
}

impl StaticTokens {
    /// Adds a token.
    pub fn with(mut self, token: impl AsRef<[u8]>, identity: &str, access: Access) -> Self {
        let id = Identity(identity.to_string());
        self.access.insert(id.clone(), access);
        self.tokens.insert(token.as_ref().to_vec(), (id, access));
        self
    }
}

impl Authorizer for StaticTokens {
    fn authenticate(&mut self, _peer: &str, token: &[u8]) -> Result<Identity, String> {
        self.tokens
            .get(token)
            .map(|(id, _)| id.clone())
            .ok_or_else(|| "unknown token".to_string())
    }
    fn authorize(&mut self, identity: &Identity, _doc: &str) -> Option<Access> {
        self.access.get(identity).copied()
    }
}
