//! Pubsub (docs/protocol.md 6.9): the `publish` function and the `subscribe` trigger type, a
//! fire-and-forget fan-out of a message to every binding of its topic. Unlike the durable topics
//! of the queues (`iii::durable::publish`, `durable:subscriber`), nothing is stored or retried:
//! a subscriber that is not bound when the message is published, or whose function fails,
//! misses it, and the others are not affected.
//!
//! Alone, an engine delivers to its own bindings. With `pubsub_redis_url`, a publish goes
//! through a Redis channel that every engine sharing it listens on, so the bindings of all of
//! them receive it (each engine delivers to its own).

mod service;

pub use service::{PubsubService, SUBSCRIBE_TRIGGER};
