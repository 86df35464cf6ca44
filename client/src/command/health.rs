//! `stagecache health [--wait SECONDS]`: whether the server is up and serving, by the
//! standard `grpc.health.v1` check. Exit 0 when it serves, 5 when it does not (after
//! waiting up to --wait seconds). Scripts use it to wait for a server they started.

use super::EXIT_UNAVAILABLE;
use crate::output::Format;
use crate::{Client, ClientConfig, Result};
use clap::Args;
use serde_json::json;
use std::time::{Duration, Instant};

#[derive(Args, Debug)]
pub struct HealthArgs {
    /// Keep asking for up to this many seconds until the server serves.
    #[arg(long, default_value_t = 0)]
    pub wait: u64,
}

/// One check: `Ok(())` when the server answers SERVING, else why not.
async fn check(config: &ClientConfig) -> std::result::Result<(), String> {
    let mut once = config.clone();
    once.retry.attempts = 1;
    once.connect_timeout = Duration::from_secs(2);
    let client = Client::connect(once).await.map_err(|e| e.to_string())?;
    match client.health().await {
        Ok(true) => Ok(()),
        Ok(false) => Err("the server answers, but not SERVING".into()),
        Err(e) => Err(e.to_string()),
    }
}

pub async fn run(config: ClientConfig, format: Format, a: HealthArgs) -> Result<u8> {
    let deadline = Instant::now() + Duration::from_secs(a.wait);
    let outcome = loop {
        match check(&config).await {
            Ok(()) => break Ok(()),
            Err(e) if Instant::now() >= deadline => break Err(e),
            Err(_) => tokio::time::sleep(Duration::from_millis(200)).await,
        }
    };
    let serving = outcome.is_ok();
    if format == Format::Json {
        println!(
            "{}",
            json!({"server": config.server, "serving": serving, "error": outcome.as_ref().err()})
        );
    } else if serving {
        println!("serving: {}", config.server);
    }
    match outcome {
        Ok(()) => Ok(0),
        Err(e) => {
            eprintln!("stagecache: error: {} is not serving: {e}", config.server);
            Ok(EXIT_UNAVAILABLE)
        }
    }
}
