"""Alert routing and delivery bookkeeping shared by the alert activities (activities/alerts/).

- `config`: the routing file named by SECFLOW_ALERTS_CONFIG (channels, per-severity tiers
  and SLAs, grouping and caps), validated once at worker start and on every use;
- `render`: what a message says (redacted, stack traces stripped, correlation ids);
- `deliveries`: the alert_deliveries table (idempotency, grouping, hourly caps).
"""
