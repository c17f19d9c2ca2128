"""The client side: configuration, hub API, download engine, cache, receipts, embedded hub."""
