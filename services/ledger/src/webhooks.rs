//! Webhook delivery (Standard Webhooks, <https://www.standardwebhooks.com>).
//!
//! Each subscription has one worker, on the replica that owns the ledger's writes: it reads the
//! ledger's entries after its stored position, in order, POSTs each one the subscription wants
//! (signed: `webhook-signature: v1,{base64(HMAC-SHA256(key, "{id}.{timestamp}.{body}"))}`),
//! retries a failure after 1 s, 2 s, 4 s... and, after the last attempt, records it in the
//! dead letters and goes on. Delivery is at least once: the position is stored every few
//! hundred milliseconds, so a failover may deliver the last events again, with the same
//! `webhook-id` (the event's id) for the receiver to recognise.
//!
//! Targets are checked against server-side request forgery: `https` only, and never a
//! loopback, private, link-local or otherwise internal address, checked when subscribing and
//! again on every connection (the resolver drops such addresses, so a name that changes what
//! it points to cannot get round it), unless `LIBERTUM_WEBHOOK_PRIVATE_TARGETS=true` (a
//! development setup). Redirects are not followed.

use std::{
    collections::HashMap,
    net::{IpAddr, SocketAddr},
    sync::Arc,
    time::{Duration, Instant},
};

use hmac::{Hmac, Mac};
use libertum_domain::ledger;
use libertum_platform::{ApiError, config::WebhookSettings};
use libertum_store::{Engine, EventStore};
use sha2::Sha256;
use tokio::sync::watch;

use crate::{
    events::{self, DeadLetter, Subscription},
    history,
    state::LedgerState,
};

/// How long one delivery may take.
const TIMEOUT: Duration = Duration::from_secs(10);
/// How often the position is stored while delivering.
const SAVE_EVERY: Duration = Duration::from_millis(250);

/// Whether `ip` is an address a webhook may not reach unless private targets are allowed:
/// loopback, private, carrier-grade NAT, link-local (the cloud metadata service), benchmark,
/// reserved and multicast ranges, and every IPv6 form that carries one of them (IPv4-mapped
/// and -compatible, NAT64, 6to4), unique-local and site-local.
pub fn internal(ip: IpAddr) -> bool {
    match ip {
        IpAddr::V4(v4) => {
            let [a, b, c, _] = v4.octets();
            v4.is_loopback()
                || v4.is_private()
                || v4.is_link_local()
                || v4.is_unspecified()
                || v4.is_broadcast()
                || v4.is_multicast()
                || a == 0
                || (a == 100 && (64..128).contains(&b))
                || (a == 192 && b == 0 && c == 0)
                || (a == 198 && (18..20).contains(&b))
                || a >= 240
        }
        IpAddr::V6(v6) => {
            let s = v6.segments();
            let embedded = |hi: u16, lo: u16| {
                internal(IpAddr::V4(std::net::Ipv4Addr::new(
                    (hi >> 8) as u8,
                    hi as u8,
                    (lo >> 8) as u8,
                    lo as u8,
                )))
            };
            if let Some(v4) = v6.to_ipv4_mapped() {
                return internal(IpAddr::V4(v4));
            }
            // IPv4-compatible (::a.b.c.d), NAT64 (64:ff9b::/96) and 6to4 (2002::/16).
            if s[..6] == [0; 6] && !v6.is_loopback() && !v6.is_unspecified() {
                return embedded(s[6], s[7]);
            }
            if s[..6] == [0x64, 0xff9b, 0, 0, 0, 0] {
                return embedded(s[6], s[7]);
            }
            if s[0] == 0x2002 {
                return embedded(s[1], s[2]);
            }
            v6.is_loopback()
                || v6.is_unspecified()
                || v6.is_multicast()
                || (s[0] & 0xfe00) == 0xfc00
                || (s[0] & 0xffc0) == 0xfe80
                || (s[0] & 0xffc0) == 0xfec0
        }
    }
}

fn not_allowed(detail: impl Into<String>) -> ApiError {
    ApiError::new(
        axum::http::StatusCode::UNPROCESSABLE_ENTITY,
        "webhook_url_not_allowed",
        detail,
    )
    .at("url")
}

/// Checks a subscription's URL: `https` (or `http` where private targets are allowed), a host,
/// no credentials, and no internal address among those its host resolves to.
pub async fn check_url(raw: &str, private_targets: bool) -> Result<url::Url, ApiError> {
    if raw.len() > 2_000 {
        return Err(ApiError::invalid(
            "url",
            "a URL is at most 2,000 characters",
        ));
    }
    let url = url::Url::parse(raw.trim())
        .map_err(|e| ApiError::invalid("url", format!("not a URL: {e}")))?;
    match url.scheme() {
        "https" => {}
        "http" if private_targets => {}
        "http" => return Err(not_allowed("webhooks are delivered over https only")),
        other => return Err(not_allowed(format!("{other} is not a webhook scheme"))),
    }
    if !url.username().is_empty() || url.password().is_some() {
        return Err(not_allowed("a webhook URL carries no credentials"));
    }
    let host = url
        .host_str()
        .ok_or_else(|| ApiError::invalid("url", "a webhook URL needs a host"))?
        .trim_matches(|c| c == '[' || c == ']')
        .to_owned();
    if private_targets {
        return Ok(url);
    }
    let port = url.port_or_known_default().unwrap_or(443);
    let addrs: Vec<SocketAddr> = match host.parse::<IpAddr>() {
        Ok(ip) => vec![SocketAddr::new(ip, port)],
        // Bounded: a name whose servers do not answer must not hold the request.
        Err(_) => tokio::time::timeout(
            Duration::from_secs(3),
            tokio::net::lookup_host((host.as_str(), port)),
        )
        .await
        .map_err(|_| not_allowed(format!("{host} did not resolve within 3 s")))?
        .map_err(|e| not_allowed(format!("{host} does not resolve: {e}")))?
        .collect(),
    };
    if addrs.is_empty() || addrs.iter().any(|a| internal(a.ip())) {
        return Err(not_allowed(format!(
            "{host} is an internal address: webhooks reach public hosts only"
        )));
    }
    Ok(url)
}

/// A resolver that never yields an internal address (see [`internal`]).
struct PublicOnly;

impl reqwest::dns::Resolve for PublicOnly {
    fn resolve(&self, name: reqwest::dns::Name) -> reqwest::dns::Resolving {
        Box::pin(async move {
            let addrs: Vec<SocketAddr> = tokio::net::lookup_host((name.as_str(), 0))
                .await?
                .filter(|a| !internal(a.ip()))
                .collect();
            if addrs.is_empty() {
                return Err(format!("{} resolves to no public address", name.as_str()).into());
            }
            Ok(Box::new(addrs.into_iter()) as reqwest::dns::Addrs)
        })
    }
}

/// The client deliveries go out with.
pub fn client(settings: &WebhookSettings) -> reqwest::Client {
    // No proxy either: a proxy would resolve and connect for us, past the resolver below.
    let mut builder = reqwest::Client::builder()
        .timeout(TIMEOUT)
        .no_proxy()
        .redirect(reqwest::redirect::Policy::none())
        .user_agent("libertum-webhooks/1");
    if !settings.private_targets {
        builder = builder.dns_resolver(Arc::new(PublicOnly));
    }
    builder.build().unwrap_or_default()
}

/// The `webhook-signature` of `body` under `secret` (`whsec_…`), as Standard Webhooks defines it.
pub fn sign(secret: &str, id: &str, timestamp: i64, body: &[u8]) -> String {
    use base64::Engine as _;
    let key = secret
        .strip_prefix("whsec_")
        .and_then(|k| base64::engine::general_purpose::STANDARD.decode(k).ok())
        .unwrap_or_default();
    let mut mac = <Hmac<Sha256> as Mac>::new_from_slice(&key).expect("HMAC takes any key length");
    mac.update(format!("{id}.{timestamp}.").as_bytes());
    mac.update(body);
    format!(
        "v1,{}",
        base64::engine::general_purpose::STANDARD.encode(mac.finalize().into_bytes())
    )
}

/// One attempt: `Ok` on a 2xx, else what went wrong.
async fn attempt(
    http: &reqwest::Client,
    private_targets: bool,
    subscription: &Subscription,
    entry: &ledger::Entry,
    body: &[u8],
) -> Result<(), String> {
    let url = url::Url::parse(&subscription.url).map_err(|e| e.to_string())?;
    // An IP literal is not resolved: check it here, every time.
    if !private_targets
        && let Some(ip) = url.host_str().and_then(|h| {
            h.trim_matches(|c| c == '[' || c == ']')
                .parse::<IpAddr>()
                .ok()
        })
        && internal(ip)
    {
        return Err(format!("{ip} is an internal address"));
    }
    let timestamp = time::OffsetDateTime::now_utc().unix_timestamp();
    let response = http
        .post(url)
        .header("content-type", "application/json")
        .header("webhook-id", &entry.event_id)
        .header("webhook-timestamp", timestamp.to_string())
        .header(
            "webhook-signature",
            sign(&subscription.secret, &entry.event_id, timestamp, body),
        )
        .body(body.to_vec())
        .send()
        .await
        .map_err(|e| format!("no answer: {e}"))?;
    match response.status() {
        s if s.is_success() => Ok(()),
        s => Err(format!("answered {s}")),
    }
}

/// Runs every subscription's worker on this replica until `stop`: call it where the ledger's
/// writes are owned (the binaries run it there), one per service.
pub async fn dispatch(
    engine: Engine<LedgerState>,
    settings: WebhookSettings,
    mut stop: watch::Receiver<bool>,
) {
    let http = client(&settings);
    let mut workers: HashMap<String, (watch::Sender<Subscription>, tokio::task::JoinHandle<()>)> =
        HashMap::new();
    // Every subscription is read when they changed (one stored value says when), and once a
    // minute whatever happened: a look costs one point read, not a scan.
    let mut seen: Option<u64> = None;
    let mut listed_at: Option<Instant> = None;
    loop {
        let changed = match engine.store().checkpoint(events::CHANGED).await {
            Ok(at) => at,
            Err(error) => {
                tracing::warn!(%error, "the webhook subscriptions could not be read");
                None
            }
        };
        let due = listed_at.is_none_or(|at| at.elapsed() >= Duration::from_secs(60))
            || changed != seen
            || workers.values().any(|(_, task)| task.is_finished());
        let listing = match due {
            true => Some(events::all(engine.store().as_ref()).await),
            false => None,
        };
        if listing.as_ref().is_some_and(Result::is_ok) {
            seen = changed;
            listed_at = Some(Instant::now());
        }
        workers.retain(|_, (tx, task)| !task.is_finished() && !tx.borrow().deleted);
        match listing {
            None => {}
            Some(Ok(subscriptions)) => {
                for s in subscriptions {
                    match workers.get(&s.id) {
                        Some((tx, _)) if s.deleted => {
                            let _ = tx.send(s.clone());
                        }
                        Some((tx, _)) => {
                            tx.send_if_modified(|current| {
                                let changed = *current != s;
                                *current = s.clone();
                                changed
                            });
                        }
                        None if s.deleted => {}
                        None => {
                            let (tx, rx) = watch::channel(s.clone());
                            let worker = Worker {
                                store: engine.store().clone(),
                                http: http.clone(),
                                settings,
                                subscription: rx,
                                stop: stop.clone(),
                            };
                            workers.insert(s.id.clone(), (tx, tokio::spawn(worker.run())));
                        }
                    }
                }
            }
            Some(Err(error)) => {
                tracing::warn!(%error, "the webhook subscriptions could not be read")
            }
        }
        tokio::select! {
            _ = tokio::time::sleep(Duration::from_secs(1)) => {}
            _ = stop.wait_for(|s| *s) => break,
        }
    }
    for (_, (_, task)) in workers {
        let _ = task.await;
    }
}

struct Worker {
    store: Arc<dyn EventStore>,
    http: reqwest::Client,
    settings: WebhookSettings,
    subscription: watch::Receiver<Subscription>,
    stop: watch::Receiver<bool>,
}

impl Worker {
    /// Where the subscription's current epoch got to (stored), or `None` if the store cannot
    /// say right now.
    async fn position(&self, subscription: &Subscription) -> Option<u64> {
        match subscription.position(self.store.as_ref()).await {
            Ok(at) => Some(at),
            Err(error) => {
                tracing::warn!(subscription = %subscription.id, %error, "no delivery position");
                None
            }
        }
    }

    async fn run(mut self) {
        let mut subscription = self.subscription.borrow_and_update().clone();
        let Some(mut after) = self.position(&subscription).await else {
            // The dispatcher starts it again at its next look.
            return;
        };
        let mut saved = after;
        let mut saved_at = Instant::now();
        let mut head = self.store.watch_head();
        loop {
            if *self.stop.borrow() {
                break;
            }
            let latest = self.subscription.borrow_and_update().clone();
            if latest.deleted {
                break;
            }
            if latest.replays != subscription.replays {
                // A replay: a new epoch, from its own stored position (or its start).
                if saved != after {
                    let _ = self
                        .store
                        .save_checkpoint(&subscription.checkpoint(), after)
                        .await;
                }
                let Some(at) = self.position(&latest).await else {
                    tokio::time::sleep(Duration::from_secs(1)).await;
                    continue;
                };
                tracing::info!(subscription = %latest.id, after = at, "webhook replay");
                (after, saved) = (at, at);
            }
            subscription = latest;
            let name = subscription.checkpoint();
            let chunk = match self.store.read(after, 256).await {
                Ok(chunk) => chunk,
                Err(error) => {
                    tracing::warn!(subscription = %subscription.id, %error, "the log could not be read");
                    tokio::time::sleep(Duration::from_secs(1)).await;
                    continue;
                }
            };
            if chunk.is_empty() {
                if saved != after && self.store.save_checkpoint(&name, after).await.is_ok() {
                    saved = after;
                    saved_at = Instant::now();
                }
                tokio::select! {
                    _ = head.changed() => {}
                    _ = self.subscription.changed() => {}
                    _ = tokio::time::sleep(Duration::from_millis(500)) => {}
                    _ = self.stop.wait_for(|s| *s) => break,
                }
                continue;
            }
            for (position, bytes) in chunk {
                if self.subscription.has_changed().unwrap_or(true) || *self.stop.borrow() {
                    break;
                }
                if let Some(entry) = history::entry(&bytes)
                    && subscription.wants(&entry)
                    && !self.deliver(&subscription, &entry).await
                {
                    // Stopped, or the dead letter could not be kept: the position stays
                    // before this event.
                    break;
                }
                after = position;
                if saved_at.elapsed() >= SAVE_EVERY
                    && self.store.save_checkpoint(&name, after).await.is_ok()
                {
                    saved = after;
                    saved_at = Instant::now();
                }
            }
        }
        if saved != after {
            let _ = self
                .store
                .save_checkpoint(&subscription.checkpoint(), after)
                .await;
        }
    }

    /// Delivers `entry`, retrying with backoff; after the last attempt it goes to the dead
    /// letters. `false` if it is not settled: stopped meanwhile, or the dead letter could not
    /// be stored (the event is tried again).
    async fn deliver(&mut self, subscription: &Subscription, entry: &ledger::Entry) -> bool {
        let body = events::payload(entry, &subscription.sees);
        let mut error = String::new();
        for attempt_no in 1..=self.settings.max_attempts {
            match attempt(
                &self.http,
                self.settings.private_targets,
                subscription,
                entry,
                &body,
            )
            .await
            {
                Ok(()) => {
                    metrics::counter!("libertum_webhook_deliveries_total", "outcome" => "delivered").increment(1);
                    return true;
                }
                Err(e) => {
                    metrics::counter!("libertum_webhook_deliveries_total", "outcome" => "failed")
                        .increment(1);
                    error = e;
                }
            }
            if attempt_no == self.settings.max_attempts {
                break;
            }
            let wait = Duration::from_secs(1 << (attempt_no - 1).min(10));
            tokio::select! {
                _ = tokio::time::sleep(wait) => {}
                _ = self.stop.wait_for(|s| *s) => return false,
            }
            if self.subscription.borrow().deleted {
                return false;
            }
        }
        tracing::warn!(subscription = %subscription.id, seq = entry.seq, %error, "webhook dead-lettered");
        let letter = DeadLetter {
            seq: entry.seq,
            event_id: entry.event_id.clone(),
            event_type: entry.event_type.clone(),
            attempts: self.settings.max_attempts,
            error,
            at: time::OffsetDateTime::now_utc(),
        };
        let row = (
            events::dead_letter_key(&subscription.id, entry.seq),
            serde_json::to_vec(&letter).unwrap_or_default(),
        );
        if let Err(error) = self.store.put_index(vec![row]).await {
            tracing::error!(subscription = %subscription.id, seq = entry.seq, %error, "a dead letter could not be stored: the event is tried again");
            tokio::time::sleep(Duration::from_secs(1)).await;
            return false;
        }
        metrics::counter!("libertum_webhook_dead_letters_total").increment(1);
        true
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn internal_addresses_in_every_form_are_recognised() {
        for internal_ip in [
            "127.0.0.1",
            "10.1.2.3",
            "172.16.0.9",
            "192.168.1.1",
            "169.254.169.254",
            "100.64.0.1",
            "0.0.0.0",
            "192.0.0.8",
            "198.18.0.1",
            "255.255.255.255",
            "224.0.0.1",
            "::1",
            "::",
            "fc00::1",
            "fd12::1",
            "fe80::1",
            "fec0::1",
            "ff02::1",
            "::ffff:10.0.0.1",
            "::a9fe:a9fe",
            "64:ff9b::a9fe:a9fe",
            "2002:a9fe:a9fe::1",
        ] {
            assert!(
                internal(internal_ip.parse().unwrap()),
                "{internal_ip} is internal"
            );
        }
        for public in [
            "203.0.113.9",
            "8.8.8.8",
            "192.0.2.1",
            "2001:db8::1",
            "2606:4700::1111",
            "64:ff9b::808:808",
        ] {
            assert!(!internal(public.parse().unwrap()), "{public} is public");
        }
    }

    #[test]
    fn signatures_follow_the_standard_webhooks_form() {
        // The key is the base64 after `whsec_`; the signed content `{id}.{timestamp}.{body}`.
        let secret = "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw";
        let signature = sign(
            secret,
            "msg_p5jXN8AQM9LWM0D4loKWxJek",
            1614265330,
            br#"{"test": 2432232314}"#,
        );
        assert_eq!(signature, "v1,g0hM9SsE+OTPJTGt/tmIKtSyZlE3uFJELVlNIOLJ1OE=");
    }
}
