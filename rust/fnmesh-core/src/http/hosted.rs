//! Connections of the HTTP trigger served by a host other than the engine's runtime
//! (docs/architecture.md, "Requests on the loop's thread").
//!
//! The listener accepts on the engine's runtime. When an [`HttpHost`] is set
//! ([`HttpService::set_host`](super::HttpService::set_host)), each accepted connection is offered
//! to it; a host that takes it serves every request of that connection on its own thread, with
//! the same limits, timeouts and routing as the runtime would. An embedded app's event loop is
//! such a host (through a [`Driver`](crate::driver::Driver)): a request for a handler on that loop
//! then never crosses a thread. A host that declines (closed) hands the connection back, and the
//! runtime serves it.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;

use tracing::warn;

use super::server::Connection;
use crate::driver::Spawner;

/// An accepted connection offered to a host.
pub struct HostedConnection {
    pub(crate) stream: std::net::TcpStream,
    pub(crate) connection: Connection,
}

/// Serves HTTP connections on a thread of its own choosing.
pub trait HttpHost: Send + Sync + 'static {
    /// Takes `connection` and serves it, or hands it back to be served on the runtime.
    fn host(&self, connection: HostedConnection) -> Result<(), HostedConnection>;
}

/// Hosts connections on a [`Driver`](crate::driver::Driver)'s thread, at most `limit` at a time:
/// the connections past it are handed back and served on the runtime.
///
/// The bound keeps the thread that runs the handlers from also parsing every request when many
/// are in flight; the runtime's threads do that in parallel.
#[derive(Clone)]
pub struct LoopHost {
    spawner: Spawner,
    hosted: Arc<AtomicUsize>,
    limit: usize,
}

impl LoopHost {
    /// Hosts on `spawner`'s driver, at most `limit` connections at a time.
    pub fn new(spawner: Spawner, limit: usize) -> LoopHost {
        LoopHost {
            spawner,
            hosted: Arc::new(AtomicUsize::new(0)),
            limit,
        }
    }

    /// Connections being served on the driver's thread now.
    pub fn hosted(&self) -> usize {
        self.hosted.load(Ordering::Acquire)
    }

    /// Takes one of the `limit` places, or none when all are taken.
    fn claim(&self) -> Option<Place> {
        let mut taken = self.hosted.load(Ordering::Acquire);
        loop {
            if taken >= self.limit {
                return None;
            }
            match self.hosted.compare_exchange_weak(
                taken,
                taken + 1,
                Ordering::AcqRel,
                Ordering::Acquire,
            ) {
                Ok(_) => return Some(Place(Arc::clone(&self.hosted))),
                Err(now) => taken = now,
            }
        }
    }
}

/// One of a [`LoopHost`]'s places, given back when the connection ends (its future is dropped).
struct Place(Arc<AtomicUsize>);

impl Drop for Place {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::AcqRel);
    }
}

impl HttpHost for LoopHost {
    fn host(&self, hosted: HostedConnection) -> Result<(), HostedConnection> {
        if self.spawner.is_closed() {
            return Err(hosted);
        }
        let Some(place) = self.claim() else {
            return Err(hosted);
        };
        let HostedConnection { stream, connection } = hosted;
        let socket = match stream.try_clone().and_then(|s| self.spawner.register(s)) {
            Ok(socket) => socket,
            Err(e) => {
                warn!("HTTP connection not hosted, served on the runtime: {e}");
                return Err(HostedConnection { stream, connection });
            }
        };
        // The registered clone serves; the original's descriptor closes here.
        drop(stream);
        let serve = async move {
            let _place = place;
            connection.serve(socket).await;
        };
        if self.spawner.spawn(serve).is_err() {
            // Closed in between: the socket went with the future, nothing is left to hand back.
            warn!("HTTP connection dropped: its host closed as it arrived");
        }
        Ok(())
    }
}
