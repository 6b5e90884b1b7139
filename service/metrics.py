"""Every Prometheus object the service exports (prefix seqserve_, base units, histograms for latencies)."""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

LATENCY_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0)
REJECT_BUCKETS = (0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 1.0)
STEP_BUCKETS = (0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 1.0)
BATCH_BUCKETS = (1, 2, 4, 8, 16, 32, 64, 128, 256, 512)
TOKEN_BUCKETS = (1, 2, 4, 8, 16, 32, 64, 128, 256, 512)


class Metrics:
    """One registry per app, so several apps (tests) never share counters."""

    def __init__(self, registry: CollectorRegistry | None = None) -> None:
        self.registry = registry or CollectorRegistry()
        r = self.registry
        self.requests = Counter("seqserve_requests", "Requests by model, endpoint and status code.",
                                ["model", "endpoint", "status"], registry=r)
        self.request_latency = Histogram("seqserve_request_duration_seconds", "Request latency end to end.",
                                         ["model", "endpoint"], buckets=LATENCY_BUCKETS, registry=r)
        self.queue_wait = Histogram("seqserve_queue_wait_seconds", "Time from admission to the start of compute.",
                                    ["model"], buckets=LATENCY_BUCKETS, registry=r)
        self.inference = Histogram("seqserve_inference_duration_seconds", "Compute time of one batch.",
                                   ["model"], buckets=LATENCY_BUCKETS, registry=r)
        self.batch_size = Histogram("seqserve_batch_size", "Texts per executed batch.", ["model"],
                                    buckets=BATCH_BUCKETS, registry=r)
        self.queue_depth = Gauge("seqserve_queue_depth", "Texts waiting for compute.", ["model"], registry=r)
        self.queue_capacity = Gauge("seqserve_queue_capacity", "Texts the queue holds before it answers 503.",
                                    ["model"], registry=r)
        self.rejected_latency = Histogram(
            "seqserve_rejected_request_duration_seconds",
            "Time to answer a request refused with 503 (queue full, not ready, shutting down), from its arrival.",
            ["model", "endpoint"], buckets=REJECT_BUCKETS, registry=r)
        self.rejections = Counter("seqserve_rejections", "Requests or texts refused or dropped, by reason.",
                                  ["model", "reason"], registry=r)
        self.connection_refusals = Counter(
            "seqserve_connection_refusals", "Requests the HTTP layer answered before the app saw them, by reason: "
            "head_timeout (408), head_too_large (431), no_connection_place (503).", ["reason"], registry=r)
        self.tokens = Counter("seqserve_tokens", "Tokens processed (input: source texts, output: generated).",
                              ["model", "direction"], registry=r)
        self.model_info = Gauge("seqserve_model_info", "Loaded model versions (value 1).",
                                ["model", "version", "kind", "provider"], registry=r)
        self.model_ready = Gauge("seqserve_model_ready", "1 when the model serves, 0 when it failed to load.",
                                 ["model"], registry=r)
        self.active_sequences = Gauge("seqserve_active_sequences", "Translations being decoded.", ["model"],
                                      registry=r)
        self.active_rows = Gauge("seqserve_active_rows", "Decoder rows (hypotheses) in flight.", ["model"],
                                 registry=r)
        self.decode_step = Histogram("seqserve_decode_step_duration_seconds", "One decoder-step call.", ["model"],
                                     buckets=STEP_BUCKETS, registry=r)
        self.time_to_first_token = Histogram("seqserve_time_to_first_token_seconds",
                                             "From admission to the first generated token.", ["model"],
                                             buckets=LATENCY_BUCKETS, registry=r)
        self.tokens_per_request = Histogram("seqserve_generated_tokens_per_request", "Tokens generated per text.",
                                            ["model"], buckets=TOKEN_BUCKETS, registry=r)
        self.generated_tokens = Counter("seqserve_generated_tokens", "Target tokens generated.", ["model"],
                                        registry=r)
        self.cache_hits = Counter("seqserve_cache_hits", "Texts answered from the response cache.", ["model"],
                                  registry=r)
        self.cache_misses = Counter("seqserve_cache_misses", "Cacheable texts that were not in the response cache.",
                                    ["model"], registry=r)
        self.cache_entries = Gauge("seqserve_cache_entries", "Answers held by the response cache.", registry=r)
        self.cache_bytes = Gauge("seqserve_cache_bytes", "About how much memory the response cache's answers hold.",
                                 registry=r)
