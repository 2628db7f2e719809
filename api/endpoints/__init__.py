"""OpenAI's other endpoints (moderations, images, audio, rerank) through the job queue."""
