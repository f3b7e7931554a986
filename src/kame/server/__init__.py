"""The voice server: Moshi's WebSocket protocol on /api/chat, health and metrics, and the web client."""
