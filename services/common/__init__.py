"""What every service shares: message contracts, settings, and Kafka / Redis / S3 helpers."""
