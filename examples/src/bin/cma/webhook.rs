//! `cma webhook`: sign or verify one Standard Webhooks delivery (docs/protocol.md §7.1) from the
//! shell, with the body on stdin. For debugging receivers and replaying captured deliveries; the
//! logic lives in `cma_core::webhook`.

use std::io::{Read as _, Write as _};
use std::process::ExitCode;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use cma_core::webhook::{Verifier, WebhookError, WebhookSecret, parse_unverified, sign};

/// The signing key, as `whsec_<base64>` (prefix optional), like the SDK's `webhook_key`.
#[derive(Debug, clap::Args)]
pub struct SecretArg {
    /// Signing secret, `whsec_<base64>` (the prefix is optional).
    #[arg(long, env = "ANTHROPIC_WEBHOOK_SIGNING_KEY", hide_env_values = true)]
    secret: String,
}

/// `cma webhook` subcommands.
#[derive(Debug, clap::Subcommand)]
pub enum Command {
    /// Sign the body read from stdin; print the three webhook headers (or only the signature).
    Sign {
        #[command(flatten)]
        secret: SecretArg,
        /// The `webhook-id` (default: a fresh `msg_…` id).
        #[arg(long)]
        id: Option<String>,
        /// The `webhook-timestamp`, unix seconds (default: now).
        #[arg(long, allow_hyphen_values = true)]
        timestamp: Option<i64>,
        /// Print only the `webhook-signature` value.
        #[arg(long)]
        signature_only: bool,
    },
    /// Verify the body read from stdin. Exit 0 when valid; 1 with the reason on stderr when not.
    Verify {
        #[command(flatten)]
        secret: SecretArg,
        /// The `webhook-id` header.
        #[arg(long)]
        id: String,
        /// The `webhook-timestamp` header (unix seconds; fractions allowed).
        #[arg(long, allow_hyphen_values = true)]
        timestamp: String,
        /// The `webhook-signature` header (space-separated `v1,<base64>` entries).
        #[arg(long)]
        signature: String,
        /// Accept timestamps this many seconds from the clock.
        #[arg(long, default_value_t = 300)]
        tolerance_secs: u64,
        /// Check against this time (unix seconds) instead of the system clock, to replay an old
        /// delivery.
        #[arg(long, allow_hyphen_values = true)]
        now: Option<f64>,
    },
}

/// Run a `cma webhook` subcommand.
pub fn run(cmd: Command) -> ExitCode {
    match cmd {
        Command::Sign {
            secret,
            id,
            timestamp,
            signature_only,
        } => run_sign(&secret.secret, id, timestamp, signature_only),
        Command::Verify {
            secret,
            id,
            timestamp,
            signature,
            tolerance_secs,
            now,
        } => run_verify(
            &secret.secret,
            &id,
            &timestamp,
            &signature,
            Duration::from_secs(tolerance_secs),
            now,
        ),
    }
}

/// Exit status for bad input (unusable secret, unreadable stdin), as clap uses for usage errors.
const USAGE: u8 = 2;

fn load(secret: &str) -> Result<(WebhookSecret, Vec<u8>), ExitCode> {
    let secret = WebhookSecret::parse(secret).map_err(|e| {
        eprintln!("cma webhook: {e}");
        ExitCode::from(USAGE)
    })?;
    let mut body = Vec::new();
    std::io::stdin().read_to_end(&mut body).map_err(|e| {
        eprintln!("cma webhook: reading the body from stdin: {e}");
        ExitCode::from(USAGE)
    })?;
    Ok((secret, body))
}

fn unix_now() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| i64::try_from(d.as_secs()).unwrap_or(i64::MAX))
        .unwrap_or(0)
}

fn fresh_id() -> String {
    let nanos = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_nanos())
        .unwrap_or(0);
    format!("msg_{nanos:x}{:x}", std::process::id())
}

fn run_sign(
    secret: &str,
    id: Option<String>,
    timestamp: Option<i64>,
    signature_only: bool,
) -> ExitCode {
    let (secret, body) = match load(secret) {
        Ok(loaded) => loaded,
        Err(code) => return code,
    };
    let id = id.unwrap_or_else(fresh_id);
    let timestamp = timestamp.unwrap_or_else(unix_now);
    let signature = sign(&secret, &id, timestamp, &body);
    let out = if signature_only {
        format!("{signature}\n")
    } else {
        format!(
            "webhook-id: {id}\nwebhook-timestamp: {timestamp}\nwebhook-signature: {signature}\n"
        )
    };
    match std::io::stdout().write_all(out.as_bytes()) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("cma webhook: writing to stdout: {e}");
            ExitCode::FAILURE
        }
    }
}

fn run_verify(
    secret: &str,
    id: &str,
    timestamp: &str,
    signature: &str,
    tolerance: Duration,
    now: Option<f64>,
) -> ExitCode {
    let (secret, body) = match load(secret) {
        Ok(loaded) => loaded,
        Err(code) => return code,
    };
    let mut verifier = Verifier::new(secret).with_tolerance(tolerance);
    if let Some(now) = now {
        let Some(at) = time_from_unix(now) else {
            eprintln!("cma webhook: --now {now} is not a usable time");
            return ExitCode::from(USAGE);
        };
        verifier = verifier.with_clock(move || at);
    }
    match verifier.verify_parts(
        id.as_bytes(),
        timestamp.as_bytes(),
        signature.as_bytes(),
        &body,
    ) {
        Ok(()) => {
            let line = match parse_unverified(&body) {
                Ok(ev) => format!("valid: {} {} (event {})", ev.data.kind, ev.data.id, ev.id),
                Err(_) => "valid (the body is not a webhook event envelope)".to_owned(),
            };
            // The verdict is the exit status; a closed stdout must not turn it into a panic.
            let _ = writeln!(std::io::stdout(), "{line}");
            ExitCode::SUCCESS
        }
        Err(err) => {
            eprintln!("invalid: {}", describe(&err));
            ExitCode::FAILURE
        }
    }
}

/// The SDK's message, plus the details it does not print.
fn describe(err: &WebhookError) -> String {
    match err {
        WebhookError::MissingHeaders { header } => format!("{err} ({header} is empty)"),
        WebhookError::InvalidTimestamp { value } => {
            format!("{err} (webhook-timestamp {value:?} is not a usable number of seconds)")
        }
        WebhookError::TimestampTooOld { timestamp, now }
        | WebhookError::TimestampTooNew { timestamp, now } => format!(
            "{err} (timestamp {timestamp}, now {now}, {}s apart; see --now and --tolerance-secs)",
            timestamp.abs_diff(*now)
        ),
        other => other.to_string(),
    }
}

fn time_from_unix(secs: f64) -> Option<SystemTime> {
    if !secs.is_finite() {
        return None;
    }
    let magnitude = Duration::try_from_secs_f64(secs.abs()).ok()?;
    if secs >= 0.0 {
        UNIX_EPOCH.checked_add(magnitude)
    } else {
        UNIX_EPOCH.checked_sub(magnitude)
    }
}
