"""Chat: `/v1/chat/completions`, `/v1/completions`, `/v1/embeddings` (routes → serving)."""
