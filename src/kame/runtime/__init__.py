"""The runtime: sessions, the frame scheduler, and the timeline every event is recorded on."""
