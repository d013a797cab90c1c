"""The vocabulary every layer shares: requests, outcomes, the request id and plain counters."""
