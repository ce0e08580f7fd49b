//! Rooms from the hub's side: a connection leaving a room (closing its
//! handle, losing access, disconnecting) and closed rooms' documents
//! unloaded from the registry.

use super::*;

impl<A: Authorizer> Hub<A> {
    /// Removes `conn`'s subscription to its document `doc` (the client
    /// closed it, or disconnected), freeing the handle.
    pub(super) fn unsubscribe(&mut self, conn: ConnId, doc: DocId) {
        self.leave(conn, doc, false);
    }

    /// Removes `conn`'s subscription to its document `doc` on the server's
    /// initiative (access revoked): the handle stays retired until the
    /// client closes it, so updates it sent before it heard cannot land in
    /// a document opened next under the same handle.
    pub(super) fn revoke(&mut self, conn: ConnId, doc: DocId) {
        self.leave(conn, doc, true);
    }

    /// Removes the subscription with its presence state and the
    /// acknowledgements still due for it (the handle may name another
    /// document next). The last subscriber leaving starts the document's
    /// unload linger.
    fn leave(&mut self, conn: ConnId, doc: DocId, retire: bool) {
        let Some(s) = self.sessions.get_mut(&conn) else {
            return;
        };
        let sub = if retire {
            s.docs_mut().retire(&doc)
        } else {
            s.docs_mut().remove(&doc)
        };
        let Some(sub) = sub else {
            return;
        };
        s.transfers_mut().cancel(doc);
        let session = s.session_id();
        self.forget_acks(conn, doc, sub.last_seq > sub.durable_seq);
        if let Some(leave) = self.presence.remove(sub.index.key(), session) {
            self.share_presence(sub.index, Some(conn), vec![leave]);
        }
        let linger = self.config.unload_after;
        let cap = self.config.limits.max_docs_per_connection;
        self.rooms
            .unsubscribe(sub.index, conn, doc, self.now, linger, cap);
    }

    /// Takes the documents whose unload linger ended out of the rooms table
    /// and tells the registry to unload them (it keeps what only it holds:
    /// a memory registry its written documents, a durable one its writes
    /// not yet on disk until they are).
    pub(super) fn unload_idle<R: Registry>(&mut self, now: Instant, registry: &mut R) {
        while let Some((index, name)) = self.rooms.pop_expired(now) {
            // Nothing server-wide may outlive the document's slot.
            self.transfers.forget(index.key());
            registry.unload(&name);
        }
    }
}
