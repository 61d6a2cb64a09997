"""The outside world of tools_service: order backends (SQLite demo store, HTTP order API) and the ticket store."""
