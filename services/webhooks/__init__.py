"""The webhooks service: signs and delivers each job's terminal event to its endpoints (Standard Webhooks v1)."""
