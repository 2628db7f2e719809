"""What every feature's serving shares: one request's way through the queue (the model's
fallback chain, fair share and quota, the job's relay). No feature's own logic lives here."""
