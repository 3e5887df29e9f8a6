"""`ccoe serve`: continuous batching across experts (`batching`), the resident experts and the registry
alias they follow (`hot_swap`), and the OpenAI-compatible HTTP app over both (`http`)."""
