//! The `http` trigger type, served by the engine (docs/protocol.md 6.3).
//!
//! - [`route`]: route templates (`users/:id`) and the router matching request paths to them;
//! - [`mapping`]: a request as the function's input, and the function's result as a response;
//! - [`trigger`]: the trigger provider that turns bindings into routes and requests into calls;
//! - `server`: the hyper listener;
//! - `openapi`: `/openapi.json`, the routes as an OpenAPI 3.1 document, and the `/docs` page
//!   rendering it (assets served by the engine);
//! - `console`: the console page under `console_path` and its JSON API (assets in `console/`);
//! - `stream`: request and response bodies streamed through data channels;
//! - `flush`: when a streamed response's chunks have left hyper's buffer;
//! - [`hosted`]: connections served by a host other than the runtime (an app's event loop);
//! - [`service`]: [`HttpService`], the trigger as an engine service.

mod console;
mod flush;
pub mod hosted;
pub mod mapping;
mod openapi;
pub mod route;
mod server;
pub mod service;
mod stream;
pub mod trigger;

pub use hosted::{HostedConnection, HttpHost, LoopHost};
pub use service::HttpService;
pub use trigger::{CorsConfig, HttpConfig, HttpTrigger};
