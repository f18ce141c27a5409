"""Durable state of the endpoint: async jobs, idempotency keys and webhook deliveries.

`store` is the small interface over a document store (SQLite embedded, `redis_store` for a
cluster), `book` the job state machine over it, `dispatch` the ingress's worker loop that hands
queued jobs to the model deployment, `replica` what a model replica does for the jobs it works on
(progress, cancellation between steps, results).
"""
