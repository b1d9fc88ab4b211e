//! `GET /metrics`: the server's counters in the Prometheus (OpenMetrics) text format.

use std::sync::atomic::AtomicU64;

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{exponential_buckets, Histogram};
use prometheus_client::registry::Registry;

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct RequestLabels {
    endpoint: String,
    status: u16,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct EndpointLabels {
    endpoint: String,
}

/// A served language pair, e.g. `de-en`.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ModelLabels {
    model: String,
}

type HistogramFamily<L> = Family<L, Histogram, fn() -> Histogram>;

pub struct Metrics {
    registry: Registry,
    requests: Family<RequestLabels, Counter>,
    latency: HistogramFamily<EndpointLabels>,
    queue_depth: Family<ModelLabels, Gauge<i64>>,
    batch_sentences: HistogramFamily<ModelLabels>,
    sentences: Family<ModelLabels, Counter<u64, AtomicU64>>,
    tokens: Family<ModelLabels, Counter<u64, AtomicU64>>,
}

fn latency_histogram() -> Histogram {
    // 1 ms to ~33 s.
    Histogram::new(exponential_buckets(0.001, 2.0, 16))
}

fn batch_histogram() -> Histogram {
    // 1 to 1024 sentences.
    Histogram::new(exponential_buckets(1.0, 2.0, 11))
}

impl Default for Metrics {
    fn default() -> Self {
        Self::new()
    }
}

impl Metrics {
    pub fn new() -> Self {
        let mut registry = Registry::with_prefix("rnmt");
        let requests = Family::<RequestLabels, Counter>::default();
        let latency: HistogramFamily<EndpointLabels> =
            Family::new_with_constructor(latency_histogram);
        let queue_depth = Family::<ModelLabels, Gauge<i64>>::default();
        let batch_sentences: HistogramFamily<ModelLabels> =
            Family::new_with_constructor(batch_histogram);
        let sentences = Family::<ModelLabels, Counter>::default();
        let tokens = Family::<ModelLabels, Counter>::default();
        registry.register(
            "http_requests",
            "HTTP requests by endpoint and status",
            requests.clone(),
        );
        registry.register(
            "http_request_duration_seconds",
            "Time from request to response, by endpoint",
            latency.clone(),
        );
        registry.register(
            "queue_depth",
            "Sentences waiting for a batch, by language pair",
            queue_depth.clone(),
        );
        registry.register(
            "batch_sentences",
            "Sentences per batched search, by language pair",
            batch_sentences.clone(),
        );
        registry.register(
            "sentences_translated",
            "Sentences translated, by language pair",
            sentences.clone(),
        );
        registry.register(
            "source_tokens_translated",
            "Source subwords translated, by language pair",
            tokens.clone(),
        );
        Self {
            registry,
            requests,
            latency,
            queue_depth,
            batch_sentences,
            sentences,
            tokens,
        }
    }

    pub fn observe_request(&self, endpoint: &str, status: u16, seconds: f64) {
        let endpoint = endpoint.to_string();
        self.requests
            .get_or_create(&RequestLabels {
                endpoint: endpoint.clone(),
                status,
            })
            .inc();
        self.latency
            .get_or_create(&EndpointLabels { endpoint })
            .observe(seconds);
    }

    pub fn set_queue_depth(&self, model: &str, depth: usize) {
        self.queue_depth
            .get_or_create(&model_labels(model))
            .set(i64::try_from(depth).unwrap_or(i64::MAX));
    }

    pub fn observe_batch(&self, model: &str, sentences: usize, tokens: usize) {
        let labels = model_labels(model);
        self.batch_sentences
            .get_or_create(&labels)
            .observe(sentences as f64);
        self.sentences
            .get_or_create(&labels)
            .inc_by(sentences as u64);
        self.tokens.get_or_create(&labels).inc_by(tokens as u64);
    }

    /// The text exposition of every metric.
    pub fn encode(&self) -> String {
        let mut out = String::new();
        // Writing into a String cannot fail.
        let _ = prometheus_client::encoding::text::encode(&mut out, &self.registry);
        out
    }
}

fn model_labels(model: &str) -> ModelLabels {
    ModelLabels {
        model: model.to_string(),
    }
}
