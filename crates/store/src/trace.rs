//! Distributed tracing across the services: the W3C trace context of a span, carried as
//! `traceparent` through HTTP headers, the events in the log (CloudEvents' distributed tracing
//! extension) and Kafka headers, and picked up again on the other side.
//!
//! Spans become OpenTelemetry spans only when `libertum_platform::telemetry` installed its
//! exporter (`LIBERTUM_OTLP_ENDPOINT`); otherwise a span has no trace context, nothing is
//! stamped on the events, and what arrives is ignored.

use opentelemetry::{
    propagation::{Extractor, TextMapPropagator},
    trace::TraceContextExt,
};
use opentelemetry_sdk::propagation::TraceContextPropagator;
use tracing_opentelemetry::OpenTelemetrySpanExt;

/// The header and CloudEvents attribute name.
pub const TRACEPARENT: &str = "traceparent";

static ENABLED: std::sync::atomic::AtomicBool = std::sync::atomic::AtomicBool::new(false);

/// Called once spans are exported: from then on the consumers and relays make spans of their
/// own and look for the trace context in what they carry.
pub fn enable() {
    ENABLED.store(true, std::sync::atomic::Ordering::Relaxed);
}

/// Whether spans are exported.
pub fn enabled() -> bool {
    ENABLED.load(std::sync::atomic::Ordering::Relaxed)
}

/// The `traceparent` attribute of a CloudEvent in JSON, if it has one.
pub fn traceparent_in(event: &[u8]) -> Option<String> {
    #[derive(serde::Deserialize)]
    struct Traced {
        traceparent: Option<String>,
    }
    serde_json::from_slice::<Traced>(event).ok()?.traceparent
}

/// `span`'s W3C `traceparent` (`00-{trace id}-{span id}-{flags}`), when it has a trace context.
pub fn traceparent(span: &tracing::Span) -> Option<String> {
    let context = span.context();
    let span_context = context.span().span_context().clone();
    span_context.is_valid().then(|| {
        format!(
            "00-{}-{}-{:02x}",
            span_context.trace_id(),
            span_context.span_id(),
            span_context.trace_flags().to_u8()
        )
    })
}

/// `span`'s trace id in hex, when it has a trace context: what the logs carry.
pub fn trace_id(span: &tracing::Span) -> Option<String> {
    let context = span.context();
    let span_context = context.span().span_context().clone();
    span_context
        .is_valid()
        .then(|| span_context.trace_id().to_string())
}

/// Makes `span` (not entered yet) the child of the remote span that `traceparent` names. A
/// missing or malformed value leaves `span` where it was: a client cannot break a request by
/// sending a bad header.
pub fn continue_from(span: &tracing::Span, traceparent: Option<&str>) {
    let Some(value) = traceparent else {
        return;
    };
    let context = TraceContextPropagator::new().extract(&One(value));
    if context.span().span_context().is_valid() {
        // Refused only once the span was entered: then it keeps its own parent.
        let _ = span.set_parent(context);
    }
}

/// A carrier of one `traceparent` value.
struct One<'a>(&'a str);

impl Extractor for One<'_> {
    fn get(&self, key: &str) -> Option<&str> {
        (key == TRACEPARENT).then_some(self.0)
    }

    fn keys(&self) -> Vec<&str> {
        vec![TRACEPARENT]
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use opentelemetry::trace::TracerProvider;
    use tracing_subscriber::layer::SubscriberExt;

    fn with_tracer(f: impl FnOnce()) {
        let provider = opentelemetry_sdk::trace::SdkTracerProvider::builder().build();
        let subscriber = tracing_subscriber::registry()
            .with(tracing_opentelemetry::layer().with_tracer(provider.tracer("test")));
        tracing::subscriber::with_default(subscriber, f);
    }

    #[test]
    fn a_child_carries_its_parents_trace_and_a_bad_header_changes_nothing() {
        with_tracer(|| {
            let parent = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01";
            let span = tracing::info_span!("child");
            continue_from(&span, Some(parent));
            let own = traceparent(&span).expect("a trace context");
            assert!(
                own.starts_with("00-4bf92f3577b34da6a3ce929d0e0e4736-"),
                "{own}"
            );
            assert!(
                !own.contains("00f067aa0ba902b7"),
                "a span of its own: {own}"
            );
            assert!(own.ends_with("-01"), "sampled, as its parent: {own}");
            assert_eq!(
                trace_id(&span).as_deref(),
                Some("4bf92f3577b34da6a3ce929d0e0e4736")
            );

            for bad in [
                "",
                "garbage",
                "00-00000000000000000000000000000000-00f067aa0ba902b7-01",
            ] {
                let span = tracing::info_span!("root");
                continue_from(&span, Some(bad));
                let own = traceparent(&span).expect("a trace context of its own");
                assert!(
                    !own.contains("4bf92f3577b34da6a3ce929d0e0e4736"),
                    "{bad:?}: {own}"
                );
                assert!(
                    !own.starts_with("00-00000000000000000000000000000000"),
                    "{bad:?}: {own}"
                );
            }
        });
    }

    #[test]
    fn without_an_exporter_there_is_no_trace_context() {
        let span = tracing::info_span!("plain");
        continue_from(
            &span,
            Some("00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01"),
        );
        assert_eq!(traceparent(&span), None);
    }
}
