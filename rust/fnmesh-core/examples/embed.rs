//! A Rust program that embeds the fnmesh engine and serves a native Rust function to iii
//! workers.
//!
//! ```sh
//! cargo run -p fnmesh-core --example embed -- 127.0.0.1:49134
//! ```
//! Any iii-sdk worker connected to `ws://127.0.0.1:49134` can then call `math::add` with
//! `{"a": 2, "b": 3}` and get `{"sum": 5}`; the function never leaves this process.

use fnmesh_core::engine::Engine;
use fnmesh_core::function::{Call, Outcome};
use fnmesh_core::registry::FunctionDef;
use serde::Deserialize;

#[derive(Deserialize)]
struct AddInput {
    a: i64,
    b: i64,
}

fn add(mut call: Call) {
    // `parse` answers `deserialization_error` itself when the input has the wrong shape.
    if let Some(AddInput { a, b }) = call.parse() {
        call.reply.send(match a.checked_add(b) {
            Some(sum) => Outcome::json(&serde_json::json!({ "sum": sum })),
            None => Outcome::failure("invalid_argument", "the sum overflows a 64-bit integer"),
        });
    }
}

#[tokio::main]
async fn main() -> std::io::Result<()> {
    let addr = std::env::args()
        .nth(1)
        .unwrap_or_else(|| "127.0.0.1:49134".to_owned())
        .parse()
        .map_err(|e| std::io::Error::new(std::io::ErrorKind::InvalidInput, e))?;
    let schema = r#"{"type":"object","properties":{"a":{"type":"integer"},"b":{"type":"integer"}},"required":["a","b"]}"#;
    let engine = Engine::builder()
        .addr(addr)
        .function(
            "math::add",
            FunctionDef {
                description: Some("Add two integers (served by Rust)".into()),
                request_format: serde_json::value::RawValue::from_string(schema.into()).ok(),
                ..FunctionDef::default()
            },
            add,
        )
        .start()
        .await?;
    println!(
        "fnmesh engine embedded in Rust: workers connect to {}",
        engine.url()
    );
    tokio::signal::ctrl_c().await?;
    engine.shutdown().await;
    Ok(())
}
