//! `libertum`: the whole product in one process.

use libertum_platform::config::{Settings, VARIABLES};

/// mimalloc: the request path allocates a lot of small, short-lived buffers.
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

fn usage() -> String {
    let mut text = String::from(
        "libertum: assets, tokens and ledger in one process, on embedded defaults\n\n\
         usage: libertum [--help | --version]\n         \x20      libertum token --role ROLE [--role ROLE...] [--investor ID] [--subject NAME] [--ttl SECONDS]\n         \x20          prints a development bearer token (roles: platform_admin, asset_manager,\n         \x20          compliance_officer, token_agent, investor, auditor)\n\n         configuration (environment variables):\n",
    );
    for (name, default, what) in VARIABLES {
        text.push_str(&format!("  {name:<40} {what} (default {default})\n"));
    }
    text
}

const TOKEN_USAGE: &str = "usage: libertum token --role ROLE [--role ROLE...] [--investor ID] [--subject NAME] [--ttl SECONDS]

Prints a bearer token of the development signer the product checks, for the roles given:
platform_admin, asset_manager, compliance_officer, token_agent, investor (needs --investor ID),
auditor. --ttl is 1 to 604800 seconds (default 3600).

It reads the same settings as the product: the key in LIBERTUM_DATA_DIR (default ./data, made
when the product first starts), or LIBERTUM_AUTH_DEV_SECRET, which the product's processes must
share (scripts/production keeps it in .stack/development-signing.key). It never makes a key.
";

#[tokio::main]
async fn main() -> std::process::ExitCode {
    // One line, never a backtrace: what is wrong and which setting.
    libertum_platform::exit("libertum", run().await)
}

async fn run() -> anyhow::Result<()> {
    match std::env::args().nth(1).as_deref() {
        Some("--help" | "-h" | "help") => {
            print!("{}", usage());
            return Ok(());
        }
        Some("--version" | "-V") => {
            println!("libertum {}", env!("CARGO_PKG_VERSION"));
            return Ok(());
        }
        Some("token") => {
            let args: Vec<String> = std::env::args().skip(2).collect();
            if args.iter().any(|a| a == "--help" || a == "-h") {
                print!("{TOKEN_USAGE}");
                return Ok(());
            }
            println!("{}", token(args.into_iter())?);
            return Ok(());
        }
        Some(other) => {
            anyhow::bail!("unknown argument {other:?}: see libertum --help")
        }
        None => {}
    }
    let settings = Settings::from_env()?;
    let _telemetry = libertum_platform::telemetry::init(&settings, "libertum");
    let app = libertum::Application::build(settings).await?;
    tracing::info!(addr = %app.addr(), "libertum listening; API docs at /docs");
    app.run_until_stopped(libertum_platform::server::shutdown_signal())
        .await?;
    tracing::info!("stopped");
    Ok(())
}

/// `libertum token ...`: a token from the development signer the product checks with the same
/// settings (`LIBERTUM_DATA_DIR` or `LIBERTUM_AUTH_DEV_SECRET`).
fn token(mut args: impl Iterator<Item = String>) -> anyhow::Result<String> {
    use libertum_platform::auth::{self, Role};
    let (mut roles, mut investor, mut subject, mut ttl) = (Vec::new(), None, None, 3600u64);
    while let Some(flag) = args.next() {
        let value = args
            .next()
            .ok_or_else(|| anyhow::anyhow!("{flag} needs a value: see libertum token --help"))?;
        match flag.as_str() {
            "--role" => roles.push(Role::parse(&value).ok_or_else(|| {
                anyhow::anyhow!("unknown role {value:?}: see libertum token --help")
            })?),
            "--investor" => investor = Some(value),
            "--subject" => subject = Some(value),
            "--ttl" => {
                ttl = value
                    .parse()
                    .ok()
                    .filter(|t| (1..=7 * 24 * 3600).contains(t))
                    .ok_or_else(|| anyhow::anyhow!("--ttl must be 1 to 604800 seconds"))?
            }
            other => anyhow::bail!("unknown argument {other:?}: see libertum token --help"),
        }
    }
    anyhow::ensure!(
        !roles.is_empty(),
        "give at least one --role: see libertum token --help"
    );
    anyhow::ensure!(
        !roles.contains(&Role::Investor) || investor.is_some(),
        "the investor role needs --investor ID: an investor sees only their own holdings"
    );
    let settings = Settings::from_env()?;
    anyhow::ensure!(
        settings.auth.jwks_url.is_none(),
        "LIBERTUM_AUTH_JWKS_URL is set: tokens come from the identity provider, not from here"
    );
    let subject = subject.unwrap_or_else(|| match &investor {
        Some(i) => format!("investor-{i}"),
        None => format!("dev-{}", roles[0].as_str()),
    });
    let signer = auth::dev_signer(&settings)?;
    // Said on stderr, so that `$(libertum token ...)` takes the token alone: a token from
    // another key than the services' is refused with 401.
    eprintln!(
        "libertum: signed with the development key from {}",
        auth::dev_signer_source(&settings)
    );
    Ok(signer.token(
        &subject,
        &roles,
        investor.as_deref(),
        std::time::Duration::from_secs(ttl),
    ))
}
