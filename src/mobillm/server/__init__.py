"""The server: the WebSocket front end, jobs, the activation cache, checkpoints, tokens, status and metrics."""
