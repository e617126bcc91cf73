"""`deepmolm serve`: a page and a JSON API to ask a trained model, and a shard browser."""
