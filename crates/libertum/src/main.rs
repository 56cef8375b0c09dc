//! `libertum`: the whole product in one process.

use libertum_platform::config::{Settings, VARIABLES};

/// mimalloc: the request path allocates a lot of small, short-lived buffers.
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

fn usage() -> String {
    let mut text = String::from(
        "libertum: assets, tokens and ledger in one process, on embedded defaults\n\n\
         usage: libertum [--help | --version]\n\nconfiguration (environment variables):\n",
    );
    for (name, default, what) in VARIABLES {
        text.push_str(&format!("  {name:<40} {what} (default {default})\n"));
    }
    text
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    match std::env::args().nth(1).as_deref() {
        Some("--help" | "-h") => {
            print!("{}", usage());
            return Ok(());
        }
        Some("--version" | "-V") => {
            println!("libertum {}", env!("CARGO_PKG_VERSION"));
            return Ok(());
        }
        Some(other) => anyhow::bail!("unknown argument {other:?}\n\n{}", usage()),
        None => {}
    }
    let settings = Settings::from_env()?;
    libertum_platform::telemetry::init(&settings);
    let app = libertum::Application::build(settings).await?;
    tracing::info!(addr = %app.addr(), "libertum listening; API docs at /docs");
    app.run_until_stopped(libertum_platform::server::shutdown_signal())
        .await?;
    tracing::info!("stopped");
    Ok(())
}
