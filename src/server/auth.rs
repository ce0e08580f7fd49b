//! Who a client is, and what it may do with each document.

use std::collections::BTreeMap;

use crate::wire::Access;

/// The identity the server authenticated for a session: a name, which is
/// what other clients see (e.g. in presence), never what the client claims,
/// and a grant, which only the [`Authorizer`] that made it reads.
///
/// The grant lets an authorizer remember which credential the identity came
/// from, so two tokens of one user may grant different access (see
/// [`StaticTokens`]). It is given back to [`Authorizer::authorize`] with
/// the identity, and replaced when the session refreshes its token.
///
/// ```
/// use crdt_socket_sync::server::Identity;
/// let who = Identity::new("alice").with_grant(7);
/// assert_eq!((who.name(), who.grant()), ("alice", 7));
/// assert_eq!(who.to_string(), "alice");
/// ```
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Identity {
    // A boxed `str`: one is kept per session, and with the grant it takes
    // the 24 bytes a `String` alone took.
    name: Box<str>,
    grant: u64,
}

impl Identity {
    /// The identity called `name`, with grant 0.
    pub fn new(name: impl Into<String>) -> Self {
        let name: String = name.into();
        Identity {
            name: name.into_boxed_str(),
            grant: 0,
        }
    }

    /// The same identity with `grant`, a value for the authorizer alone
    /// (e.g. the index of the token it was authenticated with).
    #[must_use]
    pub fn with_grant(mut self, grant: u64) -> Self {
        self.grant = grant;
        self
    }

    /// The name others see.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// The authorizer's grant.
    pub fn grant(&self) -> u64 {
        self.grant
    }
}

impl core::fmt::Display for Identity {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        f.write_str(&self.name)
    }
}

/// Decides who may connect and what each session may do per document.
///
/// Called by the hub during the handshake, on every `Open`, and again for
/// every open document when a token refresh changes the session's identity
/// (name or grant: `authorize` decides from the identity alone).
///
/// ```
/// use crdt_socket_sync::server::{Authorizer, Identity};
/// use crdt_socket_sync::wire::Access;
///
/// /// Everyone may read; only "alice" may write.
/// struct Readers;
/// impl Authorizer for Readers {
///     fn authenticate(&mut self, _peer: &str, token: &[u8]) -> Result<Identity, String> {
///         String::from_utf8(token.to_vec()).map(Identity::new).map_err(|_| "token is not UTF-8".into())
///     }
///     fn authorize(&mut self, who: &Identity, _doc: &str) -> Option<Access> {
///         Some(if who.name() == "alice" { Access::ReadWrite } else { Access::ReadOnly })
///     }
/// }
/// let mut a = Readers;
/// let bob = a.authenticate("peer-1", b"bob").unwrap();
/// assert_eq!(a.authorize(&bob, "notes"), Some(Access::ReadOnly));
/// ```
pub trait Authorizer {
    /// Checks the opaque token from `Hello` (or `RefreshToken`) and returns
    /// the session's identity, or a reason to refuse. What `authorize` will
    /// need to know about the token goes in the identity's grant
    /// ([`Identity::with_grant`]).
    ///
    /// A refresh to a token refused here closes the session
    /// ([`CloseReason::Rejected`](crate::wire::CloseReason::Rejected)).
    fn authenticate(&mut self, peer: &str, token: &[u8]) -> Result<Identity, String>;

    /// What `identity` (as `authenticate` returned it, grant included) may
    /// do with document `doc`; `None` denies access.
    fn authorize(&mut self, identity: &Identity, doc: &str) -> Option<Access>;
}

/// Accepts everyone with read-write access; the identity is the client's
/// peer id. For development and tests.
#[derive(Clone, Copy, Debug, Default)]
pub struct AllowAll;

impl Authorizer for AllowAll {
    fn authenticate(&mut self, peer: &str, _token: &[u8]) -> Result<Identity, String> {
        Ok(Identity::new(peer))
    }
    fn authorize(&mut self, _identity: &Identity, _doc: &str) -> Option<Access> {
        Some(Access::ReadWrite)
    }
}

/// A fixed table of tokens: each token names an identity and its access,
/// the same for every document. Access is per token: two tokens of one
/// identity may grant different access.
///
/// ```
/// use crdt_socket_sync::server::{Authorizer, StaticTokens};
/// use crdt_socket_sync::wire::Access;
///
/// let mut auth = StaticTokens::default()
///     .with("secret-w", "writer", Access::ReadWrite)
///     .with("secret-r", "reader", Access::ReadOnly)
///     .with("writer-ro", "writer", Access::ReadOnly);
/// let who = auth.authenticate("p", b"secret-r").unwrap();
/// assert_eq!(auth.authorize(&who, "any"), Some(Access::ReadOnly));
/// let w = auth.authenticate("p", b"secret-w").unwrap();
/// assert_eq!(auth.authorize(&w, "any"), Some(Access::ReadWrite));
/// assert!(auth.authenticate("p", b"wrong").is_err());
/// ```
#[derive(Clone, Debug, Default)]
pub struct StaticTokens {
    /// The tokens, keyed by the grant of the identities they authenticate:
    /// a hash of the token (the next free value past a collision). A grant
    /// thus names the same token in every table that holds it, so after the
    /// table is replaced ([`Hub::authorizer_mut`](super::Hub::authorizer_mut))
    /// a session whose token the new table lacks is denied at its next
    /// `Open`, and keeps its access if the token is still there.
    grants: BTreeMap<u64, Grant>,
}

#[derive(Clone, Debug)]
struct Grant {
    token: Vec<u8>,
    name: String,
    access: Access,
}

impl StaticTokens {
    /// Adds a token (replacing what an earlier `with` of the same token
    /// said).
    pub fn with(mut self, token: impl AsRef<[u8]>, identity: &str, access: Access) -> Self {
        let token = token.as_ref();
        let grant = Grant {
            token: token.to_vec(),
            name: identity.to_string(),
            access,
        };
        let (Ok(key) | Err(key)) = self.find(token);
        self.grants.insert(key, grant);
        self
    }

    /// The key of `token`: `Ok` where it is, `Err` where it would go.
    fn find(&self, token: &[u8]) -> Result<u64, u64> {
        let mut key = fnv1a(token);
        // Ends: the table is finite, and each step tries the next key.
        loop {
            match self.grants.get(&key) {
                None => return Err(key),
                Some(g) if g.token == token => return Ok(key),
                Some(_) => key = key.wrapping_add(1),
            }
        }
    }
}

/// FNV-1a: a stable hash (grants must not change between runs or
/// versions of the standard library).
fn fnv1a(bytes: &[u8]) -> u64 {
    bytes.iter().fold(0xcbf2_9ce4_8422_2325, |h, b| {
        (h ^ u64::from(*b)).wrapping_mul(0x0000_0100_0000_01b3)
    })
}

impl Authorizer for StaticTokens {
    fn authenticate(&mut self, _peer: &str, token: &[u8]) -> Result<Identity, String> {
        let key = self.find(token).map_err(|_| "unknown token".to_string())?;
        // `find` said `Ok`: the grant is there.
        let name = self.grants[&key].name.as_str();
        Ok(Identity::new(name).with_grant(key))
    }
    fn authorize(&mut self, identity: &Identity, _doc: &str) -> Option<Access> {
        // Only identities made from a token of this table.
        let g = self.grants.get(&identity.grant())?;
        (*g.name == *identity.name()).then_some(g.access)
    }
}
