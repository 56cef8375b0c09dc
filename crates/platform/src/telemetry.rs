//! Structured logs (JSON lines, or text for people) with the request id and trace id on every
//! line of a request; and, with `LIBERTUM_OTLP_ENDPOINT`, spans exported over OTLP/HTTP.

use opentelemetry::{KeyValue, trace::TracerProvider as _};
use opentelemetry_otlp::{Protocol, WithExportConfig};
use opentelemetry_sdk::{
    Resource,
    trace::{Sampler, SdkTracerProvider},
};
use tracing_subscriber::{EnvFilter, Layer, fmt, layer::SubscriberExt, util::SubscriberInitExt};

use crate::config::{LogFormat, Settings};

/// Keeps the span exporter running; dropping it sends what is still buffered.
#[must_use = "dropping it stops exporting spans"]
pub struct Telemetry {
    provider: Option<SdkTracerProvider>,
}

impl Drop for Telemetry {
    fn drop(&mut self) {
        if let Some(provider) = self.provider.take()
            && let Err(error) = provider.shutdown()
        {
            eprintln!("the last spans could not be exported: {error}");
        }
    }
}

/// Installs the global subscriber for `service`: the log lines, and the span exporter when
/// `LIBERTUM_OTLP_ENDPOINT` is set. A second call (tests) installs nothing.
pub fn init(settings: &Settings, service: &'static str) -> Telemetry {
    let filter =
        EnvFilter::try_new(&settings.log_filter).unwrap_or_else(|_| EnvFilter::new("info"));
    let logs = match settings.log_format {
        LogFormat::Json => fmt::layer()
            .with_target(false)
            .json()
            .flatten_event(true)
            .with_current_span(true)
            .boxed(),
        LogFormat::Text => fmt::layer().with_target(false).boxed(),
    }
    .with_filter(filter);
    let provider = settings.otlp_endpoint.as_deref().and_then(|endpoint| {
        match provider(endpoint, settings, service) {
            Ok(provider) => Some(provider),
            Err(error) => {
                eprintln!("spans will not be exported: {error}");
                None
            }
        }
    });
    // The exporter sees the product's own spans at info and above, whatever the log filter
    // keeps: request, decision, commit, publish, process.
    let spans = provider.as_ref().map(|provider| {
        tracing_opentelemetry::layer()
            .with_tracer(provider.tracer(service))
            .with_filter(
                tracing_subscriber::filter::Targets::new()
                    .with_target("libertum", tracing::Level::INFO),
            )
    });
    let installed = tracing_subscriber::registry()
        .with(logs)
        .with(spans)
        .try_init()
        .is_ok();
    if installed && provider.is_some() {
        libertum_store::trace::enable();
        tracing::info!(
            service,
            endpoint = settings.otlp_endpoint.as_deref(),
            ratio = settings.trace_sample_ratio,
            "exporting spans"
        );
    }
    Telemetry {
        provider: provider.filter(|_| installed),
    }
}

fn provider(
    endpoint: &str,
    settings: &Settings,
    service: &'static str,
) -> Result<SdkTracerProvider, opentelemetry_otlp::ExporterBuildError> {
    let exporter = opentelemetry_otlp::SpanExporter::builder()
        .with_http()
        .with_protocol(Protocol::HttpBinary)
        .with_endpoint(endpoint)
        .with_timeout(std::time::Duration::from_secs(5))
        .build()?;
    let resource = Resource::builder_empty()
        .with_service_name(service)
        .with_attribute(KeyValue::new("service.version", env!("CARGO_PKG_VERSION")))
        .build();
    Ok(SdkTracerProvider::builder()
        .with_batch_exporter(exporter)
        .with_sampler(Sampler::ParentBased(Box::new(Sampler::TraceIdRatioBased(
            settings.trace_sample_ratio,
        ))))
        .with_resource(resource)
        .build())
}
